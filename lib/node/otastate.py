"""Updates over MQTT in the running node: what a manifest that arrives leads to (offered()),
and how an update stands, on <prefix>/<node>/ota (retained: say()), from node.otaoffer and
node.ota while one runs, from node.otaboot after the reboot that ends one. Loaded for those
moments only (a few hundred bytes): node.otalink keeps none of the update's code.
"""

import gc
import json

from micropython import const

from node import VERSION, unload
from node.log import log

_TAG_HEX = const(64)
# The heap an update takes at its peak (node.otaoffer, then node.ota with a chunk in flight:
# 7.3 to 7.9 KB on the 32-bit port, tests/benchmarks/test_ota_figures.py), with a margin.
HEAP_BYTES = const(8704)


def offered(node, msg, reset, *statvfs):
    """node.wiring's handler for ota/manifest (`node`: its Node): the update under way answers
    it; or, with room in the heap, node.otaoffer checks it (against `statvfs`, a test's, or
    os.statvfs), leaves the heap again, and node.ota takes the update (as node.ota, until its
    end; `reset()` reboots the board). This module leaves the heap with the rest of the
    update's code when none goes on."""
    try:
        if admit(node, msg):
            from node import otaoffer  # its tag first, before the receiver loads

            offer = otaoffer.check(node, msg, *statvfs)
            del otaoffer
            unload("otaoffer")
            if offer is not None:
                from node.ota import Receiver

                Receiver(node, offer, reset)  # which is node.ota from here on
    except MemoryError:
        # The update's code did not fit in the heap after all: the node goes on.
        node.ota = None
        unload("ota", "otaoffer")
        log("ota", "not enough heap for an update")
    if node.ota is None:
        unload("otastate")  # once this call returns


def admit(node, msg):
    """A manifest message `msg` for node.wiring.Node `node`: True when it is to be checked as
    an offer. Else the update under way has answered it, or it is refused for the heap before
    any of the update's code loads (a load that fails part way leaves its names and its holes
    in the heap for good)."""
    if node.ota is not None and not node.ota.manifest(msg):
        return False  # (when the update under way gave way, this offer is a new one)
    gc.collect()
    free = gc.mem_free()
    if free >= HEAP_BYTES:
        return True
    why = "not enough heap for an update: %d bytes free, it needs %d" % (free, HEAP_BYTES)
    log("ota", "refused: " + why)
    say(node, "refused", claims(msg), why)
    return False


def say(node, state, m, reason=None, at=None):
    """{"state", "id", "version" (the one running), "target", "reason"?}, and while receiving
    "next", "bytes", "chunk_max" (`at`). `m` is the manifest, or what an offer said of itself:
    its words come back as text of at most 40 characters, or null."""
    out = {"state": state, "version": VERSION}
    for key, said in (("id", m.get("id")), ("target", m.get("version"))):
        out[key] = said if isinstance(said, str) and len(said) <= 40 else None
    if at is not None:
        out["next"], out["bytes"], out["chunk_max"] = at
    if reason is not None:
        out["reason"] = reason
    return node.publisher.publish_now(node.topics.ota.encode(), json.dumps(out).encode(),
                                      retain=True)


def claims(msg):
    """What a manifest message `msg` says of itself (its id, version), unchecked: for a
    refusal's reply, which its sender knows by the id."""
    try:
        said = json.loads(msg[_TAG_HEX + 1:])
    except ValueError:
        return {}
    return said if isinstance(said, dict) else {}
