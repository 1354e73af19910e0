"""What each sound-meter feature costs the heap, on the 32-bit 1.27 port from the x86 bundle (.mpy,
as on the board; viper machine code lives outside the GC heap there as on the ESP32): its code
(the modules, imported only when the feature is on, their qstrs included) and its state, each
case in a fresh interpreter. Printed; the bounds asserted are loose, to catch a feature that
suddenly costs far more."""

import pytest

from tests.conftest import REPO
from tools.hosttools import MP32

MEASURE = """
import gc, sys
from node import dsp  # every node has it


def meter():
    args = {"uncalibrated": (None, False, None), "calibrated": (-26, False, None),
            "bands": (-26, True, None), "events": (-26, True, (70.0, 3.0, 1.0)),
            "bands_only": (None, True, None)}[sys.argv[2]]
    return dsp.LevelMeter(16, int(sys.argv[1]), *args)


def measurement():
    from node import measure

    return measure.Measurement(16, int(sys.argv[1]), 5, print)


gc.collect()
before = gc.mem_alloc()
kept = (measurement if sys.argv[2] == "measurement" else meter)()
gc.collect()
print(gc.mem_alloc() - before)
"""
CASES = (("uncalibrated", "uncalibrated: RMS and peak"),
         ("calibrated", "calibrated: + A, C, LZ, percentiles"),
         ("bands", "calibrated + octave bands"),
         ("events", "calibrated + octave bands + noise events"),
         ("bands_only", "uncalibrated + octave bands (dBFS)"),
         ("measurement", "calibrate's measurement, while it runs"))


@pytest.mark.skipif(not MP32.is_file(), reason="no 32-bit MicroPython (../shared/mp32) here")
def test_heap_cost_of_each_feature(mpy, tmp_path, monkeypatch):
    from tools import bundle

    app = tmp_path / "x86"
    bundle.build(REPO, app, "x86", log=lambda line: None)
    monkeypatch.setenv("MICROPYTHON", str(MP32))
    out = {}
    for rate in (16000, 48000):
        for case, _ in CASES:
            out[rate, case] = int(mpy(MEASURE, rate, case, path=[app / "lib"]).stdout)
    print("\nheap of a LevelMeter, bytes (32-bit port, .mpy, modules and state), 16 / 48 kHz:")
    for case, label in CASES:
        print(f"  {label:44} {out[16000, case]:6d} {out[48000, case]:6d}")
    for rate in (16000, 48000):
        assert out[rate, "uncalibrated"] < 1024
        assert out[rate, "calibrated"] - out[rate, "uncalibrated"] < 12000
        assert out[rate, "bands"] - out[rate, "calibrated"] < 9000
        assert out[rate, "events"] - out[rate, "bands"] < 4000
        assert out[rate, "measurement"] < 3000
