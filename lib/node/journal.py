"""Readings kept on flash while the broker is away: segment files of checked records; pure.

Imported only while it is needed (node.spill decides when); the filesystem is passed in, so a
test can hand it one that loses power at any write.

The journal is a folder of segment files named by increasing numbers, each at most
SEGMENT_BYTES (one LittleFS block). One boot writes a segment, in batches: one open, a write per
record, one close (LittleFS makes a file's appends durable at close). A boot never appends to an
earlier boot's segment, whose end a reset may have torn. A segment is deleted whole once every
reading in it has been acknowledged (PUBACK), so a reset in between sends its readings again,
marked DUP: a duplicate, never a loss.

A record is a magic byte, a CRC-32 of the rest (4 bytes), its kind and flags, the payload's
length (2 bytes), then the payload (integers little-endian):
- SEGMENT, first in every segment: the id of the boot that wrote it (the number of that boot's
  first segment: unique among the segments on flash, and no reliance on boot.json);
- TOPIC: an index and a topic; readings name their topic by index within their segment;
- READING: boot, seq, ts (0: unknown), taken_s (uptime when taken), topic index, body
  (payload.fields()); flag SENT: it was handed to the broker before it came here;
- ANCHOR: a boot's id, its uptime_s and the Unix time then: the clock became known during that
  boot, so its readings taken before get their ts worked back after a reset. Without one they
  leave with "ts": null, never a wrong date.
A record that fails its check (torn by a reset mid-write, or garbled) is skipped and counted,
and the reader looks for the next magic byte. A journal that cannot be read at all is set aside
(renamed JOURNAL.bad) with a log line, and a new one starts.
"""

import asyncio
import binascii
import errno
import os
import struct
import sys
from array import array

from micropython import const

from node import payload
from node.log import log

SEGMENT_BYTES = const(4096)  # one LittleFS block: a file this size takes exactly one
_MAGIC = const(0xA7)
_MAGIC_BYTE = b"\xa7"
_HEAD_BYTES = const(8)  # magic, CRC-32 (4) of what follows it, kind | flags, payload length (2)
_CHECKED = const(5)  # where the bytes the CRC covers start
_SEGMENT = const(1)
_TOPIC = const(2)
_READING = const(3)
_ANCHOR = const(4)
_KIND_MASK = const(0x0F)
_SENT = const(0x80)
_READING_FIELDS = const(17)  # boot, seq, ts, taken_s (4 bytes each), topic index (1)
_TOPICS_MAX = const(16)  # topics one segment can name (the node has three)
# The window segments are read through: any record the node writes fits in it, the largest
# a reading's, 8 + 17 + a body of at most 512 bytes (node.outbox.MAX_BODY_BYTES); a topic's
# is at most 8 + 137. Not larger: it is the journal's RAM while loaded.
_READ_BYTES = const(576)
_PAYLOAD_MAX = const(568)  # _READ_BYTES - _HEAD_BYTES
# One batch: a segment header, an anchor, a topic and the largest reading (25 + 512 bytes)
# with a topic of up to 400 bytes fit; the node's readings are 60-80 bytes with their record.
_WRITE_BYTES = const(1024)
_RECORDS_MAX = const(40)  # records in one batch (a record is at least 9 bytes)
_END = const(-1)
_BAD = const(-2)
_RETRY_S = const(60)  # after the flash refused a write: the outbox keeps the readings meanwhile


class Flash:
    """The board's filesystem, as the journal uses it."""

    open = staticmethod(open)
    listdir = staticmethod(os.listdir)
    mkdir = staticmethod(os.mkdir)
    remove = staticmethod(os.remove)
    rename = staticmethod(os.rename)
    rmdir = staticmethod(os.rmdir)


class Journal:
    """The readings on flash, oldest first: send_next()/pop() for the publisher (through the
    outbox, which sends these first), spill() for node.spill (append() one batch).

    `counts` has the counters telemetry reports (journaled, replayed, dropped, skipped): node.spill
    keeps them, as they outlive this object. At most `max_bytes` of segments are kept; past that
    the oldest segment goes, its readings counted as dropped. `clock()` (Unix s or None) and
    `uptime_ms()` date readings of this boot as the outbox does.
    """

    def __init__(self, fs, path, counts, boot, clock, uptime_ms, max_bytes):
        self._fs = fs
        self._dir = path
        self._counts = counts
        self._boot = boot
        self._clock = clock
        self._uptime_ms = uptime_ms
        self._max_segments = max_bytes // SEGMENT_BYTES
        self._rbuf = bytearray(_READ_BYTES)
        self._wbuf = bytearray(_WRITE_BYTES)
        self._rmv = memoryview(self._rbuf)  # made once: slicing them is the only allocation
        self._wmv = memoryview(self._wbuf)
        self._ends = array("H", (0 for _ in range(_RECORDS_MAX)))
        self._segments = []  # numbers, oldest first
        self._left = []  # readings in each not yet acknowledged
        self._anchors = {}  # boot id -> (uptime_s, unix_s), from earlier boots
        self._waiting = 0
        self._have_dir = False
        # The read window: _rbuf holds segment bytes from _win_at, _win_len of them.
        self._win_seg = 0
        self._win_at = 0
        self._win_len = 0
        self._p = 0  # the last record parsed: its payload is _rbuf[_p:_p + _n]
        self._n = 0
        # The head: the oldest segment, read record by record from _head_at.
        self._head_at = 0
        self._head_run = 0  # its writer's boot id (0: unknown, its header was lost)
        self._head_topics = [b""] * _TOPICS_MAX  # b"": not named (yet)
        self._dup_segment = 0  # the oldest at start: its replay may have begun before a reset
        # The reading at the head (loaded by _head_reading(), kept until popped).
        self._cur = False
        self._handed = False  # given out by send_next() since it was loaded
        self._c_boot = self._c_seq = self._c_ts = self._c_taken = 0
        self._c_topic = b""
        self._c_body = 0  # its body in _rbuf: _rbuf[_c_body:_c_body + _c_len]
        self._c_len = 0
        self._c_sent = False
        # Writing: this boot's id (its first segment's number), the next number, the segment
        # being appended to (0: none yet), its size, the topics it named.
        self._run = 1
        self._next = 1
        self._w_segment = 0
        self._w_size = 0
        self._w_topics = []
        self._undated = False  # a reading of this boot went to flash without its ts
        self._anchored = False
        self._retry_at_s = 0
        self._open()

    def __len__(self):
        return self._waiting

    def _path(self, number):
        return "%s/%d" % (self._dir, number)

    # --- start: what an earlier boot left --------------------------------------------------
    def _open(self):
        fs = self._fs
        try:
            names = fs.listdir(self._dir)
        except OSError as e:
            if e.errno != errno.ENOENT:
                self._set_aside(e)
            return  # none yet: the folder is made with the first segment
        self._have_dir = True
        numbers = []
        for name in names:
            if name.isdigit():
                numbers.append(int(name))
            else:
                log("journal", "ignored %s/%s: not a segment" % (self._dir, name))
        numbers.sort()
        if numbers:
            self._run = self._next = numbers[-1] + 1
        skipped = self._counts.skipped
        try:
            for number in numbers:
                # One without readings (a header and an anchor, or garbled) stays in line: it
                # is deleted when its turn comes, and its anchor still dates earlier ones.
                readings = self._scan(number)
                self._segments.append(number)
                self._left.append(readings)
                self._waiting += readings
                if readings and not self._dup_segment:
                    self._dup_segment = number
        except OSError as e:
            self._set_aside(e)
            return
        skipped = self._counts.skipped - skipped
        log("journal", "%d readings on flash from earlier boots, in %d segments%s"
            % (self._waiting, len(self._segments),
               ", %d garbled or torn records skipped" % skipped if skipped else ""))

    def _scan(self, number):
        """Count the intact readings of a segment, note its anchors and count what is garbled."""
        buf = self._rbuf
        at = readings = topics = 0
        garbled = False  # skipping a stretch of bad bytes: counted once
        self._win_len = 0
        while True:
            kind = self._parse(number, at)
            if kind == _END:
                break
            if kind == _BAD:
                if not garbled:
                    self._counts.skipped += 1
                    garbled = True
                at = self._resync(number, at)
                continue
            garbled = False
            p, n = self._p, self._n
            kind &= _KIND_MASK
            if kind == _READING and n >= _READING_FIELDS and (topics >> buf[p + 16]) & 1:
                readings += 1
            elif kind == _READING:
                self._counts.skipped += 1  # its topic record was lost
            elif kind == _TOPIC and n >= 2 and buf[p] < _TOPICS_MAX:
                topics |= 1 << buf[p]
            elif kind == _ANCHOR and n == 12:
                self._anchors[_u32(buf, p)] = (_u32(buf, p + 4), _u32(buf, p + 8))
            at += _HEAD_BYTES + n
        return readings

    def _set_aside(self, error):
        fs = self._fs
        bad = self._dir + ".bad"
        self._counts.dropped += self._waiting
        self._segments, self._left, self._waiting, self._anchors = [], [], 0, {}
        self._cur = self._handed = False
        self._head_at = self._head_run = self._w_segment = self._win_len = 0
        self._head_topics = [b""] * _TOPICS_MAX  # b"": not named (yet)
        self._have_dir = False
        try:
            _remove_folder(fs, bad)
            fs.rename(self._dir, bad)
        except OSError as e:
            log("journal", "cannot read %s (%s), nor set it aside (%s): readings stay in RAM"
                % (self._dir, error, e))
            self._max_segments = 0
            return
        log("journal", "cannot read %s (%s): set aside as %s; a new journal starts"
            % (self._dir, error, bad))

    # --- reading records ---------------------------------------------------------------------
    def _load(self, number, at):
        """Read segment `number` into the window from offset `at`; how many bytes came."""
        with self._fs.open(self._path(number), "rb") as f:
            f.seek(at)
            n = f.readinto(self._rbuf)
        self._win_seg, self._win_at, self._win_len = number, at, n or 0
        return self._win_len

    def _parse(self, number, at):
        """The record at offset `at` of segment `number`: its kind and flags, with its payload
        at _rbuf[_p:_p + _n]; _END where the data ends, _BAD where these bytes are no intact
        record. OSError when the segment cannot be read."""
        buf = self._rbuf
        for fresh in (False, True):
            p = at - self._win_at
            avail = self._win_len - p if number == self._win_seg and p >= 0 else -1
            if avail >= _HEAD_BYTES:
                n = buf[p + 6] | buf[p + 7] << 8
                if buf[p] != _MAGIC or n > _PAYLOAD_MAX:
                    return _BAD
                if avail >= _HEAD_BYTES + n:
                    if binascii.crc32(self._rmv[p + _CHECKED:p + _HEAD_BYTES + n]) != _u32(
                            buf, p + 1):
                        return _BAD
                    self._p, self._n = p + _HEAD_BYTES, n
                    return buf[p + _CHECKED]
            if fresh:
                # Read afresh from here and still short: the data ends, cleanly or torn.
                return _END if avail <= 0 else _BAD
            self._load(number, at)
        return _END  # not reached: the second pass returns

    def _resync(self, number, at):
        """Where the next record may start after the bad bytes at `at`: the next magic byte,
        or the end of the data."""
        at += 1
        while True:
            p = at - self._win_at
            if number != self._win_seg or not 0 <= p < self._win_len:
                if not self._load(number, at):
                    return at
                p = 0
            i = self._rbuf.find(_MAGIC_BYTE, p, self._win_len)
            if i >= 0:
                return self._win_at + i
            at = self._win_at + self._win_len

    def _head_reading(self):
        """Load the oldest reading on flash into _cur; False when there is none. Segments
        found to hold no more readings are deleted on the way."""
        while not self._cur:
            if not self._segments:
                return False
            if not self._next_in_head():
                self._finish_head()
        return True

    def _next_in_head(self):
        """Move on to the next reading in the head segment; False at its end."""
        number = self._segments[0]
        buf = self._rbuf
        at = self._head_at
        while True:
            kind = self._parse(number, at)
            if kind == _END:
                self._head_at = at
                return False
            if kind == _BAD:  # counted when the segment was first read
                at = self._resync(number, at)
                continue
            p, n = self._p, self._n
            flags, kind = kind, kind & _KIND_MASK
            at += _HEAD_BYTES + n
            if kind == _READING and n >= _READING_FIELDS:
                index = buf[p + 16]
                topic = self._head_topics[index] if index < _TOPICS_MAX else b""
                if not topic:
                    continue  # its topic record was lost: counted when first read
                self._cur = True
                self._handed = False
                self._c_boot, self._c_seq = _u32(buf, p), _u32(buf, p + 4)
                self._c_ts, self._c_taken = _u32(buf, p + 8), _u32(buf, p + 12)
                self._c_topic = topic
                self._c_body, self._c_len = p + _READING_FIELDS, n - _READING_FIELDS
                self._head_at = at  # where the next one starts
                self._c_sent = bool(flags & _SENT) or number == self._dup_segment
                return True
            if kind == _TOPIC and n >= 2 and buf[p] < _TOPICS_MAX:
                self._head_topics[buf[p]] = bytes(buf[p + 1:p + n])
            elif kind == _SEGMENT and n == 4:
                self._head_run = _u32(buf, p)

    def _finish_head(self):
        """The head segment holds no more readings: delete it."""
        left = self._left[0]
        if left:
            # Counted as intact before but unreadable now (the flash changed under us).
            self._counts.skipped += left
            self._waiting -= left
        self._delete(0)

    def _delete(self, i):
        number = self._segments.pop(i)
        self._left.pop(i)
        if not i:
            self._cur = self._handed = False
            self._head_at = self._head_run = 0
            self._head_topics = [b""] * _TOPICS_MAX  # b"": not named (yet)
        if number == self._w_segment:
            self._w_segment = 0  # the next batch starts a new one
        if number == self._win_seg:
            self._win_len = 0
        self._remove(number)

    def _remove(self, number):
        try:
            self._fs.remove(self._path(number))
        except OSError as e:  # its readings go again after the next boot: duplicates, no loss
            log("journal", "cannot delete %s (%s)" % (self._path(number), e))

    # --- sending -----------------------------------------------------------------------------
    def send_next(self):
        """(seq, topic, payload, dup) of the oldest reading on flash, now in flight; dup when
        it may have been sent before. None when there is none (or the journal turned out
        unreadable: it is set aside then)."""
        try:
            found = self._head_reading()
        except OSError as e:
            self._set_aside(e)
            found = False
        if not found:
            return None
        dup = self._handed or self._c_sent
        self._handed = True
        ts = self._c_ts = self._date()
        body = self._rmv[self._c_body:self._c_body + self._c_len]
        return (self._c_seq, self._c_topic,
                payload.reading(self._c_boot, self._c_seq, ts or None, body), dup)

    def _date(self):
        """The head reading's ts, worked back from its uptime when it has none yet: by the clock
        now for this boot's, by its boot's anchor for an earlier boot's; 0 while unknown."""
        ts, taken_s = self._c_ts, self._c_taken
        if ts:
            return ts
        if self._head_run == self._run:
            now = self._clock()
            return 0 if now is None else now - (self._uptime_ms() // 1000 - taken_s)
        anchor = self._anchors.get(self._head_run) if self._head_run else None
        if anchor is None or taken_s > anchor[0]:
            return 0
        return anchor[1] - (anchor[0] - taken_s)

    def pop(self, seq):
        """Reading `seq` was acknowledged: True if it was the one at the head (handed out by
        send_next(), or this boot's and moved here while in flight), which is then forgotten."""
        try:
            found = self._head_reading()
        except OSError as e:
            self._set_aside(e)
            return False
        if not found or self._c_seq != seq or not (
                self._handed or (self._c_boot == self._boot and self._head_run == self._run)):
            return False
        self._cur = self._handed = False
        self._left[0] -= 1
        self._waiting -= 1
        self._counts.replayed += 1
        if not self._left[0]:
            self._delete(0)
        return True

    # --- writing -----------------------------------------------------------------------------
    async def spill(self, outbox, now_s, settings):
        """node.spill's tick while readings go to flash: write the outbox's readings in batches
        once the oldest has waited `flush_s` (all of them while it is past its watermark), and
        the anchor when due. After the flash refused a write, nothing for _RETRY_S."""
        if now_s < self._retry_at_s:
            return
        while outbox.in_ram() and (now_s - outbox.peek(0)[2] >= settings["flush_s"]
                                   or outbox.fill_pct() >= settings["watermark_pct"]):
            if not await self._spill_batch(outbox, now_s):
                return
        if self.anchor_due():
            await self._spill_batch(outbox, now_s)

    async def _spill_batch(self, outbox, now_s):
        """One batch; True if it took readings and more may follow."""
        try:
            taken = self.append(outbox)
        except OSError as e:
            log("journal", "cannot write to flash (%s): readings stay in RAM; trying again in"
                " %d s" % (e, _RETRY_S))
            self._retry_at_s = now_s + _RETRY_S
            return False
        await asyncio.sleep_ms(0)  # a batch blocks the loop for a flash write: one at a time
        return taken > 0

    def anchor_due(self):
        """This boot's readings went to flash undated and the clock is known now."""
        return self._undated and not self._anchored and self._clock() is not None

    def append(self, outbox):
        """Write the oldest readings in `outbox`'s RAM, as many as one batch holds (and this
        boot's anchor when due), then forget them there. Returns how many readings went.
        OSError when the flash refuses: they stay in RAM then."""
        if self._w_segment:
            taken = self._batch(outbox, False)
            if taken is not None:
                return taken
        return self._batch(outbox, True) or 0

    def _batch(self, outbox, fresh):
        """append() into the segment being written, or (fresh) a new one; None when nothing
        fits in the one being written."""
        number = self._new_segment() if fresh else self._w_segment
        topics = [] if fresh else self._w_topics
        room = min(_WRITE_BYTES, SEGMENT_BYTES - (0 if fresh else self._w_size))
        buf = self._wbuf
        ends = self._ends
        records = self._heading(fresh)
        at = ends[0] if records else 0
        anchored = self.anchor_due() and at + _HEAD_BYTES + 12 <= room
        if anchored:
            struct.pack_into("<III", buf, at + _HEAD_BYTES, self._run,
                             self._uptime_ms() // 1000, self._clock())
            at = ends[records] = self._seal(at, _ANCHOR, 12)
            records += 1
        taken = first = last = 0
        undated = False
        while taken < outbox.in_ram() and records < _RECORDS_MAX - 1:
            seq, ts, taken_s, topic, body, handed = outbox.peek(taken)
            first = first or seq
            index = _index(topics, topic)
            need = _HEAD_BYTES + _READING_FIELDS + len(body)
            if index < 0:
                need += _HEAD_BYTES + 1 + len(topic)
            if at + need > room or (index < 0 and len(topics) >= _TOPICS_MAX):
                break
            if index < 0:
                index = len(topics)
                topics.append(topic)
                buf[at + _HEAD_BYTES] = index
                buf[at + _HEAD_BYTES + 1:at + _HEAD_BYTES + 1 + len(topic)] = topic
                at = ends[records] = self._seal(at, _TOPIC, 1 + len(topic))
                records += 1
            q = at + _HEAD_BYTES
            struct.pack_into("<IIIIB", buf, q, self._boot, seq, ts, taken_s, index)
            buf[q + _READING_FIELDS:q + _READING_FIELDS + len(body)] = body
            at = ends[records] = self._seal(at, _READING | (_SENT if handed else 0),
                                            _READING_FIELDS + len(body))
            records += 1
            taken += 1
            last = seq
            undated = undated or not ts
        if not (taken or anchored):
            # A reading too large for what is left of this segment; or, in a fresh one, larger
            # than a batch (a topic of hundreds of bytes): it stays in RAM.
            return 0 if fresh else None
        self._write(number, records, fresh)
        if fresh:
            self._w_segment, self._w_size, self._w_topics = number, 0, topics
            self._segments.append(number)
            self._left.append(0)
        self._w_size += at
        self._undated = self._undated or undated
        self._anchored = self._anchored or anchored
        if taken:
            self._written(outbox, number, taken, first, last)
        return taken

    def _written(self, outbox, number, taken, first, last):
        """Readings first..last (`taken` of them) are on flash now: out of RAM."""
        self._left[-1] += taken
        self._waiting += taken
        self._counts.journaled += taken
        outbox.forget(taken)
        log("journal", "seq %d..%d to flash (%s, %d bytes), %d readings there"
            % (first, last, self._path(number), self._w_size, self._waiting))

    def _heading(self, fresh):
        """A fresh segment starts with its header record: how many records that is (0 or 1)."""
        if not fresh:
            return 0
        struct.pack_into("<I", self._wbuf, _HEAD_BYTES, self._run)
        self._ends[0] = self._seal(0, _SEGMENT, 4)
        return 1

    def _seal(self, at, kind, n):
        """Put the header of the record whose n-byte payload is at _wbuf[at + 8:]; its end."""
        buf = self._wbuf
        buf[at] = _MAGIC
        buf[at + 5] = kind
        buf[at + 6] = n & 0xFF
        buf[at + 7] = n >> 8
        struct.pack_into("<I", buf, at + 1,
                         binascii.crc32(self._wmv[at + _CHECKED:at + _HEAD_BYTES + n]))
        return at + _HEAD_BYTES + n

    def _write(self, number, records, fresh):
        """Append the batch's records to segment `number`, a write each, durable at close."""
        fs = self._fs
        if not self._have_dir:
            try:
                fs.mkdir(self._dir)
            except OSError as e:
                _already_there(fs, self._dir, e)
            self._have_dir = True
        mv = self._wmv
        path = self._path(number)
        try:
            with fs.open(path, "ab") as f:
                start = 0
                for i in range(records):
                    f.write(mv[start:self._ends[i]])
                    start = self._ends[i]
        except OSError:
            # The batch stays in RAM, and a new segment takes the next one. Whatever reached
            # this segment may be read back after a reset: at worst sent twice.
            self._w_segment = 0
            if fresh:
                self._remove(number)
            raise

    def _new_segment(self):
        """The number of the segment the next batch starts; the oldest go while the journal
        would hold more than its bound."""
        while self._max_segments and len(self._segments) >= self._max_segments:
            # Never the segment whose reading is in flight: it will arrive.
            i = 1 if self._handed and len(self._segments) > 1 else 0
            left = self._left[i]
            self._counts.dropped += left
            self._waiting -= left
            log("journal", "full (%d segments): dropped %d readings, the oldest; %d so far"
                % (self._max_segments, left, self._counts.dropped))
            self._delete(i)
        if not self._max_segments:
            raise OSError("journal off: it could not be set aside")
        self._next += 1
        return self._next - 1

    def close(self):
        """Nothing waits on flash any more: delete what is left (headers, anchors) and the
        folder, and unload this module, so its RAM goes back to the heap until the next outage
        imports it afresh. OSError is logged: a leftover folder only makes the next boot look."""
        fs = self._fs
        try:
            for number in self._segments:
                fs.remove(self._path(number))
            self._segments, self._left = [], []
            if self._have_dir:
                fs.rmdir(self._dir)
                self._have_dir = False
        except OSError as e:
            log("journal", "cannot remove %s (%s)" % (self._dir, e))
        log("journal", "empty: deleted (%d readings journaled, %d replayed so far)"
            % (self._counts.journaled, self._counts.replayed))
        sys.modules.pop(__name__, None)
        package = sys.modules.get("node")
        if hasattr(package, "journal"):
            delattr(package, "journal")


def _u32(buf, at):
    return buf[at] | buf[at + 1] << 8 | buf[at + 2] << 16 | buf[at + 3] << 24


def _index(topics, topic):
    for i in range(len(topics)):
        if topics[i] == topic:
            return i
    return -1


def _remove_folder(fs, path):
    """Delete a folder and the files in it; none there is fine."""
    try:
        names = fs.listdir(path)
    except OSError:
        return
    for name in names:
        fs.remove(path + "/" + name)
    fs.rmdir(path)


def _already_there(fs, path, error):
    """mkdir failed: fine if the folder exists (made by an earlier journal), else re-raise."""
    try:
        fs.listdir(path)
    except OSError:
        raise error
