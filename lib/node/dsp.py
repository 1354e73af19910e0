"""Sound levels of raw I2S frames: RMS and peak in @micropython.viper, and the LevelMeter, which
adds node.soundmeter's (calibrated levels, octave bands, noise events) when the config asks.

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
full-scale sine is 0 dBFS: -26 for the INMP441) the meter also gives dB SPL: node.weighting's
A- and C-weighted levels, and LZeq (the unweighted level: rms_dbfs on the SPL scale, with what
DC the microphone delivers; the INMP441 and ICS-43434 block it).

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
_LOW_BITS = const(30)  # wide sums are (hi, lo) word pairs: value = hi * 2**30 + lo
_LOW_MASK = const(0x3FFFFFFF)
LOW_UNIT = 1073741824.0  # 2**30, as a float: the int is not a small int on the ESP32

# Unweighted state, one array("i") per meter: sum of squares, peak, sample count.
_R_LO = const(0)  # 16-bit: sum of squares (lo, hi) ...
_R_HI = const(1)
_R_PEAK = const(2)  # 16-bit: largest square; 32-bit: largest |sample| (24-bit units)
_R_COUNT = const(3)  # samples since read()
_R_BINS = const(4)  # 32-bit: (lo, hi) sums of the squares scaled by 4**-k, for k = 0 .. 8
_R_NBIN = const(9)
_R_MANT_BITS = const(15)  # 32-bit: squared mantissas have at most 15 bits + sign



@micropython.viper
def _frame16(n: int, acc: int, buf, st: ptr32) -> int:
    """Add a frame of n bytes of int16 samples to st: sum of squares, largest square, count.

    Two samples a pass, a 16-bit load each (cheaper in viper than halving a 32-bit word). Call
    with acc = 0. Returns -1 (nothing done) when buf is not 4-byte aligned, as _frame32 and the
    weighting's and bank's 32-bit loads need (the ESP32 faults on an unaligned one).
    int32: s*s <= 2**30; acc < 2**30 before each add, so acc + s*s <= 2**31 - 1, and the
    carry moves 2**30 out at once. The frame's (acc, carry) fold into (lo, hi) the same way;
    hi gains at most one carry per sample, so an interval may hold 2**31 - 1 samples.
    """
    p = ptr32(buf)
    if int(p) & 3:
        return -1
    samples = n >> 1
    st[_R_COUNT] += samples
    n = samples & -2
    carry = 0
    peak = st[_R_PEAK]
    p16 = ptr16(p)
    p16_1 = ptr16(int(p) + 2)  # the second of each pair at the first's index
    while n:
        n -= 2
        s = (p16[n] ^ 0x8000) - 0x8000
        sq = s * s
        if sq > peak:
            peak = sq
        acc += sq
        if acc & ~_LOW_MASK:  # >= 2**30: one AND, where >> is three instructions
            acc &= _LOW_MASK
            carry += 1
        s = (p16_1[n] ^ 0x8000) - 0x8000
        sq = s * s
        if sq > peak:
            peak = sq
        acc += sq
        if acc & ~_LOW_MASK:
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


def level(power, scale, floor_db):
    """10*log10(power * scale), at least floor_db (silence reads the floor, not -inf)."""
    if power <= 0:
        return floor_db
    return max(10 * math.log10(power * scale), floor_db)


def sum_bins(st, at, nbins):
    """The energy in nbins (lo, hi) pairs from st[at] on, bin k holding energy / 4**k."""
    energy = 0.0
    for k in range(nbins):
        energy += (st[at + 2 * k + 1] * LOW_UNIT + st[at + 2 * k]) * 4.0**k
    return energy


class LevelMeter:
    """Levels of a stream of raw I2S frames: add() each frame, read() once per interval.

    Always RMS and peak (dBFS). With `mic_sensitivity_dbfs` also the calibrated levels
    (node.weighting), with `bands` or `events` (threshold dB(A), hysteresis dB, minimum s) the
    octave bands and noise events too (node.soundmeter): `slm`, None without them, and their
    modules are not loaded.
    `rate_hz` matters only to them. An interval may hold up to 2**31 - 1 samples (12 hours at
    48 kHz).
    """

    def __init__(self, bits=16, rate_hz=16000, mic_sensitivity_dbfs=None, bands=False,
                 events=None):
        if bits not in (16, 32):
            raise ValueError("audio bits must be 16 or 32, not %r" % (bits,))
        self.wide = 1 if bits == 32 else 0
        self.rate_hz = rate_hz
        self._sample_bytes = 4 if self.wide else 2
        self._frame = _frame32 if self.wide else _frame16
        self._fs2 = _FS2_32 if self.wide else _FS2_16
        self.floor_dbfs = _FLOOR32_DBFS if self.wide else _FLOOR16_DBFS
        self._r = array.array("i", bytes(4 * (_R_BINS + 2 * _R_NBIN)))
        self._frames = 0
        self.slm = None  # node.weighting.Weighting or node.soundmeter.SoundMeter
        if mic_sensitivity_dbfs is not None or bands or events is not None:
            from node import measure

            measure.equip(self, mic_sensitivity_dbfs, bands, events)

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
        if self.slm is not None:
            self.slm.add(buf, nbytes)
        self._frames += 1

    def read(self):
        """Levels since the previous read() as a dict of floats (bands: a list of (key, level)),
        or None if no frame came."""
        if not self._frames:
            return None
        r = self._r
        if self.wide:
            energy = sum_bins(r, _R_BINS, _R_NBIN)
            peak2 = float(r[_R_PEAK]) ** 2
        else:
            energy = r[_R_HI] * LOW_UNIT + r[_R_LO]
            peak2 = r[_R_PEAK]
        samples = r[_R_COUNT]
        lv = {
            "rms_dbfs": level(energy / samples, self._fs2, self.floor_dbfs),
            "peak_dbfs": level(peak2, self._fs2, self.floor_dbfs),
            "frames": self._frames,
        }
        for i in range(len(r)):
            r[i] = 0
        self._frames = 0
        if self.slm is not None:
            self.slm.read(lv, samples)
        return lv
