"""Updates over MQTT: a manifest offered while no update is under way (node.wiring), checked
before the receiver's code (node.ota) is loaded, and dropped from the heap again after.

Its tag first (HMAC-SHA256 under ota_key, compared in constant time), then the offer: its
fields, this node, the firmware's .mpy, the free flash, no update unfinished. The manifest's
format is node.ota's.
"""

import binascii
import hashlib
import json
import os
import sys

from micropython import const

from node import VERSION
from node.files import OTA_DIR, OTA_HEAD, OTA_STATE, OTA_STREAM
from node.log import log

_TAG_HEX = const(64)
_MAX_FILES = const(256)
_MAX_LIST_BYTES = const(32768)


def check(node, msg, statvfs=os.statvfs):
    """The offer in the manifest message `msg` for node.ota's Receiver: (manifest, its tag in
    hex, the bytes of its stream on flash already) when `node` (node.wiring.Node) takes it,
    the staging ready. Else None, nothing written, and its state is published: "refused" with
    the reason, or "applied" when it offers the version running."""
    state, staged = "refused", -1
    m, why = _read(node.ota_key, msg)
    if why is None:
        why = _offer(m, node.node_id)
    if why is None and m["version"] == VERSION:
        state, why = "applied", "already running %s" % VERSION
    if why is None:
        # This offer's stream on flash already, if the manifest kept there is this one.
        try:
            with open(OTA_HEAD, "rb") as f:
                if f.read(_TAG_HEX) == msg[:_TAG_HEX]:
                    staged = os.stat(OTA_STREAM)[6]
        except OSError:
            pass  # none
        if staged > m["list_bytes"] + m["bytes"]:
            staged = -1
        why = _room(m, max(staged, 0), statvfs)
    if why is not None:
        log("ota", "%s: %s" % (state, why))
        from node.otastate import say

        say(node, state, m, why)
        return None
    log("ota", "%s %s: %d files, %d bytes" % (
        "resuming the update to" if staged >= 0 else "receiving the update to", m["version"],
        m["files"], m["list_bytes"] + m["bytes"]))
    if staged < 0:  # anything staged is another offer's: it goes, this one's manifest stays
        try:
            os.remove(OTA_STREAM)
        except OSError:
            pass  # none
        try:
            os.mkdir(OTA_DIR)
        except OSError:
            pass  # there already
        with open(OTA_HEAD, "wb") as f:
            f.write(msg)
        staged = 0
    for key in ("v", "node", "arch", "arch_number", "mpy", "native"):
        del m[key]  # checked: the receiver keeps only what it goes on with
    return m, msg[:_TAG_HEX], staged


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


def _read(key, msg):
    """(what the manifest says, why it is not a genuine one, or None)."""
    if len(msg) < _TAG_HEX + 2 or msg[_TAG_HEX] != 0x0A:
        return {}, "not a manifest: expected a 64-digit hex tag, a newline, JSON"
    body = memoryview(msg)[_TAG_HEX + 1:]
    try:
        # The firmware's json reads any buffer: no copy of the body.
        m = json.loads(body)  # pyright: ignore[reportArgumentType]
        tag = binascii.unhexlify(msg[:_TAG_HEX])
    except ValueError:
        return {}, "not a manifest: its tag is not hex or its body not JSON"
    if not isinstance(m, dict):
        return {}, "not a manifest: its body is not a JSON object"
    if not same(hmac_sha256(key.encode(), body), tag):
        return m, "the tag does not verify with ota_key: not from whom this node trusts; " \
            "nothing written"
    return m, None


def _offer(m, node_id):
    """Why the genuine offer `m` cannot be taken here, or None."""
    for key, kind in (("id", str), ("node", str), ("version", str), ("arch", str),
                      ("arch_number", int), ("mpy", list), ("native", bool), ("files", int),
                      ("bytes", int), ("list_bytes", int), ("sha256", str)):
        if not isinstance(m.get(key), kind):
            return "the manifest's %s is missing or not a %s" % (key, kind.__name__)
    if m.get("v") != 1:
        return "manifest v%s: this node reads v1" % m.get("v")
    if m["node"] != node_id:
        return "the manifest is for node %s" % m["node"]
    if not (0 < m["files"] <= _MAX_FILES and 0 < m["list_bytes"] <= _MAX_LIST_BYTES
            and m["bytes"] >= 0):
        return "the manifest's sizes are out of range"
    try:
        os.stat(OTA_STATE)
        return "the last update is not finished (%s): wait for its outcome" % OTA_STATE
    except OSError:
        pass  # none: the usual case
    # tools/deploy.py's check_mpy, on the board's side.
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


def _room(m, staged, statvfs):
    """Why the flash cannot hold the update, or None: at most its stream, whole blocks of
    littlefs, then each file taken out of it, less what is staged already."""
    st = statvfs("/")
    block = st[0]
    total = m["list_bytes"] + m["bytes"]
    need = ((total + block - 1) // block - staged // block + (m["bytes"] + block - 1) // block
            + m["files"])
    if need <= st[3]:
        return None
    return "the bundle needs up to %d KB of flash (its stream, then its files), %d KB are free" \
        % (need * block // 1024, st[3] * block // 1024)
