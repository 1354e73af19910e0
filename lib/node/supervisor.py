"""Task heartbeats and the watchdog: machine.WDT is fed only while every task reports in."""

import asyncio
import time

from micropython import const

from node.log import log

_FEED_INTERVAL_MS = const(1000)
_BEAT_SLICE_MS = const(500)


async def sleep_beating(ms, beat, sleep_ms=asyncio.sleep_ms):
    """Sleep `ms` in slices, beating between them: a long wait is not a hung task.

    `sleep_ms` is asyncio's unless a test drives the task on a clock of its own.
    """
    while ms > 0:
        beat()
        step = min(ms, _BEAT_SLICE_MS)
        await sleep_ms(step)
        ms -= step
    beat()


class Supervisor:
    def __init__(self, wdt):
        self._wdt = wdt
        self._last = {}  # task name -> ticks_ms of its last heartbeat
        self._limit = {}  # task name -> longest silence that still counts as alive
        self._stale = ()

    def register(self, name, max_silence_ms):
        """Track a task; returns the function the task calls to say it is alive."""
        self._last[name] = time.ticks_ms()
        self._limit[name] = max_silence_ms

        def beat():
            self._last[name] = time.ticks_ms()

        return beat

    def stale(self):
        now = time.ticks_ms()
        return [n for n in self._last if time.ticks_diff(now, self._last[n]) > self._limit[n]]

    async def run(self):
        while True:
            stale = self.stale()
            if stale:
                # Not feeding is the point: the WDT resets the board out of a hung task.
                if stale != self._stale:
                    log("supervisor", "no heartbeat from %s: watchdog not fed"
                        % ", ".join(stale))
            else:
                self._wdt.feed()
            self._stale = stale
            await asyncio.sleep_ms(_FEED_INTERVAL_MS)
