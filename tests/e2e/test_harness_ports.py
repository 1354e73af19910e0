"""The harness's broker ports: outside the kernel's ephemeral range, one share per test worker.

A broker stopped and started again keeps its port. In the ephemeral range any connection this
machine opens while the broker is down may take it as its local port, and the restart then fails
with "Address already in use" (it did once in CI, under 6 workers)."""

import socket

import pytest

from sim.net import broker


@pytest.mark.parametrize("worker", range(6))
def test_each_worker_draws_its_own_ports_outside_the_ephemeral_range(monkeypatch, worker):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{worker}")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "6")
    first, last = broker._ephemeral_range()
    start, end = broker._port_span()
    if (start, end) != (broker._PORT_FLOOR, broker._PORT_END):  # room outside it, as here
        assert end <= first or start > last
    share = (end - start) // 6
    low = start + worker * share
    ports = {broker.free_port() for _ in range(20)}
    assert all(low <= p < low + share for p in ports), (sorted(ports), low, share)
    assert len(ports) > 1  # drawn, not one port handed to everyone


def test_a_taken_port_is_passed_over(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "1")
    with socket.socket() as taken:
        taken.bind((broker.HOST, broker.free_port()))
        taken.listen()
        port = taken.getsockname()[1]
        drawn = []
        real = broker.random.randrange

        def draw(lo, hi):  # the taken port twice, then the real draws
            drawn.append(port if len(drawn) < 2 else real(lo, hi))
            return drawn[-1]

        monkeypatch.setattr(broker.random, "randrange", draw)
        assert broker.free_port() != port
        assert drawn[:2] == [port, port] and len(drawn) >= 3


def test_no_free_port_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw0")
    with socket.socket() as taken:
        taken.bind((broker.HOST, broker.free_port()))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(broker.random, "randrange", lambda lo, hi: port)
        with pytest.raises(broker.BrokerError, match=r"no free port in .* after 200 draws"):
            broker.free_port()


@pytest.mark.parametrize("proc, span", [
    (None, (10000, 32768)),  # no /proc: Linux's default range, 32768-60999
    ("32768\t60999\n", (10000, 32768)),
    ("1024 40000", (40001, 65536)),  # more room above the range than below it
    ("1024 65000", (10000, 65536)),  # too little outside it: all ports, as before
])
def test_the_ports_drawn_from_lie_outside_the_ephemeral_range(monkeypatch, tmp_path, proc, span):
    path = tmp_path / "ip_local_port_range"
    if proc is not None:
        path.write_text(proc)
    monkeypatch.setattr(broker, "_EPHEMERAL_RANGE_PATH", path)
    assert broker._port_span() == span
