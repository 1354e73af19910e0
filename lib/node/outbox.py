"""Bounded store-and-forward queue of readings: stamped, numbered, drop-oldest, counted; pure."""

from array import array

from node import payload

# What each queued reading costs besides its body: seq, ts, taken_s (4 bytes each), the body's
# offset and length (2 each) and its topic's index (1). node.config bounds the outbox with it.
# (Plain ints, not const(): this module also runs on CPython as the tests' reference.)
INDEX_BYTES_PER_READING = 17
# The largest body one reading may have (a sound reading with every level and eight octave
# bands is at most 370 bytes).
MAX_BODY_BYTES = 512


def _zeros(kind, n):
    return array(kind, (0 for _ in range(n)))


class Outbox:
    """Readings wait here, in order, until the broker has acknowledged them.

    The outbox is the one owner of a reading's identity: `add()` gives it the next `seq` (data
    messages within one boot, so a subscriber sees a gap exactly when a reading was dropped, and
    `dropped` says how many) and its time, from `clock()` at that moment.

    A reading taken before the clock is set (no NTP answer yet after power-on) keeps the uptime
    it was taken at instead; when it goes out and the time is known by then, its ts is worked
    back from its age. If the time is still unknown it goes out with "ts":null, never with a
    wrong date.

    Memory is taken once, at construction: `capacity` readings and `body_bytes` of their bodies
    (payload.fields()) in one ring, so an outage fills it without fragmenting the heap. The
    oldest reading goes when either is full; the reading in flight (handed out by send_next(),
    not yet popped) is never dropped: it moves to a buffer of its own when its room is needed.

    `journal` (node.journal, attached by node.spill while it is needed) holds older readings on
    flash: they go first. Readings move there from the oldest end of RAM (peek(), forget()).
    """

    def __init__(self, capacity, boot, clock, uptime_ms, body_bytes):
        self._clock = clock  # () -> Unix seconds, or None while the time is unknown
        self._uptime_ms = uptime_ms  # () -> ms since start; never wraps, unlike ticks_ms
        self._cap = capacity
        self._seqs = _zeros("I", capacity)
        self._ts = _zeros("I", capacity)  # Unix seconds; 0 while unknown
        self._taken_s = _zeros("I", capacity)  # uptime when taken, for a ts worked back later
        self._offs = _zeros("H", capacity)
        self._lens = _zeros("H", capacity)
        self._kinds = bytearray(capacity)  # index into _topics
        self._topics = []  # the few distinct topics, each stored once
        self._ring = bytearray(body_bytes)
        self._head = 0
        self._len = 0
        self._write = 0  # where the next body goes in _ring
        # The reading in flight, once its room in the ring was needed: seq 0 when there is none.
        self._flight = bytearray(MAX_BODY_BYTES)
        self._flight_seq = 0
        self._flight_meta = [0, 0, 0, 0]  # ts, taken_s, len, kind
        self._in_flight = 0  # seq handed out by send_next() and not yet popped
        self._from_journal = False  # the reading in flight came from the journal
        self.journal = None
        # node.spill: a journal found on flash at boot is not loaded yet, and goes first.
        self.hold = False
        self.boot = boot
        self.seq = 0  # the last seq handed out
        self.taken = 0
        self.delivered = 0
        self.dropped = 0

    def __len__(self):
        journal = self.journal
        return self.in_ram() + (len(journal) if journal is not None else 0)

    def in_ram(self):
        return self._len + (1 if self._flight_seq else 0)

    def fill_pct(self):
        """How full RAM is, in percent of the nearer bound: readings or body bytes."""
        if not self._len:
            return 100 * self.in_ram() // self._cap
        size = len(self._ring)
        used = (self._write - self._offs[self._head]) % size or size
        return max(100 * self.in_ram() // self._cap, 100 * used // size)

    def add(self, topic, pairs, age_ms=0):
        """Queue a reading of (key, value) pairs, stamped now less `age_ms` (a noise event is
        dated by its start); when full the oldest goes. Returns its seq.
        """
        body = payload.fields(pairs)
        n = len(body)
        self.seq += 1
        self.taken += 1
        if n > MAX_BODY_BYTES or n > len(self._ring):
            # Cannot happen with the node's own readings; counted, never a crash.
            self.dropped += 1
            return self.seq
        while self.in_ram() >= self._cap:
            self._drop_oldest()
        at = self._room(n)
        while at < 0:
            self._drop_oldest()
            at = self._room(n)
        slot = (self._head + self._len) % self._cap
        self._ring[at:at + n] = body
        self._write = at + n
        self._seqs[slot] = self.seq
        ts = self._clock()
        age_s = (age_ms + 500) // 1000
        self._ts[slot] = 0 if ts is None else ts - age_s
        self._taken_s[slot] = max(0, self._uptime_ms() // 1000 - age_s)
        self._offs[slot] = at
        self._lens[slot] = n
        self._kinds[slot] = self._kind(topic)
        self._len += 1
        return self.seq

    def _kind(self, topic):
        topics = self._topics
        for i in range(len(topics)):
            if topics[i] == topic:
                return i
        topics.append(topic)
        return len(topics) - 1

    def _room(self, n):
        """Where n contiguous bytes fit in the ring after the newest body, or -1."""
        if not self._len:
            self._write = 0
            return 0
        start = self._offs[self._head]
        end = self._write
        if end > start:  # in use: [start, end); free: the rest of the ring, then its start
            if len(self._ring) - end >= n:
                return end
            return 0 if start >= n else -1
        return end if start - end >= n else -1  # wrapped: free only [end, start)

    def _drop_oldest(self):
        head = self._head
        if self._seqs[head] == self._in_flight and not self._flight_seq:
            # On its way to the broker and will arrive: it moves out of the ring instead.
            n = self._lens[head]
            at = self._offs[head]
            self._flight[:n] = self._ring[at:at + n]
            self._flight_seq = self._seqs[head]
            meta = self._flight_meta
            meta[0], meta[1], meta[2], meta[3] = (self._ts[head], self._taken_s[head], n,
                                                  self._kinds[head])
        else:
            self.dropped += 1
        self._head = (head + 1) % self._cap
        self._len -= 1

    def send_next(self):
        """(seq, topic, payload, dup) of the oldest reading, which is now in flight; dup when it
        was handed out before (a resend: MQTT's DUP flag). None when nothing waits.

        A ts worked back here is kept, so a resend carries the same one.
        """
        journal = self.journal
        if journal is not None and len(journal):
            sent = journal.send_next()  # None if it turned out unreadable, and was set aside
            if sent is not None:
                self._from_journal = True
                return sent
        self._from_journal = False
        if self.hold:
            return None
        if self._flight_seq:
            meta = self._flight_meta
            meta[0] = self._stamp(meta[0], meta[1])
            body = memoryview(self._flight)[:meta[2]]
            seq, ts, kind = self._flight_seq, meta[0], meta[3]
        elif self._len:
            head = self._head
            ts = self._ts[head] = self._stamp(self._ts[head], self._taken_s[head])
            at = self._offs[head]
            body = memoryview(self._ring)[at:at + self._lens[head]]
            seq, kind = self._seqs[head], self._kinds[head]
        else:
            return None
        dup = seq == self._in_flight
        self._in_flight = seq
        return seq, self._topics[kind], payload.reading(self.boot, seq, ts or None, body), dup

    def peek(self, i):
        """The i-th oldest reading in RAM (0: the oldest) as (seq, ts, taken_s, topic, body,
        handed): ts 0 while still unknown, handed when send_next() gave it out."""
        if self._flight_seq:
            if not i:
                meta = self._flight_meta
                meta[0] = self._stamp(meta[0], meta[1])
                seq = self._flight_seq
                return (seq, meta[0], meta[1], self._topics[meta[3]],
                        memoryview(self._flight)[:meta[2]], seq == self._in_flight)
            i -= 1
        slot = (self._head + i) % self._cap
        ts = self._ts[slot] = self._stamp(self._ts[slot], self._taken_s[slot])
        at = self._offs[slot]
        seq = self._seqs[slot]
        return (seq, ts, self._taken_s[slot], self._topics[self._kinds[slot]],
                memoryview(self._ring)[at:at + self._lens[slot]], seq == self._in_flight)

    def forget(self, n):
        """The n oldest readings in RAM are kept elsewhere now (the journal): out of RAM,
        counted neither delivered nor dropped."""
        for _ in range(n):
            if self._flight_seq:
                self._flight_seq = 0
            else:
                self._head = (self._head + 1) % self._cap
                self._len -= 1

    def _stamp(self, ts, taken_s):
        if ts:
            return ts
        now = self._clock()
        if now is None:
            return 0
        return now - (self._uptime_ms() // 1000 - taken_s)

    def pop(self, seq):
        """Reading `seq` (the one in flight, so the oldest) was delivered: forget it.

        A repeated acknowledgement, or one for another seq, pops nothing.
        """
        journal = self.journal
        if self._from_journal:
            if journal is not None and journal.pop(seq):
                self.delivered += 1
            return
        if self._flight_seq:
            if seq == self._flight_seq:
                self._flight_seq = 0
                self.delivered += 1
            return
        if self._len and self._seqs[self._head] == seq:
            self._head = (self._head + 1) % self._cap
            self._len -= 1
            self.delivered += 1
        elif journal is not None and journal.pop(seq):
            # It moved to the journal while it was in flight.
            self.delivered += 1
