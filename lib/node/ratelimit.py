"""A token bucket for commands, which anyone on the broker may send at any rate; pure."""

import time

# A burst of this many seconds' worth goes through at once.
_BURST_S = 4


class RateLimit:
    """A token bucket: `per_s` a second on average, in bursts of up to _BURST_S seconds' worth
    (a person trying commands, or a script sending a handful, is not throttled).

    `ticks_ms` is time.ticks_ms on the board, or a test's clock.
    """

    def __init__(self, per_s, ticks_ms):
        self._per_s = per_s
        self._ticks_ms = ticks_ms
        self._full = per_s * _BURST_S * 1000  # in thousandths of a token: integer maths
        self._tokens = self._full
        self._last_ms = ticks_ms()
        self.dropped = 0

    def allow(self):
        """True if one more may go now; False (and counted) if it is over the rate."""
        now = self._ticks_ms()
        # Capped where the bucket is full anyway: the product stays a small int.
        elapsed = min(time.ticks_diff(now, self._last_ms), _BURST_S * 1000)
        self._last_ms = now
        self._tokens = min(self._full, self._tokens + elapsed * self._per_s)
        if self._tokens >= 1000:
            self._tokens -= 1000
            return True
        self.dropped += 1
        return False

