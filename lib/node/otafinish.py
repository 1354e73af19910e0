"""Updates over MQTT: the whole stream is in (node.ota hands over and leaves the heap). The file
list checked, every file taken out of the stream and hashed as it is on flash, the swap's
journal written, the readings queued so far let out, then the swap (node.otaswap) and the
reboot. Meanwhile node.otastate answers for the update on node.ota.

The list must be the one the manifest's tag covers (its SHA-256), name only the app's own files
(no config, no secrets), add up to the manifest, hold a main.py and fit in the free flash.
"""

import binascii
import hashlib
import os
import time

from micropython import const

from node import VERSION, otaswap
from node.files import OTA_STREAM
from node.fsops import entries, exists, rmtree
from node.log import log
from node.otastate import end, say
from node.otaswap import BACKUP, JOURNAL, STAGE

_BLOCK = const(512)
_DIR = const(0x4000)
_DRAIN_MS = const(10000)
_REPLY_MS = const(1000)  # the last message before the reset needs a moment to leave
_PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."


async def run(node, m, total, start_ms, heap_min_free, statvfs, reset):
    """Check, take out, hash, journal, swap and reboot; or end the update as failed. The rest
    is what node.ota knew: the stream's length, when it began, the heap's low point."""
    import asyncio

    ms = max(1, time.ticks_diff(time.ticks_ms(), start_ms))
    log("ota", "received %d bytes in %d ms (%d B/s); heap free at least %s bytes; loop late "
        "by p99 %d ms, at most %d ms since the last telemetry" % (
            total, ms, total * 1000 // ms, heap_min_free, node.lag.percentile(99),
            node.lag.max_ms))
    kind, why, moved = "failed", None, 0
    try:
        kind, why = _check(m, statvfs or os.statvfs) or ("failed", None)
        if not why:
            for why in _extract(m):
                if why:
                    break
                await asyncio.sleep_ms(0)  # one block at a time: the loop goes on meanwhile
        if not why:
            import gc

            gc.collect()
            log("ota", "%d files taken out and hashed; heap free %d bytes" % (
                m["files"], gc.mem_free()))
            moved = _write_journal(m)
            os.remove(OTA_STREAM)  # every file is out of it: its flash is free again
    except (OSError, ValueError) as e:
        why = "flash: %r" % (e,)
    except MemoryError:
        why = "not enough heap"
    if why:
        end(node, m, kind, why)
        return
    say(node, "verifying", m, "verified; swapping %d files in (%d aside) and rebooting into %s"
        % (m["files"], moved, m["version"]))
    # Every reading queued so far reaches the broker before the reset (bounded).
    waited = 0
    outbox = node.outbox
    while waited < _REPLY_MS or (len(outbox) and waited < _DRAIN_MS):
        await asyncio.sleep_ms(100)
        waited += 100
    if len(outbox):
        log("ota", "rebooting with %d readings not delivered" % len(outbox))
    # From here to the reset nothing else runs: no await.
    otaswap.swap({"id": m["id"], "target": m["version"], "from": VERSION})
    log("ota", "swapped in: rebooting into %s" % m["version"])
    reset()


def _check(m, statvfs):
    """("failed" or "refused", why) when the list of the manifest `m` will not do, else None."""
    h = hashlib.sha256()
    buf = memoryview(bytearray(_BLOCK))
    left = m["list_bytes"]
    with open(OTA_STREAM, "rb") as f:
        while left:
            n = f.readinto(buf[:min(left, _BLOCK)])
            if not n:
                break
            h.update(buf[:n])
            left -= n
    if binascii.hexlify(h.digest()).decode() != m["list_sha256"]:
        return "failed", "the file list differs from the one the manifest's tag covers"
    st = statvfs("/")
    block = st[0]
    count = total = need = 0
    has_main = False
    try:
        for size, _sha, path in entries(m):
            why = _bad_path(path)
            if why:
                return "refused", why
            count += 1
            total += size
            need += (size + block - 1) // block  # taken out in littlefs's whole blocks
            has_main = has_main or path == "main.py"
    except ValueError as e:
        return "refused", "the file list is not readable: %s" % e
    if count != m["files"] or total != m["bytes"]:
        return "refused", "the file list has %d files and %d bytes, the manifest says %d and %d" \
            % (count, total, m["files"], m["bytes"])
    if not has_main:
        return "refused", "the bundle has no main.py"
    if need > st[3]:
        return "refused", "the files need %d KB of flash, %d KB are free" % (
            need * block // 1024, st[3] * block // 1024)
    return None


def _bad_path(path):
    # An update writes the app's own files only.
    if path not in ("boot.py", "main.py") and not path.startswith("lib/"):
        return "%s: an update holds boot.py, main.py and lib/ only" % path
    for part in path.split("/"):
        if not part or part[0] == "." or [c for c in part if c not in _PATH_CHARS]:
            return "%s: not a plain path" % path
    return None


def _extract(m):
    """Take every file out of the stream as ota/new/<n>, then hash it as it is on flash, a
    block per step (a generator); the last value is why a file is not what the list says, or
    None."""
    buf = memoryview(bytearray(_BLOCK))
    if not exists(STAGE[:-1]):
        os.mkdir(STAGE[:-1])
    with open(OTA_STREAM, "rb") as src:
        src.seek(m["list_bytes"])
        for n, (size, sha, path) in enumerate(entries(m)):
            staged = STAGE + str(n)
            with open(staged, "wb") as dst:
                left = size
                while left:
                    k = src.readinto(buf[:min(left, _BLOCK)])
                    if not k:
                        yield "the stream ends inside %s" % path
                        return
                    dst.write(buf[:k])
                    left -= k
                    yield None
            h = hashlib.sha256()
            with open(staged, "rb") as f:
                while True:
                    k = f.readinto(buf)
                    if not k:
                        break
                    h.update(buf[:k])
                    yield None
            if binascii.hexlify(h.digest()).decode() != sha:
                yield "%s: its SHA-256 differs from the manifest's" % path
                return


def _write_journal(m):
    """ota/journal (node.otaswap): the files the new version no longer has in its folders
    first (moved aside), then every file of it, main.py last. Returns how many go aside."""
    paths = [path for _size, _sha, path in entries(m)]
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
                if not entry[1] & _DIR and path not in paths:
                    j.write("M %s\n" % path)
                    moved += 1
        main = paths.index("main.py")
        for n in [n for n in range(len(paths)) if n != main] + [main]:
            if exists(paths[n]):
                j.write("R %d %s\n" % (n, paths[n]))
                moved += 1
            else:
                j.write("A %d %s\n" % (n, paths[n]))
    os.rename(JOURNAL + ".tmp", JOURNAL)
    rmtree(BACKUP[:-1])  # an old backup a power cut left is not this one's
    return moved
