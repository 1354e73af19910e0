"""What each sound-meter feature costs the heap, on the 32-bit 1.27 port from the x86 bundle (.mpy,
as on the board; viper machine code lives outside the GC heap there as on the ESP32): its code
(the modules, imported only when the feature is on, their qstrs included) and its state, each
case in a fresh interpreter. Printed; the bounds asserted are loose, to catch a feature that
suddenly costs far more.

The qstrs a module interns go into pools that grow by doubling: the first qstr that does not
fit takes a pool twice the last one (9 KB on a running node), or, where the heap has no such
block, one just large enough. So the cost counted here is what the qstrs themselves take
(their text, and 7 bytes each for hash, length and pointer), not the pools' rounding."""

import re

import pytest

from tests.conftest import REPO
from tools.hosttools import MP32

MEASURE = """
import gc, sys
from node import dsp  # every node has it

if sys.argv[2] != "measurement":
    from node import measure  # what sets the parts up, loaded first: its cost is not theirs

ARGS = {"uncalibrated": (None, False, None), "calibrated": (-26, False, None),
        "events_only": (-26, False, (70.0, 3.0, 1.0)), "bands": (-26, True, None),
        "events": (-26, True, (70.0, 3.0, 1.0)), "bands_only": (None, True, None)}


def meter():
    m = dsp.LevelMeter(int(sys.argv[3]), int(sys.argv[1]))
    if sys.argv[2] != "uncalibrated":
        measure.equip(m, *ARGS[sys.argv[2]])
    return m


def measurement():  # node.measure's code included: it is loaded for the measurement
    from node import measure

    return measure.Measurement(16, int(sys.argv[1]), 5, print)


import micropython
gc.collect()
micropython.qstr_info()
before = gc.mem_alloc()
kept = (measurement if sys.argv[2] == "measurement" else meter)()
gc.collect()
print("alloc", gc.mem_alloc() - before)
micropython.qstr_info()
if sys.argv[2] in ARGS:
    from node import measure

    print("need", measure._need(*ARGS[sys.argv[2]]))
"""
QSTR_ENTRY_BYTES = 7  # 1.27 with 32-bit words: a 2-byte hash, a 1-byte length, a pointer


def cost(out):
    """Bytes allocated, less the qstr pools' growth, plus what the new qstrs need; and what
    node.measure reckons the parts need (None for the measurement)."""
    pools = [tuple(map(int, m)) for m in re.findall(
        r"n_qstr=(\d+), n_str_data_bytes=(\d+), n_total_bytes=(\d+)", out)]
    (q0, d0, t0), (q1, d1, t1) = pools
    alloc = int(re.search(r"^alloc (\d+)", out, re.M).group(1))
    need = re.search(r"^need (\d+)", out, re.M)
    return (alloc - (t1 - t0) + (d1 - d0) + QSTR_ENTRY_BYTES * (q1 - q0),
            int(need.group(1)) if need else None)


CASES = (("uncalibrated", "uncalibrated: RMS and peak"),
         ("calibrated", "calibrated: + A, C, LZ, percentiles"),
         ("events_only", "calibrated + noise events"),
         ("bands", "calibrated + octave bands"),
         ("events", "calibrated + octave bands + noise events"),
         ("bands_only", "uncalibrated + octave bands (dBFS)"),
         ("measurement", "calibrate's measurement, while it runs"))
FORMATS = ((16000, 16), (48000, 16), (48000, 32))


@pytest.mark.skipif(not MP32.is_file(), reason="no 32-bit MicroPython (../shared/mp32) here")
def test_heap_cost_of_each_feature(mpy, tmp_path, monkeypatch):
    """Each feature's cost, and node.measure's reckoning of it, which decides at boot what fits:
    never short of what the parts take (the node would run out at its next connect), and not so
    far over that it turns off what would have fitted."""
    from tools import bundle

    app = tmp_path / "x86"
    bundle.build(REPO, app, "x86", log=lambda line: None)
    monkeypatch.setenv("MICROPYTHON", str(MP32))
    out = {}
    for rate, bits in FORMATS:
        for case, _ in CASES:
            out[rate, bits, case] = cost(mpy(MEASURE, rate, case, bits, path=[app / "lib"]).stdout)
    print("\nheap of a LevelMeter, bytes (32-bit port, .mpy, modules and state; node.measure's "
          "reckoning in brackets):")
    print(f"  {'':44} " + "  ".join(f"{r // 1000} kHz {b}-bit  " for r, b in FORMATS))
    for case, label in CASES:
        print(f"  {label:44} " + "  ".join(
            f"{out[r, b, case][0]:6d}" + (f" ({out[r, b, case][1]:5d})" if case in ARGS_CASES
                                          else " " * 8) for r, b in FORMATS))
    for (rate, bits, case), (measured, need) in out.items():
        if case == "uncalibrated":
            assert measured < 1024
        elif case == "measurement":
            assert measured < 5000
        else:
            assert measured - out[rate, bits, "uncalibrated"][0] <= need <= 1.25 * measured, \
                (rate, bits, case, measured, need)


ARGS_CASES = [c for c, _ in CASES if c not in ("uncalibrated", "measurement")]
