"""Load and validate config.json and secrets.json; every error names the key and what was expected.

Pure: runs on CPython, the unix port and the board. Returns plain dicts with defaults filled in.
"""

import json

# boot.py reads these two before anything is validated (node.bootcount): one default each.
from node.bootcount import (
    DEFAULT_OTA_TRIAL_S,
    DEFAULT_SAFE_MODE_BOOTS,
    DEFAULT_WATCHDOG_S,
    ota_trial_boots_default,
)
from node.limits import DHT_MIN_INTERVAL_S, OUTBOX_RAM_BYTES
from node.outbox import INDEX_BYTES_PER_READING, MAX_BODY_BYTES

_NODE_ID_MAX_LEN = 64
OTA_KEY_MIN_CHARS = 16
_TOPIC_PREFIX_MAX_LEN = 64
_REQUIRED = object()
# The journal on flash (node.journal): at least four of its 4 KB segments, at most half of the
# ESP32's ~2 MB LittleFS partition; 128 KB hold about 1,500 readings (1.4 h at the default rates).
JOURNAL_BYTES_MIN = 16384
_JOURNAL_BYTES_MAX = 1048576
# The RAM outbox with a journal: its places (outbox_size) and bodies (outbox_bytes) by default;
# and the least its bodies may be.
OUTBOX_SIZE_WITH_JOURNAL = 32
OUTBOX_BYTES_WITH_JOURNAL = 2048
OUTBOX_BYTES_MIN = 2048


class ConfigError(ValueError):
    """A missing or wrong setting; str() names the file, the key and what was expected."""


def _fail(where, key, expected, got=_REQUIRED):
    text = "%s: %s: expected %s" % (where, key, expected)
    if got is not _REQUIRED:
        text += ", got %s" % json.dumps(got)
    raise ConfigError(text)


def _take(src, key, where, path, kind, default=_REQUIRED, lo=None, hi=None, choices=None):
    """Validate src[key] (or its default) against kind / range / choices and return it."""
    name = path + key
    if key not in src:
        if default is _REQUIRED:
            _fail(where, name, "a value (the key is missing)")
        return default
    value = src[key]
    if value is None and default is None:
        return None
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        desc = "an integer"
    elif kind == "num":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        desc = "a number"
    elif kind == "str":
        ok = isinstance(value, str) and value != ""
        desc = "a non-empty string"
    elif kind == "bool":
        ok = isinstance(value, bool)
        desc = "true or false"
    else:
        raise TypeError(kind)
    if ok and choices is not None:
        ok = value in choices
        desc = "one of " + ", ".join(json.dumps(c) for c in choices)
    if (ok and lo is not None and value < lo) or (ok and hi is not None and value > hi):
        ok = False
    if lo is not None or hi is not None:
        desc += " in %s..%s" % ("" if lo is None else lo, "" if hi is None else hi)
    if default is None:
        desc += " or null"
    if not ok:
        _fail(where, name, desc, value)
    return value


def _section(src, key, where, optional=False):
    value = src.get(key, {} if optional else None)
    if not isinstance(value, dict):
        _fail(where, key, "an object {...}", value)
    return value


def _no_unknown(src, known, where, path=""):
    # A misspelt key would otherwise be silently replaced by its default.
    for key in src:
        if key not in known:
            _fail(where, path + key, "no such key (known: %s)" % ", ".join(sorted(known)))


def _check_id(value, where, key, max_len):
    # Used in MQTT topics: no wildcards, separators, spaces or empty levels.
    if not value:
        _fail(where, key, "a non-empty name", value)
    for ch in value:
        if not (ch.isalpha() or ch.isdigit() or ch in "_-"):
            _fail(where, key, "letters, digits, '_' or '-' only (it goes into topics)", value)
    if len(value) > max_len:
        _fail(where, key, "at most %d characters" % max_len, value)


def validate(raw, where="config.json"):
    """The validated config with defaults; ConfigError on the first bad value."""
    if not isinstance(raw, dict):
        _fail(where, "(top level)", "an object {...}", raw)
    _no_unknown(
        raw,
        ("node_id", "topic_prefix", "mqtt", "dht", "audio", "watchdog_s", "telemetry_interval_s",
         "outbox_size", "safe_mode_boots", "stable_after_s", "led", "ntp", "discovery",
         "commands_per_s", "outbox_bytes", "journal", "ota_trial_boots", "ota_trial_s"),
        where,
    )
    cfg = {}
    cfg["node_id"] = _take(raw, "node_id", where, "", "str", None)
    if cfg["node_id"] is not None:
        _check_id(cfg["node_id"], where, "node_id", _NODE_ID_MAX_LEN)
    cfg["topic_prefix"] = _take(raw, "topic_prefix", where, "", "str", "nodes")
    for part in cfg["topic_prefix"].split("/"):
        _check_id(part, where, "topic_prefix", _TOPIC_PREFIX_MAX_LEN)
    cfg["watchdog_s"] = _take(raw, "watchdog_s", where, "", "int", DEFAULT_WATCHDOG_S, lo=5,
                              hi=3600)
    cfg["telemetry_interval_s"] = _take(
        raw, "telemetry_interval_s", where, "", "int", 60, lo=5, hi=86400
    )
    src = _section(raw, "journal", where, optional=True)
    _no_unknown(src, ("bytes", "grace_s", "flush_s", "watermark_pct"), where, "journal.")
    journal = cfg["journal"] = {}
    # 0: no journal (readings wait in RAM only, as before it existed).
    journal["bytes"] = _take(src, "bytes", where, "journal.", "int", 131072, lo=0,
                             hi=_JOURNAL_BYTES_MAX)
    if 0 < journal["bytes"] < JOURNAL_BYTES_MIN:
        _fail(where, "journal.bytes", "0 (no journal) or at least %d (four 4 KB segments)"
              % JOURNAL_BYTES_MIN, journal["bytes"])
    # How long the broker may be away before readings go to flash: a broker restart or a
    # Wi-Fi hiccup costs the flash nothing.
    journal["grace_s"] = _take(src, "grace_s", where, "journal.", "int", 30, lo=0, hi=3600)
    # The longest a reading waits in RAM once readings go to flash (what a power cut can
    # cost), and so how many share a write; 0: each is written as soon as it is taken.
    journal["flush_s"] = _take(src, "flush_s", where, "journal.", "int", 10, lo=0, hi=300)
    # RAM outbox this full (readings or bytes): to flash even while the broker is reachable.
    journal["watermark_pct"] = _take(src, "watermark_pct", where, "journal.", "int", 75, lo=10,
                                     hi=100)
    # 8 KB hold the default 100 readings at the default rates (bodies of 35 to 130 bytes). With
    # a journal, RAM only bridges the grace time and a batch (flash holds the outage): 2 KB,
    # about 25 readings (32 places for them: an index of 17 bytes a place that the bodies
    # could not fill would take the journal's room), leave its 11 KB the room it needs.
    cfg["outbox_size"] = _take(raw, "outbox_size", where, "", "int",
                               OUTBOX_SIZE_WITH_JOURNAL if journal["bytes"] else 100, lo=4,
                               hi=2000)
    cfg["outbox_bytes"] = _take(raw, "outbox_bytes", where, "", "int",
                                OUTBOX_BYTES_WITH_JOURNAL if journal["bytes"] else 8192,
                                lo=OUTBOX_BYTES_MIN, hi=OUTBOX_RAM_BYTES)
    need = outbox_ram(cfg["outbox_size"], cfg["outbox_bytes"])
    if need > OUTBOX_RAM_BYTES:
        _fail(where, "outbox_size/outbox_bytes", "at most %d bytes of the board's RAM for the "
              "outbox (Wi-Fi, TLS and the I2S DMA need the rest); %d readings and %d bytes of "
              "them take %d" % (OUTBOX_RAM_BYTES, cfg["outbox_size"], cfg["outbox_bytes"], need))
    # Commands carried out per second on average (node.ratelimit): a flood on `cmd`
    # is dropped and counted instead of starving the sampling tasks and the publisher.
    cfg["commands_per_s"] = _take(raw, "commands_per_s", where, "", "int", 5, lo=1, hi=100)
    # Boot-loop protection: this many boots in a row that end before the app has run
    # `stable_after_s` start safe mode instead of the app.
    cfg["safe_mode_boots"] = _take(raw, "safe_mode_boots", where, "", "int",
                                   DEFAULT_SAFE_MODE_BOOTS, lo=2, hi=100)
    cfg["stable_after_s"] = _take(raw, "stable_after_s", where, "", "int", 60, lo=5, hi=3600)
    # An update over MQTT is undone after this many boots without a stable run with a broker
    # connection (node.otaswap), each given ota_trial_s: before boot-loop safe mode stops it.
    cfg["ota_trial_boots"] = _take(raw, "ota_trial_boots", where, "", "int",
                                   ota_trial_boots_default(cfg["safe_mode_boots"]), lo=1, hi=99)
    if cfg["ota_trial_boots"] >= cfg["safe_mode_boots"]:
        _fail(where, "ota_trial_boots", "fewer than safe_mode_boots (%d): the rollback must "
              "come before safe mode" % cfg["safe_mode_boots"], cfg["ota_trial_boots"])
    cfg["ota_trial_s"] = _take(raw, "ota_trial_s", where, "", "int", DEFAULT_OTA_TRIAL_S,
                               lo=10, hi=3600)
    if cfg["ota_trial_s"] < cfg["stable_after_s"] + 5:
        _fail(where, "ota_trial_s", "at least stable_after_s + 5 (%d): a trial boot must have "
              "time to run stably" % (cfg["stable_after_s"] + 5), cfg["ota_trial_s"])

    src = _section(raw, "led", where, optional=True)
    # "gpio": a plain LED, on or off (config files from before led.kind mean this one);
    # "ws2812": an addressable RGB LED, as on the ESP32-S3-DevKitC-1 (node.ws2812).
    kind = _take(src, "kind", where, "led.", "str", "gpio", choices=("gpio", "ws2812"))
    own = "inverted" if kind == "gpio" else "brightness"
    for key, owner in (("inverted", "gpio"), ("brightness", "ws2812")):
        if key in src and owner != kind:
            raise ConfigError('%s: led.%s: only for "kind": "%s" (led.kind is "%s")'
                              % (where, key, owner, kind))
    _no_unknown(src, ("kind", "pin", own), where, "led.")
    led = cfg["led"] = {
        "kind": kind,
        "pin": _take(src, "pin", where, "led.", "int", None, lo=0, hi=48),
    }
    if kind == "gpio":
        led["inverted"] = _take(src, "inverted", where, "led.", "bool", False)
    else:
        # Of 255: a WS2812 at full white, a hand's width from the eyes, is blinding.
        led["brightness"] = _take(src, "brightness", where, "led.", "int", 32, lo=1, hi=255)
    src = _section(raw, "ntp", where, optional=True)
    _no_unknown(src, ("server", "port", "resync_s"), where, "ntp.")
    cfg["ntp"] = {
        # null: no NTP (the simulator runs on the host's clock, or a board without internet)
        "server": (None if src.get("server", "") is None
                   else _take(src, "server", where, "ntp.", "str", "pool.ntp.org")),
        "port": _take(src, "port", where, "ntp.", "int", 123, lo=1, hi=65535),
        "resync_s": _take(src, "resync_s", where, "ntp.", "int", 3600, lo=60, hi=604800),
    }
    src = _section(raw, "discovery", where, optional=True)
    _no_unknown(src, ("enabled", "prefix"), where, "discovery.")
    cfg["discovery"] = {
        "enabled": _take(src, "enabled", where, "discovery.", "bool", True),
        "prefix": _take(src, "prefix", where, "discovery.", "str", "homeassistant"),
    }
    _check_id(cfg["discovery"]["prefix"], where, "discovery.prefix", _TOPIC_PREFIX_MAX_LEN)

    src = _section(raw, "mqtt", where)
    _no_unknown(src, ("host", "port", "ca", "cert", "key", "server_hostname", "keepalive_s"),
                where, "mqtt.")
    mqtt = cfg["mqtt"] = {}
    mqtt["host"] = _take(src, "host", where, "mqtt.", "str")
    mqtt["port"] = _take(src, "port", where, "mqtt.", "int", 8883, lo=1, hi=65535)
    mqtt["ca"] = _take(src, "ca", where, "mqtt.", "str")
    # The node's own certificate and its key (files), for a broker that identifies devices by
    # certificate: one without the other is a mistake, never a node that connects without.
    mqtt["cert"] = _take(src, "cert", where, "mqtt.", "str", None)
    mqtt["key"] = _take(src, "key", where, "mqtt.", "str", None)
    if (mqtt["cert"] is None) != (mqtt["key"] is None):
        _fail(where, "mqtt.cert/mqtt.key", "both set (the node's certificate and its private "
              "key) or both null")
    mqtt["server_hostname"] = _take(src, "server_hostname", where, "mqtt.", "str", None)
    if mqtt["server_hostname"] is None:
        mqtt["server_hostname"] = mqtt["host"]
    mqtt["keepalive_s"] = _take(src, "keepalive_s", where, "mqtt.", "int", 30, lo=5, hi=3600)

    src = _section(raw, "dht", where)
    _no_unknown(src, ("model", "pin", "interval_s", "window", "driver"), where, "dht.")
    dht = cfg["dht"] = {}
    dht["model"] = _take(src, "model", where, "dht.", "str", choices=("DHT11", "DHT22"))
    dht["pin"] = _take(src, "pin", where, "dht.", "int", lo=0, hi=48)
    dht["interval_s"] = _take(
        src, "interval_s", where, "dht.", "int", 5, lo=DHT_MIN_INTERVAL_S[dht["model"]], hi=3600
    )
    dht["window"] = _take(src, "window", where, "dht.", "int", 5, lo=1, hi=120)
    # "async": node.dhtwire, which leaves the loop free during the start pulse; "stock": the
    # firmware's dht module, which blocks it for about 270 ms per read.
    dht["driver"] = _take(src, "driver", where, "dht.", "str", "async", choices=("async", "stock"))

    src = _section(raw, "audio", where)
    _no_unknown(
        src,
        ("sck", "ws", "sd", "rate_hz", "bits", "frame_samples", "publish_interval_s",
         "mic_sensitivity_dbfs", "bands", "event_threshold_dba", "event_hysteresis_db",
         "event_min_s"),
        where,
        "audio.",
    )
    audio = cfg["audio"] = {}
    for pin in ("sck", "ws", "sd"):
        audio[pin] = _take(src, pin, where, "audio.", "int", lo=0, hi=48)
    audio["rate_hz"] = _take(src, "rate_hz", where, "audio.", "int", 16000, choices=(16000, 48000))
    audio["bits"] = _take(src, "bits", where, "audio.", "int", 16, choices=(16, 32))
    audio["frame_samples"] = _take(
        src, "frame_samples", where, "audio.", "int", 512, lo=64, hi=4096
    )
    audio["publish_interval_s"] = _take(
        src, "publish_interval_s", where, "audio.", "int", 10, lo=1, hi=3600
    )
    audio["mic_sensitivity_dbfs"] = _take(
        src, "mic_sensitivity_dbfs", where, "audio.", "num", None, lo=-80, hi=0
    )
    # Octave bands (node.bands) and noise events (node.events) cost RAM and CPU: off unless
    # asked for. Events need a calibrated microphone (a sensitivity here, or from calibrate);
    # without one they wait for it, so this is not an error.
    audio["bands"] = _take(src, "bands", where, "audio.", "bool", False)
    audio["event_threshold_dba"] = _take(
        src, "event_threshold_dba", where, "audio.", "num", None, lo=20, hi=140
    )
    audio["event_hysteresis_db"] = _take(
        src, "event_hysteresis_db", where, "audio.", "num", 3.0, lo=0, hi=20
    )
    audio["event_min_s"] = _take(src, "event_min_s", where, "audio.", "num", 1.0, lo=0, hi=600)
    return cfg


def outbox_ram(readings, body_bytes):
    """What an outbox of `readings` with `body_bytes` for their bodies takes (node.outbox)."""
    return readings * INDEX_BYTES_PER_READING + body_bytes + MAX_BODY_BYTES


def validate_secrets(raw, where="secrets.json"):
    """The validated secrets; ConfigError naming the key (never its value) on a bad one."""
    if not isinstance(raw, dict):
        _fail(where, "(top level)", "an object {...}")
    _no_unknown(raw, ("wifi_ssid", "wifi_password", "mqtt_user", "mqtt_password", "ota_key"),
                where)
    out = {}
    for key, default in (("wifi_ssid", _REQUIRED), ("wifi_password", _REQUIRED),
                         ("mqtt_user", None), ("mqtt_password", None), ("ota_key", None)):
        value = raw.get(key, default)
        if value is _REQUIRED:
            _fail(where, key, "a value (the key is missing)")
        if value is not None and not isinstance(value, str):
            # The value itself is a secret: describe it, never echo it.
            _fail(where, key, "a string" + (" or null" if default is None else ""))
        out[key] = value
    if (out["mqtt_user"] is None) != (out["mqtt_password"] is None):
        _fail(where, "mqtt_user/mqtt_password", "both set or both null")
    if len(out["wifi_ssid"]) > 32:
        _fail(where, "wifi_ssid", "at most 32 characters")
    # The key that authenticates updates over MQTT (node.ota); none: updates are off.
    if out["ota_key"] is not None and len(out["ota_key"]) < OTA_KEY_MIN_CHARS:
        _fail(where, "ota_key", "at least %d characters (make a random one: python3 -c "
              "'import secrets; print(secrets.token_hex(32))')" % OTA_KEY_MIN_CHARS)
    return out


def read_json(path):
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise ConfigError("%s: cannot read the file (missing?)" % path)
    except UnicodeError:
        raise ConfigError("%s: not valid JSON (not UTF-8 text)" % path)
    try:
        return json.loads(text)
    except (ValueError, UnicodeError):  # MicroPython's UnicodeError is no ValueError
        raise ConfigError("%s: not valid JSON" % path)


def folder_of(path):
    cut = path.rfind("/")
    return path[: cut + 1] if cut >= 0 else ""


def resolve_paths(cfg, config_path):
    """Add mqtt.ca_path, cert_path and key_path: a relative path resolves against the config
    file's folder (cert_path and key_path are None without a client certificate)."""
    mqtt = cfg["mqtt"]
    folder = folder_of(config_path)
    for key in ("ca", "cert", "key"):
        name = mqtt[key]
        mqtt[key + "_path"] = (name if name is None or name.startswith("/")
                               else folder + name)
    return cfg
