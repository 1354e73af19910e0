"""umqtt.simple over TLS, made safe for an asyncio node: no call blocks the event loop for long.

umqtt.simple (from PyPI, unchanged) predates MicroPython's SSLContext API: it imports `ussl`,
which MicroPython 1.22+ lacks, opens its socket with no timeout, switches it back to blocking in
wait_msg(), and waits for a QoS 1 PUBACK forever. This subclass keeps its packet handling
(will, strings, incoming PUBLISH + PUBACK, PINGREQ, DISCONNECT) and replaces what blocks:
- `open()` resolves, connects, runs the TLS handshake (SSLContext, CERT_REQUIRED, the CA,
  server_hostname) and sends CONNECT on a non-blocking socket polled from asyncio. The handshake
  is driven by writing the CONNECT packet: MicroPython's TLS write returns None while the
  handshake waits for the peer (a write of b"" returns 0 at once and does not handshake);
- afterwards umqtt talks to a `_BoundedStream`, whose setblocking(True) means "block at most
  io_timeout_ms" (a MicroPython TLS socket has no settimeout, so the bound is set on the raw
  socket beneath it) and whose short reads are errors, never silently mis-parsed packets;
- `publish_qos1()` and `send_subscribe()` send and return the packet id; the PUBACK or SUBACK is
  picked up by `check_msg()`;
- `wait_msg()` is rewritten: umqtt's trusts the broker (an unbounded length varint, a PUBLISH
  of any claimed size read into one buffer, a SUBACK left half read), and a node must survive a
  broken or hostile peer. Anything malformed raises ProtocolError and the link is dropped.
"""

import asyncio
import errno
import select
import socket
import time

from micropython import const
from umqtt.simple import MQTTClient, MQTTException

_CONNACK = const(0x20)
_PUBLISH = const(0x30)
_PUBACK = const(0x40)
_SUBACK = const(0x90)
_PINGRESP = const(0xD0)
_HANDSHAKE_STEP_MS = const(5)
# Largest incoming PUBLISH read: commands are at most 512 bytes, and a larger claim must not
# become one allocation on a 110 KB heap. Anything bigger ends the session (reconnect).
MAX_INCOMING_BYTES = const(2048)
_SUBSCRIBE_REFUSED = const(0x80)


class ProtocolError(MQTTException):
    """The broker sent something MQTT 3.1.1 does not allow here."""


class _BoundedStream:
    """The TLS stream as umqtt sees it: blocking means bounded, a short read means a dead link."""

    def __init__(self, raw, tls, timeout_ms):
        self._raw = raw
        self._tls = tls
        self._timeout_s = timeout_ms / 1000
        raw.settimeout(self._timeout_s)

    def setblocking(self, flag):
        if flag:
            self._raw.settimeout(self._timeout_s)
        else:
            self._raw.setblocking(False)

    def read(self, n):
        data = self._tls.read(n)
        # None: non-blocking and nothing there (check_msg). Fewer bytes than asked: end of
        # stream mid-packet; umqtt would index past the end or mis-parse what follows.
        if data is not None and len(data) < n:
            raise OSError(errno.ECONNRESET)
        return data

    def write(self, buf, n=None):
        return self._tls.write(buf) if n is None else self._tls.write(buf, n)

    def close(self):
        self._tls.close()
        # A TLS object whose handshake never finished does not close the socket beneath it.
        self._raw.close()


class Client(MQTTClient):
    """umqtt.simple.MQTTClient with a bounded TLS transport and a non-waiting QoS 1 publish."""

    def __init__(self, client_id, host, port, ssl_context, server_hostname, user=None,
                 password=None, keepalive_s=30, io_timeout_ms=500):
        super().__init__(client_id, host, port, user, password, keepalive_s)
        self._context = ssl_context
        self._server_hostname = server_hostname
        self._io_timeout_ms = io_timeout_ms
        self._poller = None
        self.acked = []  # packet ids of PUBACKs received since the caller last looked
        self.subacked = []  # and of SUBACKs

    async def open(self, timeout_ms):
        """Connect, finish the TLS handshake and send CONNECT, never blocking the loop for long.

        The CONNACK comes later (readable(), read_connack()).

        Raises OSError (DNS, refused, timeout) or ValueError (the TLS layer: bad certificate,
        wrong host name); the caller retries with backoff.
        """
        self.close()
        # DNS may block on the board when the resolver is down; an IP literal never does.
        try:
            addr = socket.getaddrinfo(self.server, self.port, 0, socket.SOCK_STREAM)[0][-1]
        except (OSError, IndexError) as e:  # lwIP raises OSError; an empty answer, IndexError
            raise OSError("DNS lookup of %s failed (%s)" % (self.server, e))
        raw = socket.socket()
        tls = None
        try:
            raw.setblocking(False)
            try:
                raw.connect(addr)
            except OSError as e:
                # errno, not literals: lwIP on the ESP32 numbers these unlike Linux (119 vs 115).
                if e.errno != errno.EINPROGRESS:
                    raise
            tls = self._context.wrap_socket(
                raw, server_hostname=self._server_hostname, do_handshake_on_connect=False
            )
            packet = memoryview(self._connect_packet())
            start = time.ticks_ms()
            while packet:
                # None: the handshake (or the socket buffer) waits for the peer.
                n = tls.write(packet)
                if n is None:
                    if time.ticks_diff(time.ticks_ms(), start) > timeout_ms:
                        raise OSError(errno.ETIMEDOUT)
                    await asyncio.sleep_ms(_HANDSHAKE_STEP_MS)
                else:
                    packet = packet[n:]
        except BaseException:
            if tls is not None:
                tls.close()
            raw.close()
            raise
        self.sock = _BoundedStream(raw, tls, self._io_timeout_ms)
        self._poller = select.poll()
        self._poller.register(tls, select.POLLIN)

    def _connect_packet(self, clean_session=True):
        """CONNECT with the last will set by set_last_will(), as one buffer."""
        body = bytearray(b"\x00\x04MQTT\x04\x00\x00\x00")
        body[7] = clean_session << 1
        body[8] = self.keepalive >> 8
        body[9] = self.keepalive & 0xFF
        fields = [self.client_id]
        # set_last_will() and the constructor set these in pairs (config checks the pair).
        will_topic, will_msg, user, pswd = self.lw_topic, self.lw_msg, self.user, self.pswd
        if will_topic is not None and will_msg is not None:
            body[7] |= 0x04 | (self.lw_qos << 3) | (self.lw_retain << 5)
            fields += (will_topic, will_msg)
        if user is not None and pswd is not None:
            body[7] |= 0xC0
            fields += (user, pswd)
        size = len(body)
        for f in fields:
            size += 2 + len(f)
        out = bytearray(_fixed_header(0x10, size))
        out += body
        for f in fields:
            out += len(f).to_bytes(2, "big")
            out += f
        return out

    def readable(self):
        """True when bytes (or the end of the stream) are waiting; never blocks."""
        for _ in self._poller.ipoll(0):
            return True
        return False

    def read_connack(self):
        """Read the CONNACK; MQTTException(code) when the broker refuses (bad credentials...)."""
        resp = self.sock.read(4)
        if resp[0] != _CONNACK or resp[1] != 2:
            raise ProtocolError("expected CONNACK, got 0x%02x" % resp[0])
        if resp[3]:
            raise MQTTException(resp[3])

    def publish_qos1(self, topic, msg, retain=False, dup=False):
        """Send a QoS 1 PUBLISH and return its packet id; do not wait for the PUBACK."""
        self.pid = self.pid % 0xFFFF + 1  # 1..65535: 0 is not a valid packet id
        flags = 0x32 | retain | (dup << 3)
        self.sock.write(_fixed_header(flags, 2 + len(topic) + 2 + len(msg)))
        self._send_str(topic)
        self.sock.write(self.pid.to_bytes(2, "big"))
        self.sock.write(msg)
        return self.pid

    def send_subscribe(self, topic, qos=0):
        """Send SUBSCRIBE for one topic and return its packet id; the SUBACK comes later."""
        self.pid = self.pid % 0xFFFF + 1
        self.sock.write(_fixed_header(0x82, 2 + 2 + len(topic) + 1))
        self.sock.write(self.pid.to_bytes(2, "big"))
        self._send_str(topic)
        self.sock.write(bytes((qos,)))
        return self.pid

    def _remaining_length(self):
        size = 0
        for shift in (0, 7, 14, 21):  # MQTT allows at most four length bytes
            byte = self.sock.read(1)[0]
            size |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return size
        raise ProtocolError("remaining length longer than four bytes")

    def wait_msg(self):
        """Read one packet if any is waiting (or block, bounded, after setblocking(True)).

        PUBLISH goes to the callback, PUBACK ids to `acked`, SUBACK ids to `subacked`; returns
        the packet type, or None when nothing was waiting.
        """
        first = self.sock.read(1)
        self.sock.setblocking(True)  # the rest of a packet follows promptly, or the link is bad
        if first is None:
            return None
        op = first[0]
        kind = op & 0xF0
        size = self._remaining_length()
        if kind == _PUBLISH:
            self._receive_publish(op, size)
        elif op == _PUBACK or op == _SUBACK:
            expected = 2 if kind == _PUBACK else 3  # one topic per SUBSCRIBE
            if size != expected:
                raise ProtocolError("bad %s (length %d)"
                                    % ("PUBACK" if kind == _PUBACK else "SUBACK", size))
            body = self.sock.read(size)
            pid = body[0] << 8 | body[1]
            if kind == _PUBACK:
                self.acked.append(pid)
            elif body[2] == _SUBSCRIBE_REFUSED:
                raise ProtocolError("broker refused a subscription")
            else:
                self.subacked.append(pid)
        elif op == _PINGRESP:
            if size:
                raise ProtocolError("bad PINGRESP (length %d)" % size)
        else:
            raise ProtocolError("unexpected packet type 0x%02x" % op)
        return kind

    def _receive_publish(self, op, size):
        qos = (op >> 1) & 3
        if qos > 1:
            # Never subscribed above QoS 1 (QoS 3 does not exist): the broker may not send it.
            raise ProtocolError("PUBLISH with QoS %d" % qos)
        if size > MAX_INCOMING_BYTES:
            raise ProtocolError("incoming PUBLISH of %d bytes (limit %d)"
                                % (size, MAX_INCOMING_BYTES))
        if size < 2:
            raise ProtocolError("PUBLISH too short for its topic")
        body = self.sock.read(size)
        if body is None:  # cannot happen while blocking (bounded); keeps the type checker honest
            raise ProtocolError("PUBLISH cut short")
        topic_end = 2 + (body[0] << 8 | body[1])
        msg_start = topic_end + 2 * qos  # QoS 1 carries a packet id after the topic
        if msg_start > size:
            raise ProtocolError("PUBLISH topic longer than the packet")
        mv = memoryview(body)
        self.cb(bytes(mv[2:topic_end]), bytes(mv[msg_start:]))
        if qos:
            self.sock.write(b"\x40\x02")
            self.sock.write(mv[topic_end:msg_start])

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass  # already gone: closing is all we wanted
        self.sock = None
        self._poller = None


def _fixed_header(first_byte, size):
    if size >= 0x10000000:
        raise ValueError("packet too large")
    out = bytearray(5)
    out[0] = first_byte
    i = 1
    while True:
        out[i] = size & 0x7F
        size >>= 7
        if size:
            out[i] |= 0x80
            i += 1
        else:
            return memoryview(out)[: i + 1]
