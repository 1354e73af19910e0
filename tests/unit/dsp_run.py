"""MicroPython side of tests/unit/test_dsp.py: feed a raw PCM file to a LevelMeter, print JSON.

Usage: micropython dsp_run.py PCM BITS RATE SENS FRAME_BYTES READ_EVERY [STATES]
SENS is the mic sensitivity in dBFS or "none"; every READ_EVERY frames (0: only at the end) a
read() result is printed as one JSON line; with STATES = 1 the meter's state arrays are printed
before the first frame and before each read, for comparison with tests/unit/dsp_model.py.
"""

import json
import sys

from node.dsp import LevelMeter


def states(m, tag):
    a = None if m._a is None else list(m._a)
    print(json.dumps({"states": tag, "r": list(m._r), "a": a}))


def main():
    path, bits, rate, sens, frame_bytes, every = sys.argv[1:7]
    bits, rate, frame_bytes, every = int(bits), int(rate), int(frame_bytes), int(every)
    show = len(sys.argv) > 7 and sys.argv[7] == "1"
    m = LevelMeter(bits, rate, None if sens == "none" else float(sens))
    buf = bytearray(frame_bytes)
    if show:
        states(m, "init")
    frames = 0
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            m.add(buf, n)
            frames += 1
            if every and frames % every == 0:
                if show:
                    states(m, frames)
                print(json.dumps(m.read()))
    if not every or frames % every:
        if show:
            states(m, frames)
        print(json.dumps(m.read()))


main()
