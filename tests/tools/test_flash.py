"""tools/flash.sh without a board: the esptool commands it builds, and every refusal.

A fake `esptool` on PATH prints what the real one prints (esptool 5 and 4.x formats) and logs
its arguments, so chip detection and the erase/write/verify sequence run for real.
"""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import textwrap
from pathlib import Path

import pytest

from tools.hosttools import REPO

FLASH_SH = REPO / "tools" / "flash.sh"
TABLE = json.loads((REPO / "firmware" / "images.json").read_text())
REAL_ESPTOOL = REPO / ".venv" / "bin" / "esptool"

FAKE_ESPTOOL = r'''#!/usr/bin/env python3
"""Test double of esptool: answers like the real one, logs argv, never touches a port."""
import os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_ESPTOOL_LOG"], "a") as f:
    f.write(" ".join(args) + "\n")
version = os.environ.get("FAKE_ESPTOOL_VERSION", "5.6.0")
v5 = not version.startswith("4.")
if args == ["version"]:
    print(("esptool v%s" if v5 else "esptool.py v%s") % version)
    print(version)
    sys.exit(0)
cmd = [a for a in args if a.replace("_", "-") in
       ("chip-id", "erase-flash", "write-flash", "verify-flash")]
if not cmd:
    sys.exit("fake esptool: unexpected arguments %r" % args)
cmd = cmd[0]
if (v5 and "_" in cmd) or (not v5 and "-" in cmd):
    print("esptool: error: invalid choice: %r" % cmd, file=sys.stderr)
    sys.exit(2)
port = args[args.index("--port") + 1]
if cmd.replace("_", "-") == os.environ.get("FAKE_ESPTOOL_FAIL_ON"):
    print("Connecting......................................\n")
    print("A fatal error occurred: Failed to connect to Espressif device: "
          "No serial data received.")
    sys.exit(2)
chip = os.environ.get("FAKE_ESPTOOL_CHIP", "ESP32")
desc = {"ESP32": "ESP32-D0WD-V3 (revision v3.1)", "ESP32-S3": "ESP32-S3 (QFN56) (revision v0.2)",
        "ESP32-C3": "ESP32-C3 (QFN32) (revision v0.4)"}[chip]
# targets/<chip>.py get_chip_features(); esptool 4.x had shorter radio names. The S3's PSRAM in
# the package comes from its eFuses: an N8R8 module says "Embedded PSRAM 8MB (AP_3v3)".
features = {"ESP32": "Wi-Fi, BT, Dual Core + LP Core, 240MHz, Vref calibration in eFuse",
            "ESP32-S3": "Wi-Fi, BT 5 (LE), Dual Core + LP Core, 240MHz",
            "ESP32-C3": "Wi-Fi, BT 5 (LE), Single Core, 160MHz"}[chip]
if not v5:
    features = features.replace("Wi-Fi", "WiFi").replace("BT 5 (LE)", "BLE")
if os.environ.get("FAKE_ESPTOOL_PSRAM"):
    features += ", " + os.environ["FAKE_ESPTOOL_PSRAM"]
if v5 and os.environ.get("FAKE_ESPTOOL_SECURE"):  # Secure Download Mode: no chip details
    print("esptool v%s" % version)
    print("Connected to %s on %s:" % (chip, port))
    print("Chip type:          %s in Secure Download Mode" % chip)
elif v5:
    print("esptool v%s" % version)
    print("Connected to %s on %s:" % (chip, port))
    print("Chip type:          %s" % desc)
    print("Features:           %s" % features)
    print("Crystal frequency:  40MHz")
    print("MAC:                24:0a:c4:00:00:01\n")
    print("Stub flasher running.\n")
else:
    print("esptool.py v%s" % version)
    print("Serial port %s" % port)
    print("Connecting....")
    print("Detecting chip type... %s" % chip)
    print("Chip is %s" % desc)
    print("Features: %s" % features)
    print("Crystal is 40MHz")
    print("MAC: 24:0a:c4:00:00:01")
    print("Uploading stub...\nRunning stub...\nStub running...")
if cmd.replace("_", "-") == "chip-id":
    print("Warning: %s has no chip ID. Reading MAC address instead." % chip)
    print("MAC:                24:0a:c4:00:00:01")
print("\nHard resetting via RTS pin...")
'''


def make_image(path, chip_id, offset, size=0x9000, magic=0xE9, partition_table=True):
    """A full flash image as esptool reads it: bootloader header, partition table at 0x8000."""
    data = bytearray(b"\xff" * size)
    data[0:8] = bytes([magic, 3, 2, 0x20, 0x00, 0x10, 0x08, 0x40])  # magic, segments, mode, size
    data[8:24] = bytes([0xEE, 0, 0, 0, chip_id & 0xFF, chip_id >> 8, 0, 0, 0, 0xFF, 0xFF,
                        0, 0, 0, 0, 1])
    if partition_table:
        at = 0x8000 - offset
        data[at:at + 2] = b"\xaa\x50"
    path.write_bytes(bytes(data))
    return path


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def env(tmp_path):
    """PATH with the fake esptool first; a firmware folder of our own with its own table."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "esptool"
    fake.write_text(FAKE_ESPTOOL)
    fake.chmod(0o755)
    fw = tmp_path / "firmware"
    fw.mkdir()
    (fw / "images.json").write_text(json.dumps(TABLE))
    port = tmp_path / "ttyUSB0"  # any existing path passes the "port exists" check
    port.write_text("")
    e = dict(os.environ)
    e.update(PATH=f"{bindir}:{e['PATH']}", FAKE_ESPTOOL_LOG=str(tmp_path / "esptool.log"),
             FLASH_FIRMWARE_DIR=str(fw))
    e.pop("ESPTOOL", None)
    return {"env": e, "tmp": tmp_path, "fw": fw, "port": str(port),
            "log": tmp_path / "esptool.log"}


def flash(env, *args, **extra_env):
    e = dict(env["env"], **extra_env)
    return subprocess.run(["bash", str(FLASH_SH), *args], env=e, capture_output=True, text=True,
                          timeout=30)


def esptool_calls(env):
    return env["log"].read_text().splitlines() if env["log"].exists() else []


def image_with_sidecar(env, chip):
    entry = TABLE["chips"][chip]
    img = make_image(env["tmp"] / f"custom-{chip}.bin", entry["image_chip_id"],
                     int(entry["offset"], 16))
    Path(f"{img}.sha256").write_text(f"{sha256(img)}  {img.name}\n")
    return img


def refusal(proc):
    """The one-line error of a refused run."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("flash: ")]
    assert lines, proc.stderr
    return lines[-1]


# --- dry runs: the exact commands ---------------------------------------------------------------
@pytest.mark.parametrize("chip,offset", [("esp32", "0x1000"), ("esp32s3", "0x0")])
def test_dry_run_prints_the_exact_commands(env, chip, offset):
    img = image_with_sidecar(env, chip)
    p = env["port"]
    proc = flash(env, "--port", p, "--chip", chip, "--firmware", str(img), "--baud", "921600",
                 "--dry-run")
    assert proc.returncode == 0, proc.stderr
    base = f"esptool --chip {chip} --port {p} --baud 921600"
    assert proc.stdout.splitlines() == [
        f"{base} erase-flash",
        f"{base} write-flash {offset} {img}",
        f"{base} verify-flash {offset} {img}",
    ]
    assert "SHA-256 matches" in proc.stderr
    # --chip given: esptool was only asked its version, nothing touched the port
    assert esptool_calls(env) == ["version"]
    print(f"\n{chip}:\n{proc.stdout}", end="")


def test_default_baud_is_460800(env):
    img = image_with_sidecar(env, "esp32")
    proc = flash(env, "--port", env["port"], "--chip", "esp32", "--firmware", str(img),
                 "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert all("--baud 460800" in line for line in proc.stdout.splitlines())


@pytest.mark.parametrize("version,chip_name,chip,offset", [
    ("5.6.0", "ESP32-S3", "esp32s3", "0x0"),
    ("5.6.0", "ESP32", "esp32", "0x1000"),
    ("4.7.0", "ESP32", "esp32", "0x1000"),
    ("4.7.0", "ESP32-S3", "esp32s3", "0x0"),
])
def test_chip_detected_with_esptool(env, version, chip_name, chip, offset):
    img = image_with_sidecar(env, chip)
    proc = flash(env, "--port", env["port"], "--firmware", str(img), "--dry-run",
                 FAKE_ESPTOOL_VERSION=version, FAKE_ESPTOOL_CHIP=chip_name)
    assert proc.returncode == 0, proc.stderr
    assert f"detected {chip_name}" in proc.stderr
    cmds = proc.stdout.splitlines()
    assert len(cmds) == 3 and all(f"--chip {chip} " in c for c in cmds)
    assert cmds[1].endswith(f" {offset} {img}")
    # esptool 5 spells commands with dashes, 4.x with underscores
    sep = "-" if version.startswith("5") else "_"
    assert [c.split()[-3 if i else -1] for i, c in enumerate(cmds)] == [
        f"erase{sep}flash", f"write{sep}flash", f"verify{sep}flash"]
    assert esptool_calls(env) == ["version", f"--port {env['port']} chip{sep}id"]


def test_dry_run_without_chip_says_it_asks_the_board(env):
    img = image_with_sidecar(env, "esp32")
    proc = flash(env, "--port", env["port"], "--firmware", str(img), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert (f"flash: dry run: asking the board on {env['port']} which chip it is (esptool "
            "chip-id, which writes nothing; --chip skips this)") in proc.stderr.splitlines()
    assert len(proc.stdout.splitlines()) == 3  # stdout: only the commands a real run would run


# --- the image per board: the S3's octal-PSRAM variant ------------------------------------------
S3 = TABLE["chips"]["esp32s3"]
OCT = S3["variants"]["SPIRAM_OCT"]


def official_s3_images(env):
    """Both official ESP32-S3 downloads in firmware/, each with the .sha256 the table asks for."""
    paths = {}
    for variant, name in (("standard", S3["file"]), ("SPIRAM_OCT", OCT["file"])):
        img = make_image(env["fw"] / name, S3["image_chip_id"], int(S3["offset"], 16))
        Path(f"{img}.sha256").write_text(sha256(img) + "\n")
        paths[variant] = img
    return paths


def written_image(proc):
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()[1].split()[-1]


@pytest.mark.parametrize("version", ["5.6.0", "4.7.0"])
@pytest.mark.parametrize("psram,variant", [
    ("8MB", "SPIRAM_OCT"),   # ESP32-S3-WROOM-1-N8R8, N16R8 (ESP32-S3R8)
    ("16MB", "SPIRAM_OCT"),  # N16R16VA (ESP32-S3R16V)
    ("2MB", "standard"),     # N8R2 (ESP32-S3R2): quad, found by the standard image
    ("", "standard"),        # N8: no PSRAM in the package
])
def test_image_chosen_by_the_boards_psram(env, version, psram, variant):
    images = official_s3_images(env)
    proc = flash(env, "--port", env["port"], "--dry-run", FAKE_ESPTOOL_CHIP="ESP32-S3",
                 FAKE_ESPTOOL_PSRAM=f"Embedded PSRAM {psram} (AP_3v3)" if psram else "",
                 FAKE_ESPTOOL_VERSION=version)
    assert written_image(proc) == str(images[variant])
    assert (f"the ESP32-S3 reports {psram or 'no embedded'} of PSRAM: the {variant} image"
            in proc.stderr)


def test_n8r8_note_names_the_variant_and_why(env):
    official_s3_images(env)
    proc = flash(env, "--port", env["port"], "--dry-run", FAKE_ESPTOOL_CHIP="ESP32-S3",
                 FAKE_ESPTOOL_PSRAM="Embedded PSRAM 8MB (AP_3v3)")
    assert (f"flash: the ESP32-S3 reports 8MB of PSRAM: the SPIRAM_OCT image ({OCT['for']})"
            in proc.stderr.splitlines())
    print("\n" + proc.stderr + proc.stdout, end="")


def test_variant_option_overrides_the_detection(env):
    images = official_s3_images(env)
    proc = flash(env, "--port", env["port"], "--variant", "standard", "--dry-run",
                 FAKE_ESPTOOL_CHIP="ESP32-S3", FAKE_ESPTOOL_PSRAM="Embedded PSRAM 8MB (AP_3v3)")
    assert written_image(proc) == str(images["standard"])


def test_variant_option_with_chip_given(env):
    images = official_s3_images(env)
    proc = flash(env, "--port", env["port"], "--chip", "esp32s3", "--variant=SPIRAM_OCT",
                 "--dry-run")
    assert written_image(proc) == str(images["SPIRAM_OCT"])
    assert esptool_calls(env) == ["version"]  # the board was not asked


def test_chip_given_without_variant_says_how_to_get_the_octal_image(env):
    images = official_s3_images(env)
    proc = flash(env, "--port", env["port"], "--chip", "esp32s3", "--dry-run")
    assert written_image(proc) == str(images["standard"])
    assert ("flash: the ESP32-S3's PSRAM was not asked (--chip given): the standard image; for "
            f"{OCT['for']} pass --variant SPIRAM_OCT") in proc.stderr.splitlines()


def test_psram_not_in_esptools_answer(env):
    images = official_s3_images(env)
    proc = flash(env, "--port", env["port"], "--dry-run", FAKE_ESPTOOL_CHIP="ESP32-S3",
                 FAKE_ESPTOOL_SECURE="1")
    assert written_image(proc) == str(images["standard"])
    assert ("flash: the ESP32-S3's PSRAM is not in esptool's answer: the standard image; for "
            f"{OCT['for']} pass --variant SPIRAM_OCT") in proc.stderr.splitlines()


def test_make_flash_passes_variant():
    proc = subprocess.run(["make", "-n", "flash", "PORT=/dev/ttyACM0", "CHIP=esp32s3",
                           "VARIANT=SPIRAM_OCT", "DRY_RUN=1"], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ, MAKEFLAGS=""))
    assert proc.returncode == 0, proc.stderr
    line = " ".join(w for w in proc.stdout.split() if w != "\\")  # no continuation lines
    assert ('tools/flash.sh --port "/dev/ttyACM0" --chip esp32s3 --variant SPIRAM_OCT --dry-run'
            in line)


@pytest.mark.parametrize("chip,variant,choices", [
    ("esp32s3", "SPIRAM", "--variant standard or --variant SPIRAM_OCT"),
    ("esp32", "SPIRAM_OCT", "--variant standard"),
])
def test_unknown_variant(env, chip, variant, choices):
    line = refusal(flash(env, "--port", env["port"], "--chip", chip, "--variant", variant,
                         "--dry-run"))
    name = TABLE["chips"][chip]["name"]
    assert line == f"flash: variant '{variant}' is not an image for the {name}: use {choices}"


@pytest.mark.parametrize("psram,told", [
    ("Embedded PSRAM 4MB (AP_3v3)", "is 4MB"),
    ("Unknown Embedded PSRAM (AP_3v3)", "is of a size esptool does not know"),
])
def test_psram_no_image_is_listed_for(env, psram, told):
    official_s3_images(env)
    line = refusal(flash(env, "--port", env["port"], "--dry-run", FAKE_ESPTOOL_CHIP="ESP32-S3",
                         FAKE_ESPTOOL_PSRAM=psram))
    assert line.startswith(f"flash: the ESP32-S3's PSRAM {told}, and no image in ")
    assert line.endswith("is for it: pass --variant standard or --variant SPIRAM_OCT")


def test_variant_and_firmware_together(env):
    img = image_with_sidecar(env, "esp32s3")
    proc = flash(env, "--port", env["port"], "--chip", "esp32s3", "--variant", "SPIRAM_OCT",
                 "--firmware", str(img), "--dry-run")
    assert proc.returncode == 2
    assert "--variant and --firmware both choose the image" in refusal(proc)


def test_firmware_given_skips_the_psram_choice(env):
    """A 4MB PSRAM has no listed image, but a user's own image needs none."""
    img = image_with_sidecar(env, "esp32s3")
    proc = flash(env, "--port", env["port"], "--firmware", str(img), "--dry-run",
                 FAKE_ESPTOOL_CHIP="ESP32-S3", FAKE_ESPTOOL_PSRAM="Embedded PSRAM 4MB (AP_3v3)")
    assert written_image(proc) == str(img)


def test_missing_variant_image_names_its_download(env):
    line = refusal(flash(env, "--port", env["port"], "--chip", "esp32s3", "--variant",
                         "SPIRAM_OCT", "--dry-run"))
    assert f"firmware/{OCT['file']} is missing: download it from {OCT['url']}" in line


def test_official_image_checked_against_recorded_sha256(env):
    entry = TABLE["chips"]["esp32"]
    img = make_image(env["fw"] / entry["file"], 0, 0x1000)
    table = json.loads(json.dumps(TABLE))
    table["chips"]["esp32"]["sha256"] = sha256(img)
    (env["fw"] / "images.json").write_text(json.dumps(table))
    proc = flash(env, "--port", env["port"], "--chip", "esp32", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert f"write-flash 0x1000 {img}" in proc.stdout
    assert "SHA-256 matches firmware/images.json" in proc.stderr


# --- the real run, against the fake esptool -----------------------------------------------------
def test_real_run_erases_writes_verifies_in_order(env):
    img = image_with_sidecar(env, "esp32s3")
    proc = flash(env, "--port", env["port"], "--chip", "esp32s3", "--firmware", str(img),
                 "--baud", "115200")
    assert proc.returncode == 0, proc.stderr
    base = f"--chip esp32s3 --port {env['port']} --baud 115200"
    assert esptool_calls(env) == ["version", f"{base} erase-flash",
                                  f"{base} write-flash 0x0 {img}",
                                  f"{base} verify-flash 0x0 {img}"]
    assert "make deploy" in proc.stderr


def test_failed_step_stops_the_sequence(env):
    img = image_with_sidecar(env, "esp32")
    proc = flash(env, "--port", env["port"], "--chip", "esp32", "--firmware", str(img),
                 FAKE_ESPTOOL_FAIL_ON="write-flash")
    assert "write failed (esptool exit 2" in refusal(proc)
    assert not any("verify-flash" in c for c in esptool_calls(env))


# --- refusals: one line naming the problem ------------------------------------------------------
def test_no_port(env):
    proc = flash(env, "--chip", "esp32", "--dry-run")
    assert proc.returncode == 2
    assert "no serial port given" in refusal(proc)


def test_empty_port_from_make(env):
    proc = flash(env, "--port", "", "--dry-run")
    assert "no serial port given" in refusal(proc)


def test_port_not_there(env):
    proc = flash(env, "--port", "/dev/ttyUSB97", "--chip", "esp32", "--dry-run")
    assert refusal(proc).startswith("flash: serial port /dev/ttyUSB97 does not exist")
    assert esptool_calls(env) == []


def test_unsupported_chip_option(env):
    assert "chip 'esp32c3' is not supported" in refusal(
        flash(env, "--port", env["port"], "--chip", "esp32c3", "--dry-run"))


def test_bad_baud(env):
    assert "baud rate 'fast'" in refusal(
        flash(env, "--port", env["port"], "--chip", "esp32", "--baud", "fast", "--dry-run"))


def test_unknown_option(env):
    proc = flash(env, "--port", env["port"], "--chp", "esp32")
    assert proc.returncode == 2 and "unknown argument '--chp'" in refusal(proc)


def test_s3_image_for_an_esp32_given_chip(env):
    img = image_with_sidecar(env, "esp32s3")
    line = refusal(flash(env, "--port", env["port"], "--chip", "esp32", "--firmware", str(img),
                         "--dry-run"))
    assert "is built for esp32s3, but the board is esp32" in line


def test_esp32_image_for_a_detected_s3(env):
    img = image_with_sidecar(env, "esp32")
    line = refusal(flash(env, "--port", env["port"], "--firmware", str(img), "--dry-run",
                         FAKE_ESPTOOL_CHIP="ESP32-S3"))
    assert "is built for esp32, but the board is esp32s3" in line


def test_image_for_another_chip_family(env):
    img = make_image(env["tmp"] / "c3.bin", 5, 0x0)
    line = refusal(flash(env, "--port", env["port"], "--chip", "esp32s3", "--firmware", str(img),
                         "--dry-run"))
    assert "is built for esp32c3" in line


def test_unsupported_detected_chip(env):
    img = image_with_sidecar(env, "esp32")
    line = refusal(flash(env, "--port", env["port"], "--firmware", str(img), "--dry-run",
                         FAKE_ESPTOOL_CHIP="ESP32-C3"))
    assert "is an ESP32-C3; this project supports ESP32 and ESP32-S3" in line


def test_detection_fails(env):
    line = refusal(flash(env, "--port", env["port"], "--dry-run", FAKE_ESPTOOL_FAIL_ON="chip-id"))
    assert "could not detect the chip" in line and "No serial data received" in line
    assert "--chip" in line


def test_missing_official_image_names_the_download(env):
    entry = TABLE["chips"]["esp32s3"]
    line = refusal(flash(env, "--port", env["port"], "--chip", "esp32s3", "--dry-run"))
    assert f"firmware/{entry['file']} is missing: download it from {entry['url']}" in line


def test_missing_image_path(env):
    line = refusal(flash(env, "--port", env["port"], "--chip", "esp32", "--firmware",
                         str(env["tmp"] / "nope.bin"), "--dry-run"))
    assert "nope.bin does not exist" in line


def test_bad_magic(env):
    img = make_image(env["tmp"] / "x.bin", 0, 0x1000, magic=0x7F)
    line = refusal(flash(env, "--port", env["port"], "--chip", "esp32", "--firmware", str(img),
                         "--dry-run"))
    assert "not an ESP firmware image (byte 0 is 0x7F, not 0xE9)" in line


def test_truncated_image(env):
    img = env["tmp"] / "short.bin"
    img.write_bytes(b"\xe9\x03")
    assert "truncated" in refusal(flash(env, "--port", env["port"], "--chip", "esp32",
                                        "--firmware", str(img), "--dry-run"))


def test_app_only_image_without_partition_table(env):
    img = make_image(env["tmp"] / "micropython.bin", 0, 0x1000, partition_table=False)
    line = refusal(flash(env, "--port", env["port"], "--chip", "esp32", "--firmware", str(img),
                         "--dry-run"))
    assert "no partition table at 0x8000" in line


def test_wrong_sha256_sidecar(env):
    img = image_with_sidecar(env, "esp32")
    Path(f"{img}.sha256").write_text("0" * 64 + "  x.bin\n")
    line = refusal(flash(env, "--port", env["port"], "--chip", "esp32", "--firmware", str(img),
                         "--dry-run"))
    assert f"but {img.name}.sha256 says {'0' * 64}" in line


def test_malformed_sha256_sidecar(env):
    img = image_with_sidecar(env, "esp32")
    Path(f"{img}.sha256").write_text("see the web page\n")
    assert "holds no SHA-256" in refusal(flash(env, "--port", env["port"], "--chip", "esp32",
                                               "--firmware", str(img), "--dry-run"))


def test_official_image_with_wrong_recorded_sha256(env):
    entry = TABLE["chips"]["esp32"]
    make_image(env["fw"] / entry["file"], 0, 0x1000)  # not the real download: hash differs
    line = refusal(flash(env, "--port", env["port"], "--chip", "esp32", "--dry-run"))
    assert f"but firmware/images.json records {entry['sha256']}" in line


def test_official_image_without_any_hash_is_refused(env):
    entry = TABLE["chips"]["esp32s3"]
    assert entry["sha256"] is None  # nothing trustworthy recorded: the sidecar is required
    img = make_image(env["fw"] / entry["file"], 9, 0x0)
    line = refusal(flash(env, "--port", env["port"], "--chip", "esp32s3", "--dry-run"))
    assert f"put the expected hash in firmware/{entry['file']}.sha256" in line
    Path(f"{img}.sha256").write_text(sha256(img) + "\n")
    assert flash(env, "--port", env["port"], "--chip", "esp32s3", "--dry-run").returncode == 0


def test_custom_image_without_hash_warns_but_flashes(env):
    img = make_image(env["tmp"] / "firmware.bin", 0, 0x1000)
    proc = flash(env, "--port", env["port"], "--chip", "esp32", "--firmware", str(img),
                 "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "only its header was checked" in proc.stderr


# --- the table and the installed esptool agree with the script ----------------------------------
def test_table_names_follow_micropythons_downloads():
    """<BOARD>[-<VARIANT>]-<date>-<version>.bin under resources/firmware/, as micropython.org
    names them; a variant is a build of its chip's board on the same day."""
    for entry in TABLE["chips"].values():
        stem = entry["file"][:-len(f"-{entry['version']}.bin")]
        board, date = stem.rsplit("-", 1)
        assert board == entry["board"] and entry["file"].endswith(f"-{entry['version']}.bin")
        for name, v in entry.get("variants", {}).items():
            assert v["file"] == f"{board}-{name}-{date}-{entry['version']}.bin"
        for image in (entry, *entry.get("variants", {}).values()):
            assert image["url"] == f"https://micropython.org/resources/firmware/{image['file']}"


def test_table_psram_sizes_are_what_esptool_reports():
    """Every size the table lists is one esptool's ESP32-S3 target can print, and no size is
    claimed by two images (flash.sh must find exactly one)."""
    from esptool.targets import esp32s3
    src = Path(esp32s3.__file__).read_text()
    images = [S3, *S3["variants"].values()]
    sizes = [size for image in images for size in image["psram"]]
    assert len(sizes) == len(set(sizes))
    for size in sizes:
        assert size == "none" or f'"Embedded PSRAM {size}"' in src, size


def test_table_offsets_and_chip_ids_match_esptool():
    assert TABLE["chips"]["esp32"]["offset"] == "0x1000"
    assert TABLE["chips"]["esp32s3"]["offset"] == "0x0"
    from esptool.targets import CHIP_DEFS  # the installed esptool's own chip ids
    for chip, entry in TABLE["chips"].items():
        assert CHIP_DEFS[chip].IMAGE_CHIP_ID == entry["image_chip_id"]
    for chip_id, chip in TABLE["other_image_chip_ids"].items():
        assert CHIP_DEFS[chip].IMAGE_CHIP_ID == int(chip_id)


@pytest.mark.skipif(not REAL_ESPTOOL.exists(), reason="no esptool in .venv")
def test_installed_esptool_knows_the_commands_the_script_uses(tmp_path):
    out = subprocess.run([str(REAL_ESPTOOL), "version"], capture_output=True, text=True,
                         timeout=30).stdout.splitlines()[-1]
    sep = "_" if out.startswith("4.") else "-"
    for cmd in ("chip", "erase", "write", "verify"):
        name = f"chip{sep}id" if cmd == "chip" else f"{cmd}{sep}flash"
        proc = subprocess.run([str(REAL_ESPTOOL), name, "--help"], capture_output=True,
                              text=True, timeout=30)
        assert proc.returncode == 0, (name, proc.stderr)


def test_synthetic_header_matches_esptools_layout(tmp_path):
    """Our test images carry the chip id where esptool's own image parser looks for it."""
    from esptool.bin_image import ESP32FirmwareImage
    img = make_image(tmp_path / "s3.bin", 9, 0x0).read_bytes()
    fields = struct.unpack(ESP32FirmwareImage.EXTENDED_HEADER_STRUCT_FMT, img[8:24])
    assert img[0] == 0xE9 and fields[4] == 9


def test_script_is_bash_3_compatible():
    """macOS ships bash 3.2: no mapfile, no associative arrays, no ${x,,}."""
    text = FLASH_SH.read_text()
    for construct in ("mapfile", "readarray", "declare -A", ",,}", "^^}"):
        assert construct not in text, construct


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck not installed")
def test_shellcheck():
    proc = subprocess.run(["shellcheck", str(FLASH_SH)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_help():
    proc = subprocess.run(["bash", str(FLASH_SH), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--dry-run" in proc.stdout
    assert textwrap.dedent(proc.stdout).startswith("Flash MicroPython")
