"""The task that keeps the board's clock, and what the clock can be trusted for.

The SNTP exchange itself is node.ntp, loaded for each query and unloaded after: a sync comes
once an hour (ntp.resync_s), and its code need not stay in the heap between them.
"""

import asyncio
import json

from micropython import const

from node import unload
from node.log import log

_TIMEOUT_MS = const(2000)
# A lost packet is asked again soon (UDP gives no second chance), then less often while the
# server stays silent: until the first answer nothing dated can be trusted.
_RETRY_MIN_S = const(1)
_RETRY_MAX_S = const(60)
_LINK_POLL_S = const(1)
# The RTC starts at 2000-01-01 on power-on: any time before this build's year means nobody set
# the clock (NTP, the floor, or a previous boot before a soft reset).
_VALID_FROM_S = 1767225600  # 2026-01-01
_FROM_NTP = "ntp"
_FROM_FLOOR = "floor"


class Clock:
    """The board's clock: what it can be trusted for, and the task that sets it by SNTP.

    After a power-on the RTC reads 2000-01-01, and TLS (which checks certificate dates) fails.
    Two levels, then:
    - can_verify(): the RTC is past this build's year, so certificate dates can be checked.
      At boot (start()) an RTC still at 2000 is set to the *floor*, the last time this board
      saw (kept in `floor_path`, saved rarely), so a warm boot connects at once;
    - now(): the time for readings, or None while it is only the floor (off by however long the
      board was off) or unset. Readings taken then get their ts worked back later (Outbox).
    `settings` is the config's "ntp" section; `link_up()` tells when the network is up;
    `rtc()` and `set_rtc(unix_s)` are the board's RTC in Unix seconds (node.board).
    """

    def __init__(self, settings, link_up, rtc, set_rtc, floor_path):
        self._settings = settings
        self._link_up = link_up
        self._rtc = rtc
        self._set_rtc = set_rtc
        self._floor_path = floor_path
        self._trusted = True  # until start() finds the RTC set from the floor only
        self._addr = None
        self.syncs = 0

    def can_verify(self):
        return self._rtc() >= _VALID_FROM_S

    def now(self):
        now = self._rtc()
        return now if self._trusted and now >= _VALID_FROM_S else None

    def start(self):
        """At boot: the floor for an RTC that power-on reset; say what the clock is."""
        # The RTC kept across a reset, or the floor after a power-on put it back to 2000.
        known_s, exact = known_time(self._rtc(), self._floor_path)
        if self._rtc() >= _VALID_FROM_S:
            self._trusted = exact
            log("time", "clock %s" % ("set" if self._trusted
                                      else "at the floor from before the reset, until NTP"))
        elif known_s is not None:
            self._set_rtc(known_s)
            self._trusted = False
            _save_floor(self._floor_path, known_s, _FROM_FLOOR)
            log("time", "clock unset after power-on: set to the last time seen, %d, so TLS can"
                " check certificates; readings are dated once NTP answers" % known_s)
        else:
            self._trusted = False
            log("time", "clock unset (the RTC reads 2000) and no time seen before: no TLS until"
                " NTP sets it%s" % ("" if self._settings["server"] else
                                    "; ntp.server is null, so the broker's certificate cannot"
                                    " be verified: set ntp.server"))

    async def sync(self, timeout_ms=_TIMEOUT_MS):
        """Ask the server once; True when the clock was set. Errors are logged."""
        try:
            from node import ntp  # for this query only: its code leaves the heap after
        except MemoryError as e:  # a heap too full for a moment: the task asks again later
            log("time", "no room in RAM for the NTP query (%s)" % e)
            return False
        server, port = self._settings["server"], self._settings["port"]
        try:
            if self._addr is None:
                self._addr = ntp.resolve(server, port)
            now = await ntp.query(server, self._addr, timeout_ms)
        except (OSError, ntp.SntpError) as e:
            self._addr = None  # moved, or never answered: look it up again next time
            log("time", "NTP from %s failed: %s" % (server, e))
            return False
        finally:
            del ntp
            unload("ntp")
        before = self.now()
        self._set_rtc(now)
        self._trusted = True
        self.syncs += 1
        _save_floor(self._floor_path, now, _FROM_NTP)
        log("time", "clock set by NTP (%s)" % (
            "was unset" if before is None else "off by %d s" % (before - now)))
        return True

    async def run(self):
        if self._settings["server"] is None:
            log("time", "NTP off: the clock is %s" % ("set" if self.now() else "unset"))
            return
        retry_s = _RETRY_MIN_S
        while True:
            while not self._link_up():  # the publisher brings the link up
                await asyncio.sleep(_LINK_POLL_S)
            if await self.sync():
                retry_s = _RETRY_MIN_S
                # Each answer moves the floor on: saved once a resync_s (flash wear).
                await asyncio.sleep(self._settings["resync_s"])
            else:
                log("time", "asking again in %d s" % retry_s)
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, _RETRY_MAX_S)


def known_time(rtc_s, floor_path):
    """What the board knows of the time before any NTP answer: (Unix seconds it is at least, or
    None; whether that is the time itself).

    An RTC past this build's year was kept across a soft or watchdog reset: the time itself,
    unless only the floor had set it. An RTC that a power-on put back to 2000 says nothing; the
    floor (the last time seen) is then a lower bound, behind by however long the board was off.
    """
    floor, source = _load_floor(floor_path)
    if rtc_s >= _VALID_FROM_S:
        return rtc_s, source != _FROM_FLOOR
    if floor >= _VALID_FROM_S:
        return floor, False
    return None, False


def _load_floor(path):
    """(Unix seconds, source) saved last; (0, None) when missing or damaged."""
    try:
        with open(path) as f:
            state = json.load(f)
        return int(state["t"]), state["source"]
    except (OSError, ValueError, KeyError, TypeError, UnicodeError):
        return 0, None


def _save_floor(path, unix_s, source):
    try:
        with open(path, "w") as f:
            json.dump({"t": unix_s, "source": source}, f)
    except OSError as e:  # a full or read-only flash costs the floor, not the node
        log("time", "cannot save %s (%s)" % (path, e))
