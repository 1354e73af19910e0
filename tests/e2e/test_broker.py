"""`make broker` (tools/broker.py) on loopback: the node and a client set up as printed get through.

The tool runs as a new user runs it: a config.json still pointing at the example host, a
secrets.json with only the Wi-Fi keys. Then, as the user would, the test applies what it printed:
the "mqtt" fragment into config.json, and the MQTT Explorer settings (host, port, CA file, user,
password, topic) into a subscriber. The node gets the rest where `make deploy` takes it (the CA
at mqtt.ca, the credentials in secrets.json). Names 127.0.0.1 and localhost, a free high port,
listening on 127.0.0.1 only; the broker (mosquitto, exec'd by the tool) stops at the end.
pytest -s prints the times from the tool's start to the broker listening and to the first reading.
"""

import json
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from sim.host.simnode import Node, make_flash, sim_secrets, write_json
from sim.net.broker import HOST, Subscriber, free_port
from tests.e2e.infra import CONNECT_TIMEOUT_S, CONNECTED_RX, node_config
from tools.hosttools import REPO

NAMES = "127.0.0.1 localhost"
_START_TIMEOUT_S = 30


class ToolRun:
    """tools/broker.py in the foreground (it becomes mosquitto): its output collected."""

    def __init__(self, *args):
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "tools.broker", *args], cwd=REPO,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self._eof = False
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def text(self):
        with self._cond:
            return "\n".join(line for _, line in self.lines)

    def wait_for(self, regex, timeout):
        """(time since start, match) of the first line matching regex."""
        rx, deadline = re.compile(regex), time.monotonic() + timeout
        with self._cond:
            while True:
                for t, line in self.lines:
                    m = rx.search(line)
                    if m:
                        return t - self.t0, m
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise AssertionError(f"{regex!r} not printed; the tool printed:\n"
                                         f"{self.text()}")
                self._cond.wait(min(left, 0.2))

    def wait_listening(self, port, timeout):
        """Seconds from the start until mosquitto accepts connections on port (its own log is
        block-buffered into our pipe: no line to wait for)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                socket.create_connection((HOST, port), timeout=0.5).close()
                return time.monotonic() - self.t0
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"nothing listens on {port}; the tool printed:\n{self.text()}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        return self.proc.returncode


def explorer_settings(text):
    """The MQTT Explorer block of the tool's output, as the fields a user types."""
    block = text[text.index("MQTT Explorer:"):text.index("mosquitto_sub (")]

    def field(label):
        m = re.search(rf"^\s*{label}:?\s+(\S+)\s*$", block, re.M)
        assert m, f"no {label!r} line in:\n{block}"
        return m.group(1)

    return {
        "host": field("Host"), "port": int(field("Port")), "username": field("Username"),
        "password": field("Password"),
        "topic": re.search(r"Topic: (\S+) > ADD", block).group(1),
        "ca": re.search(r"Server Certificate \(CA\): (.+)$", block, re.M).group(1).strip(),
    }


def config_fragment(text):
    """The "mqtt" keys the tool says config.json needs."""
    m = re.search(r'set in "mqtt": (.*?)  \(now', text)
    assert m, f"no config.json advice in:\n{text}"
    return json.loads("{" + m.group(1) + "}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tool started as a new user would; yields (run, folder, config path, secrets path)."""
    work = tmp_path_factory.mktemp("make-broker")
    cfg = node_config(8883)
    cfg["mqtt"].update(host="mqtt.example.lan", server_hostname=None)  # as config.json ships
    config_path = write_json(work / "config.json", cfg)
    secrets_path = write_json(work / "secrets.json", sim_secrets())  # Wi-Fi only, no MQTT
    port = free_port()
    run = ToolRun("--dir", str(work / "broker"), "--config", str(config_path), "--secrets",
                  str(secrets_path), "--names", NAMES, "--port", str(port), "--bind", HOST)
    try:
        run.listening_s = run.wait_listening(port, _START_TIMEOUT_S)
        yield run, work, config_path, secrets_path
    finally:
        code = run.stop()
        print(f"--- tools/broker.py + mosquitto (exit {code}):\n{run.text()}")


def follow_advice(run, config_path):
    """config.json as the user leaves it after reading the tool's advice."""
    cfg = json.loads(config_path.read_text())
    cfg["mqtt"].update(config_fragment(run.text()))
    write_json(config_path, cfg)
    return cfg


def start_node(work, name, config_path, secrets_path):
    flash = make_flash(work / name, REPO, config_path=config_path, secrets_path=secrets_path)
    return Node(flash, audio="sine:1000:-20", clock="host").start()


def test_node_and_explorer_settings_get_the_readings(setup):
    run, work, config_path, secrets_path = setup
    cfg = follow_advice(run, config_path)
    assert cfg["mqtt"]["host"] == "127.0.0.1" and cfg["mqtt"]["server_hostname"] is None
    # The node's half, where make deploy takes it.
    secrets = json.loads(secrets_path.read_text())
    assert secrets["mqtt_user"] == "node" and secrets["wifi_ssid"] == "sim-wifi"
    assert (work / "ca.der").is_file(), "the CA is not at config.json's mqtt.ca"

    ex = explorer_settings(run.text())
    assert (ex["host"], ex["port"], ex["topic"]) == ("127.0.0.1", cfg["mqtt"]["port"], "nodes/#")
    sub = Subscriber(ex["host"], ex["port"], ex["topic"], ca=ex["ca"], username=ex["username"],
                     password=ex["password"]).connect()
    node = start_node(work, "flash", config_path, secrets_path)
    try:
        t_node = time.monotonic() - run.t0
        node.wait_for_line(CONNECTED_RX, timeout=CONNECT_TIMEOUT_S)
        prefix = f"nodes/{cfg['node_id']}/"
        first = sub.wait_for(rf"^{prefix}(climate|sound)$", timeout=CONNECT_TIMEOUT_S)
        sub.wait_for(rf"^{prefix}status$", where=lambda m: m.text == "online", timeout=5)
        sub.wait_for(rf"^{prefix}(climate|sound)$", timeout=10, count=3)
    finally:
        node.stop()
        sub.close()
    payload = first.json()
    assert {"boot", "seq", "ts"} <= set(payload), payload
    to_first = first.t - run.t0
    print(f"\nmake broker on loopback: listening {run.listening_s:.2f} s after the tool "
          f"started; node started at {t_node:.2f} s; first reading ({first.topic}) at "
          f"{to_first:.2f} s from the tool's start, {to_first - t_node:.2f} s from the node's")


@pytest.mark.parametrize("how", ["wrong password", "no user (anonymous)"])
def test_refused_without_the_right_password(setup, how):
    run, *_ = setup
    ex = explorer_settings(run.text())
    creds = ({"username": ex["username"], "password": ex["password"] + "x"}
             if how == "wrong password" else {})
    sub = Subscriber(ex["host"], ex["port"], ex["topic"], ca=ex["ca"], **creds)
    with pytest.raises(ConnectionError) as e:
        sub.connect(timeout=5)
    print(f"\n{how}: {e.value}")
    assert re.search(r"refused.*(Not authorized|Bad user name or password)", str(e.value))


def test_node_without_credentials_gets_connack_5(setup):
    """What a node with mqtt_user null meets at Mosquitto 2 (the README names it)."""
    run, work, config_path, _ = setup
    follow_advice(run, config_path)
    anonymous = write_json(work / "secrets-anonymous.json", sim_secrets())
    node = start_node(work, "flash-anonymous", config_path, anonymous)
    try:
        m = node.wait_for_line(r"broker refused CONNECT: (.*)", timeout=CONNECT_TIMEOUT_S)
    finally:
        node.stop()
    print(f"\nnode with mqtt_user null: {m.group(0)}")
    assert "return code 5" in m.group(1)
