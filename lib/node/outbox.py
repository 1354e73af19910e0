"""Bounded store-and-forward queue of readings: seq numbers, drop-oldest with a count; pure."""

from node import payload


class Outbox:
    """Readings wait here, in order, until the broker has acknowledged them.

    `seq` counts data messages within one boot; every reading taken gets the next one, so a
    subscriber sees a gap exactly when a reading was dropped (and `dropped` says how many).
    """

    def __init__(self, capacity, boot):
        self._seqs = [0] * capacity
        self._topics = [None] * capacity
        self._payloads = [None] * capacity
        self._head = 0
        self._len = 0
        self.boot = boot
        self.seq = 0  # the last seq handed out
        self.taken = 0
        self.delivered = 0
        self.dropped = 0

    def __len__(self):
        return self._len

    def add(self, topic, ts, fields):
        """Queue a reading; when full the oldest goes (counted). Returns its seq."""
        cap = len(self._topics)
        if self._len == cap:
            self._head = (self._head + 1) % cap
            self._len -= 1
            self.dropped += 1
        self.seq += 1
        self.taken += 1
        tail = (self._head + self._len) % cap
        self._seqs[tail] = self.seq
        self._topics[tail] = topic
        self._payloads[tail] = payload.reading(self.boot, self.seq, ts, fields)
        self._len += 1
        return self.seq

    def peek(self):
        """(seq, topic, payload) of the oldest reading; IndexError when empty."""
        if not self._len:
            raise IndexError("outbox empty")
        head = self._head
        return self._seqs[head], self._topics[head], self._payloads[head]

    def pop(self, seq):
        """Reading `seq` was delivered: forget it if it is still the oldest.

        It may already be gone: dropped for room while its acknowledgement was on the way.
        """
        if not self._len or self._seqs[self._head] != seq:
            return
        self._topics[self._head] = self._payloads[self._head] = None
        self._head = (self._head + 1) % len(self._topics)
        self._len -= 1
        self.delivered += 1
