"""Drives node.ota.Receiver under MicroPython for tests/unit/test_ota.py, in a flash folder (the
working directory), as node.wiring does: one Receiver from the first manifest until it says it
is done, a fresh one after a "reboot".

    micropython ota_run.py STEPS.json

STEPS.json: {"node": id, "key": ota_key, "free": bytes of flash free (None: the real statvfs),
"steps": [[kind, arg], ...]}; kinds: "manifest" / "chunk" (arg: a file holding the message),
"wait" (arg: ms of asyncio), "reboot" (the Receiver forgotten, as after a reset), "state"
(arg: text for ota.json). Prints one line per event: PUB <json> for each state published, RESET,
DONE, and the node's log lines.
"""

import asyncio
import json
import os
import sys

from node.ota import Receiver
from node.payload import Topics

spec = json.load(open(sys.argv[1]))


class Publisher:
    connected = True

    def publish_now(self, topic, body, retain=False):
        print("PUB", topic.decode(), body.decode(), "retained" if retain else "")
        return True


class Outbox:
    def __len__(self):
        return 0


class Node:
    def __init__(self, node_id):
        self.node_id = node_id
        self.topics = Topics("nodes", node_id)
        self.publisher = Publisher()
        self.outbox = Outbox()


def statvfs(path):
    if spec["free"] is None:
        return os.statvfs(path)
    return (4096, 4096, 1024, spec["free"] // 4096, spec["free"] // 4096, 0, 0, 0, 0, 255)


receiver = [None]


def done():
    print("DONE")
    receiver[0] = None


def current():
    if receiver[0] is None:
        receiver[0] = Receiver(Node(spec["node"]), spec["key"], lambda: print("RESET"), done,
                               statvfs)
    return receiver[0]


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


async def main():
    for kind, arg in spec["steps"]:
        if kind == "manifest":
            current().manifest(read(arg))
        elif kind == "chunk":
            if receiver[0] is not None:  # node.wiring drops a chunk of no update under way
                receiver[0].chunk(read(arg))
        elif kind == "wait":
            await asyncio.sleep_ms(arg)
        elif kind == "reboot":
            receiver[0] = None
        elif kind == "state":
            write("ota.json", arg)


asyncio.run(main())
