"""Updates over MQTT, the receiving side: an authenticated manifest, the bundle in chunks onto
flash, every file checked, then the swap (node.otaswap) and a reboot into the new version.

Imported at the first update message (node.wiring) and dropped again when the update ends.
Topics, under <prefix>/<node>/:
- ota/manifest (in): 64 hex digits of HMAC-SHA256(ota_key, J), a newline, then J, the manifest
  as JSON: {"v": 1, "id", "node", "version", "arch", "arch_number", "mpy": [v, sub or null],
  "native", "files", "bytes", "list_bytes", "list_sha256"};
- ota/chunk (in): a 4-byte big-endian offset into the stream, then the stream's bytes there.
  The stream is the file list (a line "<size> <sha256> <path>" a file: list_bytes long, its
  SHA-256 list_sha256, so the tag covers it), then each file's bytes in the list's order;
- ota (out, retained): node.payload.ota_state(); while receiving with "next" (the offset
  wanted), "bytes" (the stream's length) and "chunk_max" (the most a chunk may carry).
A chunk at another offset than "next" is not taken: the node says where it is and the sender
goes on from there. What is staged stays across a lost link or a reboot: the same manifest
offered again resumes where the staging stands. Nothing is staged before the tag verifies, and
nothing is swapped in before every file's SHA-256 matches the list.
"""

import asyncio
import binascii
import gc
import hashlib
import json
import os
import sys
import time

from micropython import const

from node import VERSION
from node.files import OTA_DIR, OTA_STATE
from node.log import log
from node.mqtt import MAX_INCOMING_BYTES
from node.otaswap import BACKUP, JOURNAL, STAGE, exists, makedirs, rmtree
from node.payload import ota_state

HEAD = OTA_DIR + "/head"  # the accepted manifest message, tag first
LIST = OTA_DIR + "/list"
# A chunk is held twice in RAM as it arrives (node.mqtt's packet and the message's copy): 1 KB
# keeps that small on a heap with 12 KB to spare, and four in flight fit the ESP32's TCP window.
_CHUNK_MAX_BYTES = const(1024)
_OFFSET_BYTES = const(4)
# A transfer that sent nothing for this long may be replaced by another offer.
_STALL_MS = const(60000)
_HASH_BLOCK = const(512)
_DRAIN_MS = const(10000)
_REPLY_MS = const(1000)  # the last message before the reset needs a moment to leave
_MAX_FILES = const(256)
_MAX_LIST_BYTES = const(32768)
_PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."
_TOP_FILES = ("boot.py", "main.py")


def hmac_sha256(key, msg):
    """RFC 2104 over hashlib.sha256 (all the firmware has): the tag of `msg` under `key`."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    pad = bytearray(64)
    for i, b in enumerate(key):
        pad[i] = b
    for i in range(64):
        pad[i] ^= 0x36
    inner = hashlib.sha256(pad)
    inner.update(msg)
    for i in range(64):
        pad[i] ^= 0x36 ^ 0x5C
    outer = hashlib.sha256(pad)
    outer.update(inner.digest())
    return outer.digest()


def same(a, b):
    """a == b in a time that does not tell how many leading bytes matched."""
    diff = len(a) ^ len(b)
    for i in range(min(len(a), len(b))):
        diff |= a[i] ^ b[i]
    return diff == 0


def entries():
    """(size, sha256 hex, path) for each line of the staged file list; ValueError on a bad one."""
    with open(LIST) as f:
        for line in f:
            parts = line.rstrip("\n").split(" ")
            if len(parts) != 3 or len(parts[1]) != 64:
                raise ValueError("bad line %r" % line[:80])
            yield int(parts[0]), parts[1], parts[2]


def size_of(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return 0


def bad_path(path):
    """Why `path` may not be written by an update, or None: the app's files only."""
    if path not in _TOP_FILES and not path.startswith("lib/"):
        return "%s: an update holds boot.py, main.py and lib/ only" % path
    for part in path.split("/"):
        if not part or part[0] == "." or [c for c in part if c not in _PATH_CHARS]:
            return "%s: not a plain path" % path
    return None


def loads_here(m):
    """Why the bundle's .mpy files cannot load on this firmware, or None (tools/deploy.py's
    check_mpy, on the board's side)."""
    have = getattr(sys.implementation, "_mpy", None)
    if have is None:
        return "this firmware does not say which .mpy files it loads"
    ver, sub, arch = have & 0xFF, (have >> 8) & 3, have >> 10
    want = m["mpy"]
    if want and want[0] != ver:
        return "the bundle holds .mpy v%s, this firmware loads v%d" % (want[0], ver)
    if m["native"]:
        if m["arch_number"] != arch:
            return "the bundle holds machine code for %s (arch %s); this board runs arch %d" % (
                m["arch"], m["arch_number"], arch)
        if len(want) > 1 and want[1] is not None and want[1] != sub:
            return "the bundle holds native .mpy v%s.%s, this firmware loads v%d.%d" % (
                want[0], want[1], ver, sub)
    return None


_FIELDS = (("id", str), ("node", str), ("version", str), ("arch", str), ("arch_number", int),
           ("mpy", list), ("native", bool), ("files", int), ("bytes", int),
           ("list_bytes", int), ("list_sha256", str))


def _short(value):
    # What an offer says about itself goes back on our topic: text, and not much of it.
    return value if isinstance(value, str) and len(value) <= 40 else None


class Refused(Exception):
    """The offer cannot be taken; the update ends, nothing of it stays."""


class Failed(Exception):
    """The transfer went wrong; the update ends, nothing of it stays."""


class Receiver:
    """One update at a time. `node` is node.wiring.Node (its publisher, topics, outbox, node id,
    telemetry); `reset()` reboots the board; `done()` is called when the update has ended, so
    the caller can let this module go."""

    def __init__(self, node, key, reset, done, statvfs=os.statvfs):
        self._node = node
        self._key = key.encode()
        self._reset = reset
        self._done = done
        self._statvfs = statvfs
        self._topic = node.topics.ota.encode()
        self._chunk_max = min(_CHUNK_MAX_BYTES, MAX_INCOMING_BYTES - 2 - len(
            node.topics.ota_chunk) - 2 - _OFFSET_BYTES)
        self._m = None  # the manifest being received (dict), None when idle
        self._tag = b""
        self._phase = None  # "receiving", then "verifying"
        self._next = 0  # the stream offset wanted next
        self._total = 0
        self._index = -1  # the file being received: -1 the list, then its lines
        self._left = 0  # its bytes still to come
        self._path = LIST
        self._file = None  # the staged file being written, open
        self._list = entries()  # read along as the files come (a generator: nothing opened yet)
        self._asked = -1  # the offset last asked for after a chunk out of order
        self._last_ms = 0
        self._start_ms = 0
        self.heap_min_free = None

    @property
    def busy(self):
        return self._m is not None and (self._phase != "receiving" or time.ticks_diff(
            time.ticks_ms(), self._last_ms) < _STALL_MS)

    # --- messages in ---------------------------------------------------------------------
    def manifest(self, msg):
        m = None
        try:
            if len(msg) < 66 or msg[64] != 0x0A:
                raise Refused("not a manifest: expected a 64-digit hex tag, a newline, JSON")
            body = memoryview(msg)[65:]
            try:
                # The firmware's json reads any buffer: no copy of the body.
                m = json.loads(body)  # pyright: ignore[reportArgumentType]
                tag = binascii.unhexlify(msg[:64])
            except ValueError:
                raise Refused("not a manifest: its tag is not hex or its body not JSON")
            if not isinstance(m, dict):
                m = None
                raise Refused("not a manifest: its body is not a JSON object")
            if not same(hmac_sha256(self._key, body), tag):
                raise Refused("the tag does not verify with ota_key: not from whom this node "
                              "trusts; nothing written")
            if self._m is not None:
                if tag == self._tag:  # offered again (a lost link, a stalled sender)
                    self._say(self._phase)
                    return
                if self.busy:
                    raise Refused("busy: the update to %s is being %s (%d of %d bytes)" % (
                        self._m["version"], self._phase, self._next, self._total))
                log("ota", "the update to %s stalled: replaced by the offer of %s"
                    % (self._m["version"], m.get("version")))
                self._close()
                self._m = None
            self._accept(m, tag, msg)
        except Refused as e:
            self._end("refused", str(e), m)
        except Failed as e:
            self._end("failed", str(e), m)
        except OSError as e:
            self._end("failed", "flash: %r" % (e,), m)

    def _accept(self, m, tag, msg):
        for key, kind in _FIELDS:
            if not isinstance(m.get(key), kind):
                raise Refused("the manifest's %s is missing or not a %s" % (key, kind.__name__))
        if m.get("v") != 1:
            raise Refused("manifest v%s: this node reads v1" % m.get("v"))
        if m["node"] != self._node.node_id:
            raise Refused("the manifest is for node %s" % m["node"])
        if not (0 < m["files"] <= _MAX_FILES and 0 < m["list_bytes"] <= _MAX_LIST_BYTES
                and m["bytes"] >= 0):
            raise Refused("the manifest's sizes are out of range")
        why = loads_here(m)
        if why:
            raise Refused(why)
        if exists(OTA_STATE):
            raise Refused("the last update is not finished (%s): wait for its outcome"
                          % OTA_STATE)
        if m["version"] == VERSION:
            self._end("applied", "already running %s" % VERSION, m)
            return
        self._m, self._tag, self._phase = m, tag, "receiving"
        self._total = m["list_bytes"] + m["bytes"]
        self._start_ms = self._last_ms = time.ticks_ms()
        if _head_tag() == tag:
            self._next = self._staged()
            log("ota", "resuming the update to %s at byte %d of %d"
                % (m["version"], self._next, self._total))
        else:
            rmtree(OTA_DIR)
            os.mkdir(OTA_DIR)
            with open(HEAD, "wb") as f:
                f.write(msg)
            self._next, self._index, self._left, self._path = 0, -1, m["list_bytes"], LIST
            log("ota", "receiving the update to %s: %d files, %d bytes" % (
                m["version"], m["files"], self._total))
        if self._index >= m["files"]:
            self._all_in()
        else:
            self._say("receiving")

    def chunk(self, msg):
        if self._phase != "receiving" or len(msg) <= _OFFSET_BYTES:
            return
        at = msg[0] << 24 | msg[1] << 16 | msg[2] << 8 | msg[3]
        if at != self._next:
            # Later than wanted: one went missing (or came out of order); ask once for the
            # offset wanted. Earlier: a copy of what is here already.
            if at > self._next and self._asked != self._next:
                self._asked = self._next
                self._say("receiving", "chunk at byte %d, expected %d" % (at, self._next))
            return
        try:
            if at + len(msg) - _OFFSET_BYTES > self._total:
                raise Failed("a chunk at byte %d runs past the stream's end (%d bytes)"
                             % (at, self._total))
            self._take(memoryview(msg)[_OFFSET_BYTES:])
        except (Refused, Failed, OSError) as e:
            kind = "refused" if isinstance(e, Refused) else "failed"
            self._end(kind, str(e) if not isinstance(e, OSError) else "flash: %r" % (e,))
            return
        self._last_ms = time.ticks_ms()
        if self._phase == "receiving":
            self._say("receiving")

    def on_connect(self):
        if self._m is not None:
            self._say(self._phase)

    # --- staging -------------------------------------------------------------------------
    def _take(self, data):
        while data:
            k = min(len(data), self._left)
            if k:
                if self._file is None:
                    makedirs(self._path)
                    self._file = open(self._path, "ab")
                self._file.write(data[:k])
                data = data[k:]
                self._left -= k
                self._next += k
            if not self._left:
                self._file_done()
                if self._phase != "receiving":
                    return

    def _file_done(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._index < 0:
            self._check_list()
        self._index += 1
        self._sample_heap()
        self._open_next()

    def _open_next(self):
        """Move on to the next file of the list with bytes to come (empty ones made at once)."""
        m = self._m
        while self._index < m["files"]:
            size, _sha, path = next(self._list)
            self._path = STAGE + path
            self._left = size
            if size:
                return
            makedirs(self._path)
            open(self._path, "wb").close()
            self._index += 1
        self._all_in()

    def _check_list(self):
        """The list is in: it must be the one the tag covers, name only the app's files, add
        up to the manifest and fit in the flash; before any file of it is staged."""
        m = self._m
        h = hashlib.sha256()
        buf = bytearray(_HASH_BLOCK)
        with open(LIST, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(memoryview(buf)[:n])
        if binascii.hexlify(h.digest()).decode() != m["list_sha256"]:
            raise Failed("the file list differs from the one the manifest's tag covers")
        st = self._statvfs("/")
        block = st[0]
        count = total = need = 0
        has_main = False
        try:
            for size, _sha, path in entries():
                why = bad_path(path)
                if why:
                    raise Refused(why)
                count += 1
                total += size
                # Staged whole blocks at a time; what a resume finds staged is spent already.
                need += (size + block - 1) // block - (size_of(STAGE + path) + block - 1) // block
                has_main = has_main or path == "main.py"
        except ValueError as e:
            raise Refused("the file list is not readable: %s" % e)
        if count != m["files"] or total != m["bytes"]:
            raise Refused("the file list has %d files and %d bytes, the manifest says %d and %d"
                          % (count, total, m["files"], m["bytes"]))
        if not has_main:
            raise Refused("the bundle has no main.py")
        free = block * st[3]
        need *= block
        if need > free:
            raise Refused("the bundle needs %d KB of flash to stage, %d KB are free"
                          % (need // 1024, free // 1024))
        self._list.close()
        self._list = entries()

    def _staged(self):
        """Where a staging left by the same offer stands: the offset to go on from."""
        m = self._m
        have = size_of(LIST)
        if have < m["list_bytes"]:
            self._index, self._left, self._path = -1, m["list_bytes"] - have, LIST
            return have
        self._index = -1
        self._check_list()
        offset = m["list_bytes"]
        self._index = 0
        for size, _sha, path in entries():
            have = size_of(STAGE + path)
            if have > size:  # cannot be ours: take that file again
                os.remove(STAGE + path)
                have = 0
            if have < size:
                break
            offset += size
            self._index += 1
            next(self._list)
        if self._index < m["files"]:
            size, _sha, path = next(self._list)
            self._path = STAGE + path
            self._left = size - have
            offset += have
        return offset

    def _all_in(self):
        self._close()
        self._phase = "verifying"
        ms = time.ticks_diff(time.ticks_ms(), self._start_ms)
        log("ota", "received %d bytes in %d ms (%d B/s); heap free at least %s bytes" % (
            self._total, ms, self._total * 1000 // max(ms, 1), self.heap_min_free))
        self._say("verifying")
        asyncio.create_task(self._finish())

    # --- the end -------------------------------------------------------------------------
    async def _finish(self):
        try:
            checker = self._verify()
            for _ in checker:
                await asyncio.sleep_ms(0)  # one block at a time: the loop goes on meanwhile
            moved = self._write_journal()
        except (Refused, Failed, ValueError, OSError) as e:
            self._end("refused" if isinstance(e, Refused) else "failed", str(e))
            return
        m = self._m
        self._say("verifying", "verified; swapping %d files in (%d aside) and rebooting into %s"
                  % (m["files"], moved, m["version"]))
        # Every reading queued so far reaches the broker before the reset (bounded).
        waited = 0
        outbox = self._node.outbox
        while waited < _REPLY_MS or (len(outbox) and waited < _DRAIN_MS):
            await asyncio.sleep_ms(100)
            waited += 100
        if len(outbox):
            log("ota", "rebooting with %d readings not delivered" % len(outbox))
        from node import otaswap  # from here to the reset nothing else runs: no await

        otaswap.swap({"id": m["id"], "target": m["version"], "from": VERSION})
        log("ota", "swapped in: rebooting into %s" % m["version"])
        self._reset()

    def _verify(self):
        """Hash every staged file against the list, one block per step (a generator)."""
        buf = bytearray(_HASH_BLOCK)
        for _size, sha, path in entries():
            h = hashlib.sha256()
            with open(STAGE + path, "rb") as f:
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    h.update(memoryview(buf)[:n])
                    yield
            if binascii.hexlify(h.digest()).decode() != sha:
                raise Failed("%s: its SHA-256 differs from the manifest's" % path)

    def _write_journal(self):
        """ota/journal (node.otaswap): the files the new version no longer has in its folders
        first (moved aside), then every file of it, main.py last. Returns how many go aside."""
        paths = [path for _size, _sha, path in entries()]
        folders = []
        for path in paths:
            cut = path.rfind("/")
            if cut > 3 and path[:cut] not in folders:  # lib/<package>, not lib itself
                folders.append(path[:cut])
        moved = 0
        with open(JOURNAL + ".tmp", "w") as j:
            for folder in folders:
                if not exists(folder):
                    continue
                for entry in os.ilistdir(folder):
                    path = folder + "/" + entry[0]
                    if not entry[1] & 0x4000 and path not in paths:
                        j.write("M %s\n" % path)
                        moved += 1
            paths.remove("main.py")
            paths.append("main.py")
            for path in paths:
                if exists(path):
                    j.write("R %s\n" % path)
                    moved += 1
                else:
                    j.write("A %s\n" % path)
        os.rename(JOURNAL + ".tmp", JOURNAL)
        rmtree(BACKUP[:-1])  # an old backup left by a power cut is not this one's
        return moved

    def _close(self):
        if self._file is not None:
            self._file.close()
            self._file = None
        self._list.close()

    def _end(self, outcome, reason, m=None):
        """The offer `m` (None: the update under way) ends with `outcome`."""
        log("ota", "%s: %s" % (outcome, reason))
        self._say(outcome, reason, m)
        if self._m is not None and m is not None and m is not self._m:
            return  # an offer refused while another update runs: that one goes on
        self._close()
        if self._m is not None:  # staging had begun: none of it stays
            rmtree(OTA_DIR)
        self._m = self._phase = None
        self._done()

    def _say(self, state, reason=None, m=None):
        m = m if m is not None else self._m or {}
        progress = (self._next, self._total, self._chunk_max) if state == "receiving" else None
        self._node.publisher.publish_now(self._topic, ota_state(
            state, _short(m.get("id")), VERSION, _short(m.get("version")), reason, progress),
            retain=True)

    def _sample_heap(self):
        gc.collect()
        free = gc.mem_free()
        if self.heap_min_free is None or free < self.heap_min_free:
            self.heap_min_free = free


def _head_tag():
    try:
        with open(HEAD, "rb") as f:
            head = f.read(64)
    except OSError:
        return None
    try:
        return binascii.unhexlify(head)
    except ValueError:
        return None
