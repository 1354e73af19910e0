"""Time: the SNTP client against a loopback server (sim/net/fakentp.py); tests/e2e/test_time.py
has the node setting its clock with it.

The server here answers like an NTP server (or like a broken one): the node's client must take
only a trustworthy answer, never wait with the event loop stopped, and give up in bounded time.
"""

import pytest

from sim.net.fakentp import server_answer

QUERY = """
import asyncio, time
from node import ntp

async def ticker(n):
    while True:
        n[0] += 1
        await asyncio.sleep_ms(10)

async def main():
    n = [0]
    asyncio.create_task(ticker(n))
    t0 = time.ticks_ms()
    try:
        result = await ntp.query("127.0.0.1", ntp.resolve("127.0.0.1", PORT), 500)
    except (OSError, ntp.SntpError) as e:
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
