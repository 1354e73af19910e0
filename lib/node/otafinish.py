"""Updates over MQTT, at the boot after the stream came in (node.otaboot, from boot.py, before
the app's modules load: the heap is empty then). The file list checked, every file taken out
of the stream and hashed as it is on flash, the swap's journal written, the swap
(node.otaswap). node.ota checked the whole stream against the manifest's SHA-256 before it
handed it over.

The list must name only the app's own files (no config, no secrets), add up to the manifest,
hold a main.py and fit in the free flash.
Boot-time code: no node.config, no node.board, no asyncio.
"""

import binascii
import hashlib
import os

from micropython import const

from node import bootcount, otaswap
from node.files import BOOT_PATH, OTA_DIR, OTA_STREAM
from node.otaboot import exists, rmtree, save
from node.otaswap import BACKUP, JOURNAL, STAGE

_BLOCK = const(4096)  # the heap is the boot's: a littlefs block at a time
_DIR = const(0x4000)
_PATH_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-."


def finish(state, statvfs=os.statvfs):
    """Check, take out, hash, journal and swap the update ota.json's `state` ("staged")
    describes. Returns None once it is swapped in (its trial next), else why not: then
    ota.json says "refused" (a list this node does not take) or "failed" with that reason,
    and nothing of the update stays but ota.json."""
    kind = "failed"
    try:
        why = _check(state, statvfs)
        if why:
            kind = "refused"
        else:
            why = _extract(state)
        if not why:
            _write_journal(state)
            for key in ("files", "bytes", "list_bytes"):
                del state[key]  # the trial goes on without them
            state["phase"] = "swap"
            save(state)  # from here a reset finishes the swap, which needs no stream
            os.remove(OTA_STREAM)  # every file is out of it: its flash is free again
            otaswap.finish_swap(state)
            return None
    except OSError as e:
        why = "flash: %r" % (e,)
    except MemoryError:
        why = "not enough heap at boot"
    state["phase"] = kind
    state["reason"] = why
    save(state)  # first: the reason is what the app reports (node.otaboot)
    rmtree(OTA_DIR)
    bootcount.mark_stable(BOOT_PATH)  # the version that runs on is not to blame
    return why


def _check(state, statvfs):
    """Why the list of the update `state` describes will not do, or None."""
    st = statvfs("/")
    block = st[0]
    count = total = need = 0
    has_main = False
    try:
        for size, _sha, path in entries(state["list_bytes"]):
            why = _bad_path(path)
            if why:
                return why
            count += 1
            total += size
            need += (size + block - 1) // block  # taken out in littlefs's whole blocks
            has_main = has_main or path == "main.py"
    except ValueError as e:
        return "the file list is not readable: %s" % e
    if count != state["files"] or total != state["bytes"]:
        return "the file list has %d files and %d bytes, the manifest says %d and %d" % (
            count, total, state["files"], state["bytes"])
    if not has_main:
        return "the bundle has no main.py"
    if need > st[3]:
        return "the files need %d KB of flash, %d KB are free" % (
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


def _extract(state):
    """Take every file out of the stream as ota/new/<n>, then hash it as it is on flash.
    Returns why a file is not what the list says, or None."""
    buf = memoryview(bytearray(_BLOCK))
    rmtree(STAGE[:-1])  # what a reset in the middle of this left
    os.mkdir(STAGE[:-1])
    with open(OTA_STREAM, "rb") as src:
        src.seek(state["list_bytes"])
        for n, (size, sha, path) in enumerate(entries(state["list_bytes"])):
            staged = STAGE + str(n)
            with open(staged, "wb") as dst:
                left = size
                while left:
                    k = src.readinto(buf[:min(left, _BLOCK)])
                    if not k:
                        return "the stream ends inside %s" % path
                    dst.write(buf[:k])
                    left -= k
            h = hashlib.sha256()
            with open(staged, "rb") as f:
                while True:
                    k = f.readinto(buf)
                    if not k:
                        break
                    h.update(buf[:k])
            if binascii.hexlify(h.digest()).decode() != sha:
                return "%s: its SHA-256 on flash differs from the list's" % path
    return None


def _write_journal(state):
    """ota/journal (node.otaswap): the files the new version no longer has in its folders
    first (moved aside), then every file of it, main.py last."""
    paths = [path for _size, _sha, path in entries(state["list_bytes"])]
    folders = []
    for path in paths:
        cut = path.rfind("/")
        if cut > 3 and path[:cut] not in folders:  # lib/<package>, not lib itself
            folders.append(path[:cut])
    with open(JOURNAL + ".tmp", "w") as j:
        for folder in folders:
            if not exists(folder):
                continue
            for entry in os.ilistdir(folder):
                path = folder + "/" + entry[0]
                if not entry[1] & _DIR and path not in paths:
                    j.write("M %s\n" % path)
        main = paths.index("main.py")
        for n in [n for n in range(len(paths)) if n != main] + [main]:
            j.write("%s %d %s\n" % ("R" if exists(paths[n]) else "A", n, paths[n]))
    os.rename(JOURNAL + ".tmp", JOURNAL)
    rmtree(BACKUP[:-1])  # an old backup a power cut left is not this one's


def entries(list_bytes):
    """(size, sha256 hex, path) for each line of the file list at the stream's start,
    `list_bytes` long; ValueError on a line that is not one."""
    with open(OTA_STREAM, "rb") as f:
        left = list_bytes
        while left > 0:
            line = f.readline()
            left -= len(line)
            try:
                parts = line.decode().rstrip("\n").split(" ")
            except UnicodeError:
                parts = ()
            if left < 0 or len(parts) != 3 or len(parts[1]) != 64:
                raise ValueError("not a line of a file list: %r" % line[:80])
            yield int(parts[0]), parts[1], parts[2]
