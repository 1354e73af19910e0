"""Drives node.ota.Receiver under MicroPython for tests/unit/test_ota.py, in a flash folder (the
working directory), as node.wiring does: one Receiver from the first manifest until it says it
is done, a fresh one after a "reboot".

    micropython ota_run.py STEPS.json

STEPS.json: {"node": id, "key": ota_key, "free": bytes of flash free (None: the real statvfs),
"steps": [[kind, arg], ...]}; kinds: "manifest" / "chunk" (arg: a file holding the message),
"wait" (arg: ms of asyncio), "reboot" (the Receiver forgotten, as after a reset), "state"
(arg: text for ota.json). Prints one line per event: PUB <json> for each state published, RESET,
DONE (an offer refused, or an update ended), and the node's log lines. A reset by the Receiver
is followed by what boot.py does at the next boot (node.otaboot.at_boot: the stream taken
apart and swapped in), printed as BOOT <what it says>.
"""

import asyncio
import json
import os
import sys

from node import unload
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


class Lag:
    max_ms = 0

    def percentile(self, pct):
        return 0


class Node:
    def __init__(self, node_id):
        self.lag = Lag()
        self.node_id = node_id
        self.topics = Topics("nodes", node_id)
        self.publisher = Publisher()
        self.outbox = Outbox()
        self.ota = None  # the Receiver, as node.wiring holds it (it clears this at its end)
        self.ota_key = spec["key"]


def statvfs(path):
    if spec["free"] is None:
        return os.statvfs(path)
    return (4096, 4096, 1024, spec["free"] // 4096, spec["free"] // 4096, 0, 0, 0, 0, 255)


NODE = Node(spec["node"])


def manifest(msg):
    # node.otalink's manifest handler (the offer checked against the given statvfs)
    from node import otastate

    otastate.offered(NODE, msg, reset, statvfs)
    del otastate
    if NODE.ota is None:
        print("DONE")


RESETS = []


def reset():
    print("RESET")
    RESETS.append(True)


def boot():
    """The board after a reset: the app's RAM gone, then boot.py's part of the update."""
    NODE.ota = None
    unload("ota", "otaoffer", "otastate")
    from node import otaboot

    print("BOOT", otaboot.at_boot(True, lambda: print("RESET"))[0])
    del otaboot


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


async def main():
    for kind, arg in spec["steps"]:
        had = NODE.ota is not None
        if kind == "manifest":
            manifest(read(arg))
        elif kind == "chunk":
            if NODE.ota is not None:  # node.wiring drops a chunk of no update under way
                NODE.ota.chunk(read(arg))
        elif kind == "wait":
            await asyncio.sleep_ms(arg)
        elif kind == "reboot":  # what the update had in RAM is gone
            NODE.ota = None
            unload("ota", "otaoffer", "otastate")
            had = False
        elif kind == "state":
            write("ota.json", arg)
        await asyncio.sleep_ms(0)  # what the update starts as a task runs between messages
        if RESETS:
            RESETS.clear()
            boot()
        elif had and NODE.ota is None:
            print("DONE")  # the update ended


asyncio.run(main())
