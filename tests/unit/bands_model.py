"""Pure-Python model of lib/node/bands.py's viper kernel, for differential tests on the host.

bank() repeats _bank's arithmetic step by step on a copy of its state (a list of ints) and
passes every intermediate through dsp_model.Int32, which fails if it leaves int32 and keeps the
largest magnitude per name; the tests compare the model's state with the kernel's word for word,
so the kernel computes exactly this and its intermediates fit the ESP32's 32-bit viper integers.
"""

from tests.unit.dsp_model import _sext, _word, consts

K = consts("bands")


def _fold(ck, s, at, lo_add, carry):
    lo = ck("fold", s[at] + lo_add)
    s[at + 1] = ck("fold_hi", s[at + 1] + carry + (lo >> K["_LOW_BITS"]))
    s[at] = lo & K["_LOW_MASK"]


def bank(st, data, ck):
    """_bank on the raw bytes `data` (one call: its samples are st[_K_CNT] from 0)."""
    bias, lim = K["_BIAS"], K["_LIM"]
    wide = st[K["_K_WIDE"]]
    if wide:
        xs = [_sext(_word(data, i) >> 8, 24) >> 6 for i in range(len(data) >> 2)]
    else:
        xs = [_sext(int.from_bytes(data[2 * i : 2 * i + 2], "little"), 16) << 2
              for i in range(len(data) >> 1)]
    event = st[K["_K_EVENT"]]
    for lev in range(st[K["_K_NLEV"]]):
        at = K["_K_HEAD"] + K["_LW"] * lev
        s = st[at : at + K["_LW"]]
        c = [v - bias for v in s[K["_B_C"] : K["_B_C"] + 8]]
        g = s[K["_B_SH"] : K["_B_SH"] + 3]
        four = s[K["_B_FOUR"]]
        h0, h1 = (v - bias for v in s[K["_B_HB"] : K["_B_HB"] + 2])
        xa, xb = (v - bias for v in s[K["_B_X"] : K["_B_X"] + 2])
        p = [v - bias for v in s[K["_B_Y"] : K["_B_Y"] + 8]]  # (a, b) per section
        q0x, q0y, q1x, q1y = (v - bias for v in s[K["_B_Q"] : K["_B_Q"] + 4])
        if s[K["_B_HAS"]]:
            xs = [s[K["_B_HELD"]] - bias, *xs]
        acc = carry = big = bigc = 0
        out = []
        nsec = 4 if four else 3

        def section(k, t, first, last, c=c, g=g, p=p):
            """Section k on numerator t; `first`: this is the pair's first sample."""
            na, nb = (2 * k, 2 * k + 1) if first else (2 * k + 1, 2 * k)
            u = t if k == 0 else ck("num", t >> g[k - 1])
            acc_s = ck("ay", ck("ay1", c[2 * k] * p[na]) + ck("ay2", c[2 * k + 1] * p[nb]))
            if last:
                acc_s = ck("ay_t", acc_s + ((acc_s >> 31) & 1023))
            y = ck(f"y{k + 1}", u - (acc_s >> K["_Q_COEF"]))
            t_next = ck("t", y - p[nb])
            p[nb] = y
            return y, t_next

        for i in range(0, len(xs) - 1, 2):
            ys = []
            for j, first in ((0, True), (1, False)):
                x = xs[i + j]
                if first:
                    t = ck("t", x - xb)
                    xb = x
                else:
                    t = ck("t", x - xa)
                    xa = x
                for k in range(nsec):
                    y, t = section(k, t, first, k == nsec - 1)
                ys.append(y)
            ya, yb = ys
            if (ya + 16384 | yb + 16384) >> 15:
                for v in ys:
                    r = ck("r", v + 128) >> 8
                    big = ck("big", big + ck("big_sq", r * r))
                if big >> K["_LOW_BITS"]:
                    big &= K["_LOW_MASK"]
                    bigc += 1
            else:
                acc = ck("acc", acc + ck("sq2", ya * ya + yb * yb))
                if acc >> K["_LOW_BITS"]:
                    acc &= K["_LOW_MASK"]
                    carry += 1
            v = ck("hb", ck("hb_mul", h1 * ck("hb_in", xb - q1y)) >> 12) + q1x
            q1x, q1y = xb, v
            w = ck("hb", ck("hb_mul", h0 * ck("hb_in", xa - q0y)) >> 12) + q0x
            q0x, q0y = xa, w
            o = ck("out", v + w) >> 1
            out.append(min(max(o, -lim), lim))
        if len(xs) % 2:
            s[K["_B_HELD"]] = xs[-1] + bias
            s[K["_B_HAS"]] = 1
        else:
            s[K["_B_HAS"]] = 0
        s[K["_B_X"] : K["_B_X"] + 2] = [xa + bias, xb + bias]
        s[K["_B_Y"] : K["_B_Y"] + 8] = [ck("store", v + bias) for v in p]
        s[K["_B_Q"] : K["_B_Q"] + 4] = [ck("store", v + bias) for v in (q0x, q0y, q1x, q1y)]
        for base in (K["_B_LO"], K["_B_ELO"]) if event else (K["_B_LO"],):
            _fold(ck, s, base, acc, carry)
            _fold(ck, s, base + 2, big, bigc)
            s[base + 4] = ck("count", s[base + 4] + 2 * len(out))
        st[at : at + K["_LW"]] = s
        xs = out
