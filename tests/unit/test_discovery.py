"""Home Assistant MQTT discovery (lib/node/discovery.py): every config message, made under the unix
port, checked against HA's rules and against the payloads the node really publishes; CPython
must make the same messages."""

import ast
import json
import re

import pytest

from tests.conftest import REPO

# HA's rules, from homeassistant/components/sensor/const.py (DEVICE_CLASS_UNITS and
# DEVICE_CLASS_STATE_CLASSES) for the device classes used here, and the MQTT sensor's options.
UNITS = {
    "temperature": {"°C", "°F", "K"},
    "humidity": {"%"},
    "sound_pressure": {"dB", "dBA"},
    "signal_strength": {"dB", "dBm"},
    "duration": {"d", "h", "min", "s", "ms"},
}
STATE_CLASSES_OF = {
    "temperature": {"measurement"},
    "humidity": {"measurement"},
    "sound_pressure": {"measurement"},
    "signal_strength": {"measurement"},
    "duration": {"measurement", "total", "total_increasing"},
}
STATE_CLASSES = {"measurement", "total", "total_increasing"}
REQUIRED = {
    "name", "unique_id", "default_entity_id", "state_topic", "value_template",
    "unit_of_measurement", "state_class", "availability_topic",
    "payload_available", "payload_not_available", "device",
}
# Readings at intervals expire; the event sensor's come when they come, with attributes.
KNOWN = REQUIRED | {"device_class", "entity_category", "expire_after", "json_attributes_topic"}
DEVICE_KEYS = {"identifiers", "name", "model", "manufacturer", "sw_version"}
ID = "[a-zA-Z0-9_-]+"
TEMPLATE = re.compile(r"^\{\{ value_json\.([a-z0-9_]+) \}\}$")

VARIANTS = {
    # name: (discovery prefix, topic prefix, node id, dba, events)
    "default": ("homeassistant", "nodes", "240ac45e1a70", True, True),
    "no_events": ("homeassistant", "nodes", "240ac45e1a70", True, False),
    "no_dba": ("homeassistant", "nodes", "240ac45e1a70", False, True),
    "custom": ("ha-test", "home/lab", "Kitchen_node-2", True, True),
}
DBA_SENSORS = ["sound_laeq", "sound_la10", "sound_la50", "sound_la90", "sound_lceq",
               "sound_lzeq"]
EXPIRE_S = {"climate": 31, "sound": 32, "telemetry": 183}
MODEL, MAKER, VERSION = "ESP32 DHT22 \"INMP441\"", "DIY", "0.1.0"

_MAKE = """
import json, sys
from node.discovery import messages
from node.payload import Topics

with open(sys.argv[1]) as f:
    variants, expire, model, maker, version = json.load(f)
out = {}
for name, (prefix, topic_prefix, node, dba, events) in variants.items():
    out[name] = [
        [topic, payload.decode()]
        for topic, payload in messages(prefix, node, Topics(topic_prefix, node), version, model,
                                       maker, dba, expire["climate"], expire["sound"],
                                       expire["telemetry"], events)
    ]
print(json.dumps(out))
"""

# What the tasks really publish: the sound task with a calibrated and an uncalibrated meter, the
# climate task with a sensor that answers, both into an outbox stand-in that keeps the fields.
_REAL = """
import asyncio, json
from node import payload
from node.climate import Climate
from node.dsp import LevelMeter
from node.sound import Sound

class Box:
    def add(self, topic, fields, age_ms=0):
        self.body = payload.reading(3, 1, 1700000000, payload.fields(fields)).decode()
        return 1

class Dht:
    def measure(self):
        pass
    def temperature(self):
        return 21.5
    def humidity(self):
        return 40.2

def sound(sensitivity, bands=False):
    box = Box()
    audio = {"bits": 16, "rate_hz": 16000, "frame_samples": 256, "publish_interval_s": 10}
    s = Sound(i2s=None, meter=LevelMeter(16, 16000, sensitivity, bands), settings=audio,
              outbox=box, topic=b"t", event_topic=b"e", beat=lambda: None, ring_samples=4000)
    frame = bytearray(512)
    for i in range(0, 512, 4):
        frame[i + 1] = 0x20  # a square wave
    for i in range(8):
        s.meter.add(frame, 512)
    s._publish(100.0)
    return box.body

def event():
    box = Box()
    audio = {"bits": 16, "rate_hz": 16000, "frame_samples": 256, "publish_interval_s": 10}
    s = Sound(i2s=None, meter=None, settings=audio, outbox=box, topic=b"t", event_topic=b"e",
              beat=lambda: None, ring_samples=4000)
    s._publish_event((1500, [("duration_s", 1.25), ("lafmax_dba", 71.5), ("laeq_dba", 66.0),
                             ("dominant_band", "1000")]))
    return box.body

async def climate():
    box = Box()
    c = Climate(sensor=Dht(), settings={"model": "DHT22", "interval_s": 5, "window": 5},
                outbox=box, topic=b"t", beat=lambda: None)
    try:
        await asyncio.wait_for_ms(c.run(), 300)
    except asyncio.TimeoutError:
        pass
    return box.body

print(json.dumps({"climate": asyncio.run(climate()), "sound": sound(-26),
                  "sound_uncalibrated": sound(None), "sound_bands": sound(-26, True),
                  "event": event()}))
"""


def telemetry_keys():
    """The keys of the telemetry body node.telemetry builds (its tuple of (key, value) pairs
    with uptime_s)."""
    tree = ast.parse((REPO / "lib" / "node" / "telemetry.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple):
            keys = {pair.elts[0].value for pair in node.elts
                    if isinstance(pair, ast.Tuple) and isinstance(pair.elts[0], ast.Constant)}
            if "uptime_s" in keys:
                return keys
    raise AssertionError("node/telemetry.py builds no telemetry pairs with uptime_s")


@pytest.fixture(scope="module")
def made(mpy, tmp_path_factory):
    # In a file: this unix port dies ("FATAL: uncaught NLR") on a command-line argument of 256
    # characters or more.
    args = tmp_path_factory.mktemp("discovery") / "args.json"
    args.write_text(json.dumps([VARIANTS, EXPIRE_S, MODEL, MAKER, VERSION]))
    return json.loads(mpy(_MAKE, args).stdout)


@pytest.fixture(scope="module")
def real(mpy):
    out = json.loads(mpy(_REAL).stdout.splitlines()[-1])  # after the tasks' log lines
    return {key: json.loads(body) for key, body in out.items()}


def configs(made, variant):
    return [(t, json.loads(p)) for t, p in made[variant] if p]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_config_follows_home_assistant_rules(made, variant):
    prefix, topic_prefix, node, dba, events = VARIANTS[variant]
    topic_re = re.compile("^%s/sensor/(%s)/(%s)/config$" % (re.escape(prefix), ID, ID))
    base = topic_prefix + "/" + node + "/"
    unique_ids = set()
    for topic, cfg in configs(made, variant):
        m = topic_re.match(topic)
        assert m and m.group(1) == node, topic
        object_id = m.group(2)
        assert REQUIRED <= cfg.keys() <= KNOWN, (topic, cfg.keys())
        assert cfg["unique_id"] == node + "_" + object_id
        assert re.fullmatch(ID, object_id) and re.fullmatch(ID, cfg["unique_id"])
        assert cfg["default_entity_id"] == "sensor." + cfg["unique_id"]
        unique_ids.add(cfg["unique_id"])

        device_class = cfg.get("device_class")
        unit = cfg.get("unit_of_measurement")
        assert cfg["state_class"] in STATE_CLASSES  # all numeric: HA keeps statistics
        if device_class is not None:
            assert unit in UNITS[device_class], (device_class, unit)
            assert cfg["state_class"] in STATE_CLASSES_OF[device_class]
        assert cfg.get("entity_category", "diagnostic") == "diagnostic"  # sensors: never config

        assert cfg["availability_topic"] == base + "status"
        assert (cfg["payload_available"], cfg["payload_not_available"]) == ("online", "offline")
        kind = cfg["state_topic"][len(base):]
        assert cfg["state_topic"].startswith(base), cfg["state_topic"]
        if kind == "event":
            assert "expire_after" not in cfg and cfg["json_attributes_topic"] == base + "event"
        else:
            assert cfg["expire_after"] == EXPIRE_S[kind] and "json_attributes_topic" not in cfg
        assert TEMPLATE.match(cfg["value_template"]), cfg["value_template"]

        dev = cfg["device"]
        assert dev.keys() == DEVICE_KEYS
        assert dev == {"identifiers": [node], "name": node, "model": MODEL,
                       "manufacturer": MAKER, "sw_version": VERSION}
    assert len(unique_ids) == len(configs(made, variant)) == (
        5 + (len(DBA_SENSORS) + events if dba else 0))


def test_the_sensors_and_what_they_read(made):
    by_object = {t.split("/")[-2]: c for t, c in configs(made, "default")}
    want = {
        # object id: (state topic kind, field, device_class, unit, state_class, diagnostic)
        "temperature": ("climate", "temperature", "temperature", "°C", "measurement", False),
        "humidity": ("climate", "humidity", "humidity", "%", "measurement", False),
        "sound_rms": ("sound", "rms_dbfs", None, "dBFS", "measurement", False),
        "sound_laeq": ("sound", "laeq_dba", "sound_pressure", "dBA", "measurement", False),
        "sound_la10": ("sound", "la10_dba", "sound_pressure", "dBA", "measurement", False),
        "sound_la50": ("sound", "la50_dba", "sound_pressure", "dBA", "measurement", False),
        "sound_la90": ("sound", "la90_dba", "sound_pressure", "dBA", "measurement", False),
        "sound_lceq": ("sound", "lceq_dbc", "sound_pressure", "dB", "measurement", False),
        "sound_lzeq": ("sound", "lzeq_dbz", "sound_pressure", "dB", "measurement", False),
        "noise_event": ("event", "lafmax_dba", "sound_pressure", "dBA", "measurement", False),
        "rssi": ("telemetry", "rssi", "signal_strength", "dBm", "measurement", True),
        "uptime": ("telemetry", "uptime_s", "duration", "s", "total_increasing", True),
    }
    assert by_object.keys() == want.keys()
    for object_id, (kind, field, device_class, unit, state_class, diagnostic) in want.items():
        cfg = by_object[object_id]
        assert cfg["state_topic"].endswith("/" + kind)
        assert TEMPLATE.match(cfg["value_template"]).group(1) == field
        assert cfg.get("device_class") == device_class
        assert cfg["unit_of_measurement"] == unit
        assert cfg["state_class"] == state_class
        assert ("entity_category" in cfg) == diagnostic


def test_templates_read_fields_the_node_publishes(made, real):
    published = {
        "climate": real["climate"],
        "sound": real["sound"],
        "event": real["event"],
        "telemetry": dict.fromkeys(telemetry_keys(), 0),
    }
    assert real["climate"]["temperature"] == 21.5 and real["climate"]["humidity"] == 40.2
    for variant in VARIANTS:
        base = "/".join(VARIANTS[variant][1:3]) + "/"
        for topic, cfg in configs(made, variant):
            body = published[cfg["state_topic"][len(base):]]
            field = TEMPLATE.match(cfg["value_template"]).group(1)
            assert field in body, (topic, field, sorted(body))
            assert isinstance(body[field], (int, float)), (field, body[field])


def test_without_dba_the_dba_sensors_are_deleted(made, real):
    # The uncalibrated microphone's payload has no dB SPL levels; their config topics get an
    # empty retained payload, which deletes an old config (HA drops the entity) and is harmless
    # when there was none. So does the event sensor's without events (or without dB(A)).
    base = "homeassistant/sensor/240ac45e1a70/"
    for key in ("laeq_dba", "la10_dba", "lceq_dbc", "lzeq_dbz"):
        assert key not in real["sound_uncalibrated"] and key in real["sound"]
    with_dba = [t for t, _ in made["default"]]
    for variant, gone in (("no_dba", [*DBA_SENSORS, "noise_event"]),
                          ("no_events", ["noise_event"])):
        assert [t for t, _ in made[variant]] == with_dba  # the same topics, always
        empty = [t for t, p in made[variant] if not p]
        assert empty == [base + name + "/config" for name in gone], variant


def test_bands_and_event_payloads(real):
    """The bands as one nested object keyed by nominal centre, ascending; the event reading
    with its start-dated fields."""
    bands = real["sound_bands"]["bands_dbz"]
    assert list(bands) == ["63", "125", "250", "500", "1000", "2000", "4000"]
    assert all(isinstance(v, (int, float)) for v in bands.values())
    assert "bands_dbz" not in real["sound"]
    assert set(real["event"]) == {"boot", "seq", "ts", "duration_s", "lafmax_dba", "laeq_dba",
                                  "dominant_band"}
    assert real["event"]["dominant_band"] == "1000" and real["event"]["duration_s"] == 1.25


def test_compact_and_small(made):
    for topic, payload in made["default"] + made["custom"]:
        if payload:
            assert ", " not in payload and '": ' not in payload, payload
            # a 12-character node id (the default, the chip id in hex) keeps each one small;
            # the event sensor's attributes topic adds a topic's length
            limit = 650 if topic.endswith("/noise_event/config") else 600
            assert len(payload.encode()) < limit, (topic, len(payload.encode()))


def test_cpython_makes_the_same_messages(made):
    from node.discovery import messages  # lib/ is on pytest's pythonpath (pyproject.toml)
    from node.payload import Topics

    for name, (prefix, topic_prefix, node, dba, events) in VARIANTS.items():
        ours = [
            (t, json.loads(p) if p else None)
            for t, p in messages(prefix, node, Topics(topic_prefix, node), VERSION, MODEL, MAKER,
                                 dba, EXPIRE_S["climate"], EXPIRE_S["sound"],
                                 EXPIRE_S["telemetry"], events)
        ]
        theirs = [(t, json.loads(p) if p else None) for t, p in made[name]]
        assert ours == theirs, name


def test_one_message_at_a_time_keeps_the_heap_low(mpy):
    # Live heap while the messages are published one after the other (a generator), against
    # holding them all (a list). Sizes are the unix port's (64-bit): the ESP32's are smaller.
    out = mpy("""
import gc
from node.discovery import messages
from node.payload import Topics

topics = Topics("nodes", "240ac45e1a70")
def make():
    return messages("homeassistant", "240ac45e1a70", topics, "0.1.0", "ESP32", "DIY", True,
                    30, 30, 180)

def one_at_a_time():
    gc.collect()
    base = gc.mem_alloc()
    peak = 0
    for topic, payload in make():
        gc.collect()
        peak = max(peak, gc.mem_alloc() - base)
    return peak

def all_at_once():
    gc.collect()
    base = gc.mem_alloc()
    held = list(make())
    gc.collect()
    return gc.mem_alloc() - base

print(one_at_a_time(), all_at_once())
""").stdout.split()
    peak, held = map(int, out)
    # The peak holds one payload, its dict and the row's fields split from the module's table.
    assert peak < 3200 and peak < held * 0.6, (peak, held)


def test_the_fullest_sound_reading_fits_the_outbox(mpy):
    """Every level and eight bands, each at its longest (a three-digit negative level): within
    the outbox's MAX_BODY_BYTES."""
    out = mpy("""
from node import payload
from node.outbox import MAX_BODY_BYTES
keys = ("rms_dbfs", "peak_dbfs", "laeq_dba", "lafmax_dba", "lafmin_dba", "la10_dba",
        "la50_dba", "la90_dba", "lceq_dbc", "lcpeak_dbc", "lzeq_dbz")
bands = [(k, -138.47) for k in ("63", "125", "250", "500", "1000", "2000", "4000", "8000")]
pairs = [(k, -138.47) for k in keys] + [("bands_dbfs", bands), ("measured_pct", 100.0)]
print(len(payload.fields(pairs)), MAX_BODY_BYTES)
""").stdout.split()
    size, limit = map(int, out)
    print(f"\nthe longest sound body: {size} bytes of {limit}")
    assert size < limit
