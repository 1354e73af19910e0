"""Safe mode: no node, no watchdog, the REPL free for mpremote to repair the board; the broker told.

Imported only when the board is in safe mode (a boot loop, a config error, an unfinished deploy).
"""

import asyncio

from node import VERSION, board
from node.led import StatusLed
from node.log import log
from node.mqtt import LINK_ERRORS
from node.payload import Topics, dumps
from node.publisher import connect
from node.wiring import make_client, make_clock, node_id_of

# Safe mode tells the broker it is there, within this time, then leaves the REPL alone.
ANNOUNCE_MS = 30000
LED_TIMER_ID = 0  # node.wdtfeed has timer 1


async def announce(cfg, secrets, ctx, reason):
    """Best effort: say `safe-mode` (retained) on the status topic, then disconnect cleanly."""
    topics = Topics(cfg["topic_prefix"], node_id_of(cfg))
    wifi = board.Wifi(secrets["wifi_ssid"], secrets["wifi_password"])
    clock = make_clock(cfg, wifi)
    await wifi.up(_nothing)
    # TLS checks certificate dates: not with a clock that reads 2000.
    if not clock.can_verify() and cfg["ntp"]["server"] is not None:
        await clock.sync()
    if not clock.can_verify():
        raise OSError("the clock is not set: the broker's certificate cannot be verified")
    client = make_client(cfg, secrets, ctx, node_id_of(cfg))
    await connect(client, _nothing)
    client.publish(topics.status.encode(), b"safe-mode", retain=True)
    client.publish(topics.telemetry.encode(), dumps({"safe_mode": reason, "version": VERSION}))
    client.disconnect()  # a clean DISCONNECT: the last will must not overwrite "safe-mode"
    log("main", "safe mode announced on %s" % topics.status)


def _nothing():
    pass


def run(reason, cfg=None, secrets=None, ctx=None):
    """No app, no watchdog: the REPL stays free for mpremote to repair the board."""
    log("main", "safe mode: %s" % reason)
    if cfg:
        StatusLed(board.status_led(cfg["led"])).safe_mode(board.timer(LED_TIMER_ID))
    if cfg is None:
        return
    try:
        asyncio.run(asyncio.wait_for_ms(announce(cfg, secrets, ctx, reason), ANNOUNCE_MS))
    except LINK_ERRORS + (asyncio.TimeoutError,) as e:  # the broker is not reachable
        log("main", "safe mode not announced: %r" % (e,))
