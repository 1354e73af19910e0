"""A throwaway Mosquitto broker on loopback, with TLS, and a subscriber that records what arrives.

    with Mosquitto(workdir, certfile=..., keyfile=..., cafile=...) as broker:
        ...  # broker.host, broker.port; broker.pause()/resume(), kill(), restart()
    with Subscriber(broker.host, broker.port, "nodes/#", ca=pki.ca_pem) as sub:
        sub.wait_for(r"/climate$", timeout=10)

It listens on 127.0.0.1 only, on a free port that stays the same across restart(), accepts
anonymous clients, keeps nothing on disk and logs everything to `workdir/mosquitto.log`.
Whatever an instance starts it stops again: on stop(), on leaving the `with`, and at exit.
"""

import atexit
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import weakref
from pathlib import Path

HOST = "127.0.0.1"
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
_PORT_ATTEMPTS = 5
_PORT_FLOOR = 10000  # above the registered services a test machine may run
_PORT_DRAWS = 200
_EPHEMERAL_RANGE_PATH = Path("/proc/sys/net/ipv4/ip_local_port_range")
_EPHEMERAL_RANGE_DEFAULT = (32768, 60999)  # Linux's, where /proc does not say
_PORT_END = 65536
_PORT_SPAN_MIN = 1024  # fewer outside the ephemeral range: draw from all, as before
_SUBSCRIBER_RESET_ATTEMPTS = 3
_SUBSCRIBER_RESET_WAIT_S = 0.5

_live = weakref.WeakSet()
_client_numbers = itertools.count(1)


class BrokerError(RuntimeError):
    """Mosquitto is missing, or did not start (the message carries the end of its log)."""


def mosquitto_path():
    """The broker binary: PATH first, then the Debian location outside a user's PATH."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
    if not found:
        raise BrokerError("mosquitto not found in PATH or /usr/sbin: run `make deps`")
    return found


def _ephemeral_range():
    """(first, last): the ports the kernel hands out as connections' local ports."""
    try:
        first, last = map(int, _EPHEMERAL_RANGE_PATH.read_text().split())
        return first, last
    except (OSError, ValueError):
        return _EPHEMERAL_RANGE_DEFAULT


def _port_span():
    """[start, end): the widest run of ports from _PORT_FLOOR up outside the ephemeral range;
    all of them from _PORT_FLOOR up where the range leaves too few outside it."""
    first, last = _ephemeral_range()
    below = (_PORT_FLOOR, max(_PORT_FLOOR, first))
    above = (max(_PORT_FLOOR, last + 1), _PORT_END)
    widest = max(below, above, key=lambda span: span[1] - span[0])
    return widest if widest[1] - widest[0] >= _PORT_SPAN_MIN else (_PORT_FLOOR, _PORT_END)


def free_port(host=HOST):
    """A TCP port that was free a moment ago (the broker retries if it is taken meanwhile).

    It lies outside the kernel's ephemeral range, because a broker stopped and started again
    keeps its port: while it is down, a port in that range is any outgoing connection's to take
    (one took it under 6 test workers, and the restart failed with "Address already in use").
    Each pytest-xdist worker draws from its own share of those ports, so no two workers meet."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    index = int(worker[2:]) % workers if worker[2:].isdigit() else 0
    start, end = _port_span()
    share = (end - start) // workers
    low = start + index * share
    for _ in range(_PORT_DRAWS):
        port = random.randrange(low, low + share)
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise BrokerError(f"no free port in {low}..{low + share - 1} after {_PORT_DRAWS} draws")


def _listening(host, port):
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Mosquitto:
    """One mosquitto process; tls=False gives a plain listener (certificates then unused)."""

    def __init__(self, workdir, certfile=None, keyfile=None, cafile=None, port=None, tls=True,
                 extra_conf=()):
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port
        self.tls = tls
        if tls and not (certfile and keyfile):
            raise ValueError("a TLS listener needs certfile and keyfile")
        self.certfile, self.keyfile = certfile, keyfile
        self.cafile = cafile
        self.extra_conf = list(extra_conf)
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.proc = None
        self.paused = False
        self.starts = 0

    # --- life cycle -----------------------------------------------------------------------
    def _write_conf(self):
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type all",
            "connection_messages true",
            "log_timestamp true",
            "log_timestamp_format %H:%M:%S",
        ]
        if self.tls:
            lines += [f"certfile {Path(self.certfile).resolve()}",
                      f"keyfile {Path(self.keyfile).resolve()}"]
            if self.cafile:
                lines.append(f"cafile {Path(self.cafile).resolve()}")
        if os.geteuid() == 0:
            # As root mosquitto drops to user `mosquitto`, which cannot read our root-owned key.
            lines.append("user root")
        lines += self.extra_conf
        self.conf_path.write_text("\n".join(lines) + "\n")

    def start(self):
        """Start (or start again) and return once the port accepts connections."""
        if self.running():
            return self
        fixed = self.port is not None
        last_error = None
        for _ in range(1 if fixed else _PORT_ATTEMPTS):
            if not fixed:
                self.port = free_port(self.host)
            try:
                self._spawn()
                return self
            except BrokerError as e:  # most likely the port was taken in between: try another
                last_error = e
                if not fixed:
                    self.port = None
        raise last_error

    def _spawn(self):
        self._write_conf()
        log_mark = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.proc = subprocess.Popen(
            [mosquitto_path(), "-c", str(self.conf_path)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C in the terminal is for us, not the broker
        )  # fmt: skip
        self.paused = False
        _live.add(self)
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace").strip()
                self.proc = None
                raise BrokerError(
                    f"mosquitto exited during start on port {self.port}: {err} "
                    f"{self._log_tail(log_mark)}".strip()
                )
            if _listening(self.host, self.port):
                self.starts += 1
                return
            time.sleep(0.05)
        self._terminate(signal.SIGKILL)
        raise BrokerError(f"mosquitto did not listen on port {self.port} within "
                          f"{_START_TIMEOUT_S:.0f} s {self._log_tail(log_mark)}")

    def _log_tail(self, mark=0, lines=5):
        try:
            text = self.log_path.read_text(errors="replace")[mark:]
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def _terminate(self, sig):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                if self.paused and sig != signal.SIGKILL:
                    self.proc.send_signal(signal.SIGCONT)  # a stopped process cannot exit
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        self.paused = False
        _live.discard(self)

    def stop(self):
        """Clean shutdown (SIGTERM, SIGKILL after a few seconds): clients see the socket close."""
        self._terminate(signal.SIGTERM)

    def kill(self):
        """SIGKILL: the broker vanishes without a word, as on a power cut."""
        self._terminate(signal.SIGKILL)

    def pause(self):
        """SIGSTOP: the TCP connections stay open but nothing answers (a hung broker)."""
        if self.running() and not self.paused:
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self):
        if self.running() and self.paused:
            self.proc.send_signal(signal.SIGCONT)
            self.paused = False

    def restart(self, down_s=0.0):
        """Stop, optionally stay down for down_s seconds, start again on the same port."""
        self.stop()
        if down_s:
            time.sleep(down_s)
        return self.start()

    def log(self):
        """The broker's log so far (text)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        state = "paused" if self.paused else "running" if self.running() else "stopped"
        return f"<Mosquitto {self.host}:{self.port} {'tls' if self.tls else 'plain'} {state}>"


@atexit.register
def _stop_all():
    for broker in list(_live):
        broker.stop()


# --- a recording subscriber --------------------------------------------------------------------
class Message:
    """One received message: topic (str), payload (bytes), retain, qos, t (monotonic), wall."""

    __slots__ = ("topic", "payload", "retain", "qos", "t", "wall")

    def __init__(self, topic, payload, retain, qos):
        self.topic, self.payload, self.retain, self.qos = topic, bytes(payload), bool(retain), qos
        self.t, self.wall = time.monotonic(), time.time()

    @property
    def text(self):
        return self.payload.decode(errors="replace")

    def json(self):
        """The payload parsed as JSON (raises ValueError if it is not JSON)."""
        return json.loads(self.payload)

    def __repr__(self):
        flag = " (retained)" if self.retain else ""
        return f"{self.topic}{flag} {self.text}"


def tls_context(ca, server_hostname=None, certfile=None, keyfile=None):
    """A client context trusting only `ca` (PEM or DER file); checks server_hostname if given;
    presents the client certificate `certfile` with its key `keyfile` (PEM) if given, for a
    broker that requires one (the operator's identity, tools/broker.py).

    paho verifies the name it connects to; a node may connect to an IP and check another name
    (mqtt.server_hostname), so the context can pin the name it checks.
    """
    data = Path(ca).read_bytes()
    ctx = _PinnedNameContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name
    ctx.pinned_name = server_hostname
    if data.lstrip().startswith(b"-----BEGIN"):
        ctx.load_verify_locations(cadata=data.decode())
    else:
        ctx.load_verify_locations(cadata=data)  # DER bytes
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    return ctx


class _PinnedNameContext(ssl.SSLContext):
    pinned_name = None

    def wrap_socket(self, sock, *args, server_hostname=None, **kwargs):
        return super().wrap_socket(
            sock, *args, server_hostname=self.pinned_name or server_hostname, **kwargs
        )


class Subscriber:
    """A paho client subscribed to `topic` (QoS 1), recording every message; reconnects itself.

    on_message(msg) is called from paho's thread for each Message.
    """

    def __init__(self, host, port, topic="#", ca=None, server_hostname=None, username=None,
                 password=None, client_id=None, on_message=None, tls=True, certfile=None,
                 keyfile=None):
        import paho.mqtt.client as mqtt  # host-side only; keeps `import broker` light

        self.host, self.port, self.topic = host, port, topic
        self.messages = []
        self.connects = 0
        self.on_message = on_message
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._connect_error = None
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"sim-watch-{os.getpid()}-{next(_client_numbers)}",
        )
        if tls:
            if ca:
                ctx = tls_context(ca, server_hostname, certfile, keyfile)
            else:
                ctx = ssl.create_default_context()
                if certfile:
                    ctx.load_cert_chain(certfile, keyfile)
            self.client.tls_set_context(ctx)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.2, 2)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self._connect_error = f"broker refused the subscriber: {reason_code}"
            return
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        self.connects += 1
        self._connected.set()

    def _on_message(self, client, userdata, m):
        msg = Message(m.topic, m.payload, m.retain, m.qos)
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()
        if self.on_message:
            self.on_message(msg)

    def connect(self, timeout=5.0):
        """Connect and subscribe; raises ConnectionError (with the reason) if that fails.

        A reset in the TLS handshake is tried again a few times first: a Mosquitto started a
        moment ago on a loaded machine has reset the subscriber's first handshake (seen with
        6 test workers on 2 cores); a broker that refuses the subscriber resets every one.
        """
        for attempt in range(_SUBSCRIBER_RESET_ATTEMPTS):
            try:
                self.client.connect(self.host, self.port, keepalive=30)
                break
            except ConnectionResetError as e:
                if attempt + 1 == _SUBSCRIBER_RESET_ATTEMPTS:
                    raise ConnectionError(
                        f"subscriber cannot connect to {self.host}:{self.port}: {e} "
                        f"({_SUBSCRIBER_RESET_ATTEMPTS} times)") from e
                time.sleep(_SUBSCRIBER_RESET_WAIT_S)
            except (OSError, ssl.SSLError, ValueError) as e:
                raise ConnectionError(
                    f"subscriber cannot connect to {self.host}:{self.port}: {e}"
                ) from e
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise ConnectionError(self._connect_error or
                                  f"subscriber not subscribed within {timeout} s")
        return self

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc):
        self.close()

    def publish(self, topic, payload, qos=1, retain=False, timeout=5.0):
        """Publish from this client (a command, Home Assistant's status) and wait until sent."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"publish to {topic} not acknowledged within {timeout} s")

    # --- what arrived ---
    def mark(self):
        with self._cond:
            return len(self.messages)

    def select(self, topic_regex=".*", since=0):
        rx = re.compile(topic_regex)
        with self._cond:
            return [m for m in self.messages[since:] if rx.search(m.topic)]

    def wait_for(self, topic_regex=".*", timeout=10.0, since=0, count=1, where=None):
        """Wait for `count` messages whose topic matches (and where(msg) holds); returns the last.

        Raises TimeoutError listing what did arrive.
        """
        rx = re.compile(topic_regex)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in self.messages[since:]
                         if rx.search(m.topic) and (where is None or where(m))]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "\n".join(map(repr, self.messages[since:][-15:])) or "(nothing)"
                    raise TimeoutError(
                        f"{len(found)}/{count} messages on {topic_regex!r} in {timeout} s; "
                        f"last arrived:\n{seen}"
                    )
                self._cond.wait(min(left, 0.2))
