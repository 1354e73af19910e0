"""Updates over MQTT, the receiving side: the stream of an authenticated update onto flash.

node.wiring has the offer checked by node.otaoffer (its tag first) and only then loads this
module, which leaves the heap again when the update ends. It appends each chunk to one file,
ota/stream, and nothing more: what happens once in an update is in modules loaded for that
moment only: node.otafinish, once the stream is in (the file list checked, every file taken
out of the stream and hashed, the journal, the swap by node.otaswap, the reboot), which this
module leaves the heap for.
Topics, under <prefix>/<node>/:
- ota/manifest (in): 64 hex digits of HMAC-SHA256(ota_key, J), a newline, then J, the manifest
  as JSON: {"v": 1, "id", "node", "version", "arch", "arch_number", "mpy": [v, sub or null],
  "native", "files", "bytes", "list_bytes", "list_sha256"};
- ota/chunk (in): a 4-byte big-endian offset into the stream, then the stream's bytes there.
  The stream is the file list (a line "<size> <sha256> <path>" a file: list_bytes long, its
  SHA-256 list_sha256, so the tag covers it), then each file's bytes in the list's order;
- ota (out, retained): node.otastate.say(); while receiving with "next" (the offset wanted),
  "bytes" (the stream's length) and "chunk_max" (the most a chunk may carry).
A chunk at another offset than "next" is not taken: the node says where it is (with a
"reason"), and the sender goes on from there. The stream stays across a lost link or a reboot:
the same manifest offered again goes on where it stands. Nothing is written before the tag
verifies; no file is taken out of the stream before the list is checked, nothing swapped in
before every file's SHA-256 matches the list.
"""

import gc
import time

from micropython import const

from node.files import OTA_STREAM
from node.log import log
from node.mqtt import MAX_INCOMING_BYTES
from node.otastate import claims, end, hand_over, say

# A chunk is held twice in RAM as it arrives (node.mqtt's packet and the message's copy): at
# most 1 KB, and less when the heap is short (a tenth of what is free, in steps of 256 bytes);
# four in flight fit the ESP32's TCP window.
_CHUNK_MAX_BYTES = const(1024)
_CHUNK_STEP = const(256)
_HEAP_PER_CHUNK = const(10)
_OFFSET_BYTES = const(4)
_TAG_HEX = const(64)
_STALL_MS = const(60000)  # a transfer silent this long gives way to another offer
# Every 8 KB of the stream: synced to flash (littlefs keeps what was synced through a power
# cut, so a resume loses no more), and the heap's low point sampled.
_CHECKPOINT_BYTES = const(8192)


class Receiver:
    """The update under way, which puts itself on `node.ota` (node.wiring.Node: its publisher,
    topics, outbox, lag probe); `offer` is what node.otaoffer made of the manifest; `reset()`
    reboots the board. When the update ends it takes itself out again (node.otastate)."""

    def __init__(self, node, offer, reset, statvfs=None):
        node.ota = self
        self.node = node
        # The manifest, its tag verified, and how much of its stream is on flash already.
        self.m, self.tag_hex, self.next = offer
        self.reset = reset
        self.statvfs = statvfs  # None: os.statvfs (node.otafinish)
        self.total = self.m["list_bytes"] + self.m["bytes"]
        self.phase = None  # "receiving", then "verifying" (node.otafinish takes over)
        self._file = None  # the stream, open for appending
        self._asked = -1  # the offset last asked for after a chunk out of order
        self.start_ms = self._last_ms = time.ticks_ms()
        self.heap_min_free = None
        gc.collect()
        fits = gc.mem_free() // _HEAP_PER_CHUNK // _CHUNK_STEP * _CHUNK_STEP
        self.chunk_max = max(_CHUNK_STEP, min(_CHUNK_MAX_BYTES, fits, MAX_INCOMING_BYTES - 2
                                              - len(node.topics.ota_chunk) - 2 - _OFFSET_BYTES))
        log("ota", "at byte %d of %d, in chunks of %d bytes" % (self.next, self.total,
                                                                 self.chunk_max))
        self.step()

    def step(self, reason=None):
        """Take chunks, or, once all is in, hand over to node.otafinish."""
        if self.next < self.total:
            self.phase = "receiving"
            self.say("receiving", reason)
            return
        self._close()
        self.phase = "verifying"
        self.say("verifying")
        self._sample_heap()
        hand_over(self.node, self.m, self.tag_hex,
                  (self.total, self.start_ms, self.heap_min_free, self.statvfs, self.reset))

    # --- messages in ---------------------------------------------------------------------
    def manifest(self, msg):
        """Another manifest while this update is under way."""
        if msg[:_TAG_HEX] == self.tag_hex:  # this one again (a lost link, a reboot)
            self.say(self.phase)
        elif self.phase != "receiving" or time.ticks_diff(time.ticks_ms(),
                                                          self._last_ms) < _STALL_MS:
            say(self.node, "refused", claims(msg), "busy: the update to %s is %s "
                "(%d of %d bytes)" % (self.m["version"], self.phase, self.next, self.total))
        else:  # this one stalled: it gives way (node.wiring then takes the offer)
            self.end("failed", "stalled at byte %d of %d: replaced by another offer"
                     % (self.next, self.total))

    def chunk(self, msg):
        if self.phase != "receiving" or len(msg) <= _OFFSET_BYTES:
            return
        at = msg[0] << 24 | msg[1] << 16 | msg[2] << 8 | msg[3]
        if at != self.next:
            # Later than wanted: one went missing (or came out of order); ask once for the
            # offset wanted. Earlier: a copy of what is here already.
            if at > self.next and self._asked != self.next:
                self._asked = self.next
                self.say("receiving", "chunk at byte %d, expected %d" % (at, self.next))
            return
        n = len(msg) - _OFFSET_BYTES
        if at + n > self.total:
            self.end("failed", "a chunk at byte %d runs past the stream's end (%d bytes)"
                     % (at, self.total))
            return
        try:
            if self._file is None:
                self._file = open(OTA_STREAM, "ab")
            self._file.write(memoryview(msg)[_OFFSET_BYTES:_OFFSET_BYTES + n])
            self.next += n
            self._last_ms = time.ticks_ms()
            if self.next // _CHECKPOINT_BYTES != at // _CHECKPOINT_BYTES:
                self._file.flush()
                self._sample_heap()
            self.step()
        except OSError as e:
            self.end("failed", "flash: %r" % (e,))
        except MemoryError:
            self.end("failed", "not enough heap")

    # --- the end -------------------------------------------------------------------------
    def _close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def end(self, outcome, reason):
        """The update ends with `outcome` ("failed"): none of it stays."""
        self._close()
        self.phase = None
        end(self.node, self.m, outcome, reason)

    def say(self, state, reason=None):
        say(self.node, state, self.m, reason,
            (self.next, self.total, self.chunk_max) if state == "receiving" else None)

    def _sample_heap(self):
        gc.collect()
        free = gc.mem_free()
        if self.heap_min_free is None or free < self.heap_min_free:
            self.heap_min_free = free
