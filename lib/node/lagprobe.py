"""Event-loop lag probe: how late a short sleep wakes up tells whether some task blocks the loop."""

import asyncio
import time

from micropython import const

_PERIOD_MS = const(10)
# Lateness histogram: 1 ms buckets up to 50 ms, then 10 ms buckets up to 1 s; the last catches all.
_FINE_MS = const(50)
_COARSE_STEP_MS = const(10)
_BUCKETS = const(_FINE_MS + (1000 - _FINE_MS) // _COARSE_STEP_MS + 1)


def _bucket(lag_ms):
    if lag_ms < _FINE_MS:
        return lag_ms
    return min(_FINE_MS + (lag_ms - _FINE_MS) // _COARSE_STEP_MS, _BUCKETS - 1)


def _bucket_ms(index):
    """Upper bound of a bucket, in ms."""
    if index < _FINE_MS:
        return index
    return _FINE_MS + (index - _FINE_MS + 1) * _COARSE_STEP_MS


class LagProbe:
    def __init__(self):
        self._counts = [0] * _BUCKETS
        self.max_ms = 0
        self.samples = 0

    def record(self, lag_ms):
        self._counts[_bucket(lag_ms)] += 1
        self.samples += 1
        if lag_ms > self.max_ms:
            self.max_ms = lag_ms

    def percentile(self, pct):
        """Upper bound in ms of the given percentile of lateness; 0 with no samples."""
        need = (self.samples * pct + 99) // 100
        seen = 0
        for i, n in enumerate(self._counts):
            seen += n
            if n and seen >= need:
                return _bucket_ms(i)
        return 0

    def summary(self):
        """{"p50_ms", "p99_ms", "max_ms"} since the last summary, then starts afresh."""
        out = {"p50_ms": self.percentile(50), "p99_ms": self.percentile(99),
               "max_ms": self.max_ms}
        for i in range(_BUCKETS):
            self._counts[i] = 0
        self.max_ms = self.samples = 0
        return out

    async def run(self):
        while True:
            start = time.ticks_ms()
            await asyncio.sleep_ms(_PERIOD_MS)
            self.record(max(0, time.ticks_diff(time.ticks_ms(), start) - _PERIOD_MS))
