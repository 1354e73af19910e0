"""A certificate per node: a Mosquitto that identifies clients by certificate lets the node in
as itself and no further; without a certificate, or with one from another CA, it is refused and
says so.

The broker is `make broker CLIENT_CERTS=1`'s: `require_certificate true`,
`use_identity_as_username true` (the certificate's CN is the user name) and the ACL of
tools/broker.py, with the simulator's CA as the fleet CA (it signed the broker's certificate and
signs the nodes'). The watcher is the operator (CN "operator"), as make plot would be. The key
of the node never appears in its log or in any message on the broker. A bad pair of files is
safe mode naming the file; `make broker CLIENT_CERTS=1` and `make provision` set up as printed
let the node in.

Figures printed (-s): the TLS handshake the simulated board blocks for, and connect_ms, with
and without a client certificate; on the 32-bit port, the x86 bundle's heap with a client
certificate at the 128k the node must run in, and the boot-only loader's share.
"""

import base64
import re
import subprocess
from pathlib import Path

import pytest

from sim.net.broker import Mosquitto, Subscriber
from sim.net.pki import make_ca, make_client_cert
from tests.e2e.infra import (  # noqa: F401  (fixtures are found by pytest in this namespace)
    CONNECT_TIMEOUT_S,
    CONNECTED_RX,
    HEAP_32_BIT,
    TAKEN_RX,
    broker_factory,
    certs,
    node_factory,
    subscriber_factory,
)
from tools.broker import OPERATOR, acl_text
from tools.hosttools import MP32, REPO

pytestmark = pytest.mark.e2e

NODE = "test-node"  # TEST_CONFIG's node_id
CERT_FILES = {"mqtt": {"cert": "node-cert.der", "key": "node-key.der"}}
REFUSED_RX = r"\bmqtt: TLS refused: (.*); retrying in"
HANDSHAKE_RX = r"sim: TLS handshake (done|failed): (\d+) ms of blocking CPU"


@pytest.fixture(scope="module")
def fleet(certs, tmp_path_factory):
    """The node's, another node's and the operator's certificates from the fleet CA (the
    simulator's CA), and the node's from a CA the broker does not know."""
    folder = tmp_path_factory.mktemp("fleet")
    made = {name: make_client_cert(folder, name, cn, certs.ca_pem, certs.ca_key)
            for name, cn in (("node", NODE), ("other", "other-node"), ("operator", OPERATOR))}
    rogue_pem, _der, rogue_key = make_ca(folder, "rogue-ca", cn="sim-node test CA")
    made["rogue"] = make_client_cert(folder, "rogue", NODE, rogue_pem, rogue_key)
    made["rogue_ca"] = rogue_pem
    return made


def node_files(cert):
    return {"node-cert.der": cert.cert_der.read_bytes(),
            "node-key.der": cert.key_der.read_bytes()}


def cert_broker(certs, workdir, cafile=None):
    """A started Mosquitto that takes only clients with a certificate from the fleet CA (or
    `cafile`), named by it, as `make broker CLIENT_CERTS=1` configures one."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    acl = workdir / "acl"
    acl.write_text(acl_text("nodes", "homeassistant"))
    return Mosquitto(workdir, certfile=certs.server.cert, keyfile=certs.server.key,
                     cafile=cafile or certs.ca_pem,
                     extra_conf=["require_certificate true", "use_identity_as_username true",
                                 f"acl_file {acl}"]).start()


@pytest.fixture
def brokers(certs, tmp_path):
    started = []

    def make(cafile=None):
        b = cert_broker(certs, tmp_path / f"broker-{len(started)}", cafile)
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def watchers(certs):
    """watchers(broker, identity, topic="#"): a connected Subscriber showing that identity's
    certificate; closed at teardown."""
    subs = []

    def make(broker, identity, topic="#"):
        sub = Subscriber(broker.host, broker.port, topic, ca=certs.ca_pem,
                         server_hostname="localhost", certfile=identity.cert,
                         keyfile=identity.key)
        subs.append(sub.connect(5))
        return sub

    yield make
    for s in subs:
        s.close()


def key_traces(cert):
    """Pieces of the node's key as they could leak: base64 (PEM's, and of the DER the node
    reads) and hex of its bytes."""
    der = cert.key_der.read_bytes()
    pem_body = "".join(cert.key.read_text().splitlines()[1:-1])
    return [base64.b64encode(der).decode()[10:42], pem_body[10:42], der.hex()[20:84],
            der[36:68].hex()]  # the private scalar of a PKCS#8 P-256 key


def handshakes(node):
    return [(m.group(1), int(m.group(2))) for m in node.find(HANDSHAKE_RX)]


def test_a_node_with_its_certificate_is_accepted_and_confined(fleet, brokers, watchers,
                                                                node_factory):
    brk = brokers()
    op = watchers(brk, fleet["operator"])
    node = node_factory(brk, config=CERT_FILES, files=node_files(fleet["node"]))
    node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
    # Its readings, status and discovery arrive: the ACL lets it have its own topics.
    op.wait_for(rf"^nodes/{NODE}/climate$", timeout=10, count=2)
    op.wait_for(rf"^nodes/{NODE}/sound$", timeout=10)
    op.wait_for(rf"^nodes/{NODE}/status$", where=lambda m: m.text == "online")
    # (Empty bodies among them remove sensors this config does not have: skipped here.)
    configs = op.wait_for(rf"^homeassistant/sensor/{NODE}/\w+/config$", timeout=5, count=5,
                          where=lambda m: m.payload)
    assert configs.json()["state_topic"].startswith(f"nodes/{NODE}/")
    assert re.search(rf"New client connected from .* as {NODE} .*u'{NODE}'", brk.log()), \
        "the broker did not take the certificate's CN as the user name"
    # It may read Home Assistant's status: an "online" there makes it announce again.
    announced = len(node.find(r"discovery: announced"))
    op.publish("homeassistant/status", "online")
    node.wait_for_line(r"discovery: announced", timeout=5, count=announced + 1)

    # With this node's certificate, nobody reaches another node's topics or discovery.
    intruder = watchers(brk, fleet["node"], topic=f"nodes/{NODE}/reply")
    mark = op.mark()
    for topic in ("nodes/other-node/climate", "nodes/other-node/cmd",
                  "homeassistant/sensor/other-node/temperature/config",
                  f"nodes/{NODE}/reply"):  # the last is its own: it must arrive
        intruder.publish(topic, '{"boot":1,"seq":1,"ts":1,"temperature":99}')
    op.wait_for(rf"^nodes/{NODE}/reply$", since=mark, timeout=5)
    leaked = op.select(r"other-node", since=mark)
    assert not leaked, f"the ACL let a node publish to another node's topics: {leaked}"
    assert "Denied PUBLISH" in brk.log()
    # A node's own key never leaves it: not in its log, not in any message on the broker.
    node.wait_for_line(r"telemetry: taken", timeout=10)
    seen = node.text() + "\n".join(m.text for m in op.messages)
    for trace in key_traces(fleet["node"]):
        assert trace not in seen
    assert 'mqtt: client certificate node-cert.der: "CN=test-node" issued by' in node.text()


def test_a_node_without_a_certificate_is_refused_clearly(brokers, watchers, fleet,
                                                         node_factory):
    brk = brokers()
    op = watchers(brk, fleet["operator"])
    node = node_factory(brk)
    first = node.wait_for_line(REFUSED_RX, CONNECT_TIMEOUT_S)
    assert first.group(1) == ("the broker requires a client certificate (mqtt.cert, mqtt.key)"
                              ), first.group(0)
    mark = node.mark()
    node.wait_for_line(REFUSED_RX, timeout=10, since=mark)
    node.wait_for_line(TAKEN_RX["climate"], timeout=5, since=mark)  # sampling goes on
    assert node.running()
    assert not node.find(CONNECTED_RX)
    assert not op.select(rf"^nodes/{NODE}/")
    assert "peer did not return a certificate" in brk.log()
    print(f"\nno certificate: {first.group(0)}")


def test_a_certificate_from_another_ca_is_refused_then_reported(brokers, watchers, fleet,
                                                                node_factory, certs,
                                                                tmp_path):
    """Refused by name while the broker does not trust its CA; once it does (the broker's
    cafile gets that CA too), the node connects and its telemetry says what kept it out."""
    brk = brokers()
    node = node_factory(brk, config=CERT_FILES, files=node_files(fleet["rogue"]))
    first = node.wait_for_line(REFUSED_RX, CONNECT_TIMEOUT_S)
    assert first.group(1) == "the broker refused the client certificate node-cert.der", \
        first.group(0)
    # The second refusal, then the broker learns the CA: the next try is 2 s or more away
    # (the backoff of a TLS refusal), time enough for the restart.
    node.wait_for_line(REFUSED_RX, timeout=10, count=2)
    assert not node.find(CONNECTED_RX)
    assert "certificate verify failed" in brk.log()
    both = tmp_path / "both-cas.pem"
    both.write_bytes(certs.ca_pem.read_bytes() + fleet["rogue_ca"].read_bytes())
    brk.cafile = both
    brk.restart()
    op = watchers(brk, fleet["operator"])
    node.wait_for_line(CONNECTED_RX, timeout=15)
    tele = op.wait_for(rf"^nodes/{NODE}/telemetry$", timeout=10).json()
    assert tele["last_link_failure"] == (
        "TLS refused: the broker refused the client certificate node-cert.der"), tele
    print(f"\nanother CA: {first.group(0)}\ntelemetry once in: last_link_failure = "
          f"{tele['last_link_failure']!r}")


@pytest.mark.parametrize("case", ["another key", "missing key", "garbage certificate"])
def test_a_bad_pair_is_safe_mode_naming_the_file_never_a_crash(case, fleet, brokers,
                                                               node_factory):
    files = node_files(fleet["node"])
    if case == "another key":
        files["node-key.der"] = fleet["other"].key_der.read_bytes()
        reason = ('mqtt.key: node-key.der is not the key of "CN=test-node" in node-cert.der: they'
                  " do not belong together")
    elif case == "missing key":  # deleted from the flash below: make_flash wants it here
        reason = "mqtt.key: cannot read the private key file node-key.der (missing?)"
    else:
        files["node-cert.der"] = b"\x30\x82garbage" * 20
        reason = "mqtt.cert: node-cert.der: certificate 1: "
    node = node_factory(brokers(), reboot=True, config=CERT_FILES, files=files,
                        start=False)
    if case == "missing key":
        (node.flash / "node-key.der").unlink()
    node.start()
    line = node.wait_for_line(r"main: safe mode: (.*)", 20)
    assert line.group(1).startswith(reason), line.group(0)
    assert node.wait(10) == 0 and node.boots == 1
    assert "crashed" not in node.text() and "Traceback" not in node.text()
    for trace in key_traces(fleet["node"]) + key_traces(fleet["other"]):
        assert trace not in node.text()


def test_handshake_cost_with_and_without_a_client_certificate(brokers, broker_factory, fleet,
                                                              watchers, subscriber_factory,
                                                              node_factory):
    """The simulated board blocks for the handshake as the ESP32 would (SIM_TLS_MS), plus the
    signature of its client certificate (SIM_TLS_CERT_MS); connect_ms is what the node
    measures (TCP, TLS, CONNACK). Printed, never asserted as timings."""
    cert_broker_ = brokers()
    plain_broker = broker_factory("good")
    runs = {
        "with a client certificate": (
            node_factory(cert_broker_, config=CERT_FILES, files=node_files(fleet["node"])),
            watchers(cert_broker_, fleet["operator"])),
        "without": (node_factory(plain_broker), subscriber_factory(plain_broker, "nodes/#")),
    }
    figures = []
    for label, (node, sub) in runs.items():
        node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
        tele = sub.wait_for(rf"^nodes/{NODE}/telemetry$", timeout=10).json()
        done = [ms for kind, ms in handshakes(node) if kind == "done"]
        assert len(done) == 1, node.text()
        figures.append(f"{label}: handshake {done[0]} ms, connect_ms {tele['connect_ms']}")
    with_cert, without = (node for node, _ in runs.values())
    assert "(SIM_TLS_MS + SIM_TLS_CERT_MS)" in with_cert.text()
    assert "SIM_TLS_CERT_MS" not in without.text()
    print("\nsimulated board (SIM_TLS_MS=1000, SIM_TLS_CERT_MS=100): " + "; ".join(figures))


# --- as a user sets it up: make broker CLIENT_CERTS=1, make provision, make deploy ----------
def test_make_broker_client_certs_and_make_provision_as_printed(tmp_path):
    """tools/broker.py --client-certs runs mosquitto with its own files; tools/provision.py
    issues the node's pair beside config.json (where make deploy, and make_flash here, take
    it); the node and the operator (the printed make plot settings) get in."""
    from sim.host.simnode import Node, make_flash, sim_secrets, write_json
    from sim.net.broker import HOST, free_port
    from tests.e2e.infra import node_config
    from tests.e2e.test_broker import ToolRun, config_fragment
    from tools import provision

    cfg = node_config(8883)
    cfg["mqtt"].update(host="mqtt.example.lan", server_hostname=None)  # as config.json ships
    config_path = write_json(tmp_path / "config.json", cfg)
    port = free_port()
    run = ToolRun("--dir", str(tmp_path / "broker"), "--config", str(config_path), "--names",
                  "127.0.0.1 localhost", "--port", str(port), "--bind", HOST, "--client-certs",
                  "--secrets", str(tmp_path / "secrets.json"))
    node = None
    try:
        run.wait_listening(port, 30)
        cfg["mqtt"].update(config_fragment(run.text()))
        assert provision.main(["--node", NODE, "--dir", str(tmp_path / "broker"), "--config",
                               str(config_path)]) == 0
        cfg["mqtt"].update(cert="node-cert.der", key="node-key.der")  # as provision printed
        write_json(config_path, cfg)
        plot = re.search(r"make plot BROKER=(\S+):(\d+) CA=(\S+) CERT=(\S+) KEY=(\S+)",
                         run.text())
        assert plot, run.text()
        host, port_, ca, cert, key = plot.groups()
        op = Subscriber(host, int(port_), "#", ca=ca, certfile=cert, keyfile=key).connect(5)
        flash = make_flash(tmp_path / "flash", REPO, config_path=config_path,
                           secrets_path=write_json(tmp_path / "wifi.json", sim_secrets()))
        node = Node(flash, audio="sine:1000:-20", clock="host").start()
        node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
        op.wait_for(rf"^nodes/{NODE}/climate$", timeout=10)
        op.wait_for(rf"^homeassistant/sensor/{NODE}/\w+/config$", timeout=5)
        op.close()
    finally:
        if node is not None:
            node.stop()
        run.stop()


# --- the 32-bit port, the board's word size: the x86 bundle in the heap the node runs in -------


_LOADER_HEAP = """
import gc, sys
from node import config, startup, cafile, x509  # noqa: F401 - what boot has loaded already
gc.collect()
before = gc.mem_free()
from node import clientcert  # noqa: F401
gc.collect()
print("clientcert", before - gc.mem_free())
"""


@pytest.mark.skipif(not MP32.is_file(), reason="no 32-bit MicroPython (../shared/mp32) here")
def test_x86_bundle_with_a_client_certificate_runs_in_the_32_bit_heap(fleet, brokers, watchers,
                                                                      node_factory, tmp_path):
    from tools import bundle

    app = tmp_path / "build" / "x86"
    bundle.build(REPO, app, "x86", log=lambda line: None)
    brk = brokers()
    op = watchers(brk, fleet["operator"])
    node = node_factory(brk, config=CERT_FILES, files=node_files(fleet["node"]), app_root=app,
                        heap=HEAP_32_BIT, micropython=str(MP32))
    node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
    tele = op.wait_for(rf"^nodes/{NODE}/telemetry$", timeout=15).json()
    op.wait_for(rf"^nodes/{NODE}/sound$", timeout=15, count=2)
    assert "MemoryError" not in node.text(), node.text()
    # What the loader takes while it runs, as .mpy on this port (dropped after: see
    # tests/unit/test_clientcert.py).
    path = f"{REPO / 'sim' / 'board'}:{app / 'lib'}:.frozen"
    loader = subprocess.run([str(MP32), "-c", _LOADER_HEAP], cwd=app, capture_output=True,
                            text=True, env={"MICROPYPATH": path})
    assert loader.returncode == 0, loader.stderr
    print(f"\nx86 bundle with a client certificate on micropython32 at HEAP={HEAP_32_BIT}: "
          f"heap_free {tele['heap_free']}, heap_min_free {tele['heap_min_free']} bytes; "
          f"node.clientcert while loaded: {loader.stdout.split()[1]} bytes")
