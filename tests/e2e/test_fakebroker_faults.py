"""Fault injection with a scripted broker: the faults Mosquitto cannot play (loopback only).

The real node (TEST_CONFIG) against sim/net/fakebroker.py in each of its modes: silence, a slow
TLS handshake, malformed CONNACKs and packets, nothing listening. Every mode must cost no
reading (the node delivers everything once a good broker is back) and back off as its kind of
failure says. The packet-level checks of each malformed form are unit tests
(tests/unit/test_mqtt.py); here the whole stack proves it survives them. Figures are printed as
one table when the module ends (`pytest tests/e2e/test_fakebroker_faults.py -s`).
"""

import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from sim.net.fakebroker import MODES, FakeBroker
from tests.e2e.faultkit import (  # noqa: F401  (fixtures are found by pytest in this namespace)
    DELIVERY_TIMEOUT_S,
    LAG_SANITY_MAX_MS,
    RETRY_RX,
    crashed,
    figures,
    figures_table,
    finish_lag,
    first_delivery_after,
    on_loopback_only,
    retry_delays_ms,
    taken,
    wait_delivered,
)
from tests.e2e.infra import (  # noqa: F401
    assert_no_seq_gap,
    certs,
    fake_broker_factory,
    make_node,
    start_persistent_broker,
    subscribe_persistent,
)

FIGURES, record, figures_table = figures_table("test_fakebroker_faults figures")


# --- fakebroker faults -------------------------------------------------------------------------
FAKE_ATTEMPTS = 4  # three backoff delays: windows 0.5-1, 1-2, 2-4 s
FAKE_WORKERS = 9  # scenarios run side by side (each node takes ~5 % of a core)
FAKE_PHASE_TIMEOUT_S = 60  # no_connack: 4 attempts of the node's 10 s CONNACK timeout
# Not a fake broker: nothing listens on the port (connection refused), for 5 attempts so that
# the fifth delay shows whether the backoff is capped while nothing accepts.
CLOSED_PORT = "closed_port"
CLOSED_PORT_ATTEMPTS = 5
UNREACHABLE_BACKOFF_CAP_MS = 4000  # lib/node/publisher.py _BACKOFF_UNREACHABLE_MAX_MS
ABOUT = {CLOSED_PORT: "nothing listens: connection refused"}
# The longest first, so the batch ends sooner.
_LONG = ("no_connack", CLOSED_PORT, "slow_tls", "silent_tcp")
FAKE_MODES = [*_LONG, *(m for m in MODES if m not in _LONG)]


@dataclass
class FakeRun:
    mode: str
    error: str = ""
    node_log: str = ""
    fake_report: str = ""
    attempt_times: list = field(default_factory=list)  # start of each attempt
    attempt_s: list = field(default_factory=list)  # node log: "connecting" -> its failure
    delays_ms: list = field(default_factory=list)  # node log: "retrying in N ms"
    failures: list = field(default_factory=list)  # node log: what failed
    connects: int = 0  # MQTT CONNECTs the fake broker received
    leaked: int = 0  # connections the node gave up but never closed
    climate_taken: int = 0  # during the fault
    climate_expected: float = 0
    climate_max_gap_s: float = 0
    crash: str | None = None
    payloads: list = field(default_factory=list)
    figures: object = None

    @property
    def gaps(self):
        t = self.attempt_times
        return [b - a for a, b in zip(t, t[1:])]

    def summary(self):
        about = ABOUT.get(self.mode) or MODES[self.mode].about
        return (f"fake {self.mode} ({about}): failures {self.failures[:1]} "
                f"x{len(self.failures)}; attempt gaps {[round(g, 2) for g in self.gaps]} s; "
                f"retry delays {self.delays_ms} ms; attempts took "
                f"{[round(a, 2) for a in self.attempt_s]} s; {self.connects} CONNECTs; "
                f"{self.leaked} connections left open; climate {self.climate_taken} taken in "
                f"{self.climate_expected:.1f} s (max gap {self.climate_max_gap_s:.2f} s)")


def _attempt_durations(node):
    out, start = [], None
    for line in node.lines:
        if "mqtt: connecting to" in line:
            start = line.t
        elif start is not None and "; retrying in" in line and "mqtt:" in line:
            out.append(line.t - start)
            start = None
    return out


def _run_fake_mode(mode, certs, work):
    """The node against a fault on a port for a few attempts, then Mosquitto on the same port;
    returns a FakeRun (errors caught into it, every process stopped)."""
    run = FakeRun(mode)
    client_id = f"faults-{mode}"
    brk = fb = node = sub = None
    try:
        brk = start_persistent_broker(certs, work / "mosquitto")
        subscribe_persistent(certs, brk, client_id).close()  # the session waits on the broker
        brk.stop()
        if mode == CLOSED_PORT:
            node = make_node(certs, brk, work / "node")
            on_loopback_only(node)
            node.wait_for_line(RETRY_RX, timeout=FAKE_PHASE_TIMEOUT_S, count=CLOSED_PORT_ATTEMPTS)
            run.attempt_times = [m.string.t for m in node.find(r"\bmqtt: connecting to")]
        else:
            fault = MODES[mode]
            fb = FakeBroker(certs.server.cert, certs.server.key, mode, port=brk.port).start()
            node = make_node(certs, fb, work / "node")
            on_loopback_only(node)
            what = "connect" if fault.tls and not fault.tls_delay_s else "accept"
            conns = fb.wait_for(FAKE_ATTEMPTS, what, FAKE_PHASE_TIMEOUT_S,
                                abort=lambda: crashed(node))
            node.wait_for_line(RETRY_RX, timeout=15, count=FAKE_ATTEMPTS - 1)
            run.attempt_times = [c.accepted for c in conns[:FAKE_ATTEMPTS]]
            fb.stop()
            run.connects = len(fb.attempts("connect"))
            run.leaked = sum(1 for c in conns[:FAKE_ATTEMPTS - 1] if c.closed_by == "stop")
            run.fake_report = fb.report()
        t_end = time.monotonic()
        climate = [m.string.t for m in node.find(r"\bclimate: reading")
                   if run.attempt_times[0] <= m.string.t <= t_end]
        run.climate_taken = len(climate)
        run.climate_expected = (t_end - run.attempt_times[0]) / node.cfg["dht"]["interval_s"]
        run.climate_max_gap_s = max((b - a for a, b in zip(climate, climate[1:])), default=0)
        run.crash = crashed(node)
        brk.start()  # Mosquitto (back) on the port
        t_back = time.monotonic()
        sub = subscribe_persistent(certs, brk, client_id)
        back = first_delivery_after([sub], node.topics, t_back, DELIVERY_TIMEOUT_S)
        run.payloads = wait_delivered(node, [sub], DELIVERY_TIMEOUT_S)
        finish_lag(node)
        run.crash = run.crash or crashed(node)
        n = CLOSED_PORT_ATTEMPTS if mode == CLOSED_PORT else FAKE_ATTEMPTS
        run.failures = [m.group(1) for m in node.find(RETRY_RX)][:n]
        run.delays_ms = retry_delays_ms(node)[:n]
        run.attempt_s = _attempt_durations(node)[:n]
        run.figures = figures(f"fake {mode}", node, [sub], back,
                              f"{run.failures[0]!r}" if run.failures else "")
    except Exception:  # noqa: BLE001 - reported by this mode's test, not lost in a thread
        run.error = traceback.format_exc()
    finally:
        if node is not None:
            run.crash = run.crash or crashed(node)
            node.stop()
            run.node_log = node.text()
        for thing in (sub, fb, brk):
            if thing is not None:
                (thing.close if thing is sub else thing.stop)()
    return run


@pytest.fixture(scope="module")
def fake_runs(certs, tmp_path_factory):
    work = tmp_path_factory.mktemp("fakes")
    t0 = time.monotonic()
    with ThreadPoolExecutor(FAKE_WORKERS) as pool:
        runs = dict(zip(FAKE_MODES, pool.map(lambda m: _run_fake_mode(m, certs, work / m),
                                             FAKE_MODES)))
    print(f"\n{len(runs)} fake-broker scenarios in {time.monotonic() - t0:.0f} s "
          f"({FAKE_WORKERS} at a time)")
    for mode in FAKE_MODES:
        if runs[mode].figures is not None:
            FIGURES.append(runs[mode].figures)
    return runs


def _fake_run(fake_runs, mode, show=True):
    run = fake_runs[mode]
    if show:
        print("\n" + run.summary())
    if run.error:
        print(f"--- node log ({mode})\n{run.node_log}\n--- fake broker\n{run.fake_report}")
        pytest.fail(f"{mode}: scenario failed:\n{run.error}")
    return run


@pytest.mark.parametrize("mode", FAKE_MODES)
def test_fake_broker_fault_costs_no_reading(mode, fake_runs):
    """The node logs each failure, keeps running and sampling on schedule, and once Mosquitto
    is on the port every reading arrives without a seq gap."""
    run = _fake_run(fake_runs, mode)
    print(run.figures.line())
    assert run.crash is None, f"{mode}: {run.crash}\n{run.node_log}"
    assert len(run.failures) >= FAKE_ATTEMPTS - 1, f"{mode}: failures logged {run.failures}"
    # Sampling never waits for the network: about one climate reading per interval.
    assert run.climate_taken >= 0.7 * run.climate_expected - 1, run.summary()
    assert run.climate_max_gap_s <= 3, run.summary()
    assert_no_seq_gap(run.payloads, first_seq=1)
    assert run.figures.delivered == run.figures.taken
    assert run.figures.lag is None or run.figures.lag["max_ms"] <= LAG_SANITY_MAX_MS


@pytest.mark.parametrize("mode", FAKE_MODES)
def test_fake_broker_fault_backs_off(mode, fake_runs):
    """Retries wait longer each time: full-jitter windows 0.5-1, 1-2, 2-4 s for the first
    three, so the third gap exceeds the first by at least 1 s, less measurement noise."""
    run = _fake_run(fake_runs, mode, show=False)
    delays, gaps = run.delays_ms[:3], run.gaps[:3]
    print(f"\n{mode}: retry delays {delays} ms, attempt gaps {[round(g, 2) for g in gaps]} s")
    assert len(delays) == 3 and len(gaps) == 3, run.summary()
    assert min(delays) >= 450, f"{mode}: a retry after {min(delays)} ms: {run.summary()}"
    assert delays[2] > delays[0], f"{mode}: backoff did not grow: {run.summary()}"
    assert gaps[2] - gaps[0] >= 0.5, f"{mode}: attempt gaps did not grow: {run.summary()}"
    for a, b in zip(gaps, gaps[1:]):
        assert b >= a - 0.4, f"{mode}: attempt gaps shrank: {run.summary()}"


def _all_ran(fake_runs, modes):
    failed = [m for m in modes if fake_runs[m].error]
    if failed:
        pytest.skip(f"scenarios failed: {failed}")


def test_a_failed_attempt_leaves_no_connection_open(fake_runs):
    _all_ran(fake_runs, [m for m in FAKE_MODES if m != CLOSED_PORT])
    leaks = {m: f"{r.leaked} of {FAKE_ATTEMPTS - 1}" for m, r in fake_runs.items() if r.leaked}
    assert not leaks, f"connections the node gave up on but never closed: {leaks}"


def test_a_slow_tls_handshake_still_connects(fake_runs):
    run = _fake_run(fake_runs, "slow_tls", show=False)
    print(f"\nslow_tls: {run.connects} CONNECTs in {len(run.attempt_times)} attempts; "
          f"attempts took {[round(a, 2) for a in run.attempt_s]} s; failures {run.failures}")
    assert run.connects >= 1, "no attempt got through a TLS handshake answered after 1.5 s"


def test_backoff_stays_short_while_nothing_accepts(fake_runs):
    run = _fake_run(fake_runs, CLOSED_PORT, show=False)
    print(f"\n{CLOSED_PORT}: failures {run.failures[:1]}, retry delays {run.delays_ms} ms")
    assert max(run.delays_ms) <= UNREACHABLE_BACKOFF_CAP_MS, (
        f"retry delays {run.delays_ms} ms while the port refuses connections")


# --- the harness itself ------------------------------------------------------------------------
def _mqtt_client(certs, fb, timeout=2.0):
    """A plain TLS connection to the fake broker, as the node would open it."""
    import socket
    import ssl

    ctx = ssl.create_default_context(cafile=str(certs.ca_pem))
    raw = socket.create_connection((fb.host, fb.port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="localhost")


# CONNECT: MQTT 3.1.1, clean session + will (QoS 1, retained), keepalive 5, id "probe".
_CONNECT = (b"\x10\x28\x00\x04MQTT\x04\x2e\x00\x05\x00\x05probe"
            b"\x00\x0cprobe/status\x00\x07offline")


def test_fakebroker_plays_its_script_and_records_the_client(certs, fake_broker_factory):
    import socket

    fb = fake_broker_factory(["connack_bad_length", "puback_bad_length", "no_connack"])
    with _mqtt_client(certs, fb) as c:  # 1: instead of a CONNACK
        c.sendall(_CONNECT)
        assert c.recv(16) == b"\x20\x03\x00\x00\x00"
    with _mqtt_client(certs, fb) as c:  # 2: a good CONNACK, then a bad PUBACK for pid 7
        c.sendall(_CONNECT)
        assert c.recv(16) == b"\x20\x02\x00\x00"
        c.sendall(b"\x32\x07\x00\x01t\x00\x07hi")
        assert c.recv(16) == b"\x40\x03\x00\x07\x00"
    with _mqtt_client(certs, fb, timeout=0.5) as c:  # 3 and on: silence
        c.sendall(_CONNECT)
        with pytest.raises(socket.timeout):
            c.recv(16)
    conns = fb.wait_for(3, "connect", timeout=5)
    assert [c.fault.name for c in conns] == ["connack_bad_length", "puback_bad_length",
                                             "no_connack"]
    assert {k: v for k, v in conns[0].connect.items() if k != "t"} == {
        "protocol": "MQTT", "level": 4, "clean": True, "keepalive": 5, "client_id": "probe",
        "will_topic": "probe/status"}
    assert [(p.name, p.publish()[:3]) for p in conns[1].packets] == [
        ("PUBLISH", ("t", 1, 7))]
    for c in conns[:2]:
        fb.wait_closed(c)
    assert conns[0].closed_by == conns[1].closed_by == "client"
    times = fb.attempt_times("connect")
    assert times == sorted(times) and len(times) == 3


def test_fakebroker_silent_tcp_never_answers_tls(certs, fake_broker_factory):
    import socket

    fb = fake_broker_factory("silent_tcp")
    with pytest.raises((socket.timeout, TimeoutError)):
        _mqtt_client(certs, fb, timeout=0.5)
    (conn,) = fb.wait_for(1, "accept", timeout=5)
    fb.wait_closed(conn)
    assert conn.raw_received > 0 and conn.tls_done is None and conn.connect is None
    assert conn.closed_by == "client"
