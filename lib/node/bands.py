"""Octave bands 63 Hz to 8 kHz of raw I2S frames (IEC 61260-1 class 1), multirate, in viper.

Imported only with `audio.bands` true. Each band is an IIR band-pass designed here at start for
its own sample rate: the top band (8 kHz at 48 kHz, 4 kHz at 16 kHz) runs at the input rate,
and each lower octave runs on the signal decimated by two once more, through a polyphase
allpass half-band low-pass (two allpass sections, one per phase, at the lower rate). Every
band-pass sits at the same place relative to its own rate, so one design serves all, and the
whole bank costs about twice its top band. The decimated signal of each level overwrites the
one before in one scratch buffer, a chunk of the frame at a time.

Band-pass: at 48 kHz (centres at rate/6) a 3rd-order Chebyshev type I prototype with 0.1 dB
ripple over the middle 0.725 octave; at 16 kHz (centres at rate/4, where the bilinear transform
widens the band) a 4th-order Butterworth over the octave. Both meet the class 1 mask with the
half-band's aliasing included (tests/unit/test_bands.py). node.bandpass designs them when the
bank is made and leaves the heap after: edges prewarped, poles quantised to Q10. Each section
computes y = (x - x[n-2]) >> g - (a1*y[n-1] + a2*y[n-2]) >> 10 on Q2
samples (16-bit full scale = 2**17): the zeros at DC and at Nyquist need no multiply, the
shifts g keep every section inside int32 for any input, and the last section truncates towards
zero, which leaves no DC and no limit cycle (a band of silence reads the floor).

int32, for any input: level 0 holds |x| <= 2**17; the half-band output is clamped to
1.25 * 2**17 (only a signal built against the filter gets there) and bounds every later
level. With that input bound and the shifts below, each section's output is bounded by the L1
norm of the cascade up to it, and |a1*y1 + a2*y2| < 2**30.5 (checked per band in the tests);
the half-band's |h * (x - y_prev)| < 2354 * 3.15 * LIM < 2**30.2.
"""

import array

import micropython
from micropython import const

from node import unload
from node.dsp import LOW_UNIT, level

NOMINAL = ("63", "125", "250", "500", "1000", "2000", "4000", "8000")  # the payload's keys
# per rate: prototype order, ripple (dB, 0: Butterworth), passband (octaves), the shifts before
# sections 2, 3 and 4, and how many bands
_DESIGNS = {48000: (3, 0.1, 0.725, (2, 3, 0), 8), 16000: (4, 0.0, 1.0, (2, 1, 1), 7)}
_HB = (538, 2354)  # half-band allpass coefficients, Q12: the phase of the second, of the first
_Q_COEF = const(10)
_LIM = const(163840)  # 1.25 * 2**17: the decimated signal's clamp
_CHUNK = const(512)  # samples decimated per kernel call: the scratch holds this many + 1
_BIAS = const(0x400000)  # signed words are stored offset, as in node.dsp (ptr32 loads unsigned)
_Q2_BIASED = const(0x3E0000)  # _BIAS - (0x8000 << 2): a 16-bit sample's offset in Q2, biased
_HB_LOW = const(0x3E0000)  # _BIAS - 2**17: the clamp's test on a biased output
_LOW_BITS = const(30)
_LOW_MASK = const(0x3FFFFFFF)
_Q2_FULL2 = 2.0**34  # a full-scale square, squared, in Q2 units: 0 dBFS

_K_OFF = const(0)  # the call: first sample of the frame, how many, 32-bit slots or not
_K_CNT = const(1)
_K_WIDE = const(2)
_K_NLEV = const(3)
_K_EVENT = const(4)  # 1 while a noise event is on (node.events): energies go there too
_K_HEAD = const(8)
# one level: coefficients, shifts, delays, half-band, the odd sample held over, energy sums
_B_C = const(0)  # a1, a2 of sections 1..4 (biased)
_B_SH = const(8)  # shifts before sections 2..4
_B_FOUR = const(11)  # 1 when a 4th section runs
_B_HB = const(12)  # half-band coefficients (biased): second sample's phase, first's
_B_X = const(14)  # x[n-1], x[n-2]
_B_Y = const(16)  # the sections' y[n-1], y[n-2], ...
_B_Q = const(24)  # half-band: second phase x, y; first phase x, y
_B_HELD = const(28)
_B_HAS = const(29)
_B_LO = const(30)  # sum of y*y over pairs below 2**14 (lo, hi), Q2 units squared
_B_BLO = const(32)  # sum of ((y + 128) >> 8)**2 over the other pairs (lo, hi), units of 2**16
_B_N = const(34)  # samples measured
_B_ELO = const(35)  # the same three while an event was on
_B_EBLO = const(37)
_B_EN = const(39)
_LW = const(40)


@micropython.viper
def _bank(y: int, t: int, st: ptr32, scr: ptr32, buf) -> int:
    """Run st[_K_CNT] samples of buf from st[_K_OFF] on through every level. Call with y = t = 0.

    Level 0's input is the frame in Q2 (16-bit: s << 2, 24-bit: s >> 6) in scr[1..]; each
    level reads its input from scr[0..n] (scr[0]: the sample it held over, if any) in pairs,
    runs the band-pass on both and the half-band on the pair, and writes its one output sample
    over the input at scr[o], o = 1, 2, ..., which it has read already. Returns 0.
    """
    n = st[_K_CNT]
    off = st[_K_OFF]
    i = 0
    if st[_K_WIDE]:
        p32 = ptr32(int(ptr32(buf)) + 4 * off)
        while i < n:
            scr[i + 1] = (((((p32[i] >> 8) & 0xFFFFFF) ^ 0x800000) - 0x800000) >> 6) + _BIAS
            i += 1
    else:
        p16 = ptr16(int(ptr16(buf)) + 2 * off)
        if n & 1:  # the odd one first; then two samples a pass
            scr[n] = (((p16[n - 1] ^ 0x8000) - 0x8000) << 2) + _BIAS
        out = ptr32(int(scr) + 4)  # scr[1..]: sample t goes to out[t] ...
        odd = ptr32(int(scr) + 8)  # ... and t + 1 to odd[t], read from p16_1[t]
        p16_1 = ptr16(int(p16) + 2)
        # The pairs counted down in t, the second of the two registers viper gives its locals:
        # the cheapest loop it makes, and every access one index off a pointer.
        # ((h ^ 0x8000) - 0x8000) << 2 sign-extends a sample h in Q2; its constant and the bias
        # are added as one.
        t = n & -2
        while t:
            t -= 2
            out[t] = ((p16[t] ^ 0x8000) << 2) + _Q2_BIASED
            odd[t] = ((p16_1[t] ^ 0x8000) << 2) + _Q2_BIASED
    event = st[_K_EVENT]
    lev = 0
    nlev = st[_K_NLEV]
    while lev < nlev:
        s = ptr32(int(st) + 4 * (_K_HEAD + _LW * lev))
        c1a = s[_B_C] - _BIAS
        c1b = s[_B_C + 1] - _BIAS
        c2a = s[_B_C + 2] - _BIAS
        c2b = s[_B_C + 3] - _BIAS
        c3a = s[_B_C + 4] - _BIAS
        c3b = s[_B_C + 5] - _BIAS
        c4a = s[_B_C + 6] - _BIAS
        c4b = s[_B_C + 7] - _BIAS
        g2 = s[_B_SH]
        g3 = s[_B_SH + 1]
        g4 = s[_B_SH + 2]
        four = s[_B_FOUR]
        h0 = s[_B_HB] - _BIAS
        h1 = s[_B_HB + 1] - _BIAS
        # The inputs (x) and the half-band's words (q) stay biased in the loop: they are only
        # subtracted from each other, and the half-band's output is the mean of two biased
        # values, so the bias falls out of the sums it would have been added to and taken from.
        xa = s[_B_X]
        xb = s[_B_X + 1]
        p1a = s[_B_Y] - _BIAS
        p1b = s[_B_Y + 1] - _BIAS
        p2a = s[_B_Y + 2] - _BIAS
        p2b = s[_B_Y + 3] - _BIAS
        p3a = s[_B_Y + 4] - _BIAS
        p3b = s[_B_Y + 5] - _BIAS
        p4a = s[_B_Y + 6] - _BIAS
        p4b = s[_B_Y + 7] - _BIAS
        q0x = s[_B_Q]
        q0y = s[_B_Q + 1]
        q1x = s[_B_Q + 2]
        q1y = s[_B_Q + 3]
        acc = 0
        carry = 0
        big = 0
        bigc = 0
        i = 1
        if s[_B_HAS]:
            scr[0] = s[_B_HELD]
            i = 0
        pairs = (n + 1 - i) >> 1
        # p walks the inputs a pair at a time, q the outputs (scr[1], scr[2], ...): a constant
        # index off a pointer is one load, where scr[i] is seven.
        p = ptr32(int(scr) + 4 * i)
        q = ptr32(int(scr) + 4)
        end = int(q) + 4 * pairs
        while int(q) - end:
            # The first of the pair: xa = x[n-1] and xb = x[n-2]; p_a = y[n-1], p_b = y[n-2]
            # of each section. The new value overwrites the older, so the roles swap for the
            # second sample and are back after it. A section's y[n-2] goes through y (one of
            # the two registers viper keeps locals in) and its output through t: its product
            # and the next section's input (y[n] - y[n-2]) read y from the register.
            y = p[0]
            t = y - xb
            xb = y
            y = p1b
            t -= (c1a * p1a + c1b * y) >> _Q_COEF
            p1b = t
            t -= y
            y = p2b
            t = t >> g2
            t -= (c2a * p2a + c2b * y) >> _Q_COEF
            p2b = t
            t -= y
            if four:
                y = p3b
                t = t >> g3
                t -= (c3a * p3a + c3b * y) >> _Q_COEF
                p3b = t
                t -= y
                y = c4a * p4a + c4b * p4b
                y = (t >> g4) - ((((y >> 31) & 1023) + y) >> _Q_COEF)
                p4b = y
            else:
                y = c3a * p3a + c3b * p3b
                y = (t >> g3) - ((((y >> 31) & 1023) + y) >> _Q_COEF)
                p3b = y
            ya = y
            y = p[1]
            t = y - xa
            xa = y
            y = p1a
            t -= (c1a * p1b + c1b * y) >> _Q_COEF
            p1a = t
            t -= y
            y = p2a
            t = t >> g2
            t -= (c2a * p2b + c2b * y) >> _Q_COEF
            p2a = t
            t -= y
            if four:
                y = p3a
                t = t >> g3
                t -= (c3a * p3b + c3b * y) >> _Q_COEF
                p3a = t
                t -= y
                y = c4a * p4b + c4b * p4a
                y = (t >> g4) - ((((y >> 31) & 1023) + y) >> _Q_COEF)
                p4a = y
            else:
                y = c3a * p3b + c3b * p3a
                y = (t >> g3) - ((((y >> 31) & 1023) + y) >> _Q_COEF)
                p3a = y
            # The pair's energy: exact while both |y| < 2**14 (then ya*ya + y*y < 2**29 and
            # acc < 2**30 before the add), else in units of 2**16 (|y| < 2**21: < 2**26 each).
            t = ya
            if ((t + 16384) | (y + 16384)) >> 15:
                t = (t + 128) >> 8
                big += t * t
                t = (y + 128) >> 8
                big += t * t
                if big & ~_LOW_MASK:  # >= 2**30: one AND, where >> is three instructions
                    big &= _LOW_MASK
                    bigc += 1
            else:
                acc = t * t + y * y + acc
                if acc & ~_LOW_MASK:
                    acc &= _LOW_MASK
                    carry += 1
            # Decimate: the first sample (now xb) through one phase, the second (xa) through
            # the other; out = (both) / 2, biased.
            y = (((xb - q1y) * h1) >> 12) + q1x
            q1x = xb
            q1y = y
            t = (((xa - q0y) * h0) >> 12) + q0x
            q0x = xa
            q0y = t
            y = (y + t) >> 1
            if (y - _HB_LOW) >> 18:  # |y| >= 2**17, rare: the clamp itself
                if y > _BIAS + _LIM:
                    y = _BIAS + _LIM
                elif y < _BIAS - _LIM:
                    y = _BIAS - _LIM
            q[0] = y
            q = ptr32(int(q) + 4)
            p = ptr32(int(p) + 8)
        o = pairs  # outputs made
        i += 2 * pairs
        if i == n:  # one sample left over: the next call starts with it
            s[_B_HELD] = scr[n]
            s[_B_HAS] = 1
        else:
            s[_B_HAS] = 0
        s[_B_X] = xa
        s[_B_X + 1] = xb
        s[_B_Y] = p1a + _BIAS
        s[_B_Y + 1] = p1b + _BIAS
        s[_B_Y + 2] = p2a + _BIAS
        s[_B_Y + 3] = p2b + _BIAS
        s[_B_Y + 4] = p3a + _BIAS
        s[_B_Y + 5] = p3b + _BIAS
        s[_B_Y + 6] = p4a + _BIAS
        s[_B_Y + 7] = p4b + _BIAS
        s[_B_Q] = q0x
        s[_B_Q + 1] = q0y
        s[_B_Q + 2] = q1x
        s[_B_Q + 3] = q1y
        # fold into (lo, hi): lo < 2**30 and the sums < 2**30, as in node.dsp
        at = _B_LO
        while True:
            y = s[at] + acc
            s[at + 1] += carry + (y >> _LOW_BITS)
            s[at] = y & _LOW_MASK
            y = s[at + 2] + big
            s[at + 3] += bigc + (y >> _LOW_BITS)
            s[at + 2] = y & _LOW_MASK
            s[at + 4] += 2 * o
            if at == _B_ELO or not event:
                break
            at = _B_ELO
        n = o
        lev += 1
    return 0


class OctaveBank:
    """Octave band levels of a stream of raw I2S frames: add() each frame, read() once per
    interval (node.dsp.LevelMeter calls both). Bands below the rate's Nyquist edge only: 63 Hz
    to 8 kHz at 48 kHz, to 4 kHz at 16 kHz."""

    def __init__(self, rate_hz, wide):
        if rate_hz not in _DESIGNS:
            raise ValueError("audio rate %r Hz: octave bands support %s Hz"
                             % (rate_hz, " and ".join(str(r) for r in sorted(_DESIGNS))))
        from node import bandpass  # the design: needed once, here

        order, ripple_db, octaves, shifts, nbands = _DESIGNS[rate_hz]
        self.keys = NOMINAL[:nbands]
        self.state = st = array.array("i", bytes(4 * (_K_HEAD + _LW * nbands)))
        self._scr = array.array("i", bytes(4 * (_CHUNK + 1)))
        self._wide = wide
        st[_K_WIDE] = wide
        st[_K_NLEV] = nbands
        self._scale = []  # per level, from its mean square to dBFS: 1 / (gain**2 * full**2)
        for lev in range(nbands):
            rate = rate_hz / (1 << lev)
            centre = bandpass.centre(nbands - 5 - lev)
            sections = bandpass.design(centre, rate, order, ripple_db, octaves, _Q_COEF)
            at = _K_HEAD + _LW * lev
            for k, (a1, a2) in enumerate(sections):
                st[at + _B_C + 2 * k] = a1 + _BIAS
                st[at + _B_C + 2 * k + 1] = a2 + _BIAS
            for k in range(len(sections), 4):
                st[at + _B_C + 2 * k] = st[at + _B_C + 2 * k + 1] = _BIAS
            for k in range(3):
                st[at + _B_SH + k] = shifts[k]
            st[at + _B_FOUR] = 1 if order == 4 else 0
            st[at + _B_HB] = _HB[0] + _BIAS
            st[at + _B_HB + 1] = _HB[1] + _BIAS
            for k in range(_B_X, _B_HELD):
                st[at + k] = _BIAS
            gain = bandpass.gain(sections, shifts, centre, rate, _Q_COEF)
            for above in range(lev):  # the half-bands the level's signal came through
                gain *= bandpass.half_band(_HB, centre, rate_hz / (1 << above))
            self._scale.append(1 / (gain * gain * _Q2_FULL2))
        self._scale.reverse()  # in the order of self.keys, ascending
        del bandpass
        unload("bandpass")

    def add(self, buf, nbytes, event):
        """Take one frame (whole samples, 4-byte aligned: LevelMeter checked); `event` 1 while a
        noise event is on. Allocates nothing."""
        st = self.state
        st[_K_EVENT] = event
        n = nbytes >> (1 + self._wide)
        off = 0
        while off < n:
            count = n - off
            if count > _CHUNK:
                count = _CHUNK
            st[_K_OFF] = off
            st[_K_CNT] = count
            _bank(0, 0, st, self._scr, buf)  # pyright: ignore[reportArgumentType]
            off += count

    def _levels(self, at, floor_db, offset_db):
        """[(key, level)] from the sums at `at` of each level (0 after), ascending bands."""
        st = self.state
        nbands = len(self.keys)
        out = []
        for j in range(nbands):
            b = _K_HEAD + _LW * (nbands - 1 - j) + at
            energy = (st[b + 1] * LOW_UNIT + st[b]) + (st[b + 3] * LOW_UNIT + st[b + 2]) * 65536.0
            count = st[b + 4]
            db = level(energy / count, self._scale[j], floor_db - offset_db) if count else None
            out.append((self.keys[j], floor_db if db is None else db + offset_db))
            for k in range(5):
                st[b + k] = 0
        return out

    def read(self, floor_db, offset_db):
        """The interval's band levels [(key, level)], ascending: dBFS + offset_db (0, or the
        meter's dBFS to dB SPL), at least floor_db; the next interval starts."""
        return self._levels(_B_LO, floor_db, offset_db)

    def event_band(self):
        """The key of the band with the most energy while the last event was on, or None; the
        event sums start again."""
        best = None
        most = 0.0
        for key, db in self._levels(_B_ELO, -1000.0, 0.0):
            if db > -1000.0 and (best is None or db > most):
                best, most = key, db
        return best
