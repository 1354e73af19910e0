"""Pure-Python model of the viper kernels of lib/node/dsp.py, for differential tests on the host.

Each function repeats its kernel's arithmetic step by step on a copy of the kernel's state (a
list of ints) and passes every intermediate value through `Int32`, which fails if it leaves
int32 and records the largest magnitude seen under each name. Running the model and the viper
kernel on the same input and comparing their states word for word shows that the kernel computes
exactly this, so its intermediates fit the ESP32's 32-bit viper integers too. The state layout
constants are read from dsp.py itself, so the two cannot drift apart.
"""

import re
from pathlib import Path

DSP_SRC = Path(__file__).resolve().parents[2] / "lib" / "node" / "dsp.py"
K = {
    name: int(value, 0)
    for name, value in re.findall(r"^(_\w+) = const\(([^)]+)\)", DSP_SRC.read_text(), re.M)
}
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


def a_frame(st, data, ck):
    """_a_frame: _a_filter over each chunk, _a_sub_block for each sub-block that fills."""
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
        _a_filter(st, xs[src : src + count], K["_A_SCR"] + fill, ck)
        src += count
        if fill + count == m:
            _a_sub_block(st, ck)
        else:
            st[K["_A_FILL"]] = fill + count


def _a_filter(st, xs, at, ck):
    bias = K["_A_BIAS"]
    c_lp, c1, c2, c3 = st[K["_A_C"] : K["_A_C"] + 4]
    y = [v - bias for v in st[K["_A_Y"] : K["_A_Y"] + 6]]
    e = st[K["_A_E"]]
    xp = st[K["_A_XP"]] - bias
    mask = st[K["_A_OR"]]
    for x in xs:
        d = ck("d", (ck("u", x + xp) >> 1) - (ck("cy", c_lp * y[0]) >> K["_A_SH_LP"]))
        xp = x
        u = ck("u", y[0] + (d >> 1))
        y[0] = ck("y1", y[0] + d)
        d = ck("d", u - (ck("cy", c_lp * y[1]) >> K["_A_SH_LP"]))
        y[1] = ck("y2", y[1] + d)
        for i, (c, sh) in enumerate(((c1, "_A_SH_HP1"), (c2, "_A_SH_HP2"), (c3, "_A_SH_HP3"))):
            d = ck("d", d - (ck("cy", c * y[2 + i]) >> K[sh]))
            y[2 + i] = ck(f"y{3 + i}", y[2 + i] + d)
        t = ck("cy_e", ck("cy", c3 * y[5]) + e)
        e = t & K["_A_REM_MASK"]
        d = ck("d", d - (t >> K["_A_SH_HP3"]))
        y[5] = ck("y6", y[5] + d)
        st[at] = ck("out", y[5] + bias)
        mask |= y[5] ^ (y[5] >> 31)
        at += 1
    st[K["_A_Y"] : K["_A_Y"] + 6] = [ck("y_store", v + bias) for v in y]
    st[K["_A_E"]] = e
    st[K["_A_XP"]] = xp + bias
    st[K["_A_OR"]] = mask


def _a_sub_block(st, ck):
    n = st[K["_A_M"]]
    mask = st[K["_A_OR"]]
    k = 0
    while mask >> (K["_A_MANT_BITS"] + k):
        k += 1
    r = ((1 << k) >> 1) - K["_A_BIAS"]
    acc = 0
    for i in reversed(range(n)):
        v = ck("v", st[K["_A_SCR"] + i] + r) >> k
        acc = ck("acc", acc + ck("square", v * v))
    b = K["_A_BINS"] + 2 * k
    lo = ck("lo", st[b] + acc)
    st[b + 1] = ck("hi", st[b + 1] + (lo >> K["_LOW_BITS"]))
    st[b] = lo & K["_LOW_MASK"]
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
    st[K["_A_OR"]] = 0
    st[K["_A_FILL"]] = 0


def a_read(st):
    """What LevelMeter.read() resets in the A state: the interval's bins and sub-block count."""
    for i in range(K["_A_BINS"], K["_A_BINS"] + 2 * K["_A_NBIN"]):
        st[i] = 0
    st[K["_A_NSUB"]] = 0
