#!/usr/bin/env bash
# Flash MicroPython onto an ESP32 or ESP32-S3 with esptool: check the image, erase, write, verify.
#
#   tools/flash.sh --port PORT [--chip esp32|esp32s3] [--variant NAME | --firmware FILE]
#                  [--baud N] [--dry-run]
#
# Without --chip the board is asked which chip it is, and its PSRAM (esptool chip-id: it reads
# the chip's eFuses and writes nothing). Without --firmware the image is firmware/<official file
# name> from firmware/images.json: the chip's standard image, or the variant its PSRAM needs (an
# ESP32-S3 with octal PSRAM: SPIRAM_OCT), or the one --variant names (standard, SPIRAM_OCT).
# Before anything is written the image must start with the ESP image magic (0xE9), name the same
# chip in its header, hold a partition table at 0x8000 (so the write offset is right for a full
# image) and match its SHA-256: the one images.json records for that file name and/or the one in
# FILE.sha256. --dry-run prints the erase, write and verify commands (one per line, on stdout)
# instead of running them; without --chip it still asks the board its chip, as above.
# Every refusal is one line on stderr, "flash: <problem>", with a non-zero exit.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
# Both overridable for tests; users pass --firmware instead.
FIRMWARE_DIR="${FLASH_FIRMWARE_DIR:-$REPO/firmware}"
TABLE="${FLASH_IMAGES_JSON:-$FIRMWARE_DIR/images.json}"
DEFAULT_BAUD=460800

die() { echo "flash: $*" >&2; exit 1; }
usage_error() {
    echo "flash: $*" >&2
    echo "usage: tools/flash.sh --port PORT [--chip esp32|esp32s3]" \
        "[--variant NAME | --firmware FILE] [--baud N] [--dry-run]" >&2
    exit 2
}
note() { echo "flash: $*" >&2; }

PORT="" CHIP="" VARIANT="" FIRMWARE="" BAUD="$DEFAULT_BAUD" DRY_RUN=0
while [ $# -gt 0 ]; do
    case "$1" in
        --port|--chip|--variant|--firmware|--baud)
            [ $# -ge 2 ] || usage_error "$1 needs a value"
            case "$1" in
                --port) PORT="$2" ;;
                --chip) CHIP="$2" ;;
                --variant) VARIANT="$2" ;;
                --firmware) FIRMWARE="$2" ;;
                --baud) BAUD="$2" ;;
            esac
            shift 2 ;;
        --port=*) PORT="${1#*=}"; shift ;;
        --chip=*) CHIP="${1#*=}"; shift ;;
        --variant=*) VARIANT="${1#*=}"; shift ;;
        --firmware=*) FIRMWARE="${1#*=}"; shift ;;
        --baud=*) BAUD="${1#*=}"; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) usage_error "unknown argument '$1'" ;;
    esac
done

# --- arguments --------------------------------------------------------------------------------
[ -n "$PORT" ] || usage_error "no serial port given: use --port /dev/ttyUSB0 (make flash PORT=...)"
case "$PORT" in
    *://*) ;;  # rfc2217:// or socket:// URLs go to esptool as they are
    *) [ -e "$PORT" ] || die "serial port $PORT does not exist (board unplugged? see ls /dev/ttyUSB* /dev/ttyACM*)" ;;
esac
case "$BAUD" in
    ''|*[!0-9]*|0*) die "baud rate '$BAUD' is not a positive whole number (e.g. 460800)" ;;
esac
case "$CHIP" in
    ''|esp32|esp32s3) ;;
    *) die "chip '$CHIP' is not supported: use --chip esp32 or --chip esp32s3" ;;
esac
if [ -n "$VARIANT" ] && [ -n "$FIRMWARE" ]; then
    usage_error "--variant and --firmware both choose the image: give one of them"
fi

PYTHON="$(command -v python3 || command -v python || true)"
[ -n "$PYTHON" ] || die "python3 not found (needed to read $TABLE)"
[ -f "$TABLE" ] || die "image table $TABLE is missing"

# Prints KEY=value lines (shell-quoted) from the image table for chip $1: CHIP_* (the chip),
# IMG_* (the official image: the variant $2, or the one the PSRAM $3 needs) and, for image file
# name $4 (the official one when empty), REC_* (its entry, if the table has one). PSRAM $3 is the
# size esptool's Features line gives ("8MB"), "none" when it names none, "unknown" when esptool
# does not know the size, "unreported" without a Features line, "" when the board was not asked.
# A choice it cannot make is one "flash: ..." line on stderr and exit status 1.
table() {
    "$PYTHON" - "$TABLE" "$1" "$2" "$3" "$4" <<'PY'
import json, shlex, sys
path, chip, variant, psram, image_name = sys.argv[1:6]
def fail(message):
    print("flash: " + message, file=sys.stderr)
    sys.exit(1)
try:
    with open(path) as f:
        t = json.load(f)
except (OSError, ValueError) as e:
    fail("cannot read %s: %s" % (path, e))
def emit(prefix, entry):
    for key in ("name", "image_chip_id", "offset", "file", "url", "page", "sha256"):
        value = entry.get(key)
        print("%s_%s=%s" % (prefix, key.upper(), shlex.quote("" if value is None else str(value))))
def images(entry):
    """The chip's images by variant name: its standard one, then the variants, each complete."""
    out = {"standard": entry}
    for name, v in entry.get("variants", {}).items():
        out[name] = dict(entry, **v)
    return out
chips = t["chips"]
entry = chips[chip]
emit("CHIP", entry)
ours = images(entry)
note = ""
if image_name:  # --firmware: the user's image; the standard entry only names the chip's image
    chosen = "standard"
elif variant:
    if variant not in ours:
        fail("variant '%s' is not an image for the %s: use %s" % (
            variant, entry["name"], " or ".join("--variant " + n for n in ours)))
    chosen = variant
elif len(ours) == 1:
    chosen = "standard"
else:
    told = {"": "was not asked (--chip given)", "unreported": "is not in esptool's answer",
            "unknown": "is of a size esptool does not know"}.get(psram, "is " + psram)
    if psram in ("", "unreported"):
        chosen = "standard"
        others = [n for n in ours if n != "standard"]
        note = "the %s's PSRAM %s: the standard image; for %s pass %s" % (
            entry["name"], told, "; ".join(ours[n]["for"] for n in others),
            " or ".join("--variant " + n for n in others))
    else:
        fits = [n for n, e in ours.items() if psram in e.get("psram", ())]
        if not fits:
            fail("the %s's PSRAM %s, and no image in %s is for it: pass %s" % (
                entry["name"], told, path, " or ".join("--variant " + n for n in ours)))
        chosen = fits[0]
        note = "the %s reports %s of PSRAM: the %s image (%s)" % (
            entry["name"], "no embedded" if psram == "none" else psram, chosen,
            ours[chosen]["for"])
emit("IMG", ours[chosen])
print("IMG_NOTE=" + shlex.quote(note))
if not image_name:
    image_name = ours[chosen]["file"]
for e in chips.values():
    for img in images(e).values():
        if img["file"] == image_name:
            emit("REC", img)
ids = {str(e["image_chip_id"]): c for c, e in chips.items()}
ids.update(t.get("other_image_chip_ids", {}))
print("CHIP_IDS=" + shlex.quote(" ".join("%s:%s" % kv for kv in sorted(ids.items()))))
print("PART_ADDR=" + shlex.quote(t.get("partition_table_address", "0x8000")))
PY
}

# --- esptool -----------------------------------------------------------------------------------
ESPTOOL="${ESPTOOL:-}"
if [ -z "$ESPTOOL" ]; then
    if command -v esptool >/dev/null 2>&1; then ESPTOOL=esptool
    elif command -v esptool.py >/dev/null 2>&1; then ESPTOOL=esptool.py
    elif [ -x "$REPO/.venv/bin/esptool" ]; then ESPTOOL="$REPO/.venv/bin/esptool"
    else die "esptool not found: run make hostdeps (or pip install esptool)"
    fi
fi
# esptool 5 spells its commands with dashes (chip-id); 4.x only knows underscores (chip_id).
ESPTOOL_VERSION="$("$ESPTOOL" version 2>/dev/null | tail -n 1 || true)"
case "$ESPTOOL_VERSION" in
    [0-3].*) die "esptool $ESPTOOL_VERSION is too old: 4.0 or newer is needed" ;;
    4.*) CMD_CHIP_ID=chip_id CMD_ERASE=erase_flash CMD_WRITE=write_flash CMD_VERIFY=verify_flash ;;
    [5-9].*|[1-9][0-9].*)
        CMD_CHIP_ID=chip-id CMD_ERASE=erase-flash CMD_WRITE=write-flash CMD_VERIFY=verify-flash ;;
    *) die "cannot tell the version of $ESPTOOL ('$ESPTOOL version' printed '$ESPTOOL_VERSION')" ;;
esac

# --- the chip ------------------------------------------------------------------------------------
PSRAM=""
if [ -z "$CHIP" ]; then
    [ "$DRY_RUN" = 0 ] || note "dry run: asking the board on $PORT which chip it is (esptool $CMD_CHIP_ID, which writes nothing; --chip skips this)"
    set +e
    DETECT_OUT="$("$ESPTOOL" --port "$PORT" "$CMD_CHIP_ID" 2>&1)"
    DETECT_RC=$?
    set -e
    if [ $DETECT_RC -ne 0 ]; then
        REASON="$(printf '%s\n' "$DETECT_OUT" | grep -m1 -iE 'error|could not|failed' || true)"
        die "could not detect the chip on $PORT (esptool exit $DETECT_RC${REASON:+: $REASON}); hold BOOT while pressing RESET, or pass --chip"
    fi
    # esptool 5: "Connected to ESP32-S3 on /dev/ttyACM0:"; 4.x: "Chip is ESP32-S3 (QFN56) ...";
    # both: "Detecting chip type... ESP32-S3".
    CHIP_NAME="$(printf '%s\n' "$DETECT_OUT" | sed -n \
        -e 's/^Connected to \([A-Za-z0-9-]*\) on .*/\1/p' \
        -e 's/^Chip is \([A-Za-z0-9-]*\).*/\1/p' \
        -e 's/^Detecting chip type\.*[[:space:]]*\([A-Za-z0-9-]*\).*/\1/p' | awk 'NR == 1')"
    case "$CHIP_NAME" in
        ESP32-S3*) CHIP=esp32s3 ;;
        ESP32|ESP32-D0WD*|ESP32-D2WD*|ESP32-S0WD*|ESP32-U4WDH*|ESP32-PICO*) CHIP=esp32 ;;
        "") die "esptool answered on $PORT but named no chip; pass --chip esp32 or --chip esp32s3" ;;
        *) die "the board on $PORT is an $CHIP_NAME; this project supports ESP32 and ESP32-S3" ;;
    esac
    note "detected $CHIP_NAME on $PORT"
    # "Features: Wi-Fi, BT 5 (LE), Dual Core + LP Core, 240MHz, Embedded PSRAM 8MB (AP_3v3)":
    # the PSRAM in the chip's package, from its eFuses (esptool 4.x and 5 alike).
    FEATURES="$(printf '%s\n' "$DETECT_OUT" | sed -n 's/^Features:[[:space:]]*//p' | awk 'NR == 1')"
    case "$FEATURES" in
        '') PSRAM=unreported ;;
        *"Embedded PSRAM "[0-9]*MB*)
            PSRAM="$(printf '%s\n' "$FEATURES" | sed 's/.*Embedded PSRAM \([0-9]*MB\).*/\1/')" ;;
        *"Embedded PSRAM"*) PSRAM=unknown ;;
        *) PSRAM=none ;;
    esac
fi

# --- the image -----------------------------------------------------------------------------------
TABLE_OUT="$(table "$CHIP" "$VARIANT" "$PSRAM" "${FIRMWARE:+$(basename "$FIRMWARE")}")" || exit 1
eval "$TABLE_OUT"
if [ -z "$FIRMWARE" ]; then
    OFFICIAL=1
    [ -z "$IMG_NOTE" ] || note "$IMG_NOTE"
    FIRMWARE="$FIRMWARE_DIR/$IMG_FILE"
    [ -f "$FIRMWARE" ] || die "image firmware/$IMG_FILE is missing: download it from $IMG_URL into firmware/ (or pass --firmware FILE)"
else
    OFFICIAL=0
    [ -e "$FIRMWARE" ] || die "image $FIRMWARE does not exist"
    [ -f "$FIRMWARE" ] || die "image $FIRMWARE is not a file"
fi
[ -r "$FIRMWARE" ] || die "image $FIRMWARE is not readable"
IMAGE_NAME="$(basename "$FIRMWARE")"

# byte N of the image as a decimal number (empty past the end)
byte_at() { od -An -tu1 -j "$1" -N 1 "$FIRMWARE" | tr -d ' \n'; }
SIZE="$(wc -c < "$FIRMWARE" | tr -d ' ')"
[ "$SIZE" -gt 24 ] || die "image $FIRMWARE is truncated ($SIZE bytes): download it again"
MAGIC="$(byte_at 0)"
[ "$MAGIC" = 233 ] || die "image $FIRMWARE is not an ESP firmware image (byte 0 is $(printf '0x%02X' "$MAGIC"), not 0xE9): corrupt or not a .bin for esptool"
IMAGE_CHIP_ID=$(( $(byte_at 12) + 256 * $(byte_at 13) ))
IMAGE_CHIP=""
for pair in $CHIP_IDS; do
    [ "${pair%%:*}" = "$IMAGE_CHIP_ID" ] && IMAGE_CHIP="${pair#*:}"
done
if [ "$IMAGE_CHIP" != "$CHIP" ]; then
    die "image $IMAGE_NAME is built for ${IMAGE_CHIP:-an unknown chip (image chip id $IMAGE_CHIP_ID)}, but the board is $CHIP: use the $CHIP_NAME image ($IMG_FILE)"
fi
# A full image is written at the bootloader offset, so the partition table (magic AA 50) sits at
# 0x8000 - offset in the file. Its absence means an app-only image (micropython.bin) or the wrong
# offset: writing it would leave a board that does not boot.
PT_AT=$(( PART_ADDR - CHIP_OFFSET ))
if [ "$(byte_at "$PT_AT")" != 170 ] || [ "$(byte_at $((PT_AT + 1)))" != 80 ]; then
    die "image $IMAGE_NAME has no partition table at $PART_ADDR when written at $CHIP_OFFSET: not a full $CHIP_NAME image (use firmware.bin, not micropython.bin) or truncated"
fi

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then shasum -a 256 "$1" | cut -d' ' -f1
    else "$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$1"
    fi
}
ACTUAL="$(sha256_of "$FIRMWARE")"
CHECKED=""
if [ -n "${REC_SHA256:-}" ]; then
    [ "$ACTUAL" = "$REC_SHA256" ] || die "image $IMAGE_NAME has SHA-256 $ACTUAL, but firmware/images.json records $REC_SHA256 for it: corrupt or changed download, fetch it again from ${REC_URL:-micropython.org}"
    CHECKED="firmware/images.json"
fi
if [ -f "$FIRMWARE.sha256" ]; then
    EXPECTED="$(head -n 1 "$FIRMWARE.sha256" | awk '{print tolower($1)}')"
    case "$EXPECTED" in
        *[!0-9a-f]*|'') die "$FIRMWARE.sha256 holds no SHA-256 (expected 64 hex digits first)" ;;
    esac
    [ ${#EXPECTED} -eq 64 ] || die "$FIRMWARE.sha256 holds no SHA-256 (expected 64 hex digits first)"
    [ "$ACTUAL" = "$EXPECTED" ] || die "image $IMAGE_NAME has SHA-256 $ACTUAL, but $IMAGE_NAME.sha256 says $EXPECTED: corrupt or changed file"
    CHECKED="${CHECKED:+$CHECKED and }$IMAGE_NAME.sha256"
fi
if [ -z "$CHECKED" ]; then
    if [ "$OFFICIAL" = 1 ]; then
        die "no SHA-256 to check firmware/$IMAGE_NAME against: firmware/images.json records none, so put the expected hash in firmware/$IMAGE_NAME.sha256 (see docs/HARDWARE.md)"
    fi
    note "warning: no SHA-256 recorded for $IMAGE_NAME and no $IMAGE_NAME.sha256: only its header was checked"
else
    note "image $IMAGE_NAME: $CHIP_NAME image, SHA-256 matches $CHECKED"
fi

# --- erase, write, verify ------------------------------------------------------------------------
BASE=("$ESPTOOL" --chip "$CHIP" --port "$PORT" --baud "$BAUD")
run_step() {  # run_step NAME ARGS...: print it (--dry-run) or run it
    local name="$1"; shift
    if [ "$DRY_RUN" = 1 ]; then
        # %q quotes what the shell would need quoted; plain words stay plain.
        printf '%q ' "${BASE[@]}" "$@" | sed 's/ $//'
        echo
        return
    fi
    note "$name: ${BASE[*]} $*"
    local rc=0
    "${BASE[@]}" "$@" || rc=$?
    [ $rc -eq 0 ] || die "$name failed (esptool exit $rc, output above); the steps after it were not run"
}
run_step erase "$CMD_ERASE"
run_step write "$CMD_WRITE" "$CHIP_OFFSET" "$FIRMWARE"
# esptool checks each block as it writes; this reads the whole region back (MD5 on the chip).
run_step verify "$CMD_VERIFY" "$CHIP_OFFSET" "$FIRMWARE"
[ "$DRY_RUN" = 1 ] || note "done: MicroPython is on the $CHIP_NAME; next: make deploy PORT=$PORT"
