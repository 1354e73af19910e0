"""Bounded store-and-forward queue of readings: seq numbers, drop-oldest with a count; pure."""

from node import payload

_TS_UNKNOWN = b'"ts":null'


class Outbox:
    """Readings wait here, in order, until the broker has acknowledged them.

    `seq` counts data messages within one boot; every reading taken gets the next one, so a
    subscriber sees a gap exactly when a reading was dropped (and `dropped` says how many).

    A reading taken before the clock is set (ts None: no NTP answer yet after power-on) is
    queued with "ts":null and the uptime it was taken at; when it leaves and `clock()` knows
    the time by then, its ts is worked back from that. If the time is still unknown it goes
    out marked with "ts":null, never with a wrong date.
    """

    def __init__(self, capacity, boot, clock, uptime_ms):
        self._clock = clock  # () -> Unix seconds, or None while the time is unknown
        self._uptime_ms = uptime_ms  # () -> ms since start; never wraps, unlike ticks_ms
        self._seqs = [0] * capacity
        self._topics = [None] * capacity
        self._payloads = [None] * capacity  # type: list
        self._taken_ms = [None] * capacity  # uptime of readings queued without a time
        self._head = 0
        self._len = 0
        self._in_flight = 0  # seq handed out by peek() and not yet popped: never evicted
        self.boot = boot
        self.seq = 0  # the last seq handed out
        self.taken = 0
        self.delivered = 0
        self.dropped = 0

    def __len__(self):
        return self._len

    def add(self, topic, ts, fields):
        """Queue a reading (ts None: time unknown); when full the oldest goes. Returns its seq."""
        cap = len(self._topics)
        if self._len == cap:
            head = self._head
            nxt = (head + 1) % cap
            if self._seqs[head] == self._in_flight:
                # The oldest is on its way to the broker and will arrive: the next oldest
                # goes instead, and the one in flight moves into its slot.
                self._seqs[nxt] = self._seqs[head]
                self._topics[nxt] = self._topics[head]
                self._payloads[nxt] = self._payloads[head]
                self._taken_ms[nxt] = self._taken_ms[head]
            self._topics[head] = self._payloads[head] = self._taken_ms[head] = None
            self._head = nxt
            self._len -= 1
            self.dropped += 1
        self.seq += 1
        self.taken += 1
        tail = (self._head + self._len) % cap
        self._seqs[tail] = self.seq
        self._topics[tail] = topic
        self._payloads[tail] = payload.reading(self.boot, self.seq, ts, fields)
        self._taken_ms[tail] = self._uptime_ms() if ts is None else None
        self._len += 1
        return self.seq

    def peek(self):
        """(seq, topic, payload) of the oldest reading, now in flight; IndexError when empty."""
        if not self._len:
            raise IndexError("outbox empty")
        head = self._head
        taken_ms = self._taken_ms[head]
        if taken_ms is not None:
            now = self._clock()
            if now is not None:
                ts = now - (self._uptime_ms() - taken_ms) // 1000
                body = self._payloads[head]
                cut = body.find(_TS_UNKNOWN)
                self._payloads[head] = (body[:cut] + b'"ts":' + str(ts).encode()
                                        + body[cut + len(_TS_UNKNOWN):])
                self._taken_ms[head] = None
        self._in_flight = self._seqs[head]
        return self._seqs[head], self._topics[head], self._payloads[head]

    def pop(self, seq):
        """Reading `seq` (the one in flight, so the oldest) was delivered: forget it.

        A repeated acknowledgement, or one for another seq, pops nothing.
        """
        if not self._len or self._seqs[self._head] != seq:
            return
        self._topics[self._head] = self._payloads[self._head] = self._taken_ms[self._head] = None
        self._head = (self._head + 1) % len(self._topics)
        self._len -= 1
        self.delivered += 1
