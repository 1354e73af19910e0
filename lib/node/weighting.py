"""A- and C-weighted levels of raw I2S frames in @micropython.viper: LAeq, LAFmax, LAFmin, the
LA10/LA50/LA90 percentiles of the Fast level, LCeq and LCpeak.

Imported only when the microphone is calibrated (`audio.mic_sensitivity_dbfs` set, or found by
the `calibrate` command): an uncalibrated node measures RMS and peak in node.dsp and never loads
this code. Every intermediate fits in int32 by construction, with the bound next to each kernel;
`Weighting.add()` allocates nothing (its state is preallocated `array`s) and `read()` makes the
floats once per interval.

Filters: IEC 61672-1 A- and C-weighting by fixed-point first-order sections from the bilinear
transform at the configured rate (16 to 48 kHz). The C curve is the A curve without its two
middle high-pass poles, so one cascade gives both: 12.2 kHz low-pass twice, 20.6 Hz high-pass
twice (the C output), then 107.7 and 737.9 Hz high-pass (the A output). Energies are summed as
the samples come, exactly while |y| < 2**15 (Q4: -24 dBFS) and to 1/128 above, so no sample
is kept. Time weighting: Fast (125 ms), updated once per sub-block of rate/252 samples.
Percentiles: every sub-block's Fast level goes into a histogram of 0.1 dB bins from -100 dBFS
(16-bit data, whose A-weighted LSB is -96 dBFS; -115 for 24-bit) to +5 dBFS: 1050 or 1200
uint16 counts, 2.1 or 2.4 KB, whatever the interval's length. A bin about to overflow halves
them all and from then on only every second sub-block is counted (then every fourth, ...),
which keeps the counts consistent and the level series far denser than its 125 ms time
constant.

Viper habits (as in node.dsp): loads through ptr16/ptr32 are unsigned (64-bit wide on the host),
so signed words are stored offset by _A_BIAS; the two hottest locals of a kernel are its first
two arguments, the only locals viper keeps in registers.
"""

import array
import math

import micropython
from micropython import const

from node import unload
from node.dsp import LOW_UNIT, level


def _sums(st, at):
    """The energy of an exact (lo, hi) and a coarse (lo, hi) pair from st[at] on."""
    return (st[at + 1] * LOW_UNIT + st[at]) + (st[at + 3] * LOW_UNIT + st[at + 2]) * 65536.0

_LOW_BITS = const(30)  # wide sums are (hi, lo) word pairs: value = hi * 2**30 + lo
_LOW_MASK = const(0x3FFFFFFF)

# The sections: y += u - c*y with c = 1 - pole held as round(c * 2**shift). The shifts give every
# section 8 to 10 significant bits at rates from 16 to 48 kHz (pole frequencies within 0.3 %)
# and keep c < 2**10 for the int32 bound of _a_filter. The filter input is the sample in Q4 of
# 16-bit full scale (|x| <= 2**19), so rounding noise stays 24 dB under one 16-bit LSB.
_A_POLES_HZ = (12194.217, 737.86223, 107.65265, 20.598997)  # IEC 61672-1 Annex E
_A_SH_LP = const(9)  # the two 12.2 kHz low-pass sections
_A_SH_HP1 = const(11)  # 737.9 Hz, the A cascade's last section
_A_SH_HP2 = const(14)  # 107.7 Hz
_A_SH_HP3 = const(16)  # the two 20.6 Hz sections; the second is the C cascade's last
_A_SHIFTS = (_A_SH_LP, _A_SH_HP1, _A_SH_HP2, _A_SH_HP3)
_A_REM1 = const(0x7FF)  # 2**_A_SH_HP1 - 1
_A_REM3 = const(0xFFFF)  # 2**_A_SH_HP3 - 1
_A_Q_BITS = const(4)
_A_C = const(0)  # 4 coefficient words, in the order of _A_POLES_HZ
_A_Y = const(4)  # 6 section outputs, in cascade order
_A_E = const(10)  # remainders of the last sections' c*y (A, then C), carried to the next sample
_A_XP = const(12)  # previous input sample
# Energies, summed as each sample comes: y*y while |y| < 2**15 (exact), else
# ((y + 128) >> 8)**2 in units of 2**16; each a (lo, hi) pair, value = hi * 2**30 + lo.
_A_SUB = const(13)  # the sub-block's A energy so far: exact (lo, hi), coarse (lo, hi)
_A_CSUM = const(17)  # C energy since read(), the same four words
_A_CPK = const(21)  # the largest |C output| since read()
_A_FILL = const(22)  # samples in the current sub-block
_A_M = const(23)  # sub-block length
_A_SRC = const(24)  # first sample of the frame for _a_filter ...
_A_CHUNK = const(25)  # ... and how many
_A_WIDE = const(26)  # 1 for 32-bit slots
_A_FM = const(27)  # Fast-weighted energy per sub-block = fm * 4**fx
_A_FX = const(28)
_A_MAXM = const(29)  # largest and smallest Fast value since read(), same representation
_A_MAXX = const(30)
_A_MINM = const(31)
_A_MINX = const(32)
_A_NSUB = const(33)  # sub-blocks completed since read()
_A_RUN = const(34)  # 0 until the first sub-block has started the Fast time weighting
_A_LVL = const(35)  # the last sub-block: its Fast level in 1/160 dB (10*log10 of fm * 4**fx) ...
_A_SUBE = const(36)  # ... and its A energy, sube * 4**subk (for node.events)
_A_SUBK = const(37)
_A_HBASE = const(38)  # the level of the histogram's first bin, in 1/160 dB
_A_HSHIFT = const(39)  # only every 2**hshift-th sub-block is counted (after halvings)
_A_HTICK = const(40)  # sub-blocks since read(), for that
_A_HTOTAL = const(41)  # the counts' sum
_A_RANK = const(42)  # percentile ranks in, bins out: 3 words
_A_ASUM = const(45)  # A energy since read(): exact (lo, hi), coarse (lo, hi)
_A_HBINS = const(49)  # the histogram's bins
_A_WORDS = const(50)
# The hook's state words the weighting reads and counts (node.events lays its state out so):
_HK_ON = const(0)  # the level a sub-block must reach to be heard while inactive (biased)
_HK_ACTIVE = const(1)  # nonzero: every sub-block is heard
_HK_CLOCK = const(2)  # closed sub-blocks (mod 2**32), heard or not
# ptr32 loads are unsigned: on the 64-bit host a stored -1 reads back as 2**32 - 1. Signed
# words (section outputs, previous input) are therefore stored offset by 2**22 > any |value|,
# so that they load right on the board and on the host alike.
_A_BIAS = const(0x400000)
_A_NORM = const(0x10000000)  # Fast value normalised to fm in [2**28, 2**30] unless fx == 0
_A_FAST_SHIFT = const(5)  # Fast weighting: F += (E - F) / 32 once per sub-block ...
_A_SUB_PER_S = const(252)  # ... sub-blocks of rate/252 samples: -M/(rate*ln(31/32)) = 125 ms
_RATE_MIN_HZ = const(16000)  # the coefficient scaling above holds for this range of rates
_RATE_MAX_HZ = const(48000)

# The Fast level histogram: counts of 0.1 dB from _H_LOW_DBFS (per format: a 16-bit sample's
# A-weighted LSB is at -96 dBFS) up to _H_HIGH_DBFS. Levels in 1/160 dB:
# 1600*log10(F) = 481.65 per octave of F, plus 1600*log10(1 + x) for the 12 bits x after F's
# leading one, a quartic in Horner form (coefficients * 2**8; within 0.008 dB).
_H_LOW_DBFS = (-100.0, -115.0)  # 16-bit, 32-bit; per-sample Fast level, on the filter
_H_HIGH_DBFS = 5.0  # input's full scale (square)
_H_MAX = const(0xFFFF)
_H_LOG2 = const(123302)  # 1600*log10(2) * 2**8: one octave of energy in 1/160 dB, scaled
_H_P1 = const(177706)
_H_P2 = const(-85744)
_H_P3 = const(43842)
_H_P4 = const(-12578)
_LEVEL_UNIT = 160.0  # levels in 1/160 dB: a 0.1 dB bin is 16 units, a shift by 4
_FULL_Q4_DB = 380 * math.log10(2)  # 10*log10(2**38): Q4 full scale, squared


@micropython.viper
def _a_filter(d: int, x: int, buf, st: ptr32):
    """Weight st[_A_CHUNK] samples of buf from st[_A_SRC] on, adding their energies up. Call with
    d = 0, x = 0: the first two arguments are the only locals viper keeps in registers, so d
    carries the cascade's increment and x the value in hand (the sample, a section's state while
    its product and update read it, an output while its energy and peak are taken). The loop
    runs j from -count up to 0 against pointers to the ends of the chunk: the cheapest loop test
    viper has is `while j`.
    Sections in order: 12.2 kHz low-pass twice (u = (x + x_prev) / 2), then 20.6 Hz twice (the C
    output), 107.7 and 737.9 Hz (the A output), high-pass (u = x - x_prev). A high-pass
    section's u is its input's increment, so d carries each section's increment to the next. c*y
    is rounded down; the resulting DC offsets are removed exactly by the zeros at DC that follow,
    except in each output's last section, which keeps the remainder of c*y (e) for the next
    sample, leaving no bias and no deadband.
    int32: each output is bounded by the L1 norm of the impulse response of the cascade up to
    it (<= 2.84 for 16 to 48 kHz, the largest at the C output) times |x| <= 2**19, plus what
    the roundings can add (< 2**10; both checked in tests): |y| < 1.5e6 < 2**21. With
    c < 2**10 and e < 2**16, |c*y + e| < 1.54e9 < 2**31; u and d are at most 2 * |y|; the
    peak's c_pk + x and 2 * c_pk are under 2**22.
    Energies: y*y < 2**30 below 2**15 and lo < 2**30 before the add; above, (y + 128) >> 8 is
    under 2**13, its square under 2**26; each carry moves 2**30 to hi at once.
    """
    c_lp = st[_A_C]
    c_hp1 = st[_A_C + 1]
    c_hp2 = st[_A_C + 2]
    c_hp3 = st[_A_C + 3]
    bias = _A_BIAS
    y1 = st[_A_Y] - bias
    y2 = st[_A_Y + 1] - bias
    y3 = st[_A_Y + 2] - bias
    y4 = st[_A_Y + 3] - bias
    y5 = st[_A_Y + 4] - bias
    y6 = st[_A_Y + 5] - bias
    ea = st[_A_E]
    ec = st[_A_E + 1]
    xp = st[_A_XP] - bias
    a_lo = st[_A_SUB]
    a_hi = st[_A_SUB + 1]
    a_blo = st[_A_SUB + 2]
    a_bhi = st[_A_SUB + 3]
    c_lo = st[_A_CSUM]
    c_hi = st[_A_CSUM + 1]
    c_blo = st[_A_CSUM + 2]
    c_bhi = st[_A_CSUM + 3]
    c_pk = st[_A_CPK]
    c_pk2 = c_pk + c_pk
    wide = st[_A_WIDE]
    count = st[_A_CHUNK]
    end = st[_A_SRC] + count
    p16 = ptr16(int(ptr16(buf)) + 2 * end)
    p32 = ptr32(int(ptr32(buf)) + 4 * end)
    j = 0 - count
    while j:
        if wide:  # the top 20 of the 24 data bits
            x = (((p32[j] >> 12) & 0xFFFFF) ^ 0x80000) - 0x80000
        else:
            x = ((p16[j] ^ 0x8000) - 0x8000) << _A_Q_BITS
        d = (xp + x) >> 1
        xp = x
        x = y1
        d -= (c_lp * x) >> _A_SH_LP
        y1 = x + d
        x = (d >> 1) + x  # (y1_new + y1_old) / 2, the second low-pass's u
        d = x
        x = y2
        d -= (c_lp * x) >> _A_SH_LP
        y2 = x + d
        x = y3
        d -= (c_hp3 * x) >> _A_SH_HP3
        y3 = x + d
        x = y4
        x = c_hp3 * x + ec
        ec = x & _A_REM3
        d -= x >> _A_SH_HP3
        x = y4 + d
        y4 = x
        # |x| > c_pk as one unsigned compare (x + c_pk outside [0, 2 * c_pk]), where |x| and a
        # signed compare are fourteen instructions more
        if uint(c_pk + x) > uint(c_pk2):
            c_pk = x
            if x < 0:
                c_pk = 0 - x
            c_pk2 = c_pk + c_pk
        if (x + 0x8000) >> 16:
            x = (x + 128) >> 8
            c_blo += x * x
            if c_blo & ~_LOW_MASK:  # >= 2**30: one AND, where >> is three instructions
                c_blo &= _LOW_MASK
                c_bhi += 1
        else:
            c_lo = x * x + c_lo
            if c_lo & ~_LOW_MASK:
                c_lo &= _LOW_MASK
                c_hi += 1
        x = y5
        d -= (c_hp2 * x) >> _A_SH_HP2
        y5 = x + d
        x = y6
        x = c_hp1 * x + ea
        ea = x & _A_REM1
        d -= x >> _A_SH_HP1
        x = y6 + d
        y6 = x
        if (x + 0x8000) >> 16:
            x = (x + 128) >> 8
            a_blo += x * x
            if a_blo & ~_LOW_MASK:
                a_blo &= _LOW_MASK
                a_bhi += 1
        else:
            a_lo = x * x + a_lo
            if a_lo & ~_LOW_MASK:
                a_lo &= _LOW_MASK
                a_hi += 1
        j += 1
    st[_A_Y] = y1 + bias
    st[_A_Y + 1] = y2 + bias
    st[_A_Y + 2] = y3 + bias
    st[_A_Y + 3] = y4 + bias
    st[_A_Y + 4] = y5 + bias
    st[_A_Y + 5] = y6 + bias
    st[_A_E] = ea
    st[_A_E + 1] = ec
    st[_A_XP] = xp + bias
    st[_A_SUB] = a_lo
    st[_A_SUB + 1] = a_hi
    st[_A_SUB + 2] = a_blo
    st[_A_SUB + 3] = a_bhi
    st[_A_CSUM] = c_lo
    st[_A_CSUM + 1] = c_hi
    st[_A_CSUM + 2] = c_blo
    st[_A_CSUM + 3] = c_bhi
    st[_A_CPK] = c_pk


@micropython.viper
def _a_sub_block(hi: int, lo: int, st: ptr32, hist: ptr16):
    """Close a full sub-block: its A energy into the interval's sums, the Fast time weighting,
    its level into the histogram. Call with hi = lo = 0.

    The sub-block's energy E = (hi * 2**30 + lo) * 4**k with lo < 2**30: k = 0 while no sample
    took the coarse sum, else k = 8 and the exact sum comes in as lo // 2**16 (lo < 2**30 + 2**22
    before the carry: M <= 256 exact squares under 2**30 make hi < 2**8). Then
    m = E / 4**(k + j) < 2**30 with j the smallest making hi * 2**(30 - 2j) < 2**29.
    Fast: F = fm * 4**fx with fm <= 2**30; aligning shifts right only, and
    fm += (a - fm) >> 5 with 0 <= a, fm <= 2**30 stays in [0, 2**30]; renormalising shifts fm
    left only while fm < 2**28, so every Fast value compares as (fx, fm).
    Level: 1600*log10(F) = 481.65 * (bit length of fm - 1 + 2 * fx) + the quartic of the 12
    bits after fm's leading one; (b - 1 + 2 * fx) <= 30 + 2 * 19, times 123302 < 2**24; the
    quartic's products stay under 2**29.
    Histogram: a count reaching 2**16 halves them all, carrying each odd half to the next bin so
    that every cumulative count stays within one of the exact half.
    """
    k = 0
    lo = st[_A_SUB]
    hi = st[_A_SUB + 1]
    blo = st[_A_SUB + 2]
    bhi = st[_A_SUB + 3]
    # the interval's sums
    b = st[_A_ASUM] + lo
    st[_A_ASUM + 1] += hi + (b >> _LOW_BITS)
    st[_A_ASUM] = b & _LOW_MASK
    b = st[_A_ASUM + 2] + blo
    st[_A_ASUM + 3] += bhi + (b >> _LOW_BITS)
    st[_A_ASUM + 2] = b & _LOW_MASK
    if blo or bhi:
        lo = blo + (hi << 14) + (lo >> 16)
        hi = bhi + (lo >> _LOW_BITS)
        lo &= _LOW_MASK
        k = 8
    if hi:
        b = 1
        while hi >> (2 * b - 1):
            b += 1
        lo = (hi << (30 - 2 * b)) + (lo >> (2 * b))
        k += b
    st[_A_SUBE] = lo
    st[_A_SUBK] = k
    st[_A_SUB] = 0
    st[_A_SUB + 1] = 0
    st[_A_SUB + 2] = 0
    st[_A_SUB + 3] = 0
    if st[_A_RUN]:
        fm = st[_A_FM]
        fx = st[_A_FX]
        if k > fx:
            fm >>= 2 * (k - fx)
            fx = k
        else:
            lo >>= 2 * (fx - k)
        fm += (lo - fm) >> _A_FAST_SHIFT
    else:  # the first sub-block starts the time weighting at its own level, not from 0
        st[_A_RUN] = 1
        fm = lo
        fx = k
    while fx > 0 and fm < _A_NORM:
        fm <<= 2
        fx -= 1
    st[_A_FM] = fm
    st[_A_FX] = fx
    n = st[_A_NSUB]
    if n == 0 or fx > st[_A_MAXX] or (fx == st[_A_MAXX] and fm > st[_A_MAXM]):
        st[_A_MAXM] = fm
        st[_A_MAXX] = fx
    if n == 0 or fx < st[_A_MINX] or (fx == st[_A_MINX] and fm < st[_A_MINM]):
        st[_A_MINM] = fm
        st[_A_MINX] = fx
    st[_A_NSUB] = n + 1
    lvl = 0 - _A_BIAS  # silence: below every bin and every threshold
    if fm:
        b = 1
        if fx:  # normalised: fm >= 2**28
            b = 29
        while fm >> b:
            b += 1
        if b > 13:
            i = (fm >> (b - 13)) & 4095
        else:
            i = (fm << (13 - b)) & 4095
        x = ((_H_P4 * i) >> 12) + _H_P3
        x = ((x * i) >> 12) + _H_P2
        x = ((x * i) >> 12) + _H_P1
        lvl = ((((b - 1) + 2 * fx) * _H_LOG2 + ((x * i) >> 12)) >> 8)
    st[_A_LVL] = lvl + _A_BIAS
    tick = st[_A_HTICK]
    st[_A_HTICK] = tick + 1
    shift = st[_A_HSHIFT]
    if not tick & ((1 << shift) - 1):
        nbins = st[_A_HBINS]
        i = (lvl - st[_A_HBASE]) >> 4
        if i < 0:
            i = 0
        elif i >= nbins:
            i = nbins - 1
        c = hist[i] + 1
        if c > _H_MAX:
            b = 0
            carry = 0
            total = 0
            while b < nbins:
                c = hist[b] + carry
                hist[b] = c >> 1
                total += c >> 1
                carry = c & 1
                b += 1
            st[_A_HTOTAL] = total
            st[_A_HSHIFT] = shift + 1
            c = hist[i] + 1
        hist[i] = c
        st[_A_HTOTAL] += 1
    st[_A_FILL] = 0


@micropython.viper
def _a_frame(buf, nbytes: int, sta, hist, hook, hook_state):
    """Weight one frame, one sub-block's worth at a time, closing each sub-block that fills.
    With a `hook` (node.events), each closed sub-block is counted in hook_state's clock word and
    the hook hears of it (its Fast level and A energy, energy * 4**k) through the gate: while
    hook_state's active word is set, or when the level reaches its threshold word. The rest go
    without the call (600 cycles on the board, and the hook's own)."""
    st = ptr32(sta)
    hk = st  # the gate's words, once there is a hook: its state made a pointer once a frame
    gate = 0
    if hook:
        hk = ptr32(hook_state)
        gate = 1
    n = nbytes >> (1 + st[_A_WIDE])
    m = st[_A_M]
    src = 0
    while src < n:
        fill = st[_A_FILL]
        count = m - fill
        if count > n - src:
            count = n - src
        st[_A_SRC] = src
        st[_A_CHUNK] = count
        _a_filter(0, 0, buf, sta)
        src += count
        if fill + count == m:
            _a_sub_block(0, 0, sta, hist)
            if gate:
                hk[_HK_CLOCK] += 1
                lvl = st[_A_LVL]  # biased, as the threshold
                if hk[_HK_ACTIVE] or lvl >= hk[_HK_ON]:
                    hook(hook_state, lvl - _A_BIAS, st[_A_SUBE], st[_A_SUBK])
        else:
            st[_A_FILL] = fill + count


@micropython.viper
def _ranks(hist: ptr16, st: ptr32):
    """The bins holding the counts of rank st[_A_RANK + i] (0-based, ascending level, i = 0..2),
    into the same words; then every count back to 0. int32: the counts sum to at most
    2**16 * 1200 < 2**27."""
    total = 0
    i = 0
    r = st[_A_RANK]
    j = 0
    nbins = st[_A_HBINS]
    while i < nbins:
        total += hist[i]
        while j < 3 and total > r:
            st[_A_RANK + j] = i
            j += 1
            if j < 3:
                r = st[_A_RANK + j]
        hist[i] = 0
        i += 1


def _a_state(rate_hz, wide):
    """A/C state for rate_hz, and the gains of the A and C cascades at 1 kHz (both are 0 dB there).

    Poles by the bilinear transform, p = (2*fs - wa) / (2*fs + wa); c = 1 - p is stored as
    round(c * 2**shift) and the 1 kHz gains are those of the rounded coefficients.
    """
    sub_block = (rate_hz + _A_SUB_PER_S // 2) // _A_SUB_PER_S
    st = array.array("i", bytes(4 * _A_WORDS))
    for i in range(_A_Y, _A_Y + 6):
        st[i] = _A_BIAS  # 0, stored with its offset
    st[_A_XP] = _A_BIAS
    st[_A_M] = sub_block
    st[_A_WIDE] = wide
    cos_1k = math.cos(2 * math.pi * 1000 / rate_hz)
    g2 = []  # each section's squared gain at 1 kHz, in the order of _A_POLES_HZ
    for i, pole_hz in enumerate(_A_POLES_HZ):
        wa = 2 * math.pi * pole_hz
        c = round(2 * wa / (2 * rate_hz + wa) * (1 << _A_SHIFTS[i]))
        st[_A_C + i] = c
        pole = 1 - c / (1 << _A_SHIFTS[i])
        # low-pass: a zero at Nyquist, (1 + 1/z) / 2; high-pass: a zero at DC, 1 - 1/z
        zero2 = (2 + 2 * cos_1k) / 4 if i == 0 else 2 - 2 * cos_1k
        g2.append(zero2 / (1 - 2 * pole * cos_1k + pole * pole))
    lp, hp1, hp2, hp3 = g2
    c_gain2 = lp * lp * hp3 * hp3  # 12.2 kHz and 20.6 Hz sections come in pairs
    return st, 10 * math.log10(c_gain2 * hp1 * hp2), 10 * math.log10(c_gain2)


class Weighting:
    """The calibrated levels of a stream of raw I2S frames: add() each frame, read() once per
    interval, both called by node.dsp.LevelMeter (alone, as its `slm`, or through
    node.soundmeter with the bands and events).

    `mic_sensitivity_dbfs` gives dB SPL (node.spl); `floor_dbfs` is the level of one LSB of the
    sample format, which silence reads. `hook`, when set, is a viper function called as
    hook(hook_state, level, energy, k) after a sub-block (node.events), through the gate its
    state's first three words set (_a_frame); it must allocate nothing.
    """

    # The sound reading's keys read() adds, in the reading's order (node.sound).
    KEYS = ("laeq_dba", "lafmax_dba", "lafmin_dba", "la10_dba", "la50_dba", "la90_dba",
            "lceq_dbc", "lcpeak_dbc", "lzeq_dbz")
    events_on = False  # as node.soundmeter.SoundMeter's, for the meter's users

    def __init__(self, rate_hz, wide, mic_sensitivity_dbfs, floor_dbfs):
        if not _RATE_MIN_HZ <= rate_hz <= _RATE_MAX_HZ:
            raise ValueError(
                "audio rate %r Hz: A- and C-weighting support %d..%d Hz"
                % (rate_hz, _RATE_MIN_HZ, _RATE_MAX_HZ)
            )
        self.rate_hz = rate_hz
        self.state, self._a_gain_db, self._c_gain_db = _a_state(rate_hz, wide)
        self.sub_block = self.state[_A_M]
        low_dbfs = _H_LOW_DBFS[wide]
        nbins = round((_H_HIGH_DBFS - low_dbfs) * 10)
        self.state[_A_HBINS] = nbins
        self._hist = array.array("H", bytes(2 * nbins))
        # the level of the first bin's lower edge, for a whole sub-block's energy in Q4 units
        base_db = low_dbfs + _FULL_Q4_DB + 10 * math.log10(self.sub_block)
        self.state[_A_HBASE] = round(base_db * _LEVEL_UNIT)
        self.hook = self.hook_state = None
        self._floor_dbfs = floor_dbfs
        self.calibrate(mic_sensitivity_dbfs)

    @property
    def idle(self):
        """Uncalibrated (calibrate(None)): nothing to measure; node.measure lets it go."""
        return self.sensitivity is None

    def calibrate(self, mic_sensitivity_dbfs):
        """Use this sensitivity from now on: every level read() gives follows it. None: none,
        until the next calibrate()."""
        self.sensitivity = mic_sensitivity_dbfs
        if mic_sensitivity_dbfs is None:
            return
        from node import spl  # needed only now

        self.spl_db = spl_db = spl.offset_db(mic_sensitivity_dbfs)
        del spl
        unload("spl")
        # The filter input is Q4 of 16-bit full scale (2**19) in both formats; the 1 kHz gain of
        # each cascade is undone.
        self._a_scale = 10 ** ((spl_db - self._a_gain_db) / 10) / 2.0**38
        self._c_scale = 10 ** ((spl_db - self._c_gain_db) / 10) / 2.0**38
        self.floor_db = self._floor_dbfs + spl_db  # silence: one LSB of the format

    def level_units(self, dba):
        """A Fast level in dB(A) as the state's 1/160 dB units of a sub-block's energy."""
        return round((dba - self._sub_db()) * _LEVEL_UNIT)

    def units_dba(self, units):
        """The inverse of level_units()."""
        return units / _LEVEL_UNIT + self._sub_db()

    def _sub_db(self):
        # 10*log10 of the scale from a sub-block's energy (Q4 units) to its per-sample level
        return 10 * math.log10(self._a_scale / self.sub_block)

    def energy_dba(self, energy, samples):
        return level(energy / samples, self._a_scale, self.floor_db)

    def add(self, buf, nbytes):
        _a_frame(buf, nbytes, self.state, self._hist, self.hook, self.hook_state)

    def read(self, lv, samples):
        """Add the levels of the interval's `samples` to the meter's levels `lv` (its rms_dbfs
        among them); the next interval starts."""
        st = self.state
        nsub = st[_A_NSUB]
        m = self.sub_block
        floor = self.floor_db
        if nsub:  # A: the sub-blocks completed
            lv["laeq_dba"] = self.energy_dba(_sums(st, _A_ASUM), nsub * m)
            lv["lafmax_dba"] = level(st[_A_MAXM] * 4.0 ** st[_A_MAXX] / m, self._a_scale, floor)
            lv["lafmin_dba"] = level(st[_A_MINM] * 4.0 ** st[_A_MINX] / m, self._a_scale, floor)
            self._percentiles(lv)
        else:  # the interval was shorter than one sub-block (rate / 252 samples)
            for key in ("laeq_dba", "lafmax_dba", "lafmin_dba", "la10_dba", "la50_dba",
                        "la90_dba"):
                lv[key] = floor
        # C: every sample since the last read(), sub-blocks or not
        lv["lceq_dbc"] = level(_sums(st, _A_CSUM) / samples, self._c_scale, floor)
        lv["lcpeak_dbc"] = level(float(st[_A_CPK]) ** 2, self._c_scale, floor)
        lv["lzeq_dbz"] = lv["rms_dbfs"] + self.spl_db  # unweighted: the meter's RMS in dB SPL
        for i in range(_A_CSUM, _A_CPK + 1):
            st[i] = 0
        for i in range(_A_HTOTAL, _A_HBINS):  # the count, the ranks, the A sums
            st[i] = 0
        st[_A_NSUB] = st[_A_HTICK] = st[_A_HSHIFT] = 0

    def _percentiles(self, lv):
        """LA10, LA50, LA90 from the histogram, which this empties (O(1): its bins scanned)."""
        st, hist = self.state, self._hist
        total = st[_A_HTOTAL]
        if not total:  # every sub-block since the last halving fell between two counted ones
            _ranks(hist, st)  # pyright: ignore[reportArgumentType]
            lv["la10_dba"] = lv["la50_dba"] = lv["la90_dba"] = lv["lafmin_dba"]
            return
        # numpy.percentile's position (n - 1) * p, to the nearest rank; L10 is exceeded 10 % of
        # the time: the 90th percentile
        for j, p in enumerate((0.1, 0.5, 0.9)):
            st[_A_RANK + j] = round((total - 1) * p)
        _ranks(hist, st)  # pyright: ignore[reportArgumentType]
        base = st[_A_HBASE]
        for j, key in enumerate(("la90_dba", "la50_dba", "la10_dba")):
            lv[key] = max(self.units_dba(base + 16 * st[_A_RANK + j] + 8), self.floor_db)
