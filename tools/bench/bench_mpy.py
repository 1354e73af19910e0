"""MicroPython side of tools/bench.py: time the level kernels on one frame, print JSON.

Usage: micropython bench_mpy.py FRAME.raw [ROUNDS] (lib/ on MICROPYPATH). Each figure is the
best of ROUNDS rounds over all variants, in ns per sample, with the sum of squares and peak
where the variant computes them (to show that all compute the same).
"""

import json
import struct
import sys
import time

import micropython
from node import dsp


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


def main():
    with open(sys.argv[1], "rb") as f:
        buf = bytearray(f.read())
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
        a, _ = dsp._a_state(rate, 0)
        cases.append(("viper_a_%d" % rate, dsp._a_frame, (buf, nbytes, a), 400))
        m = dsp.LevelMeter(16, rate, -26)
        cases.append(("add_%d" % rate, m.add, (buf, nbytes), 400))
    # rounds over all cases: the best of each survives other load on the machine
    for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 7):
        for name, fn, args, repeats in cases:
            entry = out.setdefault(name, {})
            entry["ns"] = best_ns(fn, args, n, repeats, entry.get("ns"))
    print(json.dumps(out))


main()
