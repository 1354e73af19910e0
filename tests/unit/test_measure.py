"""node.measure: what of the sound meter the heap can hold is put in force at boot, the rest is
turned off with a log line naming it (bands first, then events, then the calibrated levels), and
a new sensitivity is put in force or undone; the free heap is scripted (a fake gc)."""

import json

import pytest

SCRIPT = """
import json, sys
from node import dsp, measure

class Heap:  # node.measure's gc, with the free heap the test says
    def __init__(self, free):
        self.free = free
    def collect(self):
        pass
    def mem_free(self):
        return self.free

measure.gc = Heap(int(sys.argv[1]))
audio = {"mic_sensitivity_dbfs": None if sys.argv[2] == "none" else float(sys.argv[2]),
         "bands": sys.argv[3] == "1", "event_threshold_dba": None if sys.argv[4] == "none"
         else float(sys.argv[4]), "event_hysteresis_db": 3.0, "event_min_s": 1.0}
m = dsp.LevelMeter(16, 16000)
print("OFF " + json.dumps(measure.follow(m, audio)))
slm = m.slm
def parts():
    slm = m.slm
    if slm is None:
        return []
    if not hasattr(slm, "_bands"):
        return ["calibrated"]
    return [name for name, on in (("calibrated", slm._w is not None),
            ("bands", slm._bands is not None), ("events", slm._events is not None)) if on]
print(json.dumps(parts()))
for sens in sys.argv[5:]:  # then these sensitivities, as set or calibrate put them in force
    audio["mic_sensitivity_dbfs"] = None if sens == "none" else float(sens)
    measure.follow(m, audio)
    print(json.dumps(parts()))
"""


def run(mpy, free, sens, bands, events, *later):
    out = mpy(SCRIPT, free, sens, 1 if bands else 0, events, *later).stdout.splitlines()
    logs = [line.split(": ", 1)[1] for line in out if " sound: " in line]
    off = [json.loads(line[4:]) for line in out if line.startswith("OFF ")]
    return [json.loads(line) for line in out if line.startswith("[")], logs, off


def free_for(*parts):
    """The free heap at which exactly these parts fit, by node.measure's own reckoning."""
    need = {"calibrated": 7100, "parts": 1800, "bands": 7100, "events": 1600}
    return 8192 + sum(need[p] for p in parts)


@pytest.mark.parametrize(("free", "want", "off"), [
    (free_for("calibrated", "parts", "bands", "events"), ["calibrated", "bands", "events"], []),
    (free_for("calibrated", "parts", "bands", "events") - 1, ["calibrated", "events"],
     ["the octave bands"]),
    (free_for("calibrated", "parts", "events") - 1, ["calibrated"],
     ["the octave bands", "noise events"]),
    (free_for("calibrated") - 1, [], ["the octave bands", "noise events",
                                      "the calibrated levels"]),
])
def test_what_does_not_fit_is_turned_off_and_named(mpy, free, want, off):
    states, logs, (words,) = run(mpy, free, -26, True, 70)
    assert states == [want]
    named = [line.split("not enough memory for ")[1].split(" (")[0] for line in logs
             if "not enough memory" in line]
    assert named == off, logs
    for line in logs:
        if "not enough memory" in line:
            assert "bytes free" in line and "needed" in line, line
    # What a command's reply says is not in force (node.commands' not_in_force), the first
    # part's reason with it.
    if not off:
        assert words is None
    else:
        assert words.startswith(", ".join(off) + " (not enough memory: %d bytes free" % free), words


def test_dbfs_only_loads_nothing_and_events_wait_for_a_calibration(mpy):
    states, logs, _ = run(mpy, 10**6, "none", False, "none")
    assert states == [[]] and not logs
    states, logs, _ = run(mpy, 10**6, "none", False, 70, -26, "none")
    assert states == [["events"], ["calibrated", "events"], ["events"]]
    assert any("wait for a calibrated microphone" in line for line in logs), logs


def test_a_sensitivity_is_put_in_force_and_undone(mpy):
    states, logs, _ = run(mpy, 10**6, "none", False, "none", -26, -30, "none")
    assert states == [[], ["calibrated"], ["calibrated"], []]
    assert any("sensitivity -30.0 dBFS: dB SPL levels" in line for line in logs), logs
    # uncalibrated again: nothing is left to add, and the weighting's code leaves the heap
    out = mpy(SCRIPT.replace("print(json.dumps(parts()))\n", "print(json.dumps(parts()))\n"
                             "import sys as s\nprint('loaded', 'node.weighting' in s.modules)\n"),
              10**6, "none", 0, "none", -26, "none").stdout
    assert out.strip().endswith("loaded False"), out
