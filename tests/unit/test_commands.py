"""Commands on <prefix>/<node>/cmd and settings.json, under the unix port and CPython.

The same driver scripts run under both interpreters: MicroPython is the target, CPython the
reference for strict JSON. Where MicroPython's json is more lenient, the difference is pinned.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

# The project's config.json, with the values the expectations below are written against.
RAW = json.loads((REPO / "config.json").read_text())
RAW["dht"].update(model="DHT11", interval_s=5)
RAW["audio"]["publish_interval_s"] = 10
RAW["telemetry_interval_s"] = 60
SETTABLE = ("dht.interval_s", "audio.publish_interval_s", "telemetry_interval_s",
            "audio.mic_sensitivity_dbfs")
SENS = "audio.mic_sensitivity_dbfs"

# Lets node.log (MicroPython's time.ticks_*) import under CPython too.
_SHIM = """
import gc
import time
if not hasattr(time, "ticks_ms"):
    time.ticks_ms = lambda: int(time.perf_counter() * 1000)
    time.ticks_us = lambda: int(time.perf_counter() * 1000000)
    time.ticks_diff = lambda a, b: a - b
if not hasattr(gc, "mem_free"):  # CPython: a heap with room for anything
    gc.mem_free = lambda: 1 << 30
"""

_ACTIONS = """
import json

from node import config as _config
from node import settings as _settings
from node.commands import Commands


def _lookup(cfg, dotted):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


# What Commands asks of the node, as calls: ["apply", key, value] for each setting that changed
# in the config in force (`live`, which the tasks read), ["reboot"], ["identify", seconds],
# ["measure", seconds] (calibrate; finish() gives it its result, `late` is its reply).
class Actions:
    def __init__(self, raw, saved):
        self.calls = []
        self.done = self.late = None
        self.off = None  # what changed() reports off for want of memory (node.measure's words)
        self.live = _config.validate(_settings.overlay(raw, saved))
        self._seen = {}
        for key in _settings.SETTABLE:
            self._seen[key] = _lookup(self.live, key)

    def changed(self):
        for key in _settings.SETTABLE:
            value = _lookup(self.live, key)
            if value != self._seen[key]:
                self._seen[key] = value
                self.calls.append(["apply", key, value])
        return self.off

    def reboot(self):
        self.calls.append(["reboot"])

    def identify(self, seconds):
        self.calls.append(["identify", seconds])

    def measure(self, seconds, done):
        self.calls.append(["measure", seconds])
        self.done = done

    def reply(self, payload):
        self.late = payload

    def finish(self, result):
        self.done(None if result is None else tuple(result))


# Commands read config.json from flash for each command that changes settings: `raw` is written
# to this file in the working directory for them.
CONFIG_UNDER_TEST = "config-under-test.json"


def make(raw, saved, path):
    actions = Actions(raw, saved)
    with open(CONFIG_UNDER_TEST, "w") as f:
        f.write(json.dumps(raw))
    return Commands(CONFIG_UNDER_TEST, saved, path, actions.live, actions.reboot,
                    actions.identify, actions.changed, actions.measure, actions.reply), actions
"""

# Each case on a fresh Commands: settings.json holds `pre` first. Prints one result per case.
_TABLE = _SHIM + _ACTIONS + """
import json, sys
from node import settings

raw = json.load(open(sys.argv[2]))
path = sys.argv[3] + "/settings.json"
for pre, payload, measured in json.load(open(sys.argv[1])):
    settings.clear(path)
    if pre:
        settings.save(path, pre)
    commands, actions = make(raw, settings.load(path), path)
    reply = commands.handle(bytes.fromhex(payload))
    if reply is None:  # calibrate: measuring; its reply comes with the measurement
        assert actions.done is not None and actions.late is None
        actions.finish(measured)
        reply = actions.late
    print("R " + json.dumps([reply.decode(), actions.calls, settings.load(path), actions.live]))
"""


def run_cpython(script, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO / "lib"))
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def P(obj):
    """A payload: bytes as they are, anything else as compact JSON."""
    if isinstance(obj, bytes):
        return obj
    return json.dumps(obj, separators=(",", ":")).encode()


def padded(payload, size):
    return payload[:-1] + b" " * (size - len(payload)) + b"}"


# (name, payload, settings saved before, ok, actions called, error words or reply fields)
SETS = [
    ("set one", {"cmd": "set", "dht.interval_s": 10}, {}, True,
     [["apply", "dht.interval_s", 10]], {"settings": {"dht.interval_s": 10}}),
    ("set all with id", {"id": "r-1", "cmd": "set", "dht.interval_s": 2,
                         "audio.publish_interval_s": 5, "telemetry_interval_s": 30}, {}, True,
     [["apply", "dht.interval_s", 2], ["apply", "audio.publish_interval_s", 5],
      ["apply", "telemetry_interval_s", 30]],
     {"id": "r-1", "settings": {"dht.interval_s": 2, "audio.publish_interval_s": 5,
                                "telemetry_interval_s": 30}}),
    ("set merges saved", {"cmd": "set", "dht.interval_s": 7}, {"telemetry_interval_s": 30}, True,
     [["apply", "dht.interval_s", 7]],
     {"settings": {"dht.interval_s": 7, "telemetry_interval_s": 30}}),
    ("set same value applies nothing", {"cmd": "set", "dht.interval_s": 5}, {}, True, [],
     {"settings": {"dht.interval_s": 5}}),
    ("set back to config value", {"cmd": "set", "dht.interval_s": 5}, {"dht.interval_s": 10},
     True, [["apply", "dht.interval_s", 5]], {"settings": {"dht.interval_s": 5}}),
    ("set DHT11 minimum", {"cmd": "set", "dht.interval_s": 1}, {}, True,
     [["apply", "dht.interval_s", 1]], {}),
    ("set maxima", {"cmd": "set", "dht.interval_s": 3600, "telemetry_interval_s": 86400}, {},
     True, [["apply", "dht.interval_s", 3600], ["apply", "telemetry_interval_s", 86400]], {}),
    ("set 0", {"cmd": "set", "dht.interval_s": 0}, {}, False, [],
     "set: dht.interval_s: expected an integer in 1..3600, got 0"),
    ("set 3601", {"cmd": "set", "dht.interval_s": 3601}, {}, False, [], "in 1..3600, got 3601"),
    ("set -0", b'{"cmd":"set","dht.interval_s":-0}', {}, False, [], "in 1..3600, got 0"),
    ("set -1", {"cmd": "set", "dht.interval_s": -1}, {}, False, [], "in 1..3600, got -1"),
    ("set huge", {"cmd": "set", "dht.interval_s": 10**40}, {}, False, [],
     "got " + str(10**40)),
    ("set true", {"cmd": "set", "dht.interval_s": True}, {}, False, [],
     "set: dht.interval_s: expected an integer, got true"),
    ("set false", {"cmd": "set", "dht.interval_s": False}, {}, False, [], "got false"),
    ("set 10.0", {"cmd": "set", "dht.interval_s": 10.0}, {}, False, [],
     "got a number with a fraction or exponent"),
    ("set 1e1", b'{"cmd":"set","dht.interval_s":1e1}', {}, False, [], "a number with a fraction"),
    ("set 1e999", b'{"cmd":"set","dht.interval_s":1e999}', {}, False, [],
     "a number with a fraction"),
    ("set string", {"cmd": "set", "dht.interval_s": "10"}, {}, False, [],
     "got a string of length 2"),
    ("set null", {"cmd": "set", "dht.interval_s": None}, {}, False, [], "got null"),
    ("set list", {"cmd": "set", "dht.interval_s": [10]}, {}, False, [], "got a list"),
    ("set object", {"cmd": "set", "dht.interval_s": {"s": 10}}, {}, False, [], "got an object"),
    ("set telemetry 4", {"cmd": "set", "telemetry_interval_s": 4}, {}, False, [],
     "set: telemetry_interval_s: expected an integer in 5..86400, got 4"),
    ("set audio 0", {"cmd": "set", "audio.publish_interval_s": 0}, {}, False, [],
     "set: audio.publish_interval_s: expected an integer in 1..3600, got 0"),
    ("set nothing", {"cmd": "set"}, {}, False, [],
     "set: expected at least one of dht.interval_s, audio.publish_interval_s, "
     "telemetry_interval_s, audio.mic_sensitivity_dbfs"),
    ("set sensitivity", {"cmd": "set", SENS: -26.5}, {}, True, [["apply", SENS, -26.5]],
     {"settings": {SENS: -26.5}}),
    ("set sensitivity integer", {"cmd": "set", SENS: -42}, {}, True, [["apply", SENS, -42]], {}),
    ("set sensitivity -81", {"cmd": "set", SENS: -81}, {}, False, [],
     "set: audio.mic_sensitivity_dbfs: expected a number in -80..0 or null, got -81"),
    # 1e999 parses as infinity in both interpreters, which no range check refuses
    ("set sensitivity 1e999", b'{"cmd":"set","audio.mic_sensitivity_dbfs":1e999}', {}, False,
     [], "set: audio.mic_sensitivity_dbfs: expected a finite number, got NaN or infinity"),
    ("set sensitivity -1e999", b'{"cmd":"set","audio.mic_sensitivity_dbfs":-1e999}', {},
     False, [], "expected a finite number"),
    ("set sensitivity true", {"cmd": "set", SENS: True}, {}, False, [],
     "set: audio.mic_sensitivity_dbfs: expected a number, got true"),
    ("set sensitivity string", {"cmd": "set", SENS: "-26"}, {}, False, [], "got a string"),
    ("set unknown key", {"cmd": "set", "colour": 1}, {}, False, [],
     'set: "colour": no such key (known: cmd, id, dht.interval_s'),
    ("set unsettable key", {"cmd": "set", "dht.model": "DHT22"}, {}, False, [],
     '"dht.model": no such key'),
    ("set a section", {"cmd": "set", "dht": {"interval_s": 1}}, {}, False, [],
     '"dht": no such key'),
    ("set all or nothing: range", {"cmd": "set", "dht.interval_s": 10, "telemetry_interval_s": 1},
     {"audio.publish_interval_s": 3}, False, [], "telemetry_interval_s: expected an integer in"),
    ("set all or nothing: type", {"cmd": "set", "dht.interval_s": 10,
                                  "audio.publish_interval_s": "5"}, {}, False, [],
     "audio.publish_interval_s: expected an integer, got a string"),
    ("set all or nothing: key", {"cmd": "set", "dht.interval_s": 10, "x": 1}, {}, False, [],
     '"x": no such key'),
]

OTHERS = [
    ("reset", {"cmd": "reset_settings"}, {"dht.interval_s": 10, "telemetry_interval_s": 30},
     True, [["apply", "dht.interval_s", 5], ["apply", "telemetry_interval_s", 60]],
     {"settings": {}}),
    ("reset undoes calibrate", {"cmd": "reset_settings"}, {SENS: -30.5}, True,
     [["apply", SENS, None]], {"settings": {}}),
    ("reset with none saved", {"cmd": "reset_settings", "id": 3}, {}, True, [],
     {"settings": {}, "id": 3}),
    ("reset extra key", {"cmd": "reset_settings", "all": True}, {"dht.interval_s": 10}, False,
     [], 'reset_settings: "all": no such key (known: cmd, id)'),
    ("reboot", {"cmd": "reboot", "id": 7}, {}, True, [["reboot"]], {"id": 7}),
    ("reboot extra key", {"cmd": "reboot", "delay_s": 5}, {}, False, [],
     'reboot: "delay_s": no such key'),
    ("identify default", {"cmd": "identify"}, {}, True, [["identify", 10]], {"seconds": 10}),
    ("identify 1", {"cmd": "identify", "seconds": 1}, {}, True, [["identify", 1]], {}),
    ("identify 60", {"cmd": "identify", "seconds": 60}, {}, True, [["identify", 60]], {}),
    ("identify 0", {"cmd": "identify", "seconds": 0}, {}, False, [],
     "identify: seconds: expected an integer in 1..60, got 0"),
    ("identify 61", {"cmd": "identify", "seconds": 61}, {}, False, [], "in 1..60, got 61"),
    ("identify true", {"cmd": "identify", "seconds": True}, {}, False, [],
     "identify: seconds: expected an integer, got true"),
    ("identify 5.5", {"cmd": "identify", "seconds": 5.5}, {}, False, [], "a number with"),
    ("identify '5'", {"cmd": "identify", "seconds": "5"}, {}, False, [], "a string"),
    ("identify null", {"cmd": "identify", "seconds": None}, {}, False, [], "got null"),
    ("identify extra key", {"cmd": "identify", "led": 2}, {}, False, [],
     'identify: "led": no such key (known: cmd, id, seconds)'),
    ("config", {"cmd": "config"}, {"dht.interval_s": 10}, True, [],
     {"settings": {"dht.interval_s": 10}}),
    ("config extra key", {"cmd": "config", "secrets": True}, {}, False, [],
     'config: "secrets": no such key'),
]

# calibrate: (name, payload, saved before, the measurement (rms, peak, measured %) or None, ok,
# calls, want). A 94 dB calibrator read at -29.01 dBFS is a sensitivity of -26.0 dBFS.
CALIBRATE = [
    ("calibrate 94", {"cmd": "calibrate", "id": 9}, {}, [-29.01, -26.0, 100], True,
     [["measure", 5], ["apply", SENS, -26.0]],
     {"id": 9, "mic_sensitivity_dbfs": -26.0, "level_db": 94, "previous_db": None,
      "measured_dbfs": -29.01, "settings": {SENS: -26.0}}),
    ("calibrate 114 for 10 s", {"cmd": "calibrate", "level_db": 114, "seconds": 10}, {},
     [-9.01, -6.02, 99], True, [["measure", 10], ["apply", SENS, -26.0]],
     {"mic_sensitivity_dbfs": -26.0, "level_db": 114}),
    ("calibrate over a sensitivity", {"cmd": "calibrate"}, {SENS: -28.0, "dht.interval_s": 7},
     [-29.01, -26.0, 100], True, [["measure", 5], ["apply", SENS, -26.0]],
     {"previous_db": 96.0, "settings": {SENS: -26.0, "dht.interval_s": 7}}),
    ("calibrate 94.0", {"cmd": "calibrate", "level_db": 94.0}, {}, [-29.01, -26.0, 100], True,
     [["measure", 5], ["apply", SENS, -26.0]], {}),
    ("calibrate no audio", {"cmd": "calibrate"}, {}, None, False, [["measure", 5]],
     "calibrate: no audio came from the microphone"),
    ("calibrate lost audio", {"cmd": "calibrate"}, {}, [-29.01, -26.0, 50], False,
     [["measure", 5]], "calibrate: only 50 % of the audio was measured"),
    ("calibrate noise", {"cmd": "calibrate"}, {}, [-40.0, -28.0, 100], False, [["measure", 5]],
     "calibrate: not a steady tone (crest factor 12.0 dB, a calibrator's sine has 3.0)"),
    ("calibrate square", {"cmd": "calibrate"}, {}, [-29.0, -29.0, 100], False, [["measure", 5]],
     "crest factor 0.0 dB"),
    ("calibrate too quiet", {"cmd": "calibrate"}, {}, [-110.0, -107.0, 100], False,
     [["measure", 5]],
     "calibrate: audio.mic_sensitivity_dbfs: expected a number in -80..0 or null, got -106.99"),
    ("calibrate 100 dB", {"cmd": "calibrate", "level_db": 100}, {}, None, False, [],
     "calibrate: level_db: expected 94 or 114 (the calibrator's level in dB SPL), got an "
     "integer"),
    ("calibrate true", {"cmd": "calibrate", "level_db": True}, {}, None, False, [],
     "level_db: expected 94 or 114"),
    ("calibrate 1 s", {"cmd": "calibrate", "seconds": 1}, {}, None, False, [],
     "calibrate: seconds: expected an integer in 2..30, got 1"),
    ("calibrate 31 s", {"cmd": "calibrate", "seconds": 31}, {}, None, False, [], "got 31"),
    ("calibrate '5' s", {"cmd": "calibrate", "seconds": "5"}, {}, None, False, [],
     "calibrate: seconds: expected an integer, got a string"),
    ("calibrate extra key", {"cmd": "calibrate", "db": 94}, {}, None, False, [],
     'calibrate: "db": no such key (known: cmd, id, level_db, seconds)'),
]
MEASURED = {name: measured for name, _, _, measured, *_ in CALIBRATE}

MALFORMED = [
    ("empty", b"", "payload: not valid JSON"),
    ("blank", b"  \n ", "payload: not valid JSON"),
    ("not utf-8", b'{"cmd":"reboot","id":"\xff"}', "payload: not UTF-8 text"),
    ("truncated", b'{"cmd":"reboot"', "payload: not valid JSON"),
    ("trailing data", b'{"cmd":"reboot"} x', "payload: not valid JSON"),
    ("two objects", b'{"cmd":"reboot"}{}', "payload: not valid JSON"),
    # MicroPython's json.loads would stop at the NUL and carry out the reboot.
    ("NUL byte", b'{"cmd":"reboot"}\x00{"x', "payload: not valid JSON (a NUL byte)"),
    ("python dict", b"{'cmd': 'reboot'}", "payload: not valid JSON"),
    ("null", b"null", 'payload: expected a JSON object {"cmd": ...}, got null'),
    ("list", b'["reboot"]', "got a list"),
    ("string", b'"reboot"', "got a string of length 6"),
    ("number", b"1", "got an integer"),
    ("513 bytes", padded(b'{"cmd":"reboot"}', 513), "payload: too large: 513 bytes (at most 512)"),
    ("100 kB", b"[" * 100000, "payload: too large: 100000 bytes"),
    ("deep nesting", b"[" * 9 + b"]" * 9, "payload: more than 8 '[' or '{'"),
    ("no cmd", {}, "cmd: expected one of calibrate, config, identify, reboot, reset_settings, "
                   "set, got nothing"),
    ("cmd number", {"cmd": 5}, "cmd: expected one of calibrate, config, identify, reboot, "
                               "reset_settings, set, got an integer"),
    ("cmd null", {"cmd": None}, "got null"),
    ("cmd list", {"cmd": ["reboot"]}, "got a list"),
    ("cmd case", {"cmd": "REBOOT"}, 'got "REBOOT"'),
    ("cmd empty", {"cmd": ""}, 'got ""'),
    ("cmd nul", {"cmd": "reboot\u0000"}, "got (a long or unprintable name)"),
    ("cmd long", {"cmd": "r" * 33}, "got (a long or unprintable name)"),
    ("id float", {"id": 1.5, "cmd": "reboot"},
     "id: expected a string of at most 64 printable ASCII characters or an integer of at most 15"
     " digits, got a number with a fraction or exponent"),
    ("id true", {"id": True, "cmd": "reboot"}, "id: expected a string"),
    ("id null", {"id": None, "cmd": "reboot"}, "got null"),
    ("id list", {"id": [1], "cmd": "reboot"}, "got a list"),
    ("id 65 chars", {"id": "x" * 65, "cmd": "reboot"}, "got a string of length 65"),
    ("id non-ASCII", {"id": "é", "cmd": "reboot"}, "id: expected"),
    ("id control char", {"id": "a\nb", "cmd": "reboot"}, "id: expected"),
    ("id 16 digits", {"id": 10**15, "cmd": "reboot"}, "got an integer"),
    ("id -16 digits", {"id": -10**15, "cmd": "reboot"}, "got an integer"),
]
GOOD_IDS = ["", "x" * 64, ' !"\\~', 0, 10**15 - 1, -(10**15 - 1)]

CASES = (
    [(n, P(p), pre, ok, calls, want) for n, p, pre, ok, calls, want in SETS + OTHERS]
    + [(n, P(p), pre, ok, calls, want) for n, p, pre, _, ok, calls, want in CALIBRATE]
    + [(n, P(p), {}, False, [], want) for n, p, want in MALFORMED]
    + [("good id %r" % i, P({"id": i, "cmd": "identify"}), {}, True, [["identify", 10]],
        {"id": i}) for i in GOOD_IDS]
    + [("512 bytes", padded(b'{"cmd":"identify"}', 512), {}, True, [["identify", 10]], {}),
       ("id and bad cmd", P({"id": "q", "cmd": "nope"}), {}, False, [], {"id": "q"}),
       ("bad id and bad cmd", P({"id": 1.5, "cmd": "nope"}), {}, False, [], "id: expected")]
)


def _run_table(run, tmp_path, cases, raw=RAW):
    (tmp_path / "cases.json").write_text(json.dumps(
        [[pre, p.hex(), MEASURED.get(name)] for name, p, pre, *_ in cases]))
    (tmp_path / "config.json").write_text(json.dumps(raw))
    out = run(_TABLE, tmp_path / "cases.json", tmp_path / "config.json", tmp_path, cwd=tmp_path)
    results = [json.loads(line[2:]) for line in out.stdout.splitlines() if line.startswith("R ")]
    assert len(results) == len(cases), out.stdout
    return results


@pytest.fixture(scope="module")
def table(mpy, tmp_path_factory):
    """Every case under MicroPython and under CPython: {interpreter: [result per case]}."""
    return {
        "micropython": _run_table(mpy, tmp_path_factory.mktemp("mpy"), CASES),
        "cpython": _run_table(run_cpython, tmp_path_factory.mktemp("cpy"), CASES),
    }


def check(result, case):
    _, payload, pre, ok, calls, want = case
    text, called, saved, live = result
    reply = json.loads(text)
    assert reply["ok"] is ok, reply
    assert called == calls, (reply, called)
    for key, value in saved.items():  # what settings.json holds is what the tasks read
        assert lookup(live, key) == value, (key, live)
    if reply.get("cmd") == "config" and ok:
        assert reply["config"] == live
    if ok:
        assert set(reply) >= {"ok", "cmd"} and "error" not in reply, reply
        assert reply["cmd"] == json.loads(payload)["cmd"]
        if reply["cmd"] in ("set", "calibrate"):
            assert saved == reply["settings"]  # what the reply says is what was persisted
        elif reply["cmd"] != "reset_settings":
            assert saved == pre
    else:
        assert isinstance(reply["error"], str), reply
        assert saved == pre, "a rejected command changed settings.json"
    for key, value in (want.items() if isinstance(want, dict) else ()):
        assert reply[key] == value, (key, reply)
    if isinstance(want, str):
        assert want in reply["error"], reply
        assert "id" not in reply or "id: " not in reply["error"]
    assert len(text.encode()) <= 1024 or reply.get("cmd") == "config"


@pytest.mark.parametrize("interp", ["micropython", "cpython"])
@pytest.mark.parametrize("index", range(len(CASES)), ids=[c[0] for c in CASES])
def test_command(table, interp, index):
    check(table[interp][index], CASES[index])


def lookup(cfg, dotted):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def test_dht22_limit_comes_from_config(mpy, tmp_path):
    """The DHT22's 2 s minimum is config.py's, not a second copy in commands.py."""
    raw = json.loads(json.dumps(RAW))
    raw["dht"]["model"] = "DHT22"
    cases = [("1 s", P({"cmd": "set", "dht.interval_s": 1}), {}, False, [],
              "set: dht.interval_s: expected an integer in 2..3600, got 1"),
             ("2 s", P({"cmd": "set", "dht.interval_s": 2}), {}, True,
              [["apply", "dht.interval_s", 2]], {})]
    for result, case in zip(_run_table(mpy, tmp_path, cases, raw), cases):
        check(result, case)


# MicroPython's json accepts what CPython's refuses; pinned so that a change is noticed.
# (payload, MicroPython's reply, CPython's reply)
LENIENT = [
    (b'{"cmd":"reboot",}', {"ok": True, "cmd": "reboot"}, "payload: not valid JSON"),
    (b'{"cmd" "reboot"}', {"ok": True, "cmd": "reboot"}, "payload: not valid JSON"),
    (b'{"cmd":"identify","seconds":05}', {"ok": True, "cmd": "identify", "seconds": 5},
     "payload: not valid JSON"),
    (b'{"cmd":"identify","seconds":}', {"ok": True, "cmd": "identify", "seconds": 10},
     "payload: not valid JSON"),
    (b'{"cmd":"re\\qboot"}', {"ok": False, "error": 'cmd: expected one of calibrate, config, '
                              'identify, reboot, reset_settings, set, got "reqboot"'},
     "payload: not valid JSON"),
    (b'{1:2,"cmd":"config"}', {"ok": False, "cmd": "config", "error": "config: (a long or "
                               "unprintable name): no such key (known: cmd, id)"},
     "payload: not valid JSON"),
    (b'{"cmd":"identify","seconds":NaN}',
     {"ok": False, "error": "payload: not valid JSON"},
     {"ok": False, "cmd": "identify", "error": "identify: seconds: expected an integer, "
                                               "got a number with a fraction or exponent"}),
    (b'{"cmd":"\xed\xa0\x80"}',  # a UTF-8-encoded surrogate: MicroPython decodes it
     {"ok": False, "error": "cmd: expected one of calibrate, config, identify, reboot, "
                            "reset_settings, set, got (a long or unprintable name)"},
     "payload: not UTF-8 text"),
]


def test_micropython_json_leniency_is_pinned(mpy, tmp_path):
    cases = [("", p, {}, None, None, None) for p, _, _ in LENIENT]
    (tmp_path / "m").mkdir()
    (tmp_path / "c").mkdir()
    got_mpy = _run_table(mpy, tmp_path / "m", cases)
    got_cpy = _run_table(run_cpython, tmp_path / "c", cases)
    for (payload, mpy_reply, cpy_reply), (m, *_), (c, *_) in zip(LENIENT, got_mpy, got_cpy):
        assert json.loads(m) == mpy_reply, payload
        want = {"ok": False, "error": cpy_reply} if isinstance(cpy_reply, str) else cpy_reply
        assert json.loads(c) == want, payload


_SEQUENCE = _SHIM + _ACTIONS + """
import json, os, sys
from node import config, settings
from node.commands import Commands

raw = json.load(open("config.json"))
commands, actions = make(raw, settings.load("settings.json"), "settings.json")
for payload in sys.argv[1:]:
    reply = commands.handle(payload.encode())
    print(json.dumps([json.loads(reply), actions.calls]))
    actions.calls = []
# What the next boot makes of it: load -> accepted -> overlay -> validate.
saved = settings.load("settings.json")
cfg = config.validate(settings.overlay(raw, settings.accepted(raw, saved)))
print(json.dumps([saved, cfg["dht"]["interval_s"], cfg["telemetry_interval_s"],
                  sorted(os.listdir("."))]))
"""


def test_sequence_persists_and_reboot_loads(mpy, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(RAW))
    steps = ['{"cmd":"set","dht.interval_s":10,"id":1}', '{"cmd":"config"}',
             '{"cmd":"set","telemetry_interval_s":30}', '{"cmd":"set","dht.interval_s":10}',
             '{"cmd":"set","dht.interval_s":0}']
    lines = mpy(_SEQUENCE, *steps, cwd=tmp_path).stdout.splitlines()
    # The JSON lines; the others are the node's log ("commands: ... set to ... by command").
    replies = [json.loads(line) for line in lines if line.startswith("[")]
    assert replies[0] == [{"id": 1, "ok": True, "cmd": "set", "settings": {"dht.interval_s": 10}},
                          [["apply", "dht.interval_s", 10]]]
    assert replies[1][0]["settings"] == {"dht.interval_s": 10} and replies[1][1] == []
    assert replies[1][0]["config"]["dht"]["interval_s"] == 10  # the config in force
    assert replies[2][1] == [["apply", "telemetry_interval_s", 30]]
    assert replies[3][1] == []  # already 10: nothing to apply
    assert replies[4][0]["ok"] is False and replies[4][1] == []
    saved, dht_s, telemetry_s, files = replies[5]
    assert saved == {"dht.interval_s": 10, "telemetry_interval_s": 30}
    assert (dht_s, telemetry_s) == (10, 30)
    # The atomic save left no .tmp behind.
    assert files == ["config-under-test.json", "config.json", "settings.json"]

    # The next boot starts from the saved settings; reset_settings goes back to config.json.
    lines = mpy(_SEQUENCE, '{"cmd":"config"}', '{"cmd":"reset_settings"}', '{"cmd":"config"}',
                cwd=tmp_path).stdout.splitlines()
    # The JSON lines; the others are the node's log ("commands: ... set to ... by command").
    replies = [json.loads(line) for line in lines if line.startswith("[")]
    assert replies[0][0]["settings"] == {"dht.interval_s": 10, "telemetry_interval_s": 30}
    assert replies[1] == [{"ok": True, "cmd": "reset_settings", "settings": {}},
                          [["apply", "dht.interval_s", 5], ["apply", "telemetry_interval_s", 60]]]
    assert replies[2][0]["settings"] == {}
    assert replies[3][:3] == [{}, 5, 60] and replies[3][3] == [
        "config-under-test.json", "config.json"]  # settings.json gone


def test_save_failure_is_a_reply_not_a_crash(mpy, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(RAW))
    out = mpy(_SHIM + _ACTIONS + """
import json
commands, actions = make(json.load(open("config.json")), {}, "no/such/dir/settings.json")
print(commands.handle(b'{"cmd":"set","dht.interval_s":10}').decode())
print(actions.calls)
""", cwd=tmp_path).stdout.splitlines()
    reply = json.loads(out[0])
    assert reply["ok"] is False and reply["error"].startswith(
        "set: cannot save no/such/dir/settings.json ("), reply
    assert out[1] == "[]"



@pytest.mark.parametrize("damage,words", [
    ("delete", "config-under-test.json: cannot read the file (missing?)"),
    ("garble", "config-under-test.json: not valid JSON"),
])
def test_config_json_gone_since_boot_is_a_reply_not_a_crash(mpy, tmp_path, damage, words):
    """config.json is read again for each set/reset_settings (its parsed form is not kept in
    RAM): if it went or was garbled since the boot, those commands answer with an error naming
    it, change nothing, and the others still work."""
    out = mpy(_SHIM + _ACTIONS + """
import os, sys
commands, actions = make(json.load(open(sys.argv[2])), {}, "settings.json")
print(commands.handle(b'{"cmd":"set","telemetry_interval_s":30}').decode())
if sys.argv[1] == "delete":
    os.remove(CONFIG_UNDER_TEST)
else:
    with open(CONFIG_UNDER_TEST, "w") as f:
        f.write('{"dht": ')
for cmd in (b'{"cmd":"set","dht.interval_s":10}', b'{"cmd":"reset_settings"}',
            b'{"cmd":"config"}'):
    print(commands.handle(cmd).decode())
print(actions.calls, sorted(os.listdir(".")))
""".replace("CONFIG_UNDER_TEST", repr("config-under-test.json")), damage,
               str(REPO / "config.json"), cwd=tmp_path).stdout.splitlines()
    out = [line for line in out if line[:1] in "{["]  # not the log's lines
    before, set_reply, reset_reply, config_reply = (json.loads(line) for line in out[:4])
    assert before["ok"] is True
    assert set_reply == {"ok": False, "cmd": "set", "error": words}, set_reply
    assert reset_reply == {"ok": False, "cmd": "reset_settings", "error": words}, reset_reply
    # The setting made before stays in force and on flash.
    assert config_reply["ok"] is True
    assert config_reply["settings"] == {"telemetry_interval_s": 30}
    assert out[4].startswith("[['apply', 'telemetry_interval_s', 30]] "), out[4]
    assert "'settings.json'" in out[4]

# --- settings.json --------------------------------------------------------------------------

_LOAD = """
import sys
from node import settings
print("LOADED", sorted(settings.load(sys.argv[1]).items()))
"""


def load_settings(mpy, tmp_path, content, name="settings.json"):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    out = mpy(_LOAD, "settings.json", cwd=tmp_path).stdout.splitlines()
    logs = [line for line in out if not line.startswith("LOADED")]
    loaded = [line for line in out if line.startswith("LOADED")]
    return loaded[0][len("LOADED "):], logs


@pytest.mark.parametrize("content,loaded,words", [
    (b"{", "[]", "settings.json: not valid JSON; ignoring it"),
    (b"", "[]", "settings.json: not valid JSON"),
    (b"\xff\xfe{}", "[]", "settings.json: not valid JSON"),
    (b"[1, 2]", "[]", "settings.json: expected an object {...}; ignoring it"),
    (b'{"dht.interval_s": 10' + b" " * 600 + b"}", "[]",
     "settings.json: larger than 512 bytes; ignoring it"),
    (b"null", "[]", "settings.json: expected an object"),
    (b'"dht.interval_s"', "[]", "settings.json: expected an object"),
    (b'{"colour": 1}', "[]", 'settings.json: ignoring "colour" (no such setting); settable: '
                             "dht.interval_s, audio.publish_interval_s, telemetry_interval_s, "
                             "audio.mic_sensitivity_dbfs"),
    (b'{"audio.mic_sensitivity_dbfs": "-26"}', "[]",
     "ignoring audio.mic_sensitivity_dbfs (not a number)"),
    (b'{"audio.mic_sensitivity_dbfs": false, "dht.interval_s": 9}', "[('dht.interval_s', 9)]",
     "ignoring audio.mic_sensitivity_dbfs (not a number)"),
    (b'{"dht.interval_s": "10"}', "[]", "ignoring dht.interval_s (not an integer)"),
    (b'{"dht.interval_s": true}', "[]", "ignoring dht.interval_s (not an integer)"),
    (b'{"dht.interval_s": 1.5}', "[]", "ignoring dht.interval_s (not an integer)"),
    (b'{"dht.interval_s": 10, "x": 1, "telemetry_interval_s": "30", '
     b'"audio.publish_interval_s": 3}',
     "[('audio.publish_interval_s', 3), ('dht.interval_s', 10)]",
     "telemetry_interval_s (not an integer)"),
], ids=["truncated", "empty", "not utf-8", "list", "too large", "null", "string", "unknown key",
        "sensitivity string", "sensitivity bool", "string value", "bool value", "float value",
        "partly valid"])
def test_damaged_settings_are_logged_and_skipped(mpy, tmp_path, content, loaded, words):
    got, logs = load_settings(mpy, tmp_path, content)
    assert got == loaded
    assert len(logs) == 1 and words in logs[0], logs
    assert " settings: " in logs[0]


def test_a_calibration_loads_as_a_number(mpy, tmp_path):
    got, logs = load_settings(mpy, tmp_path, b'{"audio.mic_sensitivity_dbfs": -26.13, '
                                             b'"dht.interval_s": 9}')
    assert got == "[('audio.mic_sensitivity_dbfs', -26.13), ('dht.interval_s', 9)]"
    assert logs == []


def test_missing_settings_are_empty_and_silent(mpy, tmp_path):
    assert load_settings(mpy, tmp_path, None) == ("[]", [])


def test_unreadable_settings_are_logged(mpy, tmp_path):
    (tmp_path / "settings.json").mkdir()  # open() fails, and not with ENOENT
    got, logs = load_settings(mpy, tmp_path, None)
    assert got == "[]" and len(logs) == 1 and "settings.json: cannot read it (" in logs[0], logs


def test_save_cut_short_on_fat(mpy, tmp_path):
    """FAT's rename removes the old file first: a reset there leaves only the complete .tmp."""
    got, logs = load_settings(mpy, tmp_path, b'{"dht.interval_s": 9}', "settings.json.tmp")
    assert got == "[('dht.interval_s', 9)]"
    assert logs and "settings.json: missing; using settings.json.tmp" in logs[0]
    # A .tmp cut short mid-write (first save ever) is damage like any other.
    got, logs = load_settings(mpy, tmp_path, b'{"dht.interval_s": 9', "settings.json.tmp")
    assert got == "[]" and "settings.json.tmp: not valid JSON" in logs[-1]


def test_save_overlay_clear(mpy, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(RAW))
    out = mpy("""
import json
from node import config, settings
raw = json.load(open("config.json"))
before = json.dumps(raw)
settings.save("s.json", {"dht.interval_s": 1})
settings.save("s.json", {"dht.interval_s": 10, "audio.publish_interval_s": 5})
loaded = settings.load("s.json")
cooked = settings.overlay(raw, loaded)
cfg = config.validate(cooked)
print(json.dumps([loaded, cfg["dht"]["interval_s"], cfg["audio"]["publish_interval_s"],
                  json.dumps(raw) == before, cooked["mqtt"] is raw["mqtt"],
                  cooked["dht"] is raw["dht"]]))
import os
print(sorted(os.listdir(".")))
open("s.json.tmp", "w").write("{")
settings.clear("s.json")
settings.clear("s.json")
print(sorted(os.listdir(".")))
# A section that is not an object stays as it is, for validate() to name.
print(json.dumps(settings.overlay({"dht": 5}, {"dht.interval_s": 1})))
""", cwd=tmp_path)
    lines = out.stdout.splitlines()
    assert json.loads(lines[0]) == [{"dht.interval_s": 10, "audio.publish_interval_s": 5}, 10, 5,
                                    True, True, False]
    assert lines[1] == "['config.json', 's.json']"
    assert lines[2] == "['config.json']"
    assert json.loads(lines[3]) == {"dht": 5}


def test_stale_settings_do_not_stop_the_node(mpy, tmp_path):
    """config.json changed to a DHT22 under a saved dht.interval_s of 1: the setting goes."""
    raw = json.loads(json.dumps(RAW))
    raw["dht"]["model"] = "DHT22"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    out = mpy(_SHIM + _ACTIONS + """
import json
from node import settings
raw = json.load(open("config.json"))
kept = settings.accepted(raw, {"dht.interval_s": 1, "telemetry_interval_s": 30})
print(json.dumps(kept))
commands, _ = make(raw, kept, "settings.json")
print(commands.handle(b'{"cmd":"config"}').decode())
""", cwd=tmp_path).stdout.splitlines()
    assert "settings: ignoring settings.json: dht.interval_s: expected an integer in 2..3600, " \
           "got 1" in out[0]
    assert json.loads(out[1]) == {"telemetry_interval_s": 30}
    assert json.loads(out[2])["settings"] == {"telemetry_interval_s": 30}


# --- fuzz -----------------------------------------------------------------------------------

_FUZZ = _SHIM + r'''
import gc, json, sys, time
from node import config, settings
from node.commands import Commands

COUNT = int(sys.argv[1])
raw = json.load(open(sys.argv[2]))
path = sys.argv[3] + "/settings.json"
MPY = sys.implementation.name == "micropython"


class Actions:
    """Counts only: a growing list of calls would hide a leak from the heap check."""

    def __init__(self, live):
        self.live = live
        self.apply = self.reboot = self.identify = self.measured = 0
        self.late = None

    def changed(self):
        for key in settings.SETTABLE:
            value = self.live
            for part in key.split("."):
                value = value[part]
            if key in settings.NUMBERS:
                ok = value is None or type(value) in (int, float) and -80 <= value <= 0
            else:
                ok = type(value) is int
            if not ok:
                raise AssertionError("%s = %r" % (key, value))
        self.apply += 1

    def measure_(self, seconds, done):
        # calibrate: the measurement comes at once, one of a calibrator or of noise; counted
        # apart (a measurement that is not a calibrator's is an error reply after it); chosen
        # by the payload, not by rnd(), whose stream must not depend on the interpreter
        if type(seconds) is not int or not 2 <= seconds <= 30:
            raise AssertionError("measure(%r)" % seconds)
        self.measured += 1
        done(((-29.0, -26.0, 100), (-40.0, -28.0, 100), None)[len(self.payload) % 3])

    def reply_(self, payload):
        self.late = payload

    def reboot_(self):
        self.reboot += 1

    def identify_(self, seconds):
        if type(seconds) is not int or not 1 <= seconds <= 60:
            raise AssertionError("identify(%r)" % seconds)
        self.identify += 1

    def total(self):
        return self.apply + self.reboot + self.identify


state = 2463534242


def rnd(n):  # xorshift32: the same sequence under both interpreters
    global state
    s = state
    s ^= (s << 13) & 0xFFFFFFFF
    s ^= s >> 17
    s ^= (s << 5) & 0xFFFFFFFF
    state = s
    return s % n


def pick(seq):
    return seq[rnd(len(seq))]


TOKENS = [b"{", b"}", b"[", b"]", b",", b":", b'"cmd"', b'"set"', b'"id"', b'"reboot"',
          b'"identify"', b'"seconds"', b'"config"', b'"reset_settings"', b'"dht.interval_s"',
          b'"telemetry_interval_s"', b'"audio.publish_interval_s"', b"0", b"-0", b"1", b"10",
          b"-1", b"1e999", b"-1e999", b"NaN", b"Infinity", b"1.5", b"true", b"false", b"null",
          b'"\\ud800"', b'"\\udfff\\ud800"', b'"\\u0000"', b'"\\ud83d\\ude00"', b"9" * 30, b" ",
          b"\n", b'"', b"\\", b"\xed\xa0\x80", b"\xff", b"\xc3", b"\xf0\x9f\x98\x80", b"\x00",
          b"e", b".", b"-", b"+"]
VALUES = [b"0", b"1", b"2", b"5", b"10", b"60", b"61", b"3600", b"3601", b"86400", b"86401",
          b"-1", b"-0", b"-0.0", b"1e999", b"-1e999", b"NaN", b"-Infinity", b"1.5", b"10.0",
          b"1e1", b"true", b"false", b"null", b'"10"', b"[]", b"{}", b"[10]", b'{"a":1}',
          b"9" * 40, b"-" + b"9" * 40, b"999999999999999", b"1000000000000000",
          b"-999999999999999", b'""', b'"x"', b'"' + b"x" * 64 + b'"', b'"' + b"y" * 65 + b'"',
          b'"\\ud800"', b'"\\u0000"', b'"\\ud83d\\ude00"', b'"\xed\xa0\x80"', b'"\xc3\xa9"',
          b"05", b"1.", b"", b"[[[[[]]]]]", b"[[[[[[[[[]]]]]]]]]", b'"a\nb"', b'"\\q"']
KEYS = [b'"cmd"', b'"id"', b'"seconds"', b'"dht.interval_s"', b'"audio.publish_interval_s"',
        b'"telemetry_interval_s"', b'"dht"', b'"dht.model"', b'"CMD"', b'"cmd "', b'"\\u0000"',
        b'""', b"1", b"null", b"true", b'"cmd\\u0000"', b'"\xed\xa0\x80"', b'"' + b"k" * 40 + b'"']
CMDS = [b'"set"', b'"set"', b'"reset_settings"', b'"reboot"', b'"identify"', b'"config"',
        b'"calibrate"', b'"nope"', b'"Set"', b"5", b"null"]
GOOD = [b"1", b"2", b"5", b"7", b"10", b"30", b"60", b"3600"]
IDS = [b"1", b"0", b"-7", b'"abc"', b'""', b'"' + b"i" * 64 + b'"', b"999999999999999"]
SPECIAL = [b"", b" ", b"[" * 1000, b"[" * 511, b"[" * 8 + b"]" * 8, b"[" * 256 + b"]" * 256,
           b'{"a":' * 100, b"{" * 512, b'{"cmd":"config","x":' + b"[" * 7 + b"]" * 7 + b"}",
           b'{"cmd":"set","dht.interval_s":' + b"9" * 480 + b"}",
           b'{"cmd":"set","dht.interval_s":-' + b"9" * 479 + b"}",
           b'{"cmd":"identify"}' + b" " * 494, b'{"cmd":"identify"' + b" " * 494 + b"}",
           b'{"cmd":"identify"' + b" " * 495 + b"}", b'{"cmd":"reboot"}' + b"\x00",
           b'{"cmd":"reboot"}\n', b"\xef\xbb\xbf" + b'{"cmd":"reboot"}',
           b'{"cmd":"set","dht.interval_s":1e-999}', b'{"cmd":"set","dht.interval_s":-0}',
           b'{"id":"' + b"\\u0000" * 64 + b'","cmd":"config"}']


def command():
    cmd = pick(CMDS)
    pairs = [[b'"cmd"', cmd]]
    if cmd == b'"set"':
        for key in KEYS[3:6]:
            if rnd(2):
                pairs.append([key, pick(GOOD)])
    elif cmd == b'"identify"' and rnd(2):
        pairs.append([b'"seconds"', pick(GOOD)])
    elif cmd == b'"calibrate"':
        if rnd(2):
            pairs.append([b'"level_db"', pick([b"94", b"114", b"94.0", b"100"])])
        if rnd(2):
            pairs.append([b'"seconds"', pick(GOOD)])
    if rnd(2):
        pairs.append([b'"id"', pick(IDS)])
    for _ in range(rnd(4)):
        m = rnd(6)
        i = rnd(len(pairs))
        if m == 0:
            pairs[i][1] = pick(VALUES)
        elif m == 1:
            pairs[i][0] = pick(KEYS)
        elif m == 2:
            pairs.append([pick(KEYS), pick(VALUES)])
        elif m == 3 and len(pairs) > 1:
            pairs.pop(i)
        elif m == 4:
            pairs.append(list(pairs[i]))
        else:
            pairs.insert(0, pairs.pop())
    text = b"{" + b",".join([k + b":" + v for k, v in pairs]) + b"}"
    s = rnd(12)
    n = len(text)
    if s == 0:
        text = text[:rnd(n)]
    elif s == 1:
        i = rnd(n)
        text = text[:i] + pick(TOKENS) + text[i:]
    elif s == 2:
        i = rnd(n)
        text = text[:i] + text[i + 1:]
    elif s == 3:
        text = text[:-1] + b",}"
    elif s == 4 and n < 512:
        text = text[:-1] + b" " * (512 - n + rnd(2)) + b"}"
    return text


def payload(i):
    kind = rnd(10)
    if kind == 0:
        return bytes([rnd(256) for _ in range(rnd(600))])
    if kind <= 2:
        return b"".join([pick(TOKENS) for _ in range(rnd(40))])
    if kind == 3:
        return SPECIAL[i % len(SPECIAL)]
    return command()


settings.clear(path)
actions = Actions(config.validate(raw))
commands = Commands(sys.argv[2], {}, path, actions.live, actions.reboot_, actions.identify_,
                    actions.changed, actions.measure_, actions.reply_)
strict_json = None
if not MPY:
    def _no_constants(name):  # CPython takes NaN and Infinity; JSON does not
        raise ValueError(name)

    def strict_json(data):
        try:
            json.loads(data.decode(), parse_constant=_no_constants)
            return "S"
        except (ValueError, RecursionError):
            return "L"

WARMUP = 300
n_ok = n_err = violations = spent_us = max_alloc = max_alloc_validating = 0
base_free = 0
if MPY:
    gc.collect()
    gc.disable()  # so that mem_alloc() differences are what handle() allocated
for i in range(COUNT):
    if i == WARMUP and MPY:
        gc.collect()
        base_free = gc.mem_free()
    data = payload(i)
    calls = actions.total()
    before = gc.mem_alloc() if MPY else 0
    t = time.ticks_us()
    actions.payload = data
    out = commands.handle(data)
    if out is None:  # calibrate: its reply came through reply_()
        out = actions.late
    spent_us += time.ticks_diff(time.ticks_us(), t)
    reply = json.loads(out)
    if MPY:
        # set, reset_settings and calibrate load node.config (compiled from source here) and
        # unload it.
        if reply.get("cmd") in ("set", "reset_settings", "calibrate"):
            max_alloc_validating = max(max_alloc_validating, gc.mem_alloc() - before)
        else:
            max_alloc = max(max_alloc, gc.mem_alloc() - before)
        if i % 64 == 63:
            gc.collect()
    called = actions.total() - calls
    bad = not isinstance(reply, dict) or reply.get("ok") not in (True, False)
    if not bad and reply["ok"]:
        n_ok += 1
        cmd = reply.get("cmd")
        if cmd in ("reboot", "identify"):
            bad = called != 1
        elif cmd == "config":  # reads the config in force: no action
            bad = called != 0
    elif not bad:
        n_err += 1
        bad = called != 0 or not isinstance(reply.get("error"), str)
    if bad or len(out) > 1024 and reply.get("cmd") != "config":
        violations += 1
        print("VIOLATION", data.hex(), out)
    print(strict_json(data) if strict_json else "-", data.hex(), out.decode())
grown = 0
if MPY:
    gc.enable()
    gc.collect()
    grown = base_free - gc.mem_free()
print("SUMMARY", json.dumps({"payloads": COUNT, "ok": n_ok, "err": n_err,
                             "violations": violations, "us_per_payload": spent_us // COUNT,
                             "heap_grown": grown, "max_alloc": max_alloc,
                             "max_alloc_validating": max_alloc_validating,
                             "applied": actions.apply, "reboots": actions.reboot}))
'''

FUZZ_COUNT = 6000


def _fuzz(run, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(RAW))
    out = run(_FUZZ, FUZZ_COUNT, tmp_path / "config.json", tmp_path, cwd=tmp_path).stdout
    lines = out.splitlines()
    summary = json.loads(lines[-1][len("SUMMARY "):])
    assert [line for line in lines if line.startswith("VIOLATION")] == []
    # One row per payload; the node's log lines ("commands: ... set to ...") are not rows.
    rows = [line.split(" ", 2) for line in lines[:-1] if line[:2] in ("S ", "L ", "- ")]
    return summary, [(flag, bytes.fromhex(data), json.loads(reply)) for flag, data, reply in rows]


def _where(reply):
    return reply["error"].split(":", 1)[0] if "error" in reply else None


def test_fuzz(mpy, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "c").mkdir()
    summary, replies = _fuzz(mpy, tmp_path / "m")
    cpy_summary, cpy_replies = _fuzz(run_cpython, tmp_path / "c")
    print("\nfuzz, MicroPython:", json.dumps(summary))
    print("fuzz, CPython:    ", json.dumps(cpy_summary))
    assert summary["payloads"] == len(replies) == FUZZ_COUNT >= 5000
    assert summary["violations"] == 0
    assert summary["ok"] > 500 and summary["err"] > 2000, summary  # both paths well exercised
    assert summary["heap_grown"] < 1024, summary
    assert summary["max_alloc"] < 16384, summary
    # node.config is loaded for these and unloaded after: compiled from its source here, an
    # .mpy of about 5.5 KB on the board.
    assert summary["max_alloc_validating"] < 49152, summary

    # Differential: where CPython's json reads the payload as strict JSON, the verdicts agree.
    strict = lenient = lenient_ok = 0
    for (flag, data, c), (_, _, m) in zip(cpy_replies, replies):
        if flag == "S":
            strict += 1
            assert (m["ok"], m.get("cmd"), m.get("id"), _where(m), m.get("seconds")) == \
                (c["ok"], c.get("cmd"), c.get("id"), _where(c), c.get("seconds")), (data, m, c)
        elif not m.get("error", "").startswith("payload: not "):
            lenient += 1
            lenient_ok += m["ok"]
    print("differential: %d strict-JSON payloads agree; MicroPython parsed %d payloads CPython "
          "refuses (%d of them carried out)" % (strict, lenient, lenient_ok))
    assert strict > 1000


def test_calibrate_replies_when_done_and_one_at_a_time(mpy, tmp_path):
    """calibrate's reply waits for the measurement; a second one meanwhile is refused at once;
    the settings are saved only when the measurement is in."""
    (tmp_path / "config.json").write_text(json.dumps(RAW))
    out = mpy(_SHIM + _ACTIONS + """
import json
from node import settings
raw = json.load(open("config.json"))
commands, actions = make(raw, {}, "settings.json")
print(commands.handle(b'{"cmd":"calibrate","id":1}'))
print(commands.handle(b'{"cmd":"calibrate","id":2}').decode())
print(json.dumps(settings.load("settings.json")), actions.late)
actions.finish([-30.0, -27.0, 100])
print(actions.late.decode())
print(json.dumps(settings.load("settings.json")))
print(commands.handle(b'{"cmd":"calibrate","id":3}'))
""", cwd=tmp_path).stdout.splitlines()
    out = [line for line in out if " commands: " not in line]  # the log
    assert out[0] == "None"
    assert json.loads(out[1]) == {"ok": False, "id": 2, "cmd": "calibrate",
                                  "error": "calibrate: already measuring; its reply comes first"}
    assert out[2] == "{} None"
    first = json.loads(out[3])
    assert first["ok"] and first["id"] == 1 and first["mic_sensitivity_dbfs"] == -26.99
    assert json.loads(out[4]) == {SENS: -26.99}
    assert out[5] == "None"


def test_a_setting_saved_but_not_in_force_for_want_of_memory_says_so(mpy, tmp_path):
    """A calibration (or a set sensitivity, or settings reset to a calibrated config.json) that
    the heap has no room to put in force now is saved, and the reply says what the node
    measures without meanwhile; one the node has room for says nothing of it."""
    (tmp_path / "config.json").write_text(json.dumps(RAW))
    out = mpy(_SHIM + _ACTIONS + """
import json
raw = json.load(open("config.json"))
commands, actions = make(raw, {}, "settings.json")
actions.off = "the calibrated levels (not enough memory: 9000 bytes free, 7100 needed)"
commands.handle(b'{"cmd":"calibrate","id":1}')
actions.finish([-30.0, -27.0, 100])
print(actions.late.decode())
print(commands.handle(b'{"cmd":"set","audio.mic_sensitivity_dbfs":-30}').decode())
actions.off = None
print(commands.handle(b'{"cmd":"set","audio.mic_sensitivity_dbfs":-31}').decode())
""", cwd=tmp_path).stdout.splitlines()
    out = [json.loads(line) for line in out if " commands: " not in line]  # not the log
    off = "the calibrated levels (not enough memory: 9000 bytes free, 7100 needed)"
    assert out[0]["ok"] and out[0]["mic_sensitivity_dbfs"] == -26.99, out[0]
    assert out[0]["not_in_force"] == off
    assert out[1]["ok"] and out[1]["not_in_force"] == off, out[1]
    assert out[2]["ok"] and "not_in_force" not in out[2], out[2]


def test_no_room_to_check_a_setting_is_the_reply_and_changes_nothing(mpy, tmp_path):
    """Checking settings loads node.config (10.5 KB at its peak on the 32-bit port): with less
    free than that, or when its import fails all the same, the reply says there is no room, the
    settings stay as they were, and no part of node.config stays in the heap."""
    (tmp_path / "config.json").write_text(json.dumps(RAW))
    out = mpy(_SHIM + _ACTIONS + """
import builtins, gc, json, sys
from node import commands as commands_module
from node import settings
raw = json.load(open("config.json"))
commands, actions = make(raw, {}, "settings.json")
sys.modules.pop("node.config", None)


class Heap:
    def collect(self):
        pass

    def mem_free(self):
        return 4000


commands_module.gc = Heap()
print(commands.handle(b'{"cmd":"set","id":1,"dht.interval_s":10}').decode())
commands_module.gc = gc
real_import = builtins.__import__


def no_room(name, *args):
    if args and args[2] and "config" in args[2]:
        raise MemoryError("memory allocation failed, allocating 232 bytes")
    return real_import(name, *args)


builtins.__import__ = no_room
print(commands.handle(b'{"cmd":"reset_settings","id":2}').decode())
builtins.__import__ = real_import
print(json.dumps([settings.load("settings.json"), "node.config" in sys.modules, actions.calls]))
print(commands.handle(b'{"cmd":"set","id":3,"dht.interval_s":10}').decode())
""", cwd=tmp_path).stdout.splitlines()
    out = [json.loads(line) for line in out if " commands: " not in line]  # not the log
    assert out[0] == {"ok": False, "id": 1, "cmd": "set", "error": (
        "set: no room in RAM now (4000 bytes free, 12288 needed to check it against "
        "config.json): nothing changed, try again later")}, out[0]
    assert out[1] == {"ok": False, "id": 2, "cmd": "reset_settings", "error": (
        "config.json: no room in RAM now (memory allocation failed, allocating 232 bytes): "
        "nothing changed, try again later")}, out[1]
    assert out[2] == [{}, False, []]
    assert out[3]["ok"] and out[3]["settings"] == {"dht.interval_s": 10}, out[3]
