"""MicroPython side of tests/unit/test_events.py's gate test: feed raw PCM to a LevelMeter with
noise events and, beside it, to a calibrated one whose weighting's hook hears every sub-block
(its gate never closes: threshold word 0, active word 1); print the detector's state words
before the first frame, then after each frame with the sub-blocks the second meter heard in it,
and take the finished event as the sound task does.

Usage: micropython events_run.py PCM BITS RATE SENS FRAME_BYTES THRESHOLD HYSTERESIS MIN_S
"""

import array
import json
import sys

import micropython
from node.dsp import LevelMeter

_MAX_SUBS = 64  # sub-blocks recorded per frame: a frame holds at most 2048 / 63 of them


@micropython.viper
def _record(st: ptr32, lvl: int, energy: int, k: int):
    """The recording hook: word 3 counts, then (level biased as the weighting's, energy, k)."""
    i = 4 + 3 * st[3]
    st[i] = lvl + 0x400000
    st[i + 1] = energy
    st[i + 2] = k
    st[3] += 1


def main():
    path, bits, rate, sens, frame_bytes = sys.argv[1:6]
    events = tuple(float(x) for x in sys.argv[6:9])
    bits, rate, sens, frame_bytes = int(bits), int(rate), float(sens), int(frame_bytes)
    m = LevelMeter(bits, rate, sens, False, events)
    det = m.slm._ev
    rec_meter = LevelMeter(bits, rate, sens)
    rec = array.array("i", bytes(4 * (4 + 3 * _MAX_SUBS)))
    rec[1] = 1  # active: the gate never closes
    rec_meter.slm.hook = _record
    rec_meter.slm.hook_state = rec
    w = m.slm._w
    print(json.dumps({"init": list(det.state), "sub_db": w.units_dba(0)}))
    buf = bytearray(frame_bytes)
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            m.add(buf, n)
            rec_meter.add(buf, n)
            subs = [[rec[4 + 3 * i] - 0x400000, rec[5 + 3 * i], rec[6 + 3 * i]]
                    for i in range(rec[3])]
            rec[3] = 0
            print(json.dumps({"e": list(det.state), "subs": subs, "taken": m.slm.event()}))


main()
