"""Fixtures and helpers for tests that run the real node against a real broker (loopback only).

Import the fixtures a test module needs (pytest picks them up from the module namespace):

    from tests.e2e.infra import broker, certs, node_factory, subscriber_factory  # noqa: F401

- `certs` (session): a sim/net/pki.Pki with impostor and wrong-host certificates.
- `broker`: a Mosquitto with TLS for `localhost`/127.0.0.1, fresh per test.
- `broker_factory(kind)`: more brokers; kind "good", "impostor" or "wrong_host".
- `subscriber_factory(broker, topic="nodes/#", ca=None, server_hostname="localhost")`: a
  connected sim/net/broker.Subscriber (our CA unless `ca`).
- `node_factory(broker, **config_overrides, audio=, dht=, heap=, uid=, flash=)`: builds a flash
  folder whose config points at `broker` (TEST_CONFIG: short intervals) and starts the node;
  returns a sim/host/simnode.Node with `.cfg`, `.topics` and `.flash` set.
Everything started is stopped at teardown. When the test failed, the node's log and the end of
the broker's log are printed then (pytest shows them under "Captured stdout teardown").
"""

import copy
import re
import time
from pathlib import Path

import pytest

from sim.host.simnode import (
    Node,
    make_flash,
    merge,
    seq_report,
    sim_config,
    sim_secrets,
    write_json,
)
from sim.net.broker import Mosquitto, Subscriber
from sim.net.fakebroker import FakeBroker
from sim.net.pki import make_pki
from tools.hosttools import REPO

# Short intervals so an end-to-end run proves the contract in seconds.
TEST_CONFIG = {
    "node_id": "test-node",
    "mqtt": {"keepalive_s": 5},
    "dht": {"model": "DHT11", "interval_s": 1},
    "audio": {"publish_interval_s": 2},
    "telemetry_interval_s": 5,
    "watchdog_s": 30,
}
DATA_KINDS = ("climate", "sound")
# Log records of lib/node: one per reading queued, and the MQTT task's connect.
TAKEN_RX = {kind: rf"\b{kind}: reading (\d+)" for kind in DATA_KINDS}
CONNECTED_RX = r"\bmqtt: connected"
# The node starts in well under this on the host; generous for a loaded CI machine.
CONNECT_TIMEOUT_S = 30

# The heap the node runs in on the 32-bit 1.27 port (the board's word size), from the x86
# bundle: the goal of the issue "the board's truths". The simulator's modules run as native code
# but their data (~27 KB) and mbedTLS's session (~4 KB) are counted here, and the board keeps
# them outside the GC heap. A feature that makes the node need more fails the tests that use it.
HEAP_32_BIT = "128k"


class Topics:
    def __init__(self, prefix, node_id):
        base = f"{prefix}/{node_id}/"
        self.status, self.climate, self.sound = base + "status", base + "climate", base + "sound"
        self.telemetry, self.cmd, self.reply = base + "telemetry", base + "cmd", base + "reply"
        self.event = base + "event"
        self.all = base + "#"


def node_config(port, **overrides):
    """The repo's config.json at a loopback broker on `port`, TEST_CONFIG and overrides merged."""
    # deepcopy: merge() writes into nested sections, and TEST_CONFIG's must stay as they are.
    return sim_config(port, "ca.der", **merge(copy.deepcopy(TEST_CONFIG), overrides))


def data_payloads(sub, node_topics, since=0):
    """Parsed climate, sound and event payloads (the readings that share seq) in arrival order,
    each with "_kind" added."""
    out = []
    for m in sub.select("^" + re.escape(node_topics.all[:-1]) + "(climate|sound|event)$", since):
        p = m.json()
        p["_kind"] = m.topic.rsplit("/", 1)[-1]
        out.append(p)
    return out


def taken(node, kind):
    """How many readings of `kind` the node logged as queued."""
    return len(node.find(TAKEN_RX[kind]))


def assert_no_seq_gap(payloads, first_seq=1):
    """Per boot: seq runs first_seq.. without a gap (duplicates from QoS 1 resends allowed)."""
    report = seq_report(payloads)
    assert report, "no data messages"
    for boot, r in report.items():
        assert not r["missing"], f"boot {boot}: seq gap, missing {r['missing']} ({r})"
        if first_seq is not None:
            assert r["first"] == first_seq, f"boot {boot}: first seq {r['first']}, not {first_seq}"
    return report


@pytest.fixture(scope="session")
def certs(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"), impostor=True, wrong_host=True)


def print_broker_log(b, lines=40):
    text = b.log().strip().splitlines()
    print(f"--- mosquitto {b.host}:{b.port} log (last {lines} lines)")
    print("\n".join(text[-lines:]))


def start_broker(certs, workdir, kind="good"):
    """A started Mosquitto presenting the "good", "impostor" or "wrong_host" certificate."""
    server = {"good": certs.server, "impostor": certs.impostor,
              "wrong_host": certs.wrong_host}[kind]
    return Mosquitto(workdir, certfile=server.cert, keyfile=server.key, cafile=server.ca).start()


def subscribe(certs, broker, topic="nodes/#", ca=None, timeout=5, server_hostname="localhost"):
    """A connected Subscriber trusting our CA (or `ca`) and checking `server_hostname`."""
    sub = Subscriber(broker.host, broker.port, topic, ca=ca or certs.ca_pem,
                     server_hostname=server_hostname)
    return sub.connect(timeout)


def make_node(certs, broker, workdir, audio="sine:1000:-20", dht=None, heap=None, uid=None,
              flash=None, secrets=None, start=True, app_root=REPO, env=None, reboot=False,
              config=None, clock="host", micropython=None, files=None, **overrides):
    """A Node whose flash folder (workdir/flash unless given) points at `broker`.

    clock: "host" (default: TEST_CONFIG has no SNTP server, and these tests need a set clock
    for TLS) or "board" (the ESP32's RTC: 2000-01-01 at power-on, as `make sim` runs it).

    app_root is where boot.py, main.py and lib/ come from: the repo, or a bundle (build/x64);
    micropython the binary that runs it (default: the unix port found as run_mpy finds it).

    The config is node_config(broker.port, **overrides); returns the Node (started unless
    start=False) with .cfg, .topics and .flash set. env: more SIM_* variables; reboot: start
    again after a reset, as a board does. files: {name: bytes} put beside config.json, as the
    files its mqtt.cert and mqtt.key name (copied to the flash as the CA is).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for name, data in (files or {}).items():
        (workdir / name).write_bytes(data)
    # config: overrides whose names clash with the arguments here (its "audio" section).
    cfg = node_config(broker.port, **merge(config or {}, overrides))
    config_path = write_json(workdir / "config.json", cfg)
    (workdir / "ca.der").write_bytes(certs.ca_der.read_bytes())
    secrets_path = write_json(workdir / "secrets.json", secrets or sim_secrets())
    flash = make_flash(flash or workdir / "flash", app_root, config_path=config_path,
                       secrets_path=secrets_path)
    node = Node(flash, heap=heap, audio=audio, dht=dht, uid=uid, env=env, reboot=reboot,
                clock=clock, micropython=micropython)
    node.cfg, node.flash = cfg, flash
    node.topics = Topics(cfg.get("topic_prefix") or "nodes", cfg["node_id"])
    return node.start() if start else node


def print_node_log(node, title="node"):
    code = node.returncode
    print(f"--- {title} (exit code {code}) log")
    print(node.text())


def failed_since(request, count_before):
    """True if a test failed since session.testsfailed was count_before (usable in teardown:
    the call phase is reported before fixtures are torn down)."""
    return request.session.testsfailed > count_before


def managed_brokers(request, start):
    """The body of a broker fixture: yields make(*args), which returns start(n, *args) (n counts
    the brokers started so far); at teardown stops them all, printing their logs after a failure.
    """
    failed_before = request.session.testsfailed
    started = []

    def make(*args, **kwargs):
        b = start(len(started), *args, **kwargs)
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()
        if failed_since(request, failed_before):
            print_broker_log(b)


@pytest.fixture
def broker_factory(certs, tmp_path, request):
    def start(n, kind="good"):
        return start_broker(certs, tmp_path / f"broker-{n}-{kind}", kind)

    yield from managed_brokers(request, start)


@pytest.fixture
def broker(broker_factory):
    return broker_factory("good")


@pytest.fixture
def subscriber_factory(certs):
    subs = []

    def make(broker, topic="nodes/#", ca=None, timeout=5, server_hostname="localhost"):
        sub = subscribe(certs, broker, topic, ca, timeout, server_hostname)
        subs.append(sub)
        return sub

    yield make
    for s in subs:
        s.close()


@pytest.fixture
def node_factory(certs, tmp_path, request):
    failed_before = request.session.testsfailed
    nodes = []

    def make(broker, **kwargs):
        node = make_node(certs, broker, tmp_path / f"node-{len(nodes)}", **kwargs)
        nodes.append(node)
        return node

    yield make
    for i, n in enumerate(nodes):
        if n.proc:
            n.stop()
        if failed_since(request, failed_before):
            print_node_log(n, f"node {i}")


def wait_until(predicate, timeout, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not met within {timeout} s")


# --- fault injection: brokers that keep a subscriber's session, and a scriptable fake --------


def persistence_conf(workdir):
    """Mosquitto lines that keep sessions and queued QoS 1 messages across a restart (saved on
    SIGTERM) and a SIGKILL (saved every second)."""
    return ["persistence true", f"persistence_location {Path(workdir).resolve()}/",
            "autosave_interval 1"]


def start_persistent_broker(certs, workdir, port=None, kind="good"):
    """Like start_broker, keeping sessions across restarts; port=None picks a free one."""
    server = {"good": certs.server, "impostor": certs.impostor}[kind]
    return Mosquitto(workdir, certfile=server.cert, keyfile=server.key, cafile=server.ca,
                     port=port, extra_conf=persistence_conf(workdir)).start()


def subscribe_persistent(certs, broker, client_id, topic="nodes/#", timeout=5):
    """A Subscriber with a persistent session (clean_session=False, QoS 1): on a persistent
    broker it misses nothing published while it or the broker was away, so a seq gap it sees
    is the node's. Close it and subscribe again with the same client_id to resume."""
    sub = Subscriber(broker.host, broker.port, topic, ca=certs.ca_pem,
                     server_hostname="localhost", client_id=client_id)
    sub.client._clean_session = False  # paho 2.x: no setter, and the constructor made it True
    return sub.connect(timeout)


@pytest.fixture
def fake_broker_factory(certs):
    """fake_broker_factory(mode, port=None): a started sim/net/fakebroker.FakeBroker presenting
    the good server certificate; stopped at teardown."""
    started = []

    def make(mode, port=None):
        fb = FakeBroker(certs.server.cert, certs.server.key, mode, port=port or 0).start()
        started.append(fb)
        return fb

    yield make
    for fb in started:
        fb.stop()
