"""Bounded store-and-forward queue of readings: stamped, numbered, drop-oldest, counted; pure."""

from node import payload


class Outbox:
    """Readings wait here, in order, until the broker has acknowledged them.

    The outbox is the one owner of a reading's identity: `add()` gives it the next `seq` (data
    messages within one boot, so a subscriber sees a gap exactly when a reading was dropped, and
    `dropped` says how many) and its time, from `clock()` at that moment.

    A reading taken before the clock is set (no NTP answer yet after power-on) keeps the uptime
    it was taken at instead; when it goes out and the time is known by then, its ts is worked
    back from its age. If the time is still unknown it goes out with "ts":null, never with a
    wrong date.
    """

    def __init__(self, capacity, boot, clock, uptime_ms):
        self._clock = clock  # () -> Unix seconds, or None while the time is unknown
        self._uptime_ms = uptime_ms  # () -> ms since start; never wraps, unlike ticks_ms
        self._seqs = [0] * capacity
        self._topics = [None] * capacity
        self._bodies = [None] * capacity  # type: list  # payload.fields() of each reading
        self._ts = [None] * capacity  # type: list  # Unix seconds, None while unknown
        self._taken_ms = [0] * capacity  # uptime when taken, for a ts worked back later
        self._head = 0
        self._len = 0
        self._in_flight = 0  # seq handed out by send_next() and not yet popped: never evicted
        self.boot = boot
        self.seq = 0  # the last seq handed out
        self.taken = 0
        self.delivered = 0
        self.dropped = 0

    def __len__(self):
        return self._len

    def _move(self, src, dst):
        self._seqs[dst] = self._seqs[src]
        self._topics[dst] = self._topics[src]
        self._bodies[dst] = self._bodies[src]
        self._ts[dst] = self._ts[src]
        self._taken_ms[dst] = self._taken_ms[src]

    def _clear(self, slot):
        self._topics[slot] = self._bodies[slot] = self._ts[slot] = None

    def add(self, topic, pairs):
        """Queue a reading of (key, value) pairs, stamped now; when full the oldest goes.

        Returns its seq.
        """
        cap = len(self._topics)
        if self._len == cap:
            head = self._head
            nxt = (head + 1) % cap
            if self._seqs[head] == self._in_flight:
                # The oldest is on its way to the broker and will arrive: the next oldest
                # goes instead, and the one in flight moves into its slot.
                self._move(head, nxt)
            self._clear(head)
            self._head = nxt
            self._len -= 1
            self.dropped += 1
        self.seq += 1
        self.taken += 1
        tail = (self._head + self._len) % cap
        self._seqs[tail] = self.seq
        self._topics[tail] = topic
        self._bodies[tail] = payload.fields(pairs)
        self._ts[tail] = self._clock()
        self._taken_ms[tail] = self._uptime_ms()
        self._len += 1
        return self.seq

    def send_next(self):
        """(seq, topic, payload) of the oldest reading, which is now in flight.

        A ts worked back here is kept, so a resend carries the same one. IndexError when empty.
        """
        if not self._len:
            raise IndexError("outbox empty")
        head = self._head
        ts = self._ts[head]
        if ts is None:
            now = self._clock()
            if now is not None:
                ts = self._ts[head] = now - (self._uptime_ms() - self._taken_ms[head]) // 1000
        seq = self._in_flight = self._seqs[head]
        return seq, self._topics[head], payload.reading(self.boot, seq, ts, self._bodies[head])

    def pop(self, seq):
        """Reading `seq` (the one in flight, so the oldest) was delivered: forget it.

        A repeated acknowledgement, or one for another seq, pops nothing.
        """
        if not self._len or self._seqs[self._head] != seq:
            return
        self._clear(self._head)
        self._head = (self._head + 1) % len(self._topics)
        self._len -= 1
        self.delivered += 1
