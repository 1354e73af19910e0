"""A scriptable MQTT-over-TLS server on loopback, for the faults Mosquitto cannot produce.

It answers a client's CONNECT the way its mode says (silence, a malformed CONNACK, garbage
after a good CONNACK, ...), never acknowledges a reading, and records what the client sent on
every connection (accept time, TLS handshake, the CONNECT and each later packet), so a test can
count the attempts and check the backoff between them.

    with FakeBroker(certs.server.cert, certs.server.key, "no_connack") as fb:
        ...                                  # point the node at fb.host:fb.port
        conns = fb.wait_for(3, "connect", timeout=60)
        fb.attempt_times("connect")          # monotonic times of the CONNECTs

`mode` is a name from MODES, a Fault, or a list of them: one per connection, the last repeating.
Run it by hand with `python -m sim.net.fakebroker MODE [--port N]` (throwaway certificates).
"""

import argparse
import random
import socket
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

HOST = "127.0.0.1"
CONNACK_OK = b"\x20\x02\x00\x00"
_ACCEPT_POLL_S = 0.2
# A connection nobody closes is given up after this (the node's own limits are far shorter).
_IDLE_LIMIT_S = 120.0
_JOIN_S = 2.0
PACKET_NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
                7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
                12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT"}


def garbage(n=64, seed=0):
    """n random bytes, the same for the same seed."""
    return bytes(random.Random(seed).getrandbits(8) for _ in range(n))


@dataclass(frozen=True)
class Fault:
    """What the server does on one connection.

    tls False: accept TCP and never answer (the ClientHello is read and dropped).
    tls_delay_s: wait this long before the TLS handshake (a slow link, a busy broker).
    reply: bytes sent in answer to CONNECT (None: nothing, ever).
    then: bytes sent after the reply, at once (trigger "connect") or in answer to the client's
    first QoS 1 PUBLISH (trigger "publish"; b"{pid}" in it becomes that packet's id).
    close: the server closes the connection once everything is sent.
    """

    name: str
    about: str
    tls: bool = True
    tls_delay_s: float = 0.0
    reply: bytes | None = CONNACK_OK
    then: bytes = b""
    trigger: str = "connect"
    close: bool = False


_TAIL = b"\x00\x01a" + b"x" * 16  # a topic and some payload after a huge length claim
MODES = {f.name: f for f in (
    Fault("silent_tcp", "accepts TCP, never speaks TLS", tls=False),
    Fault("no_connack", "TLS up, reads CONNECT, never answers", reply=None),
    Fault("slow_tls", "answers the TLS handshake after 1.5 s, then CONNACK, then silence",
          tls_delay_s=1.5),
    # Instead of a CONNACK.
    Fault("connack_bad_length", "CONNACK with remaining length 3", reply=b"\x20\x03\x00\x00\x00"),
    Fault("connack_wrong_type", "a PUBACK where the CONNACK belongs", reply=b"\x40\x02\x00\x01"),
    Fault("connack_truncated", "3 bytes of a CONNACK, then close", reply=b"\x20\x02\x00",
          close=True),
    Fault("connack_refused", "CONNACK return code 5 (not authorised)",
          reply=b"\x20\x02\x00\x05"),
    Fault("connack_varint5", "CONNACK type with a 5-byte remaining length",
          reply=b"\x20\xff\xff\xff\xff\x7f"),
    Fault("connack_200mb", "CONNACK type claiming 200 MB", reply=b"\x20\x80\x80\x80\x64"),
    Fault("connack_reserved_f0", "reserved type 0xF0 instead of CONNACK", reply=b"\xf0\x00"),
    Fault("connack_garbage", "64 random bytes instead of CONNACK", reply=garbage(64, 1)),
    # After a valid CONNACK.
    Fault("truncated", "half a PUBLISH, then close", then=b"\x30\x10\x00\x0enodes/te",
          close=True),
    Fault("varint5", "PUBLISH with a 5-byte remaining length",
          then=b"\x30\xff\xff\xff\xff\x7f" + _TAIL),
    Fault("len_200mb", "PUBLISH claiming 200 MB", then=b"\x30\x80\x80\x80\x64" + _TAIL),
    Fault("reserved_00", "reserved packet type 0x00", then=b"\x00\x00"),
    Fault("reserved_f0", "reserved packet type 0xF0", then=b"\xf0\x00"),
    Fault("puback_bad_length", "PUBACK of length 3 for the first reading",
          then=b"\x40\x03{pid}\x00", trigger="publish"),
    Fault("publish_topic_overflow", "PUBLISH whose topic length runs past the packet",
          then=b"\x30\x05\x00\x10abc"),
    Fault("pingresp_nonzero", "PINGRESP with remaining length 1", then=b"\xd0\x01\x00"),
    Fault("garbage", "64 random bytes after the CONNACK", then=garbage(64, 2)),
)}


@dataclass
class Packet:
    t: float  # monotonic
    type: int  # 1..15
    flags: int
    body: bytes

    @property
    def name(self):
        return PACKET_NAMES.get(self.type, f"type{self.type}")

    def publish(self):
        """(topic, qos, pid or None, dup, payload) of a PUBLISH."""
        qos, dup = (self.flags >> 1) & 3, bool(self.flags & 8)
        n = int.from_bytes(self.body[:2], "big")
        topic, rest = self.body[2:2 + n].decode(errors="replace"), self.body[2 + n:]
        pid = None
        if qos:
            pid, rest = int.from_bytes(rest[:2], "big"), rest[2:]
        return topic, qos, pid, dup, rest


@dataclass
class Connection:
    """One accepted connection and everything seen on it."""

    n: int
    fault: Fault
    accepted: float  # monotonic
    peer: tuple
    tls_done: float | None = None
    tls_error: str = ""
    connect: dict | None = None  # client_id, keepalive, clean, will_topic, t
    packets: list = field(default_factory=list)  # Packets after the CONNECT
    sent: list = field(default_factory=list)  # (t, bytes)
    raw_received: int = 0  # bytes read without TLS (silent_tcp)
    closed: float | None = None
    closed_by: str = ""  # "client", "server", "stop", or what went wrong

    @property
    def duration(self):
        return None if self.closed is None else self.closed - self.accepted

    def summary(self):
        what = [f"#{self.n} {self.fault.name}"]
        if self.tls_error:
            what.append(f"tls error {self.tls_error}")
        if self.connect:
            what.append(f"CONNECT {self.connect['client_id']!r}")
        what += [p.name for p in self.packets]
        if self.closed is not None:
            what.append(f"closed by {self.closed_by} after {self.duration:.2f} s")
        return ", ".join(what)


class _Closed(Exception):
    """The peer closed the stream."""


def _parse_connect(body):
    def text(at):
        n = int.from_bytes(body[at:at + 2], "big")
        return body[at + 2:at + 2 + n].decode(errors="replace"), at + 2 + n

    protocol, at = text(0)
    level, flags = body[at], body[at + 1]
    keepalive = int.from_bytes(body[at + 2:at + 4], "big")
    client_id, at = text(at + 4)
    will_topic = text(at)[0] if flags & 4 else None
    return {"protocol": protocol, "level": level, "clean": bool(flags & 2),
            "keepalive": keepalive, "client_id": client_id, "will_topic": will_topic}


class FakeBroker:
    """A loopback TLS listener playing one Fault per connection; see the module docstring."""

    def __init__(self, certfile, keyfile, mode="no_connack", host=HOST, port=0):
        script = mode if isinstance(mode, (list, tuple)) else [mode]
        self.script = [MODES[m] if isinstance(m, str) else m for m in script]
        if not self.script:
            raise ValueError("FakeBroker: empty script")
        self.host, self.port = host, port
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(str(certfile), str(keyfile))
        self.connections = []
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._listener = None
        self._threads = []
        self._socks = set()

    @property
    def mode(self):
        return ",".join(f.name for f in self.script)

    # --- life cycle -------------------------------------------------------------------------
    def start(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # Mosquitto takes over after us
        s.bind((self.host, self.port))
        s.listen(16)
        s.settimeout(_ACCEPT_POLL_S)
        self.port = s.getsockname()[1]
        self._listener = s
        self._stopping.clear()
        t = threading.Thread(target=self._accept_loop, name=f"fakebroker-{self.port}", daemon=True)
        self._threads.append(t)
        t.start()
        return self

    def stop(self):
        """Close the listener and every connection (the port is free again on return)."""
        self._stopping.set()
        with self._cond:
            socks = list(self._socks)
        for s in socks:
            try:
                socket.socket.shutdown(s, socket.SHUT_RDWR)  # wakes a thread blocked on it
            except OSError:
                pass
        for t in self._threads:
            t.join(_JOIN_S)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._threads = []

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        return f"<FakeBroker {self.host}:{self.port} {self.mode}>"

    # --- what was seen ----------------------------------------------------------------------
    def _select(self, what):
        if what == "accept":
            return list(self.connections)
        if what == "connect":
            return [c for c in self.connections if c.connect]
        raise ValueError(f"what must be 'accept' or 'connect', not {what!r}")

    def attempts(self, what="connect"):
        """Connections that got as far as `what` ("accept": TCP, "connect": an MQTT CONNECT)."""
        with self._cond:
            return self._select(what)

    def attempt_times(self, what="connect"):
        """Monotonic start times of those attempts (the accept time)."""
        return [c.accepted for c in self.attempts(what)]

    def wait_for(self, count, what="connect", timeout=30.0, abort=None):
        """Wait until `count` attempts got as far as `what`; returns them.

        abort() is polled: a truthy value (a reason) ends the wait with RuntimeError.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self._select(what)
                if len(found) >= count:
                    return found
                why = abort() if abort else None
                if why:
                    raise RuntimeError(f"{self}: stopped waiting for {count} x {what}: {why}")
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = "\n".join(c.summary() for c in self.connections) or "(none)"
                    raise TimeoutError(f"{self}: {len(found)}/{count} x {what} in {timeout} s; "
                                       f"connections:\n{seen}")
                self._cond.wait(min(left, 0.2))

    def wait_closed(self, conn, timeout=15.0):
        deadline = time.monotonic() + timeout
        with self._cond:
            while conn.closed is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{self}: connection #{conn.n} still open")
                self._cond.wait(min(left, 0.2))
        return conn

    def report(self):
        return "\n".join(c.summary() for c in self.attempts("accept"))

    # --- serving ----------------------------------------------------------------------------
    def _accept_loop(self):
        while not self._stopping.is_set():
            try:
                sock, peer = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                break
            with self._cond:
                n = len(self.connections)
                fault = self.script[min(n, len(self.script) - 1)]
                conn = Connection(n + 1, fault, time.monotonic(), peer)
                self.connections.append(conn)
                self._socks.add(sock)
                self._cond.notify_all()
            t = threading.Thread(target=self._serve, args=(conn, sock), daemon=True,
                                 name=f"fakebroker-{self.port}-{conn.n}")
            self._threads.append(t)
            t.start()

    def _note(self, conn, **changes):
        with self._cond:
            for k, v in changes.items():
                setattr(conn, k, v)
            self._cond.notify_all()

    def _serve(self, conn, sock):
        stream = sock
        how = "server"
        try:
            sock.settimeout(_IDLE_LIMIT_S)
            fault = conn.fault
            if not fault.tls:
                while data := sock.recv(4096):
                    conn.raw_received += len(data)
                raise _Closed
            if fault.tls_delay_s and self._stopping.wait(fault.tls_delay_s):
                return
            try:
                stream = self._ctx.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as e:
                self._note(conn, tls_error=str(e) or type(e).__name__)
                raise _Closed from e
            with self._cond:
                self._socks.discard(sock)
                self._socks.add(stream)
            self._note(conn, tls_done=time.monotonic())
            first = self._read_packet(stream)
            if first.type != 1:
                raise _Closed(f"first packet {first.name}, not CONNECT")
            info = _parse_connect(first.body)
            info["t"] = first.t
            self._note(conn, connect=info)
            if fault.reply is not None:
                self._send(conn, stream, fault.reply)
                if fault.then and fault.trigger == "connect":
                    self._send(conn, stream, fault.then)
                if fault.close:
                    return
            pending = fault.reply is not None and fault.trigger == "publish"
            while True:
                p = self._read_packet(stream)
                with self._cond:
                    conn.packets.append(p)
                    self._cond.notify_all()
                if pending and p.type == 3 and (p.flags >> 1) & 3:
                    pid = p.publish()[2]
                    self._send(conn, stream, fault.then.replace(b"{pid}", pid.to_bytes(2, "big")))
                    pending = False
                    if fault.close:
                        return
        except _Closed as e:
            how = "client" if not e.args else f"server ({e.args[0]})"
        except (OSError, ssl.SSLError, ValueError) as e:
            how = f"error: {e!r}"
        finally:
            if self._stopping.is_set():
                how = "stop"
            with self._cond:
                self._socks.discard(stream)
                self._socks.discard(sock)
            try:
                stream.close()
            except OSError:
                pass
            self._note(conn, closed=time.monotonic(), closed_by=how)

    def _send(self, conn, stream, data):
        stream.sendall(data)
        with self._cond:
            conn.sent.append((time.monotonic(), bytes(data)))

    @staticmethod
    def _read_exact(stream, n):
        buf = b""
        while len(buf) < n:
            chunk = stream.recv(n - len(buf))
            if not chunk:
                raise _Closed
            buf += chunk
        return buf

    def _read_packet(self, stream):
        head = self._read_exact(stream, 1)[0]
        t = time.monotonic()
        size = 0
        for shift in (0, 7, 14, 21):
            b = self._read_exact(stream, 1)[0]
            size |= (b & 0x7F) << shift
            if not b & 0x80:
                break
        else:
            raise _Closed("client sent a remaining length of more than 4 bytes")
        return Packet(t, head >> 4, head & 0x0F, self._read_exact(stream, size))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", nargs="+", help="one or more of: " + ", ".join(MODES))
    ap.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    ap.add_argument("--cert", help="server certificate (PEM); default: a throwaway PKI")
    ap.add_argument("--key", help="its key (PEM)")
    args = ap.parse_args(argv)
    unknown = [m for m in args.mode if m not in MODES]
    if unknown:
        ap.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.cert and args.key:
            cert, key = args.cert, args.key
        else:
            from sim.net.pki import make_pki
            pki = make_pki(tmp)
            cert, key = pki.server.cert, pki.server.key
            print(f"CA (copy it for the client): {pki.ca_der} / {pki.ca_pem}")
        with FakeBroker(cert, key, args.mode, port=args.port) as fb:
            print(f"listening on {fb.host}:{fb.port}, mode {fb.mode}; Ctrl-C stops")
            shown = 0
            try:
                while True:
                    time.sleep(0.5)
                    conns = fb.attempts("accept")
                    done = [c for c in conns if c.closed is not None]
                    for c in done[shown:]:
                        print(c.summary())
                    shown = len(done)
            except KeyboardInterrupt:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
