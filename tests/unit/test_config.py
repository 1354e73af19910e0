"""config.json / secrets.json validation under the unix port: every bad value is named."""

import copy
import json
from pathlib import Path

import pytest

from tests.conftest import REPO

GOOD = json.loads((REPO / "config.json").read_text())
GOOD_SECRETS = {"wifi_ssid": "lab", "wifi_password": "pw", "mqtt_user": None,
                "mqtt_password": None}

# Run each case through the real module under MicroPython; print the error or "ok".
_CHECK = """
import json, sys
from node import config
cases = json.load(open(sys.argv[1]))
for kind, raw in cases:
    try:
        (config.validate if kind == "config" else config.validate_secrets)(raw)
        print(json.dumps("ok"))
    except config.ConfigError as e:
        print(json.dumps(str(e)))
"""


def with_change(path, value, base=GOOD):
    cfg = copy.deepcopy(base)
    *parents, last = path.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return cfg


# The LED of an ESP32-S3-DevKitC-1 v1.1, as docs/HARDWARE.md gives it.
WS2812 = with_change("led", {"kind": "ws2812", "pin": 38})

# (case, the key the message must name, words that must appear)
BAD_CONFIG = [
    (with_change("mqtt.port", "8883"), "mqtt.port", "an integer"),
    (with_change("mqtt.port", 0), "mqtt.port", "1..65535"),
    (with_change("mqtt.port", 70000), "mqtt.port", "1..65535"),
    (with_change("mqtt.port", True), "mqtt.port", "an integer"),
    (with_change("mqtt.host", KeyError), "mqtt.host", "missing"),
    (with_change("mqtt.host", ""), "mqtt.host", "non-empty string"),
    (with_change("mqtt.ca", 5), "mqtt.ca", "string"),
    (with_change("mqtt.keepalive_s", 1), "mqtt.keepalive_s", "5..3600"),
    (with_change("mqtt.cert", "node-cert.der"), "mqtt.cert/mqtt.key", "both set"),
    (with_change("mqtt.key", "node-key.der"), "mqtt.cert/mqtt.key", "both set"),
    (with_change("mqtt.key", None, with_change("mqtt.cert", "c.der")), "mqtt.cert/mqtt.key",
     "or both null"),
    (with_change("mqtt.cert", 7, with_change("mqtt.key", "k.der")), "mqtt.cert",
     "a non-empty string or null"),
    (with_change("mqtt.key", "", with_change("mqtt.cert", "c.der")), "mqtt.key",
     "a non-empty string or null"),
    (with_change("mqtt.colour", "red"), "mqtt.colour", "no such key"),
    (with_change("mqtt", "broker"), "mqtt", "an object"),
    (with_change("mqtt", KeyError), "mqtt", "an object"),
    (with_change("dht.model", "DHT33"), "dht.model", '"DHT11", "DHT22"'),
    (with_change("dht.pin", -1), "dht.pin", "0..48"),
    (with_change("dht.interval_s", 0), "dht.interval_s", "1..3600"),
    # DHT22 may not be read more than every 2 s
    (with_change("dht.interval_s", 1, with_change("dht.model", "DHT22")), "dht.interval_s",
     "2..3600"),
    (with_change("dht.window", 0), "dht.window", "1..120"),
    (with_change("dht.window", 2.5), "dht.window", "an integer"),
    (with_change("dht.driver", "fast"), "dht.driver", '"async", "stock"'),
    (with_change("dht.driver", 1), "dht.driver", "a non-empty string"),
    (with_change("audio.bits", 24), "audio.bits", "16, 32"),
    (with_change("audio.rate_hz", 44100), "audio.rate_hz", "16000, 48000"),
    (with_change("audio.frame_samples", 10), "audio.frame_samples", "64..4096"),
    (with_change("audio.publish_interval_s", None), "audio.publish_interval_s", "an integer"),
    (with_change("audio.mic_sensitivity_dbfs", "loud"), "audio.mic_sensitivity_dbfs",
     "a number"),
    (with_change("audio.sd", KeyError), "audio.sd", "missing"),
    (with_change("audio.bands", 1), "audio.bands", "true or false"),
    (with_change("audio.event_threshold_dba", 10), "audio.event_threshold_dba",
     "a number in 20..140 or null, got 10"),
    (with_change("audio.event_threshold_dba", "loud"), "audio.event_threshold_dba", "a number"),
    (with_change("audio.event_hysteresis_db", 25), "audio.event_hysteresis_db",
     "a number in 0..20, got 25"),
    (with_change("audio.event_hysteresis_db", None), "audio.event_hysteresis_db", "a number"),
    (with_change("audio.event_min_s", -1), "audio.event_min_s", "a number in 0..600, got -1"),
    (with_change("audio.event", 70), "audio.event", "no such key"),
    (with_change("node_id", "a/b"), "node_id", "letters, digits"),
    (with_change("node_id", "#"), "node_id", "letters, digits"),
    (with_change("node_id", "x" * 65), "node_id", "at most 64"),
    (with_change("topic_prefix", "a/+/b"), "topic_prefix", "letters, digits"),
    (with_change("topic_prefix", "a//b"), "topic_prefix", "non-empty"),
    (with_change("watchdog_s", 1), "watchdog_s", "5..3600"),
    (with_change("outbox_size", 1), "outbox_size", "4..2000"),
    (with_change("outbox_bytes", 1024), "outbox_bytes", "2048..32768"),
    # 2000 readings were accepted before the outbox was counted in bytes: 250 KB on a heap of
    # about 110 KB. Now it is a clear error, naming what it would take.
    # (Without a journal: with one, outbox_bytes defaults to 2048.)
    (with_change("outbox_size", 2000, with_change("journal.bytes", 0)), "outbox_size/outbox_bytes",
     "at most 32768 bytes of the board's RAM for the outbox (Wi-Fi, TLS and the I2S DMA need "
     "the rest); 2000 readings and 8192 bytes of them take 42704"),
    (with_change("outbox_size", 1416, with_change("journal.bytes", 0)), "outbox_size/outbox_bytes",
     "take 32776"),
    (with_change("outbox_size", 1777), "outbox_size/outbox_bytes",
     "1777 readings and 2048 bytes of them take 32769"),
    (with_change("commands_per_s", 0), "commands_per_s", "1..100"),
    (with_change("led.kind", "neopixel"), "led.kind", 'one of "gpio", "ws2812"'),
    (with_change("led.kind", None), "led.kind", "a non-empty string"),
    (with_change("led.pin", 49), "led.pin", "an integer in 0..48 or null, got 49"),
    (with_change("led.pin", "2"), "led.pin", "an integer"),
    (with_change("led.inverted", 1), "led.inverted", "true or false"),
    (with_change("led.brightness", 40), "led.brightness",
     'only for "kind": "ws2812" (led.kind is "gpio")'),
    (with_change("led.inverted", False, WS2812), "led.inverted",
     'only for "kind": "gpio" (led.kind is "ws2812")'),
    (with_change("led.brightness", 0, WS2812), "led.brightness", "an integer in 1..255, got 0"),
    (with_change("led.brightness", 256, WS2812), "led.brightness", "1..255"),
    (with_change("led.brightness", 0.5, WS2812), "led.brightness", "an integer"),
    (with_change("led.count", 2, WS2812), "led.count",
     "no such key (known: brightness, kind, pin)"),
    (with_change("ota_trial_boots", 5), "ota_trial_boots",
     "fewer than safe_mode_boots (5): the rollback must come before safe mode, got 5"),
    (with_change("ota_trial_boots", 0), "ota_trial_boots", "1..99"),
    (with_change("ota_trial_s", 30), "ota_trial_s", "at least stable_after_s + 5 (65)"),
    (with_change("ota_trial_s", "300"), "ota_trial_s", "an integer"),
    (with_change("journal.bytes", 8192), "journal.bytes",
     "0 (no journal) or at least 16384 (four 4 KB segments), got 8192"),
    (with_change("journal.bytes", 2 ** 21), "journal.bytes", "0..1048576"),
    (with_change("journal.bytes", "128k"), "journal.bytes", "an integer"),
    (with_change("journal.grace_s", -1), "journal.grace_s", "0..3600"),
    (with_change("journal.flush_s", 301), "journal.flush_s", "0..300"),
    (with_change("journal.watermark_pct", 5), "journal.watermark_pct", "10..100"),
    (with_change("journal.path", "/sd"), "journal.path", "no such key"),
    (with_change("journal", [131072]), "journal", "an object"),
    (with_change("wifi", "x"), "wifi", "no such key"),
    ([1, 2], "(top level)", "an object"),
    ("config", "(top level)", "an object"),
]

BAD_SECRETS = [
    ({"wifi_password": "x"}, "wifi_ssid", "missing"),
    ({"wifi_ssid": "lab"}, "wifi_password", "missing"),
    ({**GOOD_SECRETS, "wifi_ssid": 5}, "wifi_ssid", "a string"),
    ({**GOOD_SECRETS, "wifi_ssid": "s" * 33}, "wifi_ssid", "at most 32"),
    ({**GOOD_SECRETS, "mqtt_user": "u"}, "mqtt_user/mqtt_password", "both"),
    ({**GOOD_SECRETS, "mqtt_password": ["secret-value"]}, "mqtt_password", "a string"),
    ({**GOOD_SECRETS, "token": "x"}, "token", "no such key"),
    ({**GOOD_SECRETS, "ota_key": "secret-value"}, "ota_key", "at least 16 characters"),
    ({**GOOD_SECRETS, "ota_key": 5}, "ota_key", "a string or null"),
    ("secrets", "(top level)", "an object"),
]


def run_cases(mpy, tmp_path, cases):
    f = tmp_path / "cases.json"
    f.write_text(json.dumps(cases))
    out = mpy(_CHECK, f).stdout.splitlines()
    return [json.loads(line) for line in out]


def test_good_config_and_defaults(mpy, tmp_path):
    minimal = copy.deepcopy(GOOD)
    for key in ("watchdog_s", "telemetry_interval_s", "node_id", "topic_prefix"):
        minimal.pop(key)
    assert run_cases(mpy, tmp_path, [["config", GOOD], ["config", minimal],
                                     ["secrets", GOOD_SECRETS]]) == ["ok", "ok", "ok"]


def test_update_trials_default_to_fewer_boots_than_safe_mode(mpy, tmp_path):
    code = ("import json\nfrom node import config\n"
            "for raw in json.load(open('cases.json')):\n"
            "    cfg = config.validate(raw)\n"
            "    print(cfg['ota_trial_boots'], cfg['ota_trial_s'])\n")
    (tmp_path / "cases.json").write_text(json.dumps([
        GOOD, with_change("safe_mode_boots", 2), with_change("safe_mode_boots", 3)]))
    assert mpy(code, cwd=tmp_path).stdout.split() == ["3", "300", "1", "300", "2", "300"]


def test_journal_defaults_and_off(mpy, tmp_path):
    out = mpy("""
import json
from node import config
raw = json.load(open("config.json"))
raw.pop("journal")
print(json.dumps(config.validate(raw)["journal"]))
cfg = config.validate(raw)
print(cfg["outbox_size"], cfg["outbox_bytes"])
raw["journal"] = {"bytes": 0}
cfg = config.validate(raw)
print(cfg["journal"]["bytes"], cfg["outbox_size"], cfg["outbox_bytes"])
raw["outbox_bytes"] = 4096
print(config.validate(raw)["outbox_bytes"])
""").stdout.splitlines()
    assert json.loads(out[0]) == {"bytes": 131072, "grace_s": 30, "flush_s": 10,
                                  "watermark_pct": 75}
    # RAM bridges the grace time when flash holds the outage: 32 places and 2 KB of bodies;
    # 100 and 8 KB without.
    assert out[1:] == ["32 2048", "0 100 8192", "4096"]


def test_the_largest_outbox_the_board_takes(mpy, tmp_path):
    """1415 readings at 8 KB of bodies (the default without a journal) is the most the config
    accepts."""
    results = run_cases(mpy, tmp_path, [["config", with_change("outbox_size", 1415,
                                                               with_change("journal.bytes", 0))],
                                        ["config", with_change("outbox_bytes", 32768)]])
    assert results[0] == "ok", results
    # 32 readings (the default with a journal) + 32 KB: over, by their index and the flight's.
    assert "take 33824" in results[1], results


@pytest.mark.parametrize("raw,key,words", BAD_CONFIG, ids=[c[1] for c in BAD_CONFIG])
def test_bad_config_names_key(mpy, tmp_path, raw, key, words):
    (msg,) = run_cases(mpy, tmp_path, [["config", raw]])
    assert msg.startswith("config.json: %s: " % key), msg
    assert words in msg, msg


@pytest.mark.parametrize("raw,key,words", BAD_SECRETS, ids=[c[1] for c in BAD_SECRETS])
def test_bad_secrets_name_key_not_value(mpy, tmp_path, raw, key, words):
    (msg,) = run_cases(mpy, tmp_path, [["secrets", raw]])
    assert msg.startswith("secrets.json: %s: " % key), msg
    assert words in msg, msg
    assert "secret-value" not in msg and '"pw"' not in msg


_LOAD = """
import sys
from node import config
try:
    path = sys.argv[1]
    cfg = config.resolve_paths(config.validate(config.read_json(path), path), path)
    config.validate_secrets(config.read_json(sys.argv[2]), sys.argv[2])
    print("ca", cfg["mqtt"]["ca_path"], cfg["mqtt"]["cert_path"], cfg["mqtt"]["key_path"])
except config.ConfigError as e:
    print("error", e)
"""


@pytest.fixture
def files(tmp_path):
    d = tmp_path / "flash"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(GOOD))
    (d / "secrets.json").write_text(json.dumps(GOOD_SECRETS))
    return d


def load(mpy, d, config="config.json", secrets="secrets.json"):
    return mpy(_LOAD, d / config, d / secrets).stdout.strip()


def test_ca_relative_to_config_folder(mpy, files):
    """The CA file itself is node.cafile's (tests/unit/test_cafile.py)."""
    d = files
    assert load(mpy, d) == "ca %s/ca.der None None" % d
    (d / "config.json").write_text(json.dumps(with_change("mqtt.ca", "/certs/ca.pem")))
    assert load(mpy, d) == "ca /certs/ca.pem None None"


def test_client_certificate_paths_resolve_as_the_ca_does(mpy, files):
    """mqtt.cert and mqtt.key: relative to config.json's folder, absolute as given; the files
    themselves are node.clientcert's (tests/unit/test_clientcert.py)."""
    d = files
    both = with_change("mqtt.key", "keys/node-key.der", with_change("mqtt.cert", "node.pem"))
    (d / "config.json").write_text(json.dumps(both))
    assert load(mpy, d) == "ca %s/ca.der %s/node.pem %s/keys/node-key.der" % (d, d, d)
    (d / "config.json").write_text(json.dumps(with_change("mqtt.cert", "/c.der", both)))
    assert load(mpy, d) == "ca %s/ca.der /c.der %s/keys/node-key.der" % (d, d)
    nulls = with_change("mqtt.key", None, with_change("mqtt.cert", None))
    (d / "config.json").write_text(json.dumps(nulls))
    assert load(mpy, d) == "ca %s/ca.der None None" % d


@pytest.mark.parametrize("breakage,expected", [
    (lambda d: (d / "config.json").unlink(), "config.json: cannot read the file"),
    (lambda d: (d / "secrets.json").unlink(), "secrets.json: cannot read the file"),
    (lambda d: (d / "config.json").write_text('{"mqtt": '), "config.json: not valid JSON"),
    (lambda d: (d / "config.json").write_bytes(b"\xff\xfe\x00"), "config.json: not valid JSON"),
    (lambda d: (d / "secrets.json").write_text(""), "secrets.json: not valid JSON"),
])
def test_bad_files_give_clear_errors(mpy, files, breakage, expected):
    d = files
    breakage(d)
    out = load(mpy, d)
    assert out.startswith("error "), out
    assert expected in out, out


def test_config_module_is_pure_python(tmp_path):
    """The same validator runs on CPython (differential check of the good config)."""
    from node import config  # lib/ is on pytest's pythonpath (pyproject.toml)

    cfg = config.validate(GOOD)
    assert cfg["mqtt"]["server_hostname"] == GOOD["mqtt"]["host"]
    with pytest.raises(config.ConfigError, match=r"mqtt\.port"):
        config.validate(with_change("mqtt.port", "x"))
    assert Path(config.__file__).parent.name == "node"


_DRIVER = """
import json, sys
from node import config
for raw in json.load(open(sys.argv[1])):
    print(config.validate(raw)["dht"]["driver"])
"""


def test_dht_driver_defaults_to_the_async_fast_path(mpy, tmp_path):
    f = tmp_path / "cases.json"
    f.write_text(json.dumps([GOOD,  # config.json sets no driver
                             with_change("dht.driver", "stock")]))
    assert mpy(_DRIVER, f).stdout.split() == ["async", "stock"]


_LED = """
import json, sys
from node import config
for raw in json.load(open(sys.argv[1])):
    print(json.dumps(config.validate(raw)["led"]))
"""


def test_led_kinds_and_their_defaults(mpy, tmp_path):
    old = with_change("led", {"pin": 2, "inverted": True})  # a config.json from before led.kind
    f = tmp_path / "cases.json"
    f.write_text(json.dumps([old, with_change("led", KeyError), WS2812,
                             with_change("led.brightness", 255, WS2812),
                             with_change("led", {"kind": "ws2812", "pin": None})]))
    assert [json.loads(line) for line in mpy(_LED, f).stdout.splitlines()] == [
        {"kind": "gpio", "pin": 2, "inverted": True},
        {"kind": "gpio", "pin": None, "inverted": False},  # no LED
        {"kind": "ws2812", "pin": 38, "brightness": 32},
        {"kind": "ws2812", "pin": 38, "brightness": 255},
        {"kind": "ws2812", "pin": None, "brightness": 32},
    ]


_AUDIO = """
import json, sys
from node import config
for raw in json.load(open(sys.argv[1])):
    a = config.validate(raw)["audio"]
    print(json.dumps([a[k] for k in ("bands", "event_threshold_dba", "event_hysteresis_db",
                                     "event_min_s", "mic_sensitivity_dbfs")]))
"""


def test_bands_and_events_are_off_unless_asked_for(mpy, tmp_path):
    """The defaults cost nothing: no bands, no events; a threshold without a sensitivity is
    accepted (the calibrate command may bring one), as are a hysteresis and duration of 0."""
    f = tmp_path / "cases.json"
    f.write_text(json.dumps([
        GOOD,
        with_change("audio.event_threshold_dba", 65.5, with_change("audio.bands", True)),
        with_change("audio.event_min_s", 0, with_change("audio.event_hysteresis_db", 0)),
    ]))
    assert [json.loads(line) for line in mpy(_AUDIO, f).stdout.splitlines()] == [
        [False, None, 3.0, 1.0, GOOD["audio"].get("mic_sensitivity_dbfs")],
        [True, 65.5, 3.0, 1.0, GOOD["audio"].get("mic_sensitivity_dbfs")],
        [False, None, 0, 0, GOOD["audio"].get("mic_sensitivity_dbfs")],
    ]
