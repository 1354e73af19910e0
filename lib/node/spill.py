"""When readings go to flash, and the journal's lifetime: it is loaded only while it is needed.

Readings go to the journal (node.journal) while the broker has been away for `journal.grace_s`,
or while the RAM outbox is `journal.watermark_pct` full; they are written in batches, the first
of a batch at most `journal.flush_s` after it was taken. While the broker is reachable and the
outbox drains, nothing is written. A journal an earlier boot left on flash (an os.stat finds it:
no import otherwise) is loaded at the first tick, once the tasks have made their own first
imports, and this boot's readings wait until then so its readings go first. Once it is empty
and no longer needed it is deleted and its module unloaded, giving its RAM back. When the
heap has no room to load it (fragmented: its code needs runs of free blocks), that is logged
and tried again a minute later (a journal found at boot: every 2 s for its first 20 s, while the
boot's own transients pass); the readings stay in RAM meanwhile, as without a journal.
"""

import asyncio
import gc
import os

from micropython import const

from node import unload
from node.log import log, uptime_ms

JOURNAL_DIR = "journal"
_TICK_MS = const(1000)
# flush_s 0 (every reading to flash as soon as it is taken): readings come a second apart at the
# fastest, so a power cut costs at most the one being written.
_PROMPT_MS = const(100)
_AWAY = const(1)
_FULL = const(2)
# After the heap had no room to load the journal: it is fragmented, and waiting may help.
_RETRY_S = const(60)
# A journal found at boot that finds no room at once (the boot's own transients: the first
# connect, the first NTP query) is tried again this often, this boot's readings held back for
# up to _BOOT_HOLD_S so that the older ones still go first.
_BOOT_RETRY_S = const(2)
_BOOT_HOLD_S = const(20)
# What the rest of the node must still have free with the journal loaded: a reconnect's TLS
# session, telemetry's message, the replay's reading. Measured on the 32-bit port at 128k
# (make soak, a 10-minute outage): 6.4 to 6.9 KB free while loaded in the outage, 5.8 KB the
# least after the reconnect (1 KB less of each before the simulator's own start code left the
# heap); with 4.4 KB free once loaded the heap held no 580 bytes in one piece. The discovery
# announcement waits until the journal is let go (node.wiring).
_HEADROOM_BYTES = const(5120)


class Spill:
    """`settings` is the config's "journal" section; `publisher.connected` tells whether the
    broker is reachable; `clock()` is the time for readings (node.sntp.Clock.now).

    Kept small, as it is always loaded: what to write and when is node.journal's (spill()).
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
        self._why = 0  # why readings go to flash now: _AWAY, _FULL, or 0 (they do not)
        self._found = False  # a journal on flash, not loaded yet
        self._retry_at_s = 0
        self.journaled = 0
        self.replayed = 0
        self.dropped = 0
        self.skipped = 0
        try:
            os.stat(JOURNAL_DIR)
        except OSError:
            return
        self._found = True
        outbox.hold = True

    def _attach(self, now_s):
        """Load the journal (node.journal); None when the heap has no room for it now."""
        if now_s < self._retry_at_s:
            return None
        gc.collect()  # its code and buffers need runs of free heap: gather what is garbage
        box = self._outbox
        try:
            from node import journal  # here: its code and buffers take RAM only while used

            box.journal = journal.Journal(journal.Flash(), JOURNAL_DIR, self, box.boot,
                                          self._clock, uptime_ms, self._settings["bytes"])
        except MemoryError as e:
            # A failed import leaves nothing behind; a journal that could not be made would
            # leave its module's code: it goes too, so the other tasks keep their room.
            unload("journal")
            return self._no_room(now_s, str(e))
        gc.collect()
        free = gc.mem_free()
        if free < _HEADROOM_BYTES:
            # Loaded, but the other tasks would starve (telemetry, the discovery announcement
            # at the reconnect): let it go again. Nothing was written; what is on flash stays.
            box.journal = None
            unload("journal")
            return self._no_room(now_s, "it would leave %d bytes free, under %d"
                                 % (free, _HEADROOM_BYTES))
        self._found = False
        return box.journal

    def _no_room(self, now_s, why):
        wait_s = _BOOT_RETRY_S if self._found and now_s < _BOOT_HOLD_S else _RETRY_S
        self._retry_at_s = now_s + wait_s
        log("journal", "no room in RAM to load it (%s): readings stay in RAM; trying again "
            "in %d s" % (why, wait_s))

    def _reason(self, now_s):
        settings = self._settings
        if not settings["bytes"]:
            return 0
        if self._publisher.connected:
            self._away_since_s = None
        elif self._away_since_s is None:
            self._away_since_s = now_s
        away = self._away_since_s
        if away is not None and now_s - away >= settings["grace_s"]:
            return _AWAY
        return _FULL if self._outbox.fill_pct() >= settings["watermark_pct"] else 0

    async def run(self):
        while True:
            prompt = self._why and not self._settings["flush_s"]
            await asyncio.sleep_ms(_PROMPT_MS if prompt else _TICK_MS)
            await self.step()

    async def step(self):
        """Every tick: start or stop spilling, let the journal write what is due, let go of it
        once it is empty and not needed."""
        now_s = uptime_ms() // 1000
        why = self._reason(now_s)
        if why != self._why:
            self._why = why
            log("journal", ("readings go to flash: the broker has been away %d s"
                            % self._settings["grace_s"]) if why == _AWAY else
                ("readings go to flash: the outbox is %d%% full" % self._outbox.fill_pct())
                if why else "readings stay in RAM again")
        journal = self._outbox.journal
        if journal is None and (why or self._found):
            journal = self._attach(now_s)
            if journal is not None or now_s >= _BOOT_HOLD_S:
                self._outbox.hold = False  # loaded, or this boot's readings go first after all
        if journal is None:
            return
        if why:
            await journal.spill(self._outbox, now_s, self._settings)
        elif not len(journal):
            self._outbox.journal = None
            journal.close()  # and unloads its module: the next outage imports it afresh
