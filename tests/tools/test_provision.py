"""tools/provision.py (`make provision NODE=<id>`): a node's key and certificate from the fleet
CA, where make deploy takes them; re-runs keep them; nothing of the user's is lost."""

import json
import subprocess

import pytest

from sim.net.pki import cert_info, signed_by
from tools import provision
from tools.hosttools import REPO


@pytest.fixture
def user(tmp_path):
    cfg = json.loads((REPO / "config.json").read_text())
    cfg["node_id"] = "kitchen"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


def run(folder, *args, capsys, expect=0):
    code = provision.main(["--dir", str(folder / "broker"), "--config",
                           str(folder / "config.json"), *args])
    out = capsys.readouterr()
    assert code == expect, out
    return out


def der_to_pem(path, kind):
    cmd = ["x509"] if kind == "cert" else ["pkey"]
    return subprocess.run(["openssl", *cmd, "-inform", "DER", "-in", str(path)],
                          capture_output=True, check=True).stdout


def test_a_node_gets_its_pair_where_deploy_takes_it(user, capsys):
    out = run(user, "--node", "kitchen", capsys=capsys).out
    b = user / "broker"
    pem, key = b / "nodes" / "kitchen" / "cert.pem", b / "nodes" / "kitchen" / "key.pem"
    assert signed_by(pem, b / "ca.pem") and cert_info(pem).subject == "CN = kitchen"
    text = subprocess.run(["openssl", "x509", "-in", str(pem), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    assert "TLS Web Client Authentication" in text and "CA:FALSE" in text
    assert key.stat().st_mode & 0o077 == 0
    # config.json names no mqtt.cert/key yet: the default names, and the lines to add.
    cert_der, key_der = user / "node-cert.der", user / "node-key.der"
    assert der_to_pem(cert_der, "cert") == pem.read_bytes()
    assert b"PRIVATE KEY" in der_to_pem(key_der, "key") and key_der.stat().st_mode & 0o077 == 0
    assert 'config.json needs, in "mqtt": "cert": "node-cert.der", "key": "node-key.der"' in out
    assert "CA: new" in out and "node kitchen: new key and certificate" in out
    assert key.read_text().splitlines()[1] not in out  # the key is never shown


def test_reruns_keep_a_pair_and_named_files_get_their_form(user, capsys):
    cfg = json.loads((user / "config.json").read_text())
    cfg["mqtt"].update(cert="certs/node.pem", key="certs/node.key")
    (user / "config.json").write_text(json.dumps(cfg))
    run(user, "--node", "kitchen", capsys=capsys)
    first = (user / "certs" / "node.pem").read_bytes()
    assert first.startswith(b"-----BEGIN CERTIFICATE-----")  # not .der: PEM as it is
    out = run(user, "--node", "kitchen", capsys=capsys).out
    assert (user / "certs" / "node.pem").read_bytes() == first
    assert "node kitchen: kept its certificate" in out and "already holds it" in out
    # Another node, then back: each keeps its own pair; the files follow the last provision.
    run(user, "--node", "hall", capsys=capsys)
    assert (user / "certs" / "node.pem").read_bytes() != first
    out = run(user, "--node", "kitchen", capsys=capsys).out
    assert (user / "certs" / "node.pem").read_bytes() == first and ".old" not in out
    assert "node_id is 'kitchen'" not in out
    out = run(user, "--node", "kitchen", "--renew", capsys=capsys).out
    assert (user / "certs" / "node.pem").read_bytes() != first


def test_what_it_did_not_write_is_moved_aside(user, capsys):
    (user / "node-key.der").write_bytes(b"someone else's key")
    out = run(user, "--node", "kitchen", capsys=capsys).out
    assert (user / "node-key.der.old").read_bytes() == b"someone else's key"
    assert "held a file no node of this CA has, moved to" in out


def test_the_node_id_must_fit_the_topics_and_the_config(user, capsys):
    for bad in ("", "a/b", "+", "x" * 65):
        err = run(user, "--node", bad, capsys=capsys, expect=2).err
        assert "expected the node's id, 1..64 letters, digits, '_' or '-'" in err
    assert not (user / "broker").exists()
    out = run(user, "--node", "hall", capsys=capsys).out
    assert "WARNING: config.json's node_id is 'kitchen'" in out
    cfg = json.loads((user / "config.json").read_text())
    cfg["node_id"] = None
    (user / "config.json").write_text(json.dumps(cfg))
    out = run(user, "--node", "a1b2c3", capsys=capsys).out
    assert "node_id is null: the node publishes under its board's unique id" in out
    cfg["mqtt"]["cert"] = "only-a-cert.der"
    (user / "config.json").write_text(json.dumps(cfg))
    err = run(user, "--node", "hall", capsys=capsys, expect=1).err
    assert "mqtt.cert and mqtt.key go together" in err
