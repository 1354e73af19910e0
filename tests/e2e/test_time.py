"""Time: the node sets its clock by SNTP from a loopback server (sim/net/fakentp.py); the client's
checks of each answer are in tests/unit/test_time.py.
"""

import time

from sim.net.fakentp import server_answer
from tests.e2e.infra import (  # noqa: F401  (fixtures are found by pytest in this namespace)
    CONNECTED_RX,
    broker,
    broker_factory,
    certs,
    node_factory,
    subscriber_factory,
)


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


def test_a_cold_boot_delivers_within_10_s_with_true_timestamps(broker, subscriber_factory,
                                                               node_factory, ntp_server):
    """Power-on at 2000-01-01 (the board's RTC), the SNTP server loses the first request, the TLS
    handshake blocks for 1 s: the first reading arrives within 10 s, nothing is called
    "refused", and every reading's ts is within 2 s of when it was taken."""
    asked = []

    def answer(req):
        asked.append(time.monotonic())
        return None if len(asked) == 1 else server_answer(int(time.time()))

    server = ntp_server(answer)
    sub = subscriber_factory(broker)
    node = node_factory(broker, clock="board",
                        ntp={"server": "127.0.0.1", "port": server.port})
    first = sub.wait_for(r"/(climate|sound)$", timeout=15)
    to_first_s = first.t - node.started_at
    assert to_first_s <= 10, to_first_s
    node.wait_for_line(r"sim: clock: the board's RTC .* now 2000-01-01", 5)
    node.wait_for_line(r"sim: TLS handshake done: 1000 ms", 5)
    sub.wait_for(r"/(climate|sound)$", timeout=15, count=8)
    text = node.text()
    assert "refused" not in text and "clock problem" not in text, text
    assert len(asked) >= 2  # the lost request was asked again
    # When each reading was taken: its log line's arrival, on the host's wall clock.
    offset = time.time() - time.monotonic()
    taken = {int(m.group(1)): m.string.t + offset
             for m in node.find(r"\b(?:climate|sound): reading (\d+)")}
    errors = []
    for m in sub.select(r"/(climate|sound)$"):
        p = m.json()
        assert p["ts"] is not None, p
        errors.append(p["ts"] - taken[p["seq"]])
    assert all(abs(e) <= 2 for e in errors), errors
    print(f"\ncold boot: power-on to first reading delivered {to_first_s:.2f} s (1 s TLS cost, "
          f"first SNTP request lost, asked again after {asked[1] - asked[0]:.1f} s); "
          f"ts - taken over {len(errors)} readings: {min(errors):+.2f}..{max(errors):+.2f} s")
