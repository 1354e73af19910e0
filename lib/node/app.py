"""The app: read the config (node.startup), then build and run the node (node.wiring); or safe mode.

main.py only calls start(). The config code runs first and leaves the heap before the node's
modules are imported: their many small pieces fill the holes it leaves, and the large buffers the
node takes once (the outbox, the audio frames) still find room in one piece.
"""

import asyncio
import gc
import sys
import time

from micropython import const

from node import board, bootcount, files, unload, wdtfeed
from node.log import log

# After an unexpected error, the time to read it on the console before the board resets.
_CRASH_RESET_DELAY_MS = const(3000)
# MicroPython collects garbage only when the heap is full. Left at that, the boot's short-lived
# objects (the config parsed, modules loaded) push the long-lived ones across the whole heap,
# and its free half is left in pieces too small for the outbox's ring. A collection every few
# KB allocated keeps what lives packed low, at about 1 ms each on the board.
_GC_EVERY_BYTES = const(4096)


def start():
    gc.threshold(_GC_EVERY_BYTES)
    from node import startup

    booted = startup.boot()
    # The code that read the config is done (until a command changes a setting): it leaves the
    # heap before the outbox takes its share.
    del startup
    unload("startup", "config", "settings")
    if booted is None:
        return
    cfg, saved, secrets, ctx = booted
    node = None
    try:
        from node.wiring import Node

        node = Node(cfg, saved, secrets, ctx)
        asyncio.run(node.run())
    except KeyboardInterrupt:
        # Stopped at the console (mpremote, Ctrl-C) while every task was alive: not a crash.
        if node is not None:
            if not node.supervisor.stale():
                bootcount.mark_stable(files.BOOT_PATH)
            # The watchdog cannot be stopped: fed from a timer, the REPL is free for as long as
            # it takes (boot.py takes over after the soft reset mpremote makes).
            wdtfeed.start(node.watchdog, board.timer(wdtfeed.TIMER_ID), cfg["watchdog_s"] * 250)
            log("main", "stopped at the console: the watchdog is fed from a timer")
        raise
    except Exception as e:  # noqa: BLE001 - anything at all: a node must not sit at the REPL
        sys.print_exception(e)
        log("main", "crashed: %r; resetting in %d s" % (e, _CRASH_RESET_DELAY_MS // 1000))
        time.sleep_ms(_CRASH_RESET_DELAY_MS)
        board.reset()
