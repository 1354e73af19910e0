"""Topics and JSON payloads of the node's contract (DESIGN.md "Contracts"); pure."""

import json


class Topics:
    """`<prefix>/<node>/<kind>` for every topic the node uses, built once."""

    def __init__(self, prefix, node_id):
        base = prefix + "/" + node_id + "/"
        self.status = base + "status"
        self.climate = base + "climate"
        self.sound = base + "sound"
        self.event = base + "event"
        self.telemetry = base + "telemetry"
        self.cmd = base + "cmd"
        self.reply = base + "reply"
        # Updates over MQTT (node.ota): how one stands out; the manifest and the chunks in, on
        # ota/manifest and ota/chunk below it (node.otalink, only with an ota_key).
        self.ota = base + "ota"


def fields(pairs):
    """`"key":value,...` for (key, value) pairs, in their order, as bytes (no braces).

    Floats are written with two decimals: MicroPython's float repr would print -9.03 as
    -9.029999999999999. A float that is not a number (NaN, infinity) is written as null, so a
    bad value never makes invalid JSON. A list of (key, value) pairs is a nested object, its
    keys in that order (MicroPython's dicts keep none).
    """
    return _fields(pairs).encode()


def _fields(pairs):
    parts = []
    for key, value in pairs:
        if isinstance(value, float):
            text = "%.2f" % value if value - value == 0 else "null"
        elif isinstance(value, list):
            text = "{" + _fields(value) + "}"
        else:
            text = json.dumps(value)
        parts.append('"%s":%s' % (key, text))
    return ",".join(parts)


def reading(boot, seq, ts, body):
    """A data message: {"boot":B,"seq":N,"ts":T, ...} as bytes, keys in that order.

    `body` is what fields() made of the reading's own values; ts None (the clock is not set
    yet) is written as null.
    """
    head = '{"boot":%d,"seq":%d,"ts":%s' % (boot, seq, "null" if ts is None else "%d" % ts)
    return head.encode() + (b"," + body if body else b"") + b"}"


def telemetry(pairs):
    """The telemetry message: one JSON object of (key, value) pairs in the contract's order."""
    return b"{" + fields(pairs) + b"}"


def dumps(obj):
    return json.dumps(obj).encode()

