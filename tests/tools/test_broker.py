"""tools/broker.py (`make broker`) without starting mosquitto: what a first run writes, what a
re-run keeps or replaces, and the files of the user's it must not clobber silently.

The broker itself, the node and a client set up as printed: tests/e2e/test_broker.py.
"""

import json
import socket
import subprocess

import pytest

from sim.net.broker import HOST
from sim.net.pki import cert_info, signed_by
from tools import broker as tool
from tools.hosttools import REPO

NAMES = "127.0.0.1, localhost"


@pytest.fixture
def user(tmp_path):
    """A project folder as a new user has it: config.json as shipped, no secrets.json."""
    (tmp_path / "config.json").write_text((REPO / "config.json").read_text())
    return tmp_path


def run(folder, *extra, names=NAMES, capsys=None, expect=0):
    args = ["--dir", str(folder / "broker"), "--config", str(folder / "config.json"),
            "--secrets", str(folder / "secrets.json"), "--port", "18883", "--no-start", *extra]
    if names is not None:
        args += ["--names", names]
    code = tool.main(args)
    out = capsys.readouterr() if capsys else None
    assert code == expect, out
    return out


def snapshot(folder):
    b = folder / "broker"
    return {name: (b / name).read_bytes() for name in ("ca.pem", "ca.key", "server.pem",
                                                       "server.key", "users.json")}


def test_first_run_writes_the_broker_and_the_nodes_half(user, capsys):
    out = run(user, capsys=capsys).out
    b = user / "broker"
    info = cert_info(b / "server.pem")
    assert (info.dns, info.ips) == (("localhost",), ("127.0.0.1",))
    assert signed_by(b / "server.pem", b / "ca.pem")
    ca_days = (cert_info(b / "ca.pem").not_after - info.not_after).days
    print(f"\nserver certificate until {info.not_after:%Y-%m-%d}, CA {ca_days} days longer")
    assert (b / "ca.key").stat().st_mode & 0o077 == 0 and (b / "users.json").stat().st_mode \
        & 0o077 == 0
    users = json.loads((b / "users.json").read_text())
    assert set(users) == {"node", "client"} and all(len(p) >= 24 for p in users.values())
    # The node's half: made from secrets.example.json, the CA at config.json's mqtt.ca (DER).
    secrets = json.loads((user / "secrets.json").read_text())
    assert secrets == {**json.loads((REPO / "secrets.example.json").read_text()),
                       "mqtt_user": "node", "mqtt_password": users["node"]}
    assert "put your Wi-Fi's wifi_ssid and wifi_password in it" in out
    der = subprocess.run(["openssl", "x509", "-in", str(b / "ca.pem"), "-outform", "DER"],
                         capture_output=True, check=True).stdout
    assert (user / "ca.der").read_bytes() == der
    conf = (b / "mosquitto.conf").read_text()
    for line in ("listener 18883", "allow_anonymous false", f"password_file {b / 'passwd'}"):
        assert line in conf.splitlines()
    passwd = (b / "passwd").read_text().splitlines()
    assert [line.split(":")[0] for line in passwd] == ["node", "client"]
    assert users["client"] not in (b / "passwd").read_text()  # hashed
    # What to type where, and what config.json (still the example host) needs.
    assert f"Password:  {users['client']}" in out and f"Server Certificate (CA): {b}/ca.pem" in out
    assert 'set in "mqtt": "host": "127.0.0.1", "port": 18883, "server_hostname": null' in out


def test_rerun_keeps_ca_passwords_and_certificate(user, capsys):
    run(user, capsys=capsys)
    before, secrets = snapshot(user), (user / "secrets.json").read_text()
    out = run(user, capsys=capsys).out
    assert snapshot(user) == before
    assert (user / "secrets.json").read_text() == secrets
    for said in ("CA: kept", "server certificate: kept", "users: kept the passwords",
                 "already holds this CA", "already has user 'node' and its password"):
        assert said in out


def test_new_names_or_renew_make_only_a_new_server_certificate(user, capsys):
    run(user, capsys=capsys)
    before = snapshot(user)
    out = run(user, names="mqtt.home.lan 192.168.1.20", capsys=capsys).out
    after = snapshot(user)
    assert "names changed: localhost, 127.0.0.1 -> mqtt.home.lan, 192.168.1.20" in out
    assert after["server.pem"] != before["server.pem"]
    assert {k: after[k] for k in ("ca.pem", "ca.key", "users.json")} == \
        {k: before[k] for k in ("ca.pem", "ca.key", "users.json")}
    info = cert_info(user / "broker" / "server.pem")
    assert (info.dns, info.ips) == (("mqtt.home.lan",), ("192.168.1.20",))
    assert signed_by(user / "broker" / "server.pem", user / "broker" / "ca.pem")
    out = run(user, "--renew", names="mqtt.home.lan 192.168.1.20", capsys=capsys).out
    assert "on request (--renew)" in out
    assert snapshot(user)["server.pem"] != after["server.pem"]
    assert snapshot(user)["ca.pem"] == before["ca.pem"]


def test_what_it_did_not_write_is_kept_or_moved_aside(user, capsys):
    # Another broker's user in secrets.json and another CA at mqtt.ca.
    theirs = {"wifi_ssid": "home", "wifi_password": "pw", "mqtt_user": "alice",
              "mqtt_password": "secret"}
    (user / "secrets.json").write_text(json.dumps(theirs))
    (user / "ca.der").write_bytes(b"0\x82another CA")
    out = run(user, capsys=capsys).out
    assert json.loads((user / "secrets.json").read_text()) == theirs
    assert "WARNING" in out and "logs in as 'alice', kept" in out
    assert (user / "ca.der.old").read_bytes() == b"0\x82another CA"
    assert "held another CA, moved to" in out
    # A user added with mosquitto_passwd survives a re-run.
    passwd = user / "broker" / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "hass", "pw"], check=True)
    run(user, capsys=capsys)
    assert [line.split(":")[0] for line in passwd.read_text().splitlines()] == \
        ["hass", "node", "client"]


def test_a_pem_ca_name_gets_pem_and_a_matching_config_is_said_so(user, capsys):
    cfg = json.loads((user / "config.json").read_text())
    cfg["mqtt"].update(host="localhost", port=18883, ca="certs/broker.pem")
    (user / "config.json").write_text(json.dumps(cfg))
    out = run(user, capsys=capsys).out
    assert (user / "certs" / "broker.pem").read_bytes() == \
        (user / "broker" / "ca.pem").read_bytes()
    assert "config.json: mqtt.host 'localhost' and port 18883: this broker's" in out


@pytest.mark.parametrize("case", ["bad name", "secrets not JSON", "CA key lost"])
def test_refusals_name_the_problem(user, capsys, case):
    names = NAMES
    if case == "bad name":
        names = "my_host!"
        expect = "NAMES: 'my_host!' is neither a host name nor an IP address"
    elif case == "secrets not JSON":
        (user / "secrets.json").write_text('{"wifi_ssid": ')
        expect = f"{user / 'secrets.json'}: not valid JSON"
    else:
        run(user, capsys=capsys)
        (user / "broker" / "ca.key").unlink()
        expect = f"{user / 'broker' / 'ca.key'} is missing, so the CA beside it cannot sign"
    before = (user / "secrets.json").read_bytes() if (user / "secrets.json").exists() else None
    err = run(user, names=names, capsys=capsys, expect=1).err
    print(f"\n{case}: {err.strip()}")
    assert expect in err
    after = (user / "secrets.json").read_bytes() if (user / "secrets.json").exists() else None
    assert after == before


def test_a_taken_port_is_said_before_mosquitto_starts(user, capsys):
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen()
        port = s.getsockname()[1]
        code = tool.main(["--dir", str(user / "broker"), "--config", str(user / "config.json"),
                          "--secrets", str(user / "secrets.json"), "--names", NAMES,
                          "--port", str(port), "--bind", HOST])
    assert code == 1
    assert f"port {port} is taken ({HOST}, port {port})" in capsys.readouterr().err


def test_default_names_this_machine_first_then_loopback(monkeypatch):
    monkeypatch.setattr(tool.socket, "gethostname", lambda: "desk")
    monkeypatch.setattr(tool, "local_addresses", lambda: ["192.168.1.5"])
    assert tool.default_names() == ["desk.local", "desk", "192.168.1.5", "localhost", "127.0.0.1"]
    monkeypatch.setattr(tool.socket, "gethostname", lambda: "mac.local")
    assert tool.default_names()[:2] == ["mac.local", "192.168.1.5"]


# --- --client-certs: every client by its certificate -------------------------------------------
def openssl_text(pem):
    return subprocess.run(["openssl", "x509", "-in", str(pem), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout


def test_client_certs_mode_writes_an_acl_per_node_and_the_operators_certificate(user, capsys):
    cfg = json.loads((user / "config.json").read_text())
    cfg["topic_prefix"] = "home/sensors"
    cfg["discovery"]["prefix"] = "ha"
    (user / "config.json").write_text(json.dumps(cfg))
    out = run(user, "--client-certs", capsys=capsys).out
    b = user / "broker"
    conf = (b / "mosquitto.conf").read_text().splitlines()
    for line in ("require_certificate true", f"cafile {b / 'ca.pem'}",
                 "use_identity_as_username true", f"acl_file {b / 'acl'}",
                 "allow_anonymous false"):
        assert line in conf
    assert not any(line.startswith("password_file") for line in conf)
    rules = [line for line in (b / "acl").read_text().splitlines()
             if line and not line.startswith("#")]
    assert rules == ["pattern readwrite home/sensors/%u/#", "pattern write ha/+/%u/#",
                     "pattern read ha/status", "user operator", "topic readwrite home/sensors/#",
                     "topic readwrite ha/#"]
    # The operator: a client certificate of this CA, CN operator, for TLS clients only.
    assert signed_by(b / "operator.pem", b / "ca.pem")
    assert cert_info(b / "operator.pem").subject == "CN = operator"
    assert "TLS Web Client Authentication" in openssl_text(b / "operator.pem")
    assert (b / "operator.key").stat().st_mode & 0o077 == 0
    # The node's half: the CA at mqtt.ca; secrets.json is not made or touched.
    assert (user / "ca.der").exists() and not (user / "secrets.json").exists()
    assert "secrets.json: left alone" in out
    for said in (f"Client Certificate: {b / 'operator.pem'}", f"Client Key: {b / 'operator.key'}",
                 "make provision NODE=<node id>",
                 f"make plot BROKER=127.0.0.1:18883 CA={b / 'ca.pem'} CERT={b / 'operator.pem'}"
                 f" KEY={b / 'operator.key'}", "--cert", "Use a client certificate: on"):
        assert said in out, said
    # A re-run keeps the operator's certificate.
    before = (b / "operator.pem").read_bytes()
    out = run(user, "--client-certs", capsys=capsys).out
    assert (b / "operator.pem").read_bytes() == before and "operator certificate: kept" in out
