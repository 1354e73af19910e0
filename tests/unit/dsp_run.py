"""MicroPython side of tests/unit/test_dsp.py and test_bands.py: feed a raw PCM file to a
LevelMeter, print JSON.

Usage: micropython dsp_run.py PCM BITS RATE SENS FRAME_BYTES READ_EVERY [STATES [BANDS [EVENTS]]]
SENS is the mic sensitivity in dBFS or "none"; every READ_EVERY frames (0: only at the end) a
read() result is printed as one JSON line; with STATES = 1 the meter's state arrays are printed
before the first frame and before each read, for comparison with tests/unit/dsp_model.py and
bands_model.py. BANDS = 1 turns the octave bands on; EVENTS is "none" or
"threshold,hysteresis,min_s": each finished event is printed as {"event": ..., "frame": N}.
"""

import json
import sys

from node.dsp import LevelMeter


def states(m, tag):
    slm = m.slm  # None, a node.weighting.Weighting, or a node.soundmeter.SoundMeter
    if slm is None or not hasattr(slm, "_bands"):
        w, b, e = slm, None, None
    else:
        w, b, e = slm._w, slm._bands, slm._ev
    print(json.dumps({
        "states": tag, "r": list(m._r),
        "a": None if w is None else list(w.state), "h": None if w is None else list(w._hist),
        "b": None if b is None else list(b.state), "e": None if e is None else list(e.state),
    }))


def main():
    path, bits, rate, sens, frame_bytes, every = sys.argv[1:7]
    bits, rate, frame_bytes, every = int(bits), int(rate), int(frame_bytes), int(every)
    show = len(sys.argv) > 7 and sys.argv[7] == "1"
    bands = len(sys.argv) > 8 and sys.argv[8] == "1"
    events = None
    if len(sys.argv) > 9 and sys.argv[9] != "none":
        events = tuple(float(x) for x in sys.argv[9].split(","))
    m = LevelMeter(bits, rate, None if sens == "none" else float(sens), bands, events)
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
            ev = m.slm.event() if m.slm is not None and m.slm.events_on else None
            if ev is not None:
                print(json.dumps({"event": [ev[0], ev[1]], "frame": frames}))
            if every and frames % every == 0:
                if show:
                    states(m, frames)
                print(json.dumps(m.read()))
    if not every or frames % every:
        if show:
            states(m, frames)
        print(json.dumps(m.read()))


main()
