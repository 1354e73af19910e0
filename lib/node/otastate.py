"""How an update over MQTT stands, on <prefix>/<node>/ota (retained): node.otaoffer and node.ota
say it while one runs, node.otaboot after the reboot that ends one; and the staging cleared.
"""

import json
import os

from node import VERSION
from node.files import OTA_DIR, OTA_HEAD, OTA_STREAM


def say(node, state, m, reason=None, at=None):
    """{"state", "id", "version" (running), "target", "reason"?} and while receiving "next",
    "bytes", "chunk_max" (`at`). `m` is the manifest, or what an offer said of itself: its
    words come back as text of at most 40 characters, or null."""
    out = {"state": state, "id": _text(m.get("id")), "version": VERSION,
           "target": _text(m.get("version"))}
    if at is not None:
        out["next"], out["bytes"], out["chunk_max"] = at
    if reason is not None:
        out["reason"] = reason
    return node.publisher.publish_now(node.topics.ota.encode(), json.dumps(out).encode(),
                                      retain=True)


def _text(value):
    return value if isinstance(value, str) and len(value) <= 40 else None


def clear():
    """ota/ gone: while the app runs it holds the manifest and the stream, nothing else (the
    boot's files in it exist only while ota.json does, when no offer is taken)."""
    for path in (OTA_HEAD, OTA_STREAM):
        try:
            os.remove(path)
        except OSError:
            pass  # not there
    try:
        os.rmdir(OTA_DIR)
    except OSError:
        pass  # not there, or holding what a boot left (node.otafinish clears it)
