"""An update over MQTT as the node sees it: its state on <prefix>/<node>/ota (the contract's
payload, retained), its end, and the update between its receiver (node.ota) and its finish
(node.otafinish), when a Verifying stands for it on node.ota while the receiver's code leaves
the heap for the finish's. Imported by the update's modules only.
"""

import json

from node import VERSION, unload

# Every module an update loads: all leave the heap when it ends.
MODULES = ("ota", "otaoffer", "otafinish", "otaswap", "otastate", "fsops")
_TAG_HEX = 64


def say(node, state, offer, reason=None, progress=None):
    """{"state", "id", "version" (running), "target", "reason"?} and while receiving "next",
    "bytes", "chunk_max" (`progress`). `offer` is the manifest, or what an offer said of
    itself: its words come back as text of at most 40 characters, or null."""
    out = {"state": state, "id": _text(offer.get("id")), "version": VERSION,
           "target": _text(offer.get("version"))}
    if progress is not None:
        out["next"], out["bytes"], out["chunk_max"] = progress
    if reason is not None:
        out["reason"] = reason
    return node.publisher.publish_now(node.topics.ota.encode(), json.dumps(out).encode(),
                                      retain=True)


def end(node, offer, outcome, reason):
    """The update under way ends with `outcome` ("refused", "failed"): said, none of it stays
    on flash, its code leaves the heap (node.wiring holds nothing else of it)."""
    from node.files import OTA_DIR
    from node.fsops import rmtree
    from node.log import log

    log("ota", "%s: %s" % (outcome, reason))
    say(node, outcome, offer, reason)
    rmtree(OTA_DIR)
    node.ota = None
    unload(*MODULES)


def claims(msg):
    """What a manifest message says of itself (its id, version), unchecked: for a reply."""
    try:
        said = json.loads(msg[_TAG_HEX + 1:])
    except ValueError:
        return {}
    return said if isinstance(said, dict) else {}


def hand_over(node, m, tag_hex, info):
    """The stream is in: node.otafinish takes the update over once node.ota's code (the
    receiver's) has left the heap; `info` is what it hands on (node.otafinish.run)."""
    import asyncio

    node.ota = Verifying(node, m, tag_hex)
    unload("ota")
    asyncio.create_task(_finish(node, m, info))


async def _finish(node, m, info):
    import gc

    gc.collect()  # the receiver's code and the last chunk go first
    try:
        from node import otafinish

        await otafinish.run(node, m, *info)
    except MemoryError:
        end(node, m, "failed", "not enough heap")


class Verifying:
    """node.ota while the update is verified: it answers for it (node.wiring's calls)."""

    def __init__(self, node, m, tag_hex):
        self._node, self._m, self._tag_hex = node, m, tag_hex

    def manifest(self, msg):
        if msg[:_TAG_HEX] == self._tag_hex:
            say(self._node, "verifying", self._m)
        else:
            say(self._node, "refused", claims(msg), "busy: the update to %s is verifying"
                % self._m["version"])

    def chunk(self, msg):
        pass  # all is in


def _text(value):
    return value if isinstance(value, str) and len(value) <= 40 else None
