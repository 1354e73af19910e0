"""How an update over MQTT stands, on <prefix>/<node>/ota (retained): said by node.otaoffer and
node.ota while one runs, by node.otaboot after the reboot that ends one, and by node.wiring for
an offer the heap has no room for. Loaded for the moment it speaks.
"""

import json

from node import VERSION

_TAG_HEX = 64


def say(node, state, m, reason=None, at=None):
    """{"state", "id", "version" (the one running), "target", "reason"?}, and while receiving
    "next", "bytes", "chunk_max" (`at`). `m` is the manifest, or what an offer said of itself:
    its words come back as text of at most 40 characters, or null."""
    out = {"state": state, "version": VERSION}
    for key, word in (("id", "id"), ("target", "version")):
        word = m.get(word)
        out[key] = word if isinstance(word, str) and len(word) <= 40 else None
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
