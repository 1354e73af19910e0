"""MicroPython side of tools/bench.py: time the level kernels on one frame, print JSON.

Usage: micropython bench_mpy.py FRAME.raw [ROUNDS] (lib/ on MICROPYPATH). Each figure is the
best of ROUNDS rounds over all variants, in ns per sample, with the sum of squares and peak
where the variant computes them (to show that all compute the same).
micropython bench_mpy.py FRAME.raw state RATE N: the whole chain's states (weighting, its
histogram, the octave bank) before and after N frames, as JSON, for the C reference's check.
"""

import json
import struct
import sys
import time

import micropython
from node import bands, dsp, weighting


def naive(buf, n):
    """The plain way: unpack each sample with struct, square and compare in Python ints."""
    acc = 0
    peak = 0
    for i in range(n):
        s = struct.unpack("<h", buf[2 * i : 2 * i + 2])[0]
        acc += s * s
        if abs(s) > peak:
            peak = abs(s)
    return acc, peak


@micropython.native
def native(buf, n):
    """The same loop compiled by the native emitter."""
    acc = 0
    peak = 0
    for i in range(n):
        s = struct.unpack("<h", buf[2 * i : 2 * i + 2])[0]
        acc += s * s
        if abs(s) > peak:
            peak = abs(s)
    return acc, peak


def unpack_from(buf, n):
    """The plain loop without the slice: struct.unpack_from at an offset."""
    acc = 0
    peak = 0
    for i in range(n):
        s = struct.unpack_from("<h", buf, 2 * i)[0]
        acc += s * s
        if abs(s) > peak:
            peak = abs(s)
    return acc, peak


def best_ns(fn, args, n, repeats, best=None):
    """Timing of `repeats` calls fn(*args) in ns per sample of the frame, or `best` if lower."""
    t = time.ticks_us()
    for _ in range(repeats):
        fn(*args)
    ns = time.ticks_diff(time.ticks_us(), t) * 1000 / repeats / n
    return ns if best is None or ns < best else best


def chain(rate):
    """The whole chain: RMS, A and C with percentiles, octave bands (events off)."""
    return dsp.LevelMeter(16, rate, -26, True)


def states(buf, rate, frames):
    m = chain(rate)
    w, b = m.slm._w, m.slm._bands
    before = [list(w.state), list(w._hist), list(b.state)]
    for _ in range(frames):
        m.add(buf, len(buf))
    print(json.dumps({"before": before, "after": [list(w.state), list(w._hist), list(b.state)],
                      "r": list(m._r)}))


def main():
    with open(sys.argv[1], "rb") as f:
        buf = bytearray(f.read())
    if len(sys.argv) > 2 and sys.argv[2] == "state":
        states(buf, int(sys.argv[3]), int(sys.argv[4]))
        return
    nbytes = len(buf)
    n = nbytes // 2
    out = {"samples": n}
    for name, fn in (("naive", naive), ("native", native), ("unpack_from", unpack_from)):
        acc, peak = fn(buf, n)
        out[name] = {"sum": acc, "peak": peak}
    # the viper RMS kernel as LevelMeter.add() calls it, once on a fresh state for the check
    st = dsp.LevelMeter(16)._r
    dsp._frame16(nbytes, 0, buf, st)
    out["viper_rms"] = {"sum": st[1] * (1 << 30) + st[0], "peak": round(st[2] ** 0.5)}
    cases = [("naive", naive, (buf, n), 10), ("native", native, (buf, n), 10)]
    cases.append(("unpack_from", unpack_from, (buf, n), 10))
    cases.append(("viper_rms", dsp._frame16, (nbytes, 0, buf, st), 2000))
    for rate in (16000, 48000):
        w = weighting.Weighting(rate, 0, -26.0, -90.0)
        cases.append(("viper_ac_%d" % rate, w.add, (buf, nbytes), 400))
        ob = bands.OctaveBank(rate, 0)
        cases.append(("viper_bands_%d" % rate, ob.add, (buf, nbytes, 0), 400))
        m = dsp.LevelMeter(16, rate, -26)
        cases.append(("add_%d" % rate, m.add, (buf, nbytes), 400))
        m = chain(rate)
        cases.append(("chain_%d" % rate, m.add, (buf, nbytes), 400))
        m = dsp.LevelMeter(16, rate, -26, True, (200.0, 3.0, 1.0))  # never reached
        cases.append(("chain_events_%d" % rate, m.add, (buf, nbytes), 400))
        m = dsp.LevelMeter(16, rate, -26, True, (0.0, 3.0, 1.0))  # one event, on from the start
        cases.append(("chain_event_on_%d" % rate, m.add, (buf, nbytes), 400))
    # rounds over all cases: the best of each survives other load on the machine
    for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 7):
        for name, fn, args, repeats in cases:
            entry = out.setdefault(name, {})
            entry["ns"] = best_ns(fn, args, n, repeats, entry.get("ns"))
    print(json.dumps(out))


main()
