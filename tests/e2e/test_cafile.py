"""The CA files users have, on the simulated board against Mosquitto over TLS.

A bundle with another CA first, and a chain saved with `openssl s_client -showcerts` from the
broker itself: the node trusts the CA in it and connects. From a broker that sends only its own
certificate, the same command saves just that: the node stops in safe mode and names the
certificate and the CA the user needs instead.
"""

import subprocess

from sim.net.broker import Mosquitto
from sim.net.pki import openssl_path
from tests.e2e.infra import (  # noqa: F401  (fixtures are found by pytest in this namespace)
    CONNECT_TIMEOUT_S,
    CONNECTED_RX,
    broker,
    broker_factory,
    certs,
    node_factory,
)


def showcerts(port):
    """What `openssl s_client -showcerts` prints for the broker: what a user saves as the CA."""
    proc = subprocess.run(
        [openssl_path(), "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
         "-showcerts"], input="", capture_output=True, text=True, timeout=20)
    assert "BEGIN CERTIFICATE" in proc.stdout, proc.stdout + proc.stderr
    return proc.stdout


def with_ca_file(tmp_path, name, text):
    """Put the CA file where node_factory's first node takes its flash folder from."""
    folder = tmp_path / "node-0"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(text)
    return {"mqtt": {"ca": name}}


def test_a_bundle_whose_second_ca_signed_the_broker(certs, broker, node_factory, tmp_path):
    bundle = certs.impostor.ca.read_text() + certs.ca_pem.read_text()
    node = node_factory(broker, config=with_ca_file(tmp_path, "bundle.pem", bundle))
    node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
    assert len(node.find(r"mqtt: CA file bundle\.pem: trusting \"CN=sim-node test CA\"")) == 2


def test_a_chain_saved_from_the_broker_leaf_first(certs, node_factory, tmp_path):
    chain = tmp_path / "server-chain.pem"  # the broker sends its certificate and the CA
    chain.write_text(certs.server.cert.read_text() + certs.ca_pem.read_text())
    with Mosquitto(tmp_path / "broker", certfile=chain, keyfile=certs.server.key,
                   cafile=certs.ca_pem) as brk:
        saved = showcerts(brk.port)
        assert saved.count("BEGIN CERTIFICATE") == 2
        node = node_factory(brk, config=with_ca_file(tmp_path, "chain.pem", saved))
        node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
        node.stop()
    assert node.find(r'skipped certificate 1: "CN=localhost" is a server certificate, not a CA')
    assert node.find(r'trusting "CN=sim-node test CA"')


def test_only_the_brokers_own_certificate_is_safe_mode_naming_it(certs, node_factory,
                                                                 tmp_path):
    # Without a cafile, Mosquitto (OpenSSL) cannot add the CA to what it sends.
    with Mosquitto(tmp_path / "broker", certfile=certs.server.cert,
                   keyfile=certs.server.key) as brk:
        saved = showcerts(brk.port)
        assert saved.count("BEGIN CERTIFICATE") == 1
        node = node_factory(brk, config=with_ca_file(tmp_path, "leaf.pem", saved))
        line = node.wait_for_line(r"main: safe mode: mqtt\.ca: .*", 20)
        assert node.wait(10) == 0, node.tail()  # main.py returned: the REPL is free
    assert line.group(0).endswith(
        'leaf.pem has no usable CA certificate: certificate 1: "CN=localhost" is a server'
        ' certificate, not a CA: the CA that signed it is "CN=sim-node test CA"'), line.group(0)
