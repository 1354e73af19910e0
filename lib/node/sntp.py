"""SNTP (RFC 4330) client that never blocks the event loop, and the task that keeps the clock.

MicroPython's ntptime.settime() waits up to a second for the answer with the whole board
stopped; here the UDP socket is non-blocking and polled from asyncio. Packet building and
checking are pure, so they are tested on the host.
"""

import asyncio
import errno
import socket
import time

from micropython import const

from node.log import log

_PACKET_BYTES = const(48)
_POLL_MS = const(20)
# Seconds from the NTP epoch (1900) to the Unix epoch (1970).
_NTP_TO_UNIX_S = 2208988800
_MODE_SERVER = const(4)
_LEAP_UNSYNCHRONISED = const(3)
_TIMEOUT_MS = const(2000)
# A lost packet is asked again soon (UDP gives no second chance), then less often while the
# server stays silent: until the first answer nothing dated can be trusted.
_RETRY_MIN_S = const(2)
_RETRY_MAX_S = const(60)
_LINK_POLL_S = const(1)


class SntpError(ValueError):
    """The server's answer is not a usable time."""


def request():
    packet = bytearray(_PACKET_BYTES)
    packet[0] = 0x23  # leap 0, version 4, mode 3 (client)
    return packet


def parse(packet):
    """Unix seconds from a server's answer; SntpError if it is not a trustworthy time."""
    if len(packet) < _PACKET_BYTES:
        raise SntpError("short answer (%d bytes)" % len(packet))
    if packet[0] & 7 != _MODE_SERVER:
        raise SntpError("not a server answer (mode %d)" % (packet[0] & 7))
    if packet[0] >> 6 == _LEAP_UNSYNCHRONISED or packet[1] == 0:
        # Stratum 0 is a kiss-o'-death (RATE, DENY): the server asks us to go away.
        raise SntpError("server unsynchronised or refusing (stratum %d)" % packet[1])
    seconds = int.from_bytes(packet[40:44], "big")  # transmit timestamp
    if seconds == 0:
        raise SntpError("no transmit time")
    # Era 0 ends in 2036; a value below 2000 is then era 1 (RFC 4330 section 3).
    if seconds < 3155673600:
        seconds += 1 << 32
    return seconds - _NTP_TO_UNIX_S


async def query(server, port, timeout_ms, beat=None):
    """Ask `server` for the time; Unix seconds, OSError on no answer, SntpError on a bad one."""
    addr = socket.getaddrinfo(server, port)[0][-1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.sendto(request(), addr)
        start = time.ticks_ms()
        while True:
            try:
                return parse(sock.recv(_PACKET_BYTES))
            except OSError as e:
                if e.errno != errno.EAGAIN:  # EAGAIN: nothing yet
                    raise
            if time.ticks_diff(time.ticks_ms(), start) > timeout_ms:
                raise OSError("no answer from %s within %d ms" % (server, timeout_ms))
            if beat is not None:
                beat()
            await asyncio.sleep_ms(_POLL_MS)
    finally:
        sock.close()


class Clock:
    """The task that sets the clock from `settings` (the config's "ntp" section) once the
    network is up (`link_up()`), then every `resync_s`. `now()` and `set_time(unix_s)` are the
    board's clock (node.board)."""

    def __init__(self, settings, link_up, now, set_time):
        self._settings = settings
        self._link_up = link_up
        self._now = now
        self._set_time = set_time
        self.syncs = 0

    async def run(self):
        server, port = self._settings["server"], self._settings["port"]
        if server is None:
            log("time", "NTP off: the clock is %s" % ("set" if self._now() else "unset"))
            return
        retry_s = _RETRY_MIN_S
        while True:
            while not self._link_up():  # the publisher brings the link up
                await asyncio.sleep(_LINK_POLL_S)
            try:
                now = await query(server, port, _TIMEOUT_MS)
            except (OSError, SntpError) as e:
                log("time", "NTP from %s failed: %s; asking again in %d s" % (server, e, retry_s))
                await asyncio.sleep(retry_s)
                retry_s = min(retry_s * 2, _RETRY_MAX_S)
                continue
            retry_s = _RETRY_MIN_S
            before = self._now()
            self._set_time(now)
            self.syncs += 1
            log("time", "clock set by NTP (%s)" % (
                "was unset" if before is None else "off by %d s" % (before - now)))
            await asyncio.sleep(self._settings["resync_s"])
