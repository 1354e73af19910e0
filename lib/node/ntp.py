"""SNTP (RFC 4330) that never blocks the event loop: one query, and the packets' rules.

MicroPython's ntptime.settime() waits up to a second for the answer with the whole board
stopped; here the UDP socket is non-blocking and polled from asyncio. Packet building and
checking are pure, so they are tested on the host. node.sntp.Clock loads this module for each
query and unloads it after.
"""

import asyncio
import errno
import socket
import time

from micropython import const

_PACKET_BYTES = const(48)
_POLL_MS = const(20)
# Seconds from the NTP epoch (1900) to the Unix epoch (1970).
_NTP_TO_UNIX_S = 2208988800
_MODE_SERVER = const(4)
_LEAP_UNSYNCHRONISED = const(3)


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


def resolve(server, port):
    """The server's address: blocking on the board (getaddrinfo), so done once and kept."""
    try:
        return socket.getaddrinfo(server, port, 0, socket.SOCK_DGRAM)[0][-1]
    except (OSError, IndexError) as e:  # lwIP raises OSError; an empty answer, IndexError
        raise OSError("DNS lookup of %s failed (%s)" % (server, e))


async def query(server, addr, timeout_ms):
    """Ask `server` (at `addr`, from resolve()) for the time; Unix seconds, OSError on no
    answer, SntpError on a bad one."""
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
            await asyncio.sleep_ms(_POLL_MS)
    finally:
        sock.close()
