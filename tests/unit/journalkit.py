"""One boot of a node's readings path (outbox + journal) over a PowerFs, for node.journal's tests
under MicroPython: take readings, spill them to flash, deliver them as the publisher would.

    board = Board(fs, boot=5)
    board.take(3)          # three readings (climate, sound, ...) a second apart
    board.spill()          # all of RAM to flash, a batch at a time
    got = board.deliver()  # [(boot, seq, ts, dup, kind), ...] in the order they left
"""

import json

from node.journal import Journal
from node.outbox import Outbox

CLIMATE = b"nodes/n1/climate"
SOUND = b"nodes/n1/sound"
START_S = 1800000000


class Counts:
    """The counters node.spill keeps for telemetry."""

    def __init__(self):
        self.journaled = self.replayed = self.dropped = self.skipped = 0


class Board:
    def __init__(self, fs, boot, now=START_S, max_bytes=131072, capacity=100):
        self.fs = fs
        self.now = now  # Unix seconds, or None while the clock is unknown
        self.up_ms = 0
        self.counts = Counts()
        self.box = Outbox(capacity, boot, self.clock, self.uptime_ms, 16384)
        self.journal = Journal(fs, "journal", self.counts, boot, self.clock, self.uptime_ms,
                               max_bytes)
        self.box.journal = self.journal
        self.taken = []  # (boot, seq) in the order taken

    def clock(self):
        return self.now

    def uptime_ms(self):
        return self.up_ms

    def tick(self, s=1):
        self.up_ms += 1000 * s
        if self.now is not None:
            self.now += s

    def take(self, n=1, size=0):
        """n readings, a second apart, climate and sound in turn; size pads sound bodies."""
        seqs = []
        for _ in range(n):
            self.tick()
            seq = self.box.seq + 1
            if seq % 2:
                self.box.add(CLIMATE, (("temperature", 20.5), ("humidity", 40 + seq % 50)))
            else:
                self.box.add(SOUND, (("rms_dbfs", -20.25), ("peak_dbfs", -3.5),
                                     ("pad", "x" * size)))
            self.taken.append((self.box.boot, seq))
            seqs.append(seq)
        return seqs

    def spill(self, batches=1000):
        """Up to `batches` writes of what is in RAM; how many readings went."""
        went = 0
        for _ in range(batches):
            if not self.box.in_ram():
                break
            n = self.journal.append(self.box)
            if not n:
                break
            went += n
        return went

    def deliver(self, n=100000, ack=True):
        """Send up to n readings as the publisher does (PUBACK each unless ack is False)."""
        out = []
        while len(out) < n:
            item = self.box.send_next()
            if item is None:
                break
            seq, topic, body, dup = item
            p = json.loads(body)
            assert p["seq"] == seq, (p, seq)
            kind = topic.decode().rsplit("/", 1)[1]
            assert ("temperature" in p) == (kind == "climate"), (kind, p)
            out.append((p["boot"], seq, p["ts"], dup, kind))
            if not ack:
                break
            self.box.pop(seq)
        return out
