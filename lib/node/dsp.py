"""Sound levels of raw I2S frames: RMS, peak and A-weighted levels in @micropython.viper.

`LevelMeter.add()` runs once per I2S frame and allocates nothing: the kernels keep every sum in
preallocated `array("i")` state, and each intermediate fits in int32 by construction (viper ints
are 32-bit words on the ESP32), with the bound written next to each kernel. `read()` runs once per
publish interval and is the only place that makes floats.

Formats (`bits`): 16 = little-endian int16 samples, full scale 32768; 32 = little-endian 32-bit
slots with 24-bit data left-justified (INMP441, ICS-43434), full scale 2^31. The slot's low byte
is padding and is ignored, so a 32-bit sample is read as 24 bits against a full scale of 2^23.

Levels: rms_dbfs = 20*log10(RMS / full scale) and peak_dbfs = 20*log10(max|sample| / full scale),
so a full-scale square reads 0 dBFS and a full-scale sine -3.01 dBFS. Levels are clamped at the
format's floor (`floor_dbfs`, the level of one LSB), which silence reads instead of -inf. With
`mic_sensitivity_dbfs` (the datasheet's dBFS at 94 dB SPL, on the datasheets' scale where a
full-scale sine is 0 dBFS: -26 for the INMP441) the meter also gives LAeq, LAFmax and LAFmin in
dB(A) SPL: IEC 61672-1 A-weighting by fixed-point sections from the bilinear transform at the
configured rate, and the Fast (125 ms) exponential time weighting.

Viper habits used below: loads through ptr16/ptr32 are unsigned (and 64-bit wide on the host),
so every signed value is sign-extended explicitly; and viper keeps only the first two locals in
registers, arguments first, so a kernel's two hottest loop variables are its first two
arguments and callers pass their starting values.
"""

import array
import math

import micropython
from micropython import const

_FLOOR16_DBFS = -90.30899869919436  # one LSB: 20*log10(1 / 32768)
_FLOOR32_DBFS = -138.47379800543135  # one LSB of the 24-bit data: 20*log10(2**-23)
_FS2_16 = 1 / 1073741824.0  # 1 / full scale**2: 2**-30 and 2**-46, exact as floats
_FS2_32 = 1 / 70368744177664.0
_REF_SPL_DB = 94.0  # the SPL at which a microphone reads its sensitivity in dBFS ...
_SINE_DB = 3.010299956639812  # ... on datasheets' scale, where a full-scale sine is 0 dBFS
_LOW_BITS = const(30)  # wide sums are (hi, lo) word pairs: value = hi * 2**30 + lo
_LOW_MASK = const(0x3FFFFFFF)
_LOW_UNIT = 1073741824.0  # 2**30, as a float: the int is not a small int on the ESP32

# Unweighted state, one array("i") per meter: sum of squares, peak, sample count.
_R_LO = const(0)  # 16-bit: sum of squares (lo, hi) ...
_R_HI = const(1)
_R_PEAK = const(2)  # 16-bit: largest square; 32-bit: largest |sample| (24-bit units)
_R_COUNT = const(3)  # samples since read()
_R_BINS = const(4)  # 32-bit: (lo, hi) sums of the squares scaled by 4**-k, for k = 0 .. 8
_R_NBIN = const(9)
_R_MANT_BITS = const(15)  # 32-bit: squared mantissas have at most 15 bits + sign

# A-weighting: the three biquads of the bilinear-transformed IEC 61672-1 A-curve (2 zeros at
# Nyquist + double pole at 12.2 kHz; 2 zeros at DC + poles at 737.9 and 107.7 Hz; 2 zeros at DC
# + double pole at 20.6 Hz) all have real poles, so each runs as its two first-order factors:
# with integer coefficients a direct-form biquad cannot place poles 0.003 away from z = 1
# (20.6 Hz at 48 kHz), a first-order section loses nothing. Each section is y += u - c*y with
# c = 1 - pole held as round(c * 2**shift): the shifts below give every section 8 to 10
# significant bits at rates from 16 to 48 kHz (pole frequencies within 0.3 %) and keep
# c < 2**10 for the int32 bound of _a_filter. The filter input is the sample in Q4 of 16-bit
# full scale (|x| <= 2**19), so rounding noise stays 24 dB under one 16-bit LSB.
_A_POLES_HZ = (12194.217, 737.86223, 107.65265, 20.598997)  # one coefficient word each
_A_SH_LP = const(9)  # the two 12.2 kHz low-pass sections
_A_SH_HP1 = const(11)  # 737.9 Hz
_A_SH_HP2 = const(14)  # 107.7 Hz
_A_SH_HP3 = const(16)  # the two 20.6 Hz sections
_A_SHIFTS = (_A_SH_LP, _A_SH_HP1, _A_SH_HP2, _A_SH_HP3)
_A_REM_MASK = const(0xFFFF)  # 2**_A_SH_HP3 - 1
_A_Q_BITS = const(4)
_A_C = const(0)  # 4 coefficient words, in the order of _A_POLES_HZ
_A_Y = const(4)  # 6 section outputs
_A_E = const(10)  # remainder of the last section's c*y, carried to the next sample
_A_XP = const(11)  # previous input sample
_A_OR = const(12)  # OR of |y| over the sub-block so far (its bit length sets the scaling)
_A_FILL = const(13)  # samples in the current sub-block
_A_M = const(14)  # sub-block length
_A_SRC = const(15)  # first sample of the frame for _a_filter ...
_A_CHUNK = const(16)  # ... and how many
_A_WIDE = const(17)  # 1 for 32-bit slots
_A_FM = const(18)  # Fast-weighted energy per sub-block = fm * 4**fx
_A_FX = const(19)
_A_MAXM = const(20)  # largest and smallest Fast value since read(), same representation
_A_MAXX = const(21)
_A_MINM = const(22)
_A_MINX = const(23)
_A_NSUB = const(24)  # sub-blocks completed since read()
_A_RUN = const(25)  # 0 until the first sub-block has started the Fast time weighting
_A_BINS = const(26)  # (lo, hi) sums of the sub-block energies scaled by 4**-k, k = 0 .. 10
_A_NBIN = const(11)
_A_SCR = const(48)  # scratch: the sub-block's filter output, _A_M words
# ptr32 loads are unsigned: on the 64-bit host a stored -1 reads back as 2**32 - 1. Signed
# words of the A state (section outputs, previous input, scratch) are therefore stored offset
# by 2**22 > any |value|, so that they load right on the board and on the host alike.
_A_BIAS = const(0x400000)
_A_MANT_BITS = const(11)  # squared mantissas of A-weighted samples have at most 11 bits + sign
_A_NORM = const(0x10000000)  # Fast value normalised to fm in [2**28, 2**30] unless fx == 0
_A_FAST_SHIFT = const(5)  # Fast weighting: F += (E - F) / 32 once per sub-block ...
_A_SUB_PER_S = const(252)  # ... sub-blocks of rate/252 samples: -M/(rate*ln(31/32)) = 125 ms
_RATE_MIN_HZ = const(16000)  # the coefficient scaling above holds for this range of rates
_RATE_MAX_HZ = const(48000)


@micropython.viper
def _frame16(n: int, acc: int, buf, st: ptr32) -> int:
    """Add a frame of n bytes of int16 samples to st: sum of squares, largest square, count.

    Two samples per 32-bit load. Call with acc = 0. Returns -1 (nothing done) when buf is not
    4-byte aligned: the ESP32 faults on an unaligned 32-bit load.
    int32: s*s <= 2**30; acc < 2**30 before each add, so acc + s*s <= 2**31 - 1, and the
    carry moves 2**30 out at once. The frame's (acc, carry) fold into (lo, hi) the same way;
    hi gains at most one carry per sample, so an interval may hold 2**31 - 1 samples.
    """
    p = ptr32(buf)
    if int(p) & 3:
        return -1
    samples = n >> 1
    st[_R_COUNT] += samples
    n >>= 2
    carry = 0
    peak = st[_R_PEAK]
    while n:
        n -= 1
        w = p[n]
        s = ((w & 0xFFFF) ^ 0x8000) - 0x8000
        sq = s * s
        if sq > peak:
            peak = sq
        acc += sq
        if acc >> _LOW_BITS:
            acc &= _LOW_MASK
            carry += 1
        s = (((w >> 16) & 0xFFFF) ^ 0x8000) - 0x8000
        sq = s * s
        if sq > peak:
            peak = sq
        acc += sq
        if acc >> _LOW_BITS:
            acc &= _LOW_MASK
            carry += 1
    if samples & 1:  # the last of an odd count sits alone in a half-word
        s = (ptr16(p)[samples - 1] ^ 0x8000) - 0x8000
        sq = s * s
        if sq > peak:
            peak = sq
        acc += sq
        if acc >> _LOW_BITS:
            acc &= _LOW_MASK
            carry += 1
    acc += st[_R_LO]
    st[_R_HI] += carry + (acc >> _LOW_BITS)
    st[_R_LO] = acc & _LOW_MASK
    st[_R_PEAK] = peak
    return 0


@micropython.viper
def _peak24(n: int, high: int, buf) -> int:
    """Largest |sample| of n > 0 32-bit slots of 24-bit data (call with high = 0).

    Compares offset-binary values u = s + 2**23 in [0, 2**24), which need no sign extension.
    """
    p = ptr32(buf)
    low = 0xFFFFFF
    while n:
        n -= 1
        # >> 8 drops the padding byte; masking makes it the same on 32-bit and 64-bit words
        u = ((p[n] >> 8) & 0xFFFFFF) ^ 0x800000
        if u > high:
            high = u
        if u < low:
            low = u
    high -= 0x800000
    low = 0x800000 - low
    if low > high:
        return low
    return high


@micropython.viper
def _frame32(n: int, acc: int, buf, st: ptr32) -> int:
    """Add a frame of n bytes of 32-bit slots to st, in block floating point.

    With the frame's peak from a first pass, the squares are taken of v = round(s / 2**k), k the
    smallest shift giving |v| <= 2**15, and summed into bin k (energy = sum * 4**k): exact for
    frames under -48 dBFS, 16 significant bits otherwise. Call with acc = 0; -1 if unaligned.
    int32: u + r = s + 2**(k-1) is within [-2**23, 2**23 + 2**7]; v*v <= 2**30, and the carry
    scheme of _frame16 keeps acc and bin lo under 2**31.
    """
    p = ptr32(buf)
    if int(p) & 3:
        return -1
    n >>= 2
    st[_R_COUNT] += n
    peak = int(_peak24(n, 0, buf))
    if peak > st[_R_PEAK]:
        st[_R_PEAK] = peak
    k = 0
    if peak:
        peak -= 1  # the smallest k with peak - 1 < 2**(15 + k), so that |s| <= 2**(15 + k)
        while peak >> (_R_MANT_BITS + k):
            k += 1
    r = ((1 << k) >> 1) - 0x800000  # rounds v to nearest; takes the offset of u off
    carry = 0
    while n:
        n -= 1
        v = ((((p[n] >> 8) & 0xFFFFFF) ^ 0x800000) + r) >> k  # (u - 2**23 + 2**(k-1)) >> k
        acc += v * v
        if acc >> _LOW_BITS:
            acc &= _LOW_MASK
            carry += 1
    b = _R_BINS + 2 * k
    acc += st[b]
    st[b + 1] += carry + (acc >> _LOW_BITS)
    st[b] = acc & _LOW_MASK
    return 0


@micropython.viper
def _a_filter(d: int, j: int, buf, st: ptr32):
    """A-weight st[_A_CHUNK] samples of buf from st[_A_SRC] on into the scratch from st[j] on.

    Call with d = 0. The loop runs j from -count up to 0 against pointers to the ends of the
    chunk: the cheapest loop test viper has is `while j`.
    Sections in order: 12.2 kHz low-pass twice (u = (x + x_prev) / 2), then 737.9, 107.7 and
    20.6 Hz twice, high-pass (u = x - x_prev). A high-pass section's u is its input's increment,
    so d carries each section's increment to the next. c*y is rounded down; the resulting DC
    offsets are removed exactly by the zeros at DC that follow, except in the last section,
    which keeps the remainder of c*y (e) for the next sample, leaving no bias and no deadband.
    int32: each output is bounded by the L1 norm of the impulse response of the cascade up to
    it (<= 2.42 for 16 to 48 kHz) times |x| <= 2**19, plus what the roundings can add (< 2**10;
    both checked in tests): |y| < 1.27e6 < 2**21. With c < 2**10 and e < 2**16,
    |c*y + e| < 1.31e9 < 2**31; u and d are at most 2 * |y|.
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
    e = st[_A_E]
    xp = st[_A_XP] - bias
    mask = st[_A_OR]
    wide = st[_A_WIDE]
    count = st[_A_CHUNK]
    end = st[_A_SRC] + count
    p16 = ptr16(int(ptr16(buf)) + 2 * end)
    p32 = ptr32(int(ptr32(buf)) + 4 * end)
    out = ptr32(int(st) + 4 * (j + count))
    j = 0 - count
    while j:
        if wide:  # the top 20 of the 24 data bits
            x = (((p32[j] >> 12) & 0xFFFFF) ^ 0x80000) - 0x80000
        else:
            x = ((p16[j] ^ 0x8000) - 0x8000) << _A_Q_BITS
        d = ((x + xp) >> 1) - ((c_lp * y1) >> _A_SH_LP)
        xp = x
        x = y1 + (d >> 1)  # (y1_new + y1_old) / 2, the second low-pass's u
        y1 += d
        d = x - ((c_lp * y2) >> _A_SH_LP)
        y2 += d
        d -= (c_hp1 * y3) >> _A_SH_HP1
        y3 += d
        d -= (c_hp2 * y4) >> _A_SH_HP2
        y4 += d
        d -= (c_hp3 * y5) >> _A_SH_HP3
        y5 += d
        x = c_hp3 * y6 + e
        e = x & _A_REM_MASK
        d -= x >> _A_SH_HP3
        y6 += d
        out[j] = y6 + bias
        mask |= y6 ^ (y6 >> 31)  # |y| or |y| - 1: its bit length b gives |y| <= 2**b
        j += 1
    st[_A_Y] = y1 + bias
    st[_A_Y + 1] = y2 + bias
    st[_A_Y + 2] = y3 + bias
    st[_A_Y + 3] = y4 + bias
    st[_A_Y + 4] = y5 + bias
    st[_A_Y + 5] = y6 + bias
    st[_A_E] = e
    st[_A_XP] = xp + bias
    st[_A_OR] = mask


@micropython.viper
def _a_sub_block(n: int, acc: int, st: ptr32):
    """Close a full sub-block of n samples: its energy into the LAeq bins and the Fast time
    weighting. Call with acc = 0.

    Energy in block floating point: with b the bit length of the OR of |y| (|y| <= 2**b) and
    k = max(0, b - 11), v = round(y / 2**k) has |v| <= 2**11, so v*v <= 2**22 and the sum over
    M <= 256 samples is acc <= 2**30: energy = acc * 4**k. Bins as in _frame16.
    Fast: F = fm * 4**fx with fm <= 2**30; aligning shifts right only, and
    fm += (a - fm) >> 5 with 0 <= a, fm <= 2**30 stays in [0, 2**30]; renormalising shifts fm
    left only while fm < 2**28, so every Fast value compares as (fx, fm).
    """
    mask = st[_A_OR]
    k = 0
    while mask >> (_A_MANT_BITS + k):
        k += 1
    r = ((1 << k) >> 1) - _A_BIAS  # rounds to nearest, and removes the scratch offset
    y = ptr32(int(st) + 4 * _A_SCR)
    while n:
        n -= 1
        v = (y[n] + r) >> k
        acc += v * v
    b = _A_BINS + 2 * k
    lo = st[b] + acc
    st[b + 1] += lo >> _LOW_BITS
    st[b] = lo & _LOW_MASK
    if st[_A_RUN]:
        fm = st[_A_FM]
        fx = st[_A_FX]
        if k > fx:
            fm >>= 2 * (k - fx)
            fx = k
        else:
            acc >>= 2 * (fx - k)
        fm += (acc - fm) >> _A_FAST_SHIFT
    else:  # the first sub-block starts the time weighting at its own level, not from 0
        st[_A_RUN] = 1
        fm = acc
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
    st[_A_OR] = 0
    st[_A_FILL] = 0


@micropython.viper
def _a_frame(buf, nbytes: int, sta):
    """A-weight one frame, one sub-block's worth at a time, closing each sub-block that fills."""
    st = ptr32(sta)
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
        _a_filter(0, _A_SCR + fill, buf, sta)
        src += count
        if fill + count == m:
            _a_sub_block(m, 0, sta)
        else:
            st[_A_FILL] = fill + count


def _level(power, scale, floor_db):
    """10*log10(power * scale), at least floor_db (silence reads the floor, not -inf)."""
    if power <= 0:
        return floor_db
    return max(10 * math.log10(power * scale), floor_db)


def _sum_bins(st, at, nbins):
    """The energy in nbins (lo, hi) pairs from st[at] on, bin k holding energy / 4**k."""
    energy = 0.0
    for k in range(nbins):
        energy += (st[at + 2 * k + 1] * _LOW_UNIT + st[at + 2 * k]) * 4.0**k
    return energy


def _a_state(rate_hz, wide):
    """A-weighting state for rate_hz, and the gain of its filter at 1 kHz (A is 0 dB there).

    Poles by the bilinear transform, p = (2*fs - wa) / (2*fs + wa); c = 1 - p is stored as
    round(c * 2**shift) and the 1 kHz gain is that of the rounded coefficients.
    """
    sub_block = (rate_hz + _A_SUB_PER_S // 2) // _A_SUB_PER_S
    st = array.array("i", bytes(4 * (_A_SCR + sub_block)))
    for i in range(_A_Y, _A_Y + 6):
        st[i] = _A_BIAS  # 0, stored with its offset
    st[_A_XP] = _A_BIAS
    st[_A_M] = sub_block
    st[_A_WIDE] = wide
    cos_1k = math.cos(2 * math.pi * 1000 / rate_hz)
    gain2 = (2 + 2 * cos_1k) ** 2 / 16  # the two zeros at Nyquist of the low-pass sections
    for i, pole_hz in enumerate(_A_POLES_HZ):
        wa = 2 * math.pi * pole_hz
        c = round(2 * wa / (2 * rate_hz + wa) * (1 << _A_SHIFTS[i]))
        st[_A_C + i] = c
        pole = 1 - c / (1 << _A_SHIFTS[i])
        g2 = 1 / (1 - 2 * pole * cos_1k + pole * pole)
        if i:  # a high-pass section: zero at DC
            g2 *= 2 - 2 * cos_1k
        gain2 *= g2 * g2 if i in (0, 3) else g2  # 12.2 kHz and 20.6 Hz sections come in pairs
    return st, 10 * math.log10(gain2)


class LevelMeter:
    """Levels of a stream of raw I2S frames: add() each frame, read() once per interval.

    `rate_hz` matters only to the A-weighting, which supports 16 to 48 kHz. An interval may
    hold up to 2**31 - 1 samples (12 hours at 48 kHz).
    """

    def __init__(self, bits=16, rate_hz=16000, mic_sensitivity_dbfs=None):
        if bits not in (16, 32):
            raise ValueError("audio bits must be 16 or 32, not %r" % (bits,))
        self._wide = 1 if bits == 32 else 0
        self._sample_bytes = 4 if self._wide else 2
        self._frame = _frame32 if self._wide else _frame16
        self._fs2 = _FS2_32 if self._wide else _FS2_16
        self.floor_dbfs = _FLOOR32_DBFS if self._wide else _FLOOR16_DBFS
        self._r = array.array("i", bytes(4 * (_R_BINS + 2 * _R_NBIN)))
        self._frames = 0
        self._a = None
        if mic_sensitivity_dbfs is not None:
            if not _RATE_MIN_HZ <= rate_hz <= _RATE_MAX_HZ:
                raise ValueError(
                    "audio rate %r Hz: A-weighting supports %d..%d Hz"
                    % (rate_hz, _RATE_MIN_HZ, _RATE_MAX_HZ)
                )
            self._a, gain_db = _a_state(rate_hz, self._wide)
            # SPL = our dBFS + 3.01 dB (datasheet scale) - sensitivity + 94 dB; the filter's
            # input is Q4 of 16-bit full scale (2**19) in both formats; its 1 kHz gain is undone
            spl_db = _REF_SPL_DB + _SINE_DB - mic_sensitivity_dbfs
            self._a_scale = 10 ** ((spl_db - gain_db) / 10) / 2.0**38
            self._a_floor = self.floor_dbfs + spl_db

    def add(self, buf, nbytes):
        """Take one frame: nbytes of raw I2S data from buf (4-byte aligned). No allocation."""
        if nbytes % self._sample_bytes or not 0 <= nbytes <= len(buf):
            raise ValueError(
                "frame of %d bytes: not whole %d-byte samples within the buffer"
                % (nbytes, self._sample_bytes)
            )
        if not nbytes:
            return
        if self._frame(nbytes, 0, buf, self._r) < 0:  # pyright: ignore[reportArgumentType]
            raise ValueError("frame buffer not 4-byte aligned")
        if self._a is not None:
            _a_frame(buf, nbytes, self._a)
        self._frames += 1

    def read(self):
        """Levels since the previous read() as a dict of floats, or None if no frame came."""
        if not self._frames:
            return None
        r = self._r
        if self._wide:
            energy = _sum_bins(r, _R_BINS, _R_NBIN)
            peak2 = float(r[_R_PEAK]) ** 2
        else:
            energy = r[_R_HI] * _LOW_UNIT + r[_R_LO]
            peak2 = r[_R_PEAK]
        lv = {
            "rms_dbfs": _level(energy / r[_R_COUNT], self._fs2, self.floor_dbfs),
            "peak_dbfs": _level(peak2, self._fs2, self.floor_dbfs),
            "frames": self._frames,
        }
        for i in range(len(r)):
            r[i] = 0
        self._frames = 0
        if self._a is not None:
            self._read_a(lv)
        return lv

    def _read_a(self, lv):
        st = self._a
        nsub = st[_A_NSUB]
        scale, floor = self._a_scale, self._a_floor
        if nsub:
            m = st[_A_M]
            lv["laeq_dba"] = _level(_sum_bins(st, _A_BINS, _A_NBIN) / (nsub * m), scale, floor)
            lv["lafmax_dba"] = _level(st[_A_MAXM] * 4.0 ** st[_A_MAXX] / m, scale, floor)
            lv["lafmin_dba"] = _level(st[_A_MINM] * 4.0 ** st[_A_MINX] / m, scale, floor)
        else:  # the interval was shorter than one sub-block (rate / 252 samples)
            lv["laeq_dba"] = lv["lafmax_dba"] = lv["lafmin_dba"] = floor
        for i in range(_A_BINS, _A_BINS + 2 * _A_NBIN):
            st[i] = 0
        st[_A_NSUB] = 0
