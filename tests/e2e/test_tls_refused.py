"""The node refuses a broker it cannot trust, says why, and keeps sampling.

Two impostors on loopback: a broker whose certificate comes from another CA (same names), and a
broker with a certificate from the right CA for the wrong host name. The node must publish
nothing to either, log the TLS error on every attempt, and keep running: retrying with backoff
while the sensor tasks go on queueing readings.
"""

import pytest

from sim.net.pki import WRONG_HOST
from tests.e2e.infra import (  # noqa: F401  (fixtures are found by pytest in this namespace)
    CONNECT_TIMEOUT_S,
    TAKEN_RX,
    broker_factory,
    certs,
    node_factory,
    subscriber_factory,
)

ATTEMPTS = 3  # connection attempts to watch fail (backoff 1, 2, 4 s with jitter)
# The MQTT task's record of a failed attempt: what failed and that it retries.
REFUSED_RX = r"\bmqtt: (.*(TLS|SSL|certificate|CERT|verif|handshake|host).*)"


@pytest.mark.parametrize("kind", ["impostor", "wrong_host"])
def test_untrusted_broker_gets_nothing(kind, certs, broker_factory, subscriber_factory,
                                       node_factory):
    brk = broker_factory(kind)
    # A subscriber that does trust this broker watches for anything the node might send.
    if kind == "impostor":
        sub = subscriber_factory(brk, "#", ca=certs.impostor.ca)
    else:
        sub = subscriber_factory(brk, "#", server_hostname=WRONG_HOST)
    node = node_factory(brk)

    first = node.wait_for_line(REFUSED_RX, timeout=CONNECT_TIMEOUT_S)
    mark = node.mark()
    node.wait_for_line(REFUSED_RX, timeout=30, count=ATTEMPTS)
    # The sensor tasks went on while the link was refused.
    node.wait_for_line(TAKEN_RX["climate"], timeout=5, since=mark, count=2)
    node.wait_for_line(TAKEN_RX["sound"], timeout=5, since=mark)
    refusals = node.find(REFUSED_RX)
    print(f"\n{kind}: {len(refusals)} attempts refused, e.g. {first.group(1)!r}; "
          f"node alive: {node.running()}; messages on that broker: {len(sub.messages)}")
    assert node.running(), f"node exited with {node.returncode}"
    assert not sub.messages, f"the node published to an untrusted broker: {sub.messages}"
    assert not node.find(r"\bmqtt: connected"), "the node believes it connected"
    # The broker saw the handshake fail rather than a session end.
    log = brk.log()
    assert "test-node" not in log, "an MQTT CONNECT reached the untrusted broker"


def test_wrong_host_broker_is_otherwise_valid(certs, broker_factory, subscriber_factory):
    """Control: the wrong-host broker is fine for a client that asks for its name."""
    from sim.net.broker import Subscriber

    brk = broker_factory("wrong_host")
    with Subscriber(brk.host, brk.port, "#", ca=certs.ca_pem, server_hostname=WRONG_HOST):
        pass
    with pytest.raises(ConnectionError):
        subscriber_factory(brk, "#")  # checks `localhost`, as the node does
