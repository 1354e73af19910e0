"""Topics and JSON payloads of the node's contract (DESIGN.md "Contracts"); pure."""

import json


class Topics:
    """`<prefix>/<node>/<kind>` for every topic the node uses, built once."""

    def __init__(self, prefix, node_id):
        base = prefix + "/" + node_id + "/"
        self.status = base + "status"
        self.climate = base + "climate"
        self.sound = base + "sound"
        self.telemetry = base + "telemetry"
        self.cmd = base + "cmd"
        self.reply = base + "reply"


def reading(boot, seq, ts, fields):
    """A data message: {"boot":B,"seq":N,"ts":T, ...fields} as bytes."""
    body = {"boot": boot, "seq": seq, "ts": ts}
    for key in fields:
        body[key] = fields[key]
    return json.dumps(body).encode()


def dumps(obj):
    return json.dumps(obj).encode()
