"""Pure-Python model of lib/node/events.py's detector as it would run without node.weighting's
gate: it hears every sub-block and counts its own clock. The gated detector's state words must
be this model's after every frame (tests/unit/test_events.py), so the gate changes nothing but
the calls it saves."""

from tests.unit.dsp_model import consts

K = consts("events")
_BIAS, _MASK, _NBIN = K["_BIAS"], K["_LOW_MASK"], K["_NBIN"]
_ON, _ACTIVE, _CLOCK, _OFF, _MIN = (K[n] for n in ("_E_ON", "_E_ACTIVE", "_E_CLOCK", "_E_OFF",
                                                   "_E_MIN"))
_START, _LAST, _MAX, _N, _TN = (K[n] for n in ("_E_START", "_E_LAST", "_E_MAX", "_E_N",
                                               "_E_TN"))
_READY, _LOST, _DONE = K["_E_READY"], K["_E_LOST"], K["_E_DONE"]
_BINS, _TAIL, _DBINS = K["_E_BINS"], K["_E_TAIL"], K["_E_DBINS"]


def _add(ev, at, lo_add, hi_add=0):
    lo = ev[at] + lo_add
    ev[at + 1] += hi_add + (lo >> K["_LOW_BITS"])
    ev[at] = lo & _MASK


def sub_block(ev, lvl, energy, k):
    """One sub-block on the state words `ev` (a list): level lvl (unbiased), energy * 4**k."""
    ev[_CLOCK] = clock = (ev[_CLOCK] + 1) % (1 << 32)
    on = ev[_ON] - _BIAS
    if not ev[_ACTIVE]:
        if lvl < on:
            return
        ev[_ACTIVE], ev[_START], ev[_MAX], ev[_N], ev[_TN] = 1, clock, lvl + _BIAS, 0, 0
        ev[_BINS:_DBINS] = [0] * (_DBINS - _BINS)
    if lvl >= on:
        _add(ev, _BINS + 2 * k, energy)
        if ev[_TN]:  # the level came back: the tail joins the event
            for i in range(0, 2 * _NBIN, 2):
                _add(ev, _BINS + i, ev[_TAIL + i], ev[_TAIL + i + 1])
                ev[_TAIL + i] = ev[_TAIL + i + 1] = 0
        ev[_N] += 1 + ev[_TN]
        ev[_TN] = 0
        ev[_LAST] = clock
        ev[_MAX] = max(ev[_MAX], lvl + _BIAS)
        return
    _add(ev, _TAIL + 2 * k, energy)
    ev[_TN] += 1
    if lvl >= ev[_OFF] - _BIAS:
        return
    ev[_ACTIVE] = 0
    if ev[_LAST] - ev[_START] + 1 < ev[_MIN]:
        return
    if ev[_READY]:
        ev[_LOST] += 1
        return
    ev[_DONE : _DONE + 4] = [ev[_START], ev[_LAST], ev[_MAX], ev[_N]]
    ev[_DBINS : _DBINS + 2 * _NBIN] = ev[_BINS : _BINS + 2 * _NBIN]
    ev[_READY] = 1


def take(ev):
    """What take() changes in the words: the finished event is gone."""
    ev[_READY] = 0
