"""Time: the SNTP client against a loopback server, and the node setting its clock with it.

The server here answers like an NTP server (or like a broken one): the node's client must take
only a trustworthy answer, never wait with the event loop stopped, and give up in bounded time.
"""

import socket
import struct
import threading
import time

import pytest

from tests.e2e.infra import (  # noqa: F401  (fixtures are found by pytest in this namespace)
    CONNECTED_RX,
    broker,
    broker_factory,
    certs,
    node_factory,
    subscriber_factory,
)

NTP_TO_UNIX_S = 2208988800


class FakeNtp:
    """A UDP server on loopback answering every request with `make(request) -> bytes | None`."""

    def __init__(self, make):
        self.make = make
        self.requests = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            self.requests += 1
            answer = self.make(data)
            if answer is not None:
                self.sock.sendto(answer, addr)

    def close(self):
        self._stop = True
        self._thread.join()
        self.sock.close()


def server_answer(unix_s, mode=4, stratum=2, leap=0, size=48):
    packet = bytearray(48)
    packet[0] = leap << 6 | 4 << 3 | mode
    packet[1] = stratum
    struct.pack_into("!II", packet, 40, (unix_s + NTP_TO_UNIX_S) & 0xFFFFFFFF, 0)
    return bytes(packet[:size])


@pytest.fixture
def ntp_server():
    servers = []

    def make(answer):
        s = FakeNtp(answer)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


QUERY = """
import asyncio, time
from node import sntp

async def ticker(n):
    while True:
        n[0] += 1
        await asyncio.sleep_ms(10)

async def main():
    n = [0]
    asyncio.create_task(ticker(n))
    t0 = time.ticks_ms()
    try:
        result = await sntp.query("127.0.0.1", PORT, 500)
    except (OSError, sntp.SntpError) as e:
        result = "%s: %s" % (type(e).__name__, e)
    # the loop ran meanwhile: the query never blocked it
    print(result, "|", time.ticks_diff(time.ticks_ms(), t0), "ms |", n[0], "ticks")

asyncio.run(main())
"""


def query(mpy, port):
    out = mpy(QUERY.replace("PORT", str(port))).stdout.strip()
    result, elapsed, ticks = (p.strip() for p in out.split("|"))
    return result, int(elapsed.split()[0]), int(ticks.split()[0])


def test_sntp_takes_a_good_answer(mpy, ntp_server):
    server = ntp_server(lambda req: server_answer(1800000000) if req[0] & 7 == 3 else None)
    result, _, _ = query(mpy, server.port)
    assert result == "1800000000"
    assert server.requests == 1


@pytest.mark.parametrize("answer, error", [
    (None, "OSError: no answer from 127.0.0.1 within 500 ms"),
    (server_answer(1800000000, size=20), "short answer"),
    (server_answer(1800000000, mode=3), "not a server answer"),
    (server_answer(1800000000, stratum=0), "refusing (stratum 0)"),  # kiss-o'-death
    (server_answer(1800000000, leap=3), "unsynchronised"),
    (bytes(48), "not a server answer"),
])
def test_sntp_refuses_what_is_not_a_trustworthy_time(mpy, ntp_server, answer, error):
    server = ntp_server(lambda req: answer)
    result, elapsed_ms, ticks = query(mpy, server.port)
    assert error in result
    if answer is None:
        # Waited for its timeout with the loop running all along (a tick every 10 ms).
        assert ticks >= elapsed_ms // 10 // 2, (elapsed_ms, ticks)


def test_sntp_reads_era_1_after_2036(mpy, ntp_server):
    server = ntp_server(lambda req: server_answer(2200000000))  # 2039: NTP seconds wrapped
    assert query(mpy, server.port)[0] == "2200000000"


def test_the_node_sets_its_clock_by_ntp(broker, subscriber_factory, node_factory, ntp_server):
    now = int(time.time())
    server = ntp_server(lambda req: server_answer(now - 3600))
    sub = subscriber_factory(broker)
    node = node_factory(broker, ntp={"server": "127.0.0.1", "port": server.port})
    node.wait_for_line(r"time: clock set by NTP \(off by 36\d\d s\)", 20)
    # The simulator keeps the host's clock, and says so.
    node.wait_for_line(r"RTC set to .* ignored", 5)
    tele = sub.wait_for(r"/telemetry$", timeout=15)
    assert tele.json()["ntp_syncs"] >= 1
    node.wait_for_line(CONNECTED_RX, 10)
