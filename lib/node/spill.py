"""When readings go to flash, and the journal's lifetime: it is loaded only while it is needed.

Readings go to the journal (node.journal) while the broker has been away for `journal.grace_s`,
or while the RAM outbox is `journal.watermark_pct` full; they are written in batches, the first
of a batch at most `journal.flush_s` after it was taken. While the broker is reachable and the
outbox drains, nothing is written. A journal an earlier boot left on flash (an os.stat finds it:
no import otherwise) is attached before any task runs, so its readings go first. Once it is
empty and no longer needed it is deleted and its module unloaded, giving its RAM back.
"""

import asyncio
import os
import sys

from micropython import const

from node.log import log, uptime_ms

JOURNAL_DIR = "journal"
_TICK_MS = const(1000)
# flush_s 0 (every reading to flash as soon as it is taken): readings come a second apart at the
# fastest, so a power cut costs at most the one being written.
_PROMPT_MS = const(100)
_RETRY_S = const(60)  # after the flash refused a write: the outbox keeps the readings meanwhile
_AWAY = const(1)
_FULL = const(2)


class Spill:
    """`settings` is the config's "journal" section; `publisher.connected` tells whether the
    broker is reachable; `clock()` is the time for readings (node.sntp.Clock.now).

    It keeps the counters telemetry reports, as they outlive each journal: readings journaled,
    replayed (delivered from flash), dropped from flash (over `journal.bytes`) and records
    skipped (garbled or torn).
    """

    def __init__(self, settings, outbox, publisher, clock):
        self._settings = settings
        self._outbox = outbox
        self._publisher = publisher
        self._clock = clock
        self._away_since_s = 0  # uptime when the broker was last found gone; None: connected
        self._retry_at_s = 0
        self._why = 0  # why readings go to flash now: _AWAY, _FULL, or 0 (they do not)
        self.journaled = 0
        self.replayed = 0
        self.dropped = 0
        self.skipped = 0
        try:
            os.stat(JOURNAL_DIR)
        except OSError:
            return
        self._attach()

    def _attach(self):
        from node import journal  # here: its code and buffers take RAM only while it is used

        box = self._outbox
        box.journal = journal.Journal(journal.Flash(), JOURNAL_DIR, self, box.boot, self._clock,
                                      uptime_ms, self._settings["bytes"])
        return box.journal

    def _detach(self, journal):
        self._outbox.journal = None
        journal.close()
        log("journal", "empty: deleted (%d readings journaled, %d replayed so far)"
            % (self.journaled, self.replayed))
        # Unloaded: the next outage imports it afresh; until then its RAM is the heap's.
        sys.modules.pop("node.journal", None)
        package = sys.modules.get("node")
        if hasattr(package, "journal"):
            delattr(package, "journal")

    def _reason(self, now_s):
        if self._publisher.connected:
            self._away_since_s = None
        elif self._away_since_s is None:
            self._away_since_s = now_s
        away = self._away_since_s
        if away is not None and now_s - away >= self._settings["grace_s"]:
            return _AWAY
        if self._outbox.fill_pct() >= self._settings["watermark_pct"]:
            return _FULL
        return 0

    async def run(self):
        while True:
            prompt = self._why and not self._settings["flush_s"]
            await asyncio.sleep_ms(_PROMPT_MS if prompt else _TICK_MS)
            await self.step()

    async def step(self):
        """Every tick: start or stop spilling, write what is due, let go of an empty journal."""
        settings = self._settings
        box = self._outbox
        now_s = uptime_ms() // 1000
        why = self._reason(now_s) if settings["bytes"] else 0
        if why != self._why:
            if why == _AWAY:
                log("journal", "the broker has been away %d s: readings go to flash"
                    % settings["grace_s"])
            elif why == _FULL:
                log("journal", "the outbox is %d%% full: readings go to flash"
                    % box.fill_pct())
            else:
                log("journal", "readings stay in RAM again")
            self._why = why
        journal = box.journal
        if not why:
            if journal is not None and not len(journal):
                self._detach(journal)
            return
        if now_s < self._retry_at_s:
            return
        if journal is None:
            journal = self._attach()
        while box.in_ram() and (now_s - box.oldest_taken_s() >= settings["flush_s"]
                                or box.fill_pct() >= settings["watermark_pct"]):
            if not await self._write(journal, box, now_s):
                return
        if journal.anchor_due():
            await self._write(journal, box, now_s)

    async def _write(self, journal, box, now_s):
        """One batch; True if it took readings and more may follow."""
        try:
            taken = journal.append(box)
        except OSError as e:
            log("journal", "cannot write to flash (%s): readings stay in RAM; trying again in"
                " %d s" % (e, _RETRY_S))
            self._retry_at_s = now_s + _RETRY_S
            return False
        await asyncio.sleep_ms(0)  # a batch blocks the loop for a flash write: one at a time
        return taken > 0
