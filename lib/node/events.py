"""Noise events: when the A-weighted Fast level rises to `audio.event_threshold_dba` and falls back,
one reading on `<prefix>/<node>/event` with its start, duration, LAFmax, LAeq and (with octave
bands) its dominant band.

Imported only when the threshold is set and the microphone is calibrated. The detector runs in
viper on the sub-blocks of node.weighting (rate/252 samples, 4 ms), on the Fast level and the
energy each just made, and allocates nothing. The weighting's gate calls it only while an event
is on or when the level reaches the threshold, and counts every sub-block in its clock: a quiet
node pays a few instructions a sub-block, not a call. The sound task takes a finished event
after the frame (take(), which makes the floats).

An event starts at the first sub-block whose Fast level reaches the threshold, and is over when
the level falls under the threshold less the hysteresis; it lasted until the last sub-block at
or above the threshold, so a level that hovers just under it does not lengthen it, and its LAeq
covers that span. One shorter than the minimum duration is dropped. Levels are compared as the
weighting's integer levels (1/160 dB), energies summed in (lo, hi) bins as node.weighting does.
"""

import array

import micropython
from micropython import const

from node.dsp import sum_bins

# signed words stored offset (ptr32 loads are unsigned on the host), by node.weighting's _A_BIAS:
# its gate compares the biased level with the biased threshold
_BIAS = const(0x400000)
_LOW_BITS = const(30)
_LOW_MASK = const(0x3FFFFFFF)
_NBIN = const(11)  # the weighting's bins: energy * 4**-k for k = 0 .. 10
# Words 0 to 2 are node.weighting's gate (_a_frame): it calls _sub_block while an event is on
# or when the level reaches the threshold, and counts every sub-block in the clock.
_E_ON = const(0)  # threshold, in the weighting's level units (biased)
_E_ACTIVE = const(1)
_E_CLOCK = const(2)  # sub-blocks closed (mod 2**32), counted by the weighting
_E_OFF = const(3)  # threshold less the hysteresis (biased)
_E_MIN = const(4)  # shortest event, sub-blocks
_E_START = const(5)  # clock of the event's first sub-block ...
_E_LAST = const(6)  # ... and of its last at or above the threshold
_E_MAX = const(7)  # its largest level (biased)
_E_N = const(8)  # sub-blocks in the event's energy: start .. last
_E_TN = const(9)  # sub-blocks since last, summed apart until the level comes back or falls
_E_READY = const(10)  # 1: an event ended and waits for take()
_E_LOST = const(11)  # events that ended while another still waited
_E_DONE = const(12)  # the finished event: start, last, max (biased), n
_E_BINS = const(16)  # energy, start .. last
_E_TAIL = const(38)  # energy after last
_E_DBINS = const(60)  # the finished event's energy
_EW = const(82)


@micropython.viper
def _sub_block(ev: ptr32, lvl: int, energy: int, k: int):
    """One sub-block: its Fast level lvl and energy (energy * 4**k, energy <= 2**30), heard
    through node.weighting's gate: while an event is on, or when lvl reaches the threshold,
    which starts one. The weighting has counted it in the clock.

    int32: bins as node.weighting's (lo < 2**30 before each add of < 2**30 or of another lo);
    levels are within +-2**23.
    """
    clock = ev[_E_CLOCK]
    on = ev[_E_ON] - _BIAS
    if not ev[_E_ACTIVE]:
        ev[_E_ACTIVE] = 1
        ev[_E_START] = clock
        ev[_E_MAX] = lvl + _BIAS
        ev[_E_N] = 0
        ev[_E_TN] = 0
        i = _E_BINS
        while i < _E_DBINS:
            ev[i] = 0
            i += 1
    if lvl >= on:
        b = _E_BINS + 2 * k
        lo = ev[b] + energy
        ev[b + 1] += lo >> _LOW_BITS
        ev[b] = lo & _LOW_MASK
        n = ev[_E_N] + 1
        tn = ev[_E_TN]
        if tn:  # the level came back: what came between is part of the event
            i = 0
            while i < 2 * _NBIN:
                lo = ev[_E_BINS + i] + ev[_E_TAIL + i]
                ev[_E_BINS + i + 1] += ev[_E_TAIL + i + 1] + (lo >> _LOW_BITS)
                ev[_E_BINS + i] = lo & _LOW_MASK
                ev[_E_TAIL + i] = 0
                ev[_E_TAIL + i + 1] = 0
                i += 2
            n += tn
            ev[_E_TN] = 0
        ev[_E_N] = n
        ev[_E_LAST] = clock
        if lvl + _BIAS > ev[_E_MAX]:
            ev[_E_MAX] = lvl + _BIAS
        return
    b = _E_TAIL + 2 * k
    lo = ev[b] + energy
    ev[b + 1] += lo >> _LOW_BITS
    ev[b] = lo & _LOW_MASK
    ev[_E_TN] += 1
    if lvl >= ev[_E_OFF] - _BIAS:
        return
    ev[_E_ACTIVE] = 0
    if ev[_E_LAST] - ev[_E_START] + 1 < ev[_E_MIN]:
        return
    if ev[_E_READY]:
        ev[_E_LOST] += 1
        return
    ev[_E_DONE] = ev[_E_START]
    ev[_E_DONE + 1] = ev[_E_LAST]
    ev[_E_DONE + 2] = ev[_E_MAX]
    ev[_E_DONE + 3] = ev[_E_N]
    i = 0
    while i < 2 * _NBIN:
        ev[_E_DBINS + i] = ev[_E_BINS + i]
        i += 1
    ev[_E_READY] = 1


class EventDetector:
    """Noise events from the sub-blocks of a node.weighting.Weighting (it sets itself as the
    weighting's hook). `threshold_dba`, `hysteresis_db` and `min_s` as in the config."""

    def __init__(self, weighting, threshold_dba, hysteresis_db, min_s):
        self._w = weighting
        self.state = array.array("i", bytes(4 * _EW))
        self._threshold_dba = threshold_dba
        self._hysteresis_db = hysteresis_db
        self.state[_E_MIN] = max(1, round(min_s * weighting.rate_hz / weighting.sub_block))
        self.calibrate()
        weighting.hook = _sub_block
        weighting.hook_state = self.state

    def calibrate(self):
        """Thresholds in the weighting's level units again (its sensitivity changed)."""
        on = self._w.level_units(self._threshold_dba)
        self.state[_E_ON] = on + _BIAS
        self.state[_E_OFF] = on - round(self._hysteresis_db * 160) + _BIAS

    @property
    def active(self):
        return self.state[_E_ACTIVE]

    @property
    def ready(self):
        return self.state[_E_READY]

    @property
    def lost(self):
        """Events that ended while the one before still waited for take() (not published)."""
        return self.state[_E_LOST]

    def take(self):
        """The finished event as (age_ms of its start, [(key, value)]), and the detector free for
        the next; None when there is none."""
        st = self.state
        if not st[_E_READY]:
            return None
        w = self._w
        sub_s = w.sub_block / w.rate_hz
        start, last, top, n = st[_E_DONE], st[_E_DONE + 1], st[_E_DONE + 2], st[_E_DONE + 3]
        age_ms = round(((st[_E_CLOCK] - start) % (1 << 32)) * sub_s * 1000)
        fields = [
            ("duration_s", ((last - start) % (1 << 32) + 1) * sub_s),
            ("lafmax_dba", w.units_dba(top - _BIAS)),
            ("laeq_dba", w.energy_dba(sum_bins(st, _E_DBINS, _NBIN), n * w.sub_block)),
        ]
        st[_E_READY] = 0
        return age_ms, fields
