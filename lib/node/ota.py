"""Updates over MQTT, the running node's side: the stream of an authenticated update onto
flash, checked against the manifest's SHA-256, then handed to the next boot.

node.wiring has the offer checked by node.otaoffer (its tag first) and only then loads this
module, which leaves the heap again when the update ends. A running node never holds more of
an update than this module, a chunk and a 512-byte buffer: the heavy part (each file taken out
of the stream and hashed as it is on flash, the swap) runs at the next boot, before the app's
modules load (node.otaboot, node.otafinish), where the heap is empty.
Topics, under <prefix>/<node>/:
- ota/manifest (in): 64 hex digits of HMAC-SHA256(ota_key, J), a newline, then J, the manifest
  as JSON: {"v": 1, "id", "node", "version", "arch", "arch_number", "mpy": [v, sub or null],
  "native", "files", "bytes", "list_bytes", "sha256"};
- ota/chunk (in): a 4-byte big-endian offset into the stream, then the stream's bytes there.
  The stream is the file list (a line "<size> <sha256> <path>" a file: list_bytes long), then
  each file's bytes in the list's order; "sha256" is the whole stream's, so the tag covers
  every byte of it;
- ota (out, retained): node.otastate.say(); while receiving with "next" (the offset wanted),
  "bytes" (the stream's length) and "chunk_max" (the most a chunk may carry).
A chunk at another offset than "next" is not taken: the node says where it is (with a
"reason"), and the sender goes on from there. The stream stays across a lost link or a reboot:
the same manifest offered again goes on where it stands. Nothing is written before the tag
verifies, nothing handed to the boot before the stream's SHA-256 matches the manifest's.
"""

import binascii
import gc
import hashlib
import json
import os
import time

from micropython import const

from node import VERSION, unload
from node.files import OTA_DIR, OTA_HEAD, OTA_STATE, OTA_STREAM
from node.log import log
from node.mqtt import MAX_INCOMING_BYTES
from node.otastate import claims, say

_TAG_HEX = const(64)
# A chunk is held twice in RAM as it arrives (node.mqtt's packet and the message's copy): at
# most 1 KB, and less when the heap is short (a tenth of what is free, in steps of 256 bytes);
# four in flight fit the ESP32's TCP window.
_CHUNK_MAX_BYTES = const(1024)
_CHUNK_STEP = const(256)
_HEAP_PER_CHUNK = const(10)
_OFFSET_BYTES = const(4)
_BLOCK = const(512)
_STALL_MS = const(60000)  # a transfer silent this long gives way to another offer
# Every 8 KB of the stream: synced to flash (littlefs keeps what was synced through a power
# cut, so a resume loses no more), and the heap's low point sampled.
_CHECKPOINT_BYTES = const(8192)
_DRAIN_MS = const(10000)
_REPLY_MS = const(1000)  # the last message before the reset needs a moment to leave


class Receiver:
    """The update under way, on `node.ota` from its offer to its end, when it takes itself out
    again with this module; `offer` is what node.otaoffer made of the manifest (the manifest,
    its tag, how much of its stream is on flash already); `reset()` reboots the board."""

    def __init__(self, node, offer, reset):
        node.ota = self
        self.node = node
        m, self.tag, self.next = offer
        self.m, self.reset = m, reset
        self.size = m["list_bytes"] + m["bytes"]
        self.phase = None  # "receiving", then "verifying"
        self.file = None  # the stream, open for appending
        self._last = -1  # the offset last asked for after a chunk out of order
        self._t0 = self._last_ms = time.ticks_ms()  # the offer's, the last chunk's
        self.heap_min_free = None
        gc.collect()
        fits = gc.mem_free() // _HEAP_PER_CHUNK // _CHUNK_STEP * _CHUNK_STEP
        # What node.mqtt takes in: the packet's 2-byte topic length, the topic (ota/chunk), the
        # offset, the bytes.
        self.chunk_max = max(_CHUNK_STEP, min(_CHUNK_MAX_BYTES, fits, MAX_INCOMING_BYTES - 4
                                              - len(node.topics.ota) - 6 - _OFFSET_BYTES))
        log("ota", "at byte %d of %d, in chunks of %d bytes" % (self.next, self.size,
                                                                 self.chunk_max))
        self.step()

    def step(self, reason=None):
        """Take chunks, or, once all is in, check the stream and hand it to the boot."""
        if self.next < self.size:
            self.phase = "receiving"
            self.say("receiving", reason)
            return
        if self.file is not None:
            self.file.close()
            self.file = None
        self.phase = "verifying"
        self.say("verifying")
        import asyncio

        asyncio.create_task(self.check())

    # --- messages in ---------------------------------------------------------------------
    def manifest(self, msg):
        """Another manifest while this update is under way: True when this one gave way."""
        if msg[:_TAG_HEX] == self.tag:  # this one again (a lost link, a reboot)
            self.say(self.phase)
        elif self.phase != "receiving" or time.ticks_diff(time.ticks_ms(),
                                                          self._last_ms) < _STALL_MS:
            say(self.node, "refused", claims(msg), "busy: the update to %s is %s (%d of %d "
                "bytes)" % (self.m["version"], self.phase, self.next, self.size))
        else:  # this one stalled: it gives way (node.wiring then takes the new offer)
            self.end("failed", "stalled at byte %d of %d: replaced by another offer"
                     % (self.next, self.size))
            return True
        return False

    def chunk(self, msg):
        if self.phase != "receiving" or len(msg) <= _OFFSET_BYTES:
            return
        at = msg[0] << 24 | msg[1] << 16 | msg[2] << 8 | msg[3]
        if at != self.next:
            # Later than wanted: one went missing (or came out of order); ask once for the
            # offset wanted. Earlier: a copy of what is here already.
            if at > self.next and self._last != self.next:
                self._last = self.next
                self.say("receiving", "chunk at byte %d, expected %d" % (at, self.next))
            return
        n = len(msg) - _OFFSET_BYTES
        if at + n > self.size:
            self.end("failed", "a chunk at byte %d runs past the stream's end (%d bytes)"
                     % (at, self.size))
            return
        try:
            if self.file is None:
                self.file = open(OTA_STREAM, "ab")
            self.file.write(memoryview(msg)[_OFFSET_BYTES:_OFFSET_BYTES + n])
            self.next += n
            self._last_ms = time.ticks_ms()
            if self.next // _CHECKPOINT_BYTES != at // _CHECKPOINT_BYTES:
                self.file.flush()
                self._sample_heap()
            self.step()
        except OSError as e:
            self.end("failed", "flash error: %r" % (e,))
        except MemoryError:
            self.end("failed", "not enough heap")

    # --- all is in -------------------------------------------------------------------------
    async def check(self):
        """The stream's SHA-256 against the manifest's, a block at a time (the loop goes on
        in between); then ota.json for the boot, the readings queued so far let out, the
        reset."""
        import asyncio

        m, node = self.m, self.node
        ms = max(1, time.ticks_diff(time.ticks_ms(), self._t0))
        self._sample_heap()
        log("ota", "received %d bytes in %d ms (%d B/s); heap free at least %s bytes; loop late "
            "by p99 %d ms, at most %d ms since the last telemetry" % (
                self.size, ms, self.size * 1000 // ms, self.heap_min_free,
                node.lag.percentile(99), node.lag.max_ms))
        try:
            h = hashlib.sha256()
            for _ in self._read(h):
                await asyncio.sleep_ms(0)  # a block at a time: the loop goes on meanwhile
            self._sample_heap()
            if binascii.hexlify(h.digest()).decode() != m["sha256"]:
                self.end("failed", "the stream's SHA-256 differs from the manifest's")
                return
            self.save()
        except OSError as e:
            self.end("failed", "flash error: %r" % (e,))
            return
        except MemoryError:
            self.end("failed", "not enough heap")
            return
        log("ota", "stream verified; heap free at least %d bytes during the update"
            % self.heap_min_free)
        self.say("verifying", "verified; rebooting into %s (its %d files are swapped in at "
                 "boot)" % (m["version"], m["files"]))
        # Every reading queued so far reaches the broker before the reset (bounded).
        waited = 0
        outbox = node.outbox
        while waited < _REPLY_MS or (len(outbox) and waited < _DRAIN_MS):
            await asyncio.sleep_ms(100)
            waited += 100
        if len(outbox):
            log("ota", "rebooting with %d readings not delivered" % len(outbox))
        log("ota", "staged: rebooting to swap %s in" % m["version"])
        self.reset()

    def _read(self, h):
        """The stream into the hash `h`, a block per step (a generator)."""
        buf = memoryview(bytearray(_BLOCK))
        with open(OTA_STREAM, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    return
                h.update(buf[:n])
                yield

    def save(self):
        """ota.json, "staged": what node.otafinish needs at the next boot."""
        m = self.m
        tmp = OTA_STATE + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"phase": "staged", "id": m["id"], "target": m["version"],
                       "from": VERSION, "files": m["files"], "bytes": m["bytes"],
                       "list_bytes": m["list_bytes"]}, f)
        os.rename(tmp, OTA_STATE)  # atomic on littlefs: staged wholly, or not at all

    # --- the end -------------------------------------------------------------------------
    def end(self, state, reason):
        """The update ends as `state` ("failed"): said, none of it stays on flash, and this
        module leaves the heap (node.wiring holds nothing else of it)."""
        if self.file is not None:
            self.file.close()
            self.file = None
        self.phase = None
        log("ota", "%s: %s" % (state, reason))
        say(self.node, state, self.m, reason)
        for path in (OTA_HEAD, OTA_STREAM):
            try:
                os.remove(path)
            except OSError:
                pass  # not there
        try:
            os.rmdir(OTA_DIR)
        except OSError:
            pass  # holding what a boot left: node.otafinish clears it
        self.node.ota = None
        unload("ota", "otastate")

    def say(self, state, reason=None):
        say(self.node, state, self.m, reason,
            (self.next, self.size, self.chunk_max) if state == "receiving" else None)

    def _sample_heap(self):
        gc.collect()
        free = gc.mem_free()
        if self.heap_min_free is None or free < self.heap_min_free:
            self.heap_min_free = free
