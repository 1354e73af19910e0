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
