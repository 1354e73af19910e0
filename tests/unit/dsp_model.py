"""Pure-Python model of the viper kernels of lib/node/dsp.py and lib/node/weighting.py, for
differential tests on the host.

Each function repeats its kernel's arithmetic step by step on a copy of the kernel's state (a
list of ints) and passes every intermediate value through `Int32`, which fails if it leaves
int32 and records the largest magnitude seen under each name. Running the model and the viper
kernel on the same input and comparing their states word for word shows that the kernel computes
exactly this, so its intermediates fit the ESP32's 32-bit viper integers too. The state layout
constants are read from the modules themselves, so the two cannot drift apart.
"""

import re
from pathlib import Path

NODE = Path(__file__).resolve().parents[2] / "lib" / "node"


def consts(*names):
    """The `_NAME = const(...)` integers of the named lib/node modules."""
    out = {}
    for name in names:
        src = (NODE / f"{name}.py").read_text()
        for key, value in re.findall(r"^(_\w+) = const\(([^)]+)\)", src, re.M):
            assert out.get(key, int(value, 0)) == int(value, 0), key
            out[key] = int(value, 0)
    return out


K = consts("dsp", "weighting")
INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


class Int32:
    """Checks values against int32 and keeps the largest |value| per name."""

    def __init__(self):
        self.peak = {}

    def __call__(self, name, value):
        if not INT32_MIN <= value <= INT32_MAX:
            raise AssertionError(f"{name} = {value} leaves int32")
        if abs(value) > self.peak.get(name, -1):
            self.peak[name] = abs(value)
        return value


def _sext(value, bits):
    """Sign-extend the low `bits` bits, as the kernels do with xor and subtract."""
    half = 1 << (bits - 1)
    return ((value & ((1 << bits) - 1)) ^ half) - half


def _word(data, i):
    return int.from_bytes(data[4 * i : 4 * i + 4], "little")


def _add_square(ck, acc, carry, sq):
    """acc += sq, then move 2**30 into carry when acc reaches it (the kernels' carry scheme)."""
    acc = ck("acc", acc + sq)
    if acc >> K["_LOW_BITS"]:
        acc &= K["_LOW_MASK"]
        carry = ck("carry", carry + 1)
    return acc, carry


def _fold(ck, st, at, acc, carry):
    """Fold a frame's (acc, carry) into the (lo, hi) pair st[at], st[at + 1]."""
    acc = ck("lo", acc + st[at])
    st[at + 1] = ck("hi", st[at + 1] + ck("hi_add", carry + (acc >> K["_LOW_BITS"])))
    st[at] = acc & K["_LOW_MASK"]


def frame16(st, data, ck):
    """_frame16 on the bytes `data` (its nbytes is len(data))."""
    n = len(data)
    samples = n >> 1
    st[K["_R_COUNT"]] = ck("count", st[K["_R_COUNT"]] + samples)
    acc = carry = 0
    peak = st[K["_R_PEAK"]]
    values = []
    for i in reversed(range(n >> 2)):
        w = _word(data, i)
        values += [_sext(w, 16), _sext(w >> 16, 16)]
    if samples & 1:
        values.append(_sext(int.from_bytes(data[n - 2 : n], "little"), 16))
    for s in values:
        sq = ck("square", s * s)
        peak = max(peak, sq)
        acc, carry = _add_square(ck, acc, carry, sq)
    _fold(ck, st, K["_R_LO"], acc, carry)
    st[K["_R_PEAK"]] = peak


def frame32(st, data, ck):
    """_frame32 (and _peak24) on the bytes `data`."""
    n = len(data) >> 2
    st[K["_R_COUNT"]] = ck("count", st[K["_R_COUNT"]] + n)
    samples = [_sext(_word(data, i) >> 8, 24) for i in reversed(range(n))]
    peak = max([0] + [abs(s) for s in samples])
    st[K["_R_PEAK"]] = max(st[K["_R_PEAK"]], peak)
    k = 0
    if peak:
        while (peak - 1) >> (K["_R_MANT_BITS"] + k):
            k += 1
    r = (1 << k) >> 1
    acc = carry = 0
    for s in samples:
        v = ck("v", ck("s_round", s + r) >> k)
        acc, carry = _add_square(ck, acc, carry, ck("square", v * v))
    _fold(ck, st, K["_R_BINS"] + 2 * k, acc, carry)


def a_frame(st, hist, data, ck, hook=None):
    """_a_frame: _a_filter over each chunk, _a_sub_block for each sub-block that fills, and
    hook(level, energy, k) after each (node.events' model)."""
    wide = st[K["_A_WIDE"]]
    size = 4 if wide else 2
    if wide:
        xs = [_sext(_word(data, i) >> 12, 20) for i in range(len(data) >> 2)]
    else:
        xs = [
            _sext(int.from_bytes(data[2 * i : 2 * i + 2], "little"), 16) << K["_A_Q_BITS"]
            for i in range(len(data) >> 1)
        ]
    assert len(xs) * size == len(data)
    m = st[K["_A_M"]]
    src = 0
    while src < len(xs):
        fill = st[K["_A_FILL"]]
        count = min(m - fill, len(xs) - src)
        st[K["_A_SRC"]] = src
        st[K["_A_CHUNK"]] = count
        _a_filter(st, xs[src : src + count], ck)
        src += count
        if fill + count == m:
            _a_sub_block(st, hist, ck)
            if hook:
                hook(st[K["_A_LVL"]] - K["_A_BIAS"], st[K["_A_SUBE"]], st[K["_A_SUBK"]])
        else:
            st[K["_A_FILL"]] = fill + count


def _energy(ck, sums, y):
    """Add y's energy to sums = [lo, hi, coarse lo, coarse hi], as _a_filter does."""
    if (y + 0x8000) >> 16:
        x = ck("coarse", y + 128) >> 8
        sums[2] = ck("coarse_lo", sums[2] + ck("coarse_sq", x * x))
        if sums[2] >> K["_LOW_BITS"]:
            sums[2] &= K["_LOW_MASK"]
            sums[3] += 1
    else:
        sums[0] = ck("exact_lo", sums[0] + ck("exact_sq", y * y))
        if sums[0] >> K["_LOW_BITS"]:
            sums[0] &= K["_LOW_MASK"]
            sums[1] += 1


def _a_filter(st, xs, ck):
    bias = K["_A_BIAS"]
    c_lp, c1, c2, c3 = st[K["_A_C"] : K["_A_C"] + 4]
    y = [v - bias for v in st[K["_A_Y"] : K["_A_Y"] + 6]]
    ea, ec = st[K["_A_E"]], st[K["_A_E"] + 1]
    xp = st[K["_A_XP"]] - bias
    a_sums = st[K["_A_SUB"] : K["_A_SUB"] + 4]
    c_sums = st[K["_A_CSUM"] : K["_A_CSUM"] + 4]
    c_pk = st[K["_A_CPK"]]
    for x in xs:
        d = ck("d", (ck("u", x + xp) >> 1) - (ck("cy", c_lp * y[0]) >> K["_A_SH_LP"]))
        xp = x
        u = ck("u", y[0] + (d >> 1))
        y[0] = ck("y1", y[0] + d)
        d = ck("d", u - (ck("cy", c_lp * y[1]) >> K["_A_SH_LP"]))
        y[1] = ck("y2", y[1] + d)
        d = ck("d", d - (ck("cy", c3 * y[2]) >> K["_A_SH_HP3"]))
        y[2] = ck("y3", y[2] + d)
        t = ck("cy_e", ck("cy", c3 * y[3]) + ec)
        ec = t & K["_A_REM3"]
        d = ck("d", d - (t >> K["_A_SH_HP3"]))
        y[3] = ck("y4", y[3] + d)
        c_pk = max(c_pk, abs(y[3]))
        _energy(ck, c_sums, y[3])
        d = ck("d", d - (ck("cy", c2 * y[4]) >> K["_A_SH_HP2"]))
        y[4] = ck("y5", y[4] + d)
        t = ck("cy_e", ck("cy", c1 * y[5]) + ea)
        ea = t & K["_A_REM1"]
        d = ck("d", d - (t >> K["_A_SH_HP1"]))
        y[5] = ck("y6", y[5] + d)
        _energy(ck, a_sums, y[5])
    st[K["_A_Y"] : K["_A_Y"] + 6] = [ck("y_store", v + bias) for v in y]
    st[K["_A_E"]], st[K["_A_E"] + 1] = ea, ec
    st[K["_A_XP"]] = xp + bias
    st[K["_A_SUB"] : K["_A_SUB"] + 4] = a_sums
    st[K["_A_CSUM"] : K["_A_CSUM"] + 4] = c_sums
    st[K["_A_CPK"]] = c_pk


def _log_units(fm, fx, ck):
    """_a_sub_block's level of fm * 4**fx in 1/160 dB."""
    b = fm.bit_length()
    i = (fm >> (b - 13)) & 4095 if b > 13 else (fm << (13 - b)) & 4095
    x = (ck("poly", K["_H_P4"] * i) >> 12) + K["_H_P3"]
    x = (ck("poly", x * i) >> 12) + K["_H_P2"]
    x = (ck("poly", x * i) >> 12) + K["_H_P1"]
    octaves = ck("lvl_mul", ((b - 1) + 2 * fx) * K["_H_LOG2"])
    return ck("lvl", octaves + (ck("poly", x * i) >> 12)) >> 8


def _a_sub_block(st, hist, ck):
    bias = K["_A_BIAS"]
    lo, hi, blo, bhi = st[K["_A_SUB"] : K["_A_SUB"] + 4]
    at = K["_A_ASUM"]
    for off, (add_lo, add_hi) in ((0, (lo, hi)), (2, (blo, bhi))):
        b = ck("sum_lo", st[at + off] + add_lo)
        st[at + off + 1] = ck("sum_hi", st[at + off + 1] + add_hi + (b >> K["_LOW_BITS"]))
        st[at + off] = b & K["_LOW_MASK"]
    k = 0
    if blo or bhi:
        lo = ck("e_lo", blo + (hi << 14) + (lo >> 16))
        hi = bhi + (lo >> K["_LOW_BITS"])
        lo &= K["_LOW_MASK"]
        k = 8
    if hi:
        b = 1
        while hi >> (2 * b - 1):
            b += 1
        lo = ck("e_m", (hi << (30 - 2 * b)) + (lo >> (2 * b)))
        k += b
    assert lo < 1 << 30
    st[K["_A_SUBE"]], st[K["_A_SUBK"]] = lo, k
    st[K["_A_SUB"] : K["_A_SUB"] + 4] = [0, 0, 0, 0]
    acc = lo
    if st[K["_A_RUN"]]:
        fm, fx = st[K["_A_FM"]], st[K["_A_FX"]]
        if k > fx:
            fm >>= 2 * (k - fx)
            fx = k
        else:
            acc >>= 2 * (fx - k)
        fm = ck("fm", fm + (ck("fm_step", acc - fm) >> K["_A_FAST_SHIFT"]))
    else:
        st[K["_A_RUN"]] = 1
        fm, fx = acc, k
    while fx > 0 and fm < K["_A_NORM"]:
        fm = ck("fm", fm << 2)
        fx -= 1
    st[K["_A_FM"]], st[K["_A_FX"]] = fm, fx
    first = st[K["_A_NSUB"]] == 0
    if first or (fx, fm) > (st[K["_A_MAXX"]], st[K["_A_MAXM"]]):
        st[K["_A_MAXM"]], st[K["_A_MAXX"]] = fm, fx
    if first or (fx, fm) < (st[K["_A_MINX"]], st[K["_A_MINM"]]):
        st[K["_A_MINM"]], st[K["_A_MINX"]] = fm, fx
    st[K["_A_NSUB"]] += 1
    lvl = _log_units(fm, fx, ck) if fm else -bias
    st[K["_A_LVL"]] = lvl + bias
    tick = st[K["_A_HTICK"]]
    st[K["_A_HTICK"]] = ck("tick", tick + 1)
    shift = st[K["_A_HSHIFT"]]
    if not tick & ((1 << shift) - 1):
        nb = st[K["_A_HBINS"]]
        i = min(max((lvl - st[K["_A_HBASE"]]) >> 4, 0), nb - 1)
        if hist[i] + 1 > K["_H_MAX"]:
            carry = total = 0
            for j in range(nb):
                c = hist[j] + carry
                hist[j] = c >> 1
                total += c >> 1
                carry = c & 1
            st[K["_A_HTOTAL"]] = total
            st[K["_A_HSHIFT"]] = shift + 1
        hist[i] += 1
        st[K["_A_HTOTAL"]] = ck("htotal", st[K["_A_HTOTAL"]] + 1)
    st[K["_A_FILL"]] = 0


def a_read(st, hist):
    """What Weighting.read() resets: the interval's sums, counts, C peak and histogram."""
    for i in range(K["_A_CSUM"], K["_A_CPK"] + 1):
        st[i] = 0
    for i in range(K["_A_HTOTAL"], K["_A_HBINS"]):
        st[i] = 0
    for name in ("_A_NSUB", "_A_HTICK", "_A_HSHIFT"):
        st[K[name]] = 0
    for i in range(len(hist)):
        hist[i] = 0
