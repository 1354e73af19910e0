"""umqtt.simple over TLS, made safe for an asyncio node: no call blocks the event loop for long.

umqtt.simple (from PyPI, unchanged) predates MicroPython's SSLContext API: it imports `ussl`,
which MicroPython 1.22+ lacks, opens its socket with no timeout, switches it back to blocking in
wait_msg(), waits for a QoS 1 PUBACK forever and trusts the broker. This subclass keeps its state
(will, credentials, packet id, ping) and replaces what blocks or trusts:
- `open()` resolves, connects, runs the TLS handshake (SSLContext, CERT_REQUIRED, the CA,
  server_hostname) and sends CONNECT on a non-blocking socket polled from asyncio. The handshake
  is driven by writing the CONNECT packet: MicroPython's TLS write returns None while the
  handshake waits for the peer (a write of b"" returns 0 at once and does not handshake).
  The address is resolved once (getaddrinfo blocks the board's loop) and kept until a TCP
  connect to it fails; `dns_lookups` counts the queries (an IP literal needs none);
- afterwards packets go through a `_BoundedStream`, whose setblocking(True) means "block at most
  io_timeout_ms" (a MicroPython TLS socket has no settimeout, so the bound is set on the raw
  socket beneath it) and whose short reads and writes are errors, never mis-parsed packets;
- `publish_qos1()` and `send_subscribe()` send and return the packet id; the PUBACK or SUBACK is
  picked up by `check_msg()` into `acked` / `subacked`;
- `wait_msg()` checks every length. The callback gets `cb(topic, msg, retained)`. A PUBLISH over
  MAX_INCOMING_BYTES is read past in small chunks, acknowledged, counted in `oversized` and
  reported to `on_oversized(topic, size)`: the session goes on. Anything MQTT 3.1.1 does not
  allow raises ProtocolError and the caller drops the link.

Errors: every link method (open, read_connack, check_msg/wait_msg, publish*, send_subscribe,
ping, disconnect) raises only what LINK_ERRORS holds: OSError (socket, DNS, timeouts, end of
stream) or an MQTTException: ProtocolError, TlsError (its subclasses CertificateDateError: the
clock is not set yet, and ClientCertRefused: the broker turned down the node's own certificate,
or its lack of one) or Refused (CONNACK code in `.code`). ValueError is raised only for a
caller's mistake (publish() with a QoS, a packet over MQTT's 256 MB). Whatever the message
callback or on_oversized raises propagates unchanged: the packet is fully read and acknowledged
before either is called, so the link stays in step and the caller may keep it.
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
# Largest incoming PUBLISH held in memory: commands are at most 512 bytes, and a larger claim
# must not become one allocation on a 110 KB heap. A bigger one is read past and dropped.
MAX_INCOMING_BYTES = const(2048)
# The buffer an oversized PUBLISH is read through (allocated once); also the longest topic of
# one that is still read to name it in on_oversized.
_SKIP_BYTES = const(256)
_MAX_REMAINING = const(0x0FFFFFFF)  # four length bytes
_SUBSCRIBE_REFUSED = const(0x80)
# mbedTLS codes are <= -0x100; its socket callbacks pass a socket errno through as -errno.
_MBEDTLS_MIN_ERRNO = const(-256)
_MBEDTLS_CONN_EOF = const(-0x7280)  # the peer closed the TCP connection during the handshake
_MBEDTLS_FATAL_ALERT = const(-0x7780)  # the peer sent a fatal alert
# Not in MicroPython's errno module; Linux and lwIP both number it 32: a write to a connection
# the peer has closed.
_EPIPE = const(32)
# mbedtls_x509_crt_verify_info()'s text for MBEDTLS_X509_BADCERT_FUTURE.
_NOT_YET_VALID = "The certificate validity starts in the future"
_REFUSALS = ("unacceptable protocol version", "identifier rejected", "server unavailable",
             "bad user name or password", "not authorised")


class ProtocolError(MQTTException):
    """The broker sent something MQTT 3.1.1 does not allow here."""


class TlsError(MQTTException):
    """The TLS layer refused the peer (certificate, host name) or the session."""


class CertificateDateError(TlsError):
    """The broker's certificate is not valid yet: on the board, the clock is not set yet."""


class ClientCertRefused(TlsError):
    """The broker ended the handshake after its certificate had been checked, before it
    finished: it refused the node's certificate (mqtt.cert), or wanted one and got none."""


# Short: the node keeps them in RAM. README "A certificate per node" says what to check.
_CERT_REFUSED = "the broker refused the client certificate %s"
_CERT_WANTED = "the broker requires a client certificate (mqtt.cert, mqtt.key)"


class Refused(MQTTException):
    """The broker answered CONNECT with a non-zero return code, kept in `code`."""

    def __init__(self, code):
        reason = _REFUSALS[code - 1] if code <= len(_REFUSALS) else "reserved code"
        super().__init__("broker refused CONNECT: %s (return code %d)" % (reason, code))
        self.code = code


LINK_ERRORS = (OSError, MQTTException)


def _tls_error(e):
    """What to raise for an error from MicroPython's TLS socket (modtls_mbedtls.c).

    A failed certificate check is a ValueError whose text lists the reasons, one per line;
    other mbedTLS failures are an OSError with a negative code (and its text when the build
    has the error strings); a socket error during a read or write is -errno.
    """
    if isinstance(e, ValueError):
        text = "; ".join(line for line in str(e).split("\n") if line)
        return (CertificateDateError if _NOT_YET_VALID in text else TlsError)(text)
    code = e.errno
    if not isinstance(code, int) or code >= 0:
        return e
    if code > _MBEDTLS_MIN_ERRNO:
        return OSError(-code)
    if code == _MBEDTLS_CONN_EOF:
        return OSError(errno.ECONNRESET)  # end of stream, as for any other read
    return TlsError(e.args[1] if len(e.args) > 1 else "mbedTLS error -0x%04x" % -code)


class _BoundedStream:
    """The TLS stream as the client sees it: blocking means bounded; a short read or write, or a
    TLS failure, is an error (OSError or TlsError), never a half-read packet."""

    def __init__(self, raw, tls, timeout_ms):
        self._raw = raw
        self._tls = tls
        self._timeout_s = timeout_ms / 1000
        self._blocking = True
        raw.settimeout(self._timeout_s)

    def setblocking(self, flag):
        self._blocking = flag
        if flag:
            self._raw.settimeout(self._timeout_s)
        else:
            self._raw.setblocking(False)

    def readinto(self, buf, n):
        """Fill buf[:n]; None only when non-blocking and nothing is waiting."""
        tls = self._tls
        got = 0
        while got < n:
            try:
                # The slice is made only when the bytes come in pieces.
                k = tls.readinto(memoryview(buf)[got:n]) if got else tls.readinto(buf, n)
            except (OSError, ValueError) as e:
                raise _tls_error(e)
            if k is None:  # no bytes within the bound (or at all, when non-blocking)
                if got or self._blocking:
                    raise OSError(errno.ETIMEDOUT)
                return None
            if not k:
                raise OSError(errno.ECONNRESET)  # end of stream: the broker hung up
            got += k
        return n

    def write(self, buf, n=None):
        if n is None:
            n = len(buf)
        try:
            done = self._tls.write(buf, n)
        except (OSError, ValueError) as e:
            raise _tls_error(e)
        if done != n:  # None or short: the socket stayed full for the whole bound
            raise OSError(errno.ETIMEDOUT)
        return n

    def close(self):
        self._tls.close()
        # A TLS object whose handshake never finished does not close the socket beneath it.
        self._raw.close()


def _ignore(*_):
    pass


def _is_ip_literal(host):
    # A dotted quad: getaddrinfo parses it without asking the resolver (lwIP and libc alike).
    return host.count(".") == 3 and host.replace(".", "").isdigit()


class Client(MQTTClient):
    """umqtt.simple.MQTTClient with a bounded TLS transport and a non-waiting QoS 1 publish."""

    def __init__(self, client_id, host, port, ssl_context, server_hostname, user=None,
                 password=None, keepalive_s=30, io_timeout_ms=500, client_cert=None):
        super().__init__(client_id, host, port, user, password, keepalive_s)
        self._context = ssl_context
        self._client_cert = client_cert  # the path of the node's certificate, for messages
        self._broker_checked = False  # this handshake got as far as the broker's certificate
        # The TLS module calls this for each certificate of the broker's chain as it checks it
        # (the result is its own: returning 0 changes nothing). A handshake that the broker
        # ends after that point, and before it finishes, was ended over the node's certificate:
        # in TLS 1.2 the broker's verdict on it is the only step left. The frozen ssl module's
        # SSLContext wraps the TLS module's in `_context`.
        getattr(ssl_context, "_context", ssl_context).verify_callback = self._checked
        self._server_hostname = server_hostname
        self._io_timeout_ms = io_timeout_ms
        self._poller = None
        self._addr = None  # the broker's resolved address, kept across open()s
        self._tx = bytearray(5)  # fixed headers, lengths, packet ids, PUBACKs
        self._rx = bytearray(_SKIP_BYTES)  # headers and acks read, oversized PUBLISHes skipped
        self.cb = _ignore  # cb(topic, msg, retained); set_callback() replaces it
        self.on_oversized = _ignore  # on_oversized(topic, size) for each PUBLISH dropped
        self.oversized = 0  # PUBLISHes over MAX_INCOMING_BYTES dropped
        self.dns_lookups = 0
        self.acked = []  # packet ids of PUBACKs received since the caller last looked
        self.subacked = []  # and of SUBACKs

    def _checked(self, _cert, _depth):
        self._broker_checked = True
        return 0

    def _address(self):
        if self._addr is None:
            host = self.server
            if not _is_ip_literal(host):
                self.dns_lookups += 1
            try:
                self._addr = socket.getaddrinfo(host, self.port, 0, socket.SOCK_STREAM)[0][-1]
            except (OSError, IndexError) as e:  # lwIP raises OSError; an empty answer, IndexError
                raise OSError("DNS lookup of %s failed (%s)" % (host, e))
        return self._addr

    async def open(self, timeout_ms):
        """Connect, finish the TLS handshake and send CONNECT, never blocking the loop for long.

        The CONNACK comes later (readable(), read_connack()). Raises OSError (DNS, refused,
        unreachable, ETIMEDOUT after timeout_ms) or TlsError (ClientCertRefused when the broker
        ends the handshake over the node's certificate); the caller retries with backoff.
        """
        self.close()
        addr = self._address()
        raw = socket.socket()
        tls = None
        tcp_up = False
        handshaken = False  # a write went through: the handshake is over
        self._broker_checked = False
        start = time.ticks_ms()
        try:
            raw.setblocking(False)
            try:
                raw.connect(addr)
            except OSError as e:
                # errno, not literals: lwIP on the ESP32 numbers these unlike Linux (119 vs 115).
                if e.errno != errno.EINPROGRESS:
                    raise
            # The TCP handshake is awaited on its own so that its failure (refused, unreachable,
            # no answer), the one that makes the cached address suspect, is told from TLS ones.
            # On an error the TLS write below raises the socket's errno.
            poller = select.poll()
            poller.register(raw, select.POLLOUT)
            while True:
                ev = 0
                for entry in poller.ipoll(0):
                    ev = entry[1]
                if ev:
                    tcp_up = not ev & (select.POLLERR | select.POLLHUP)
                    break
                await _step(start, timeout_ms)
            tls = self._context.wrap_socket(
                raw, server_hostname=self._server_hostname, do_handshake_on_connect=False
            )
            packet = memoryview(self._connect_packet())
            while packet:
                # None: the handshake (or the socket buffer) waits for the peer.
                n = tls.write(packet)
                if n is None:
                    await _step(start, timeout_ms)
                else:
                    handshaken = True
                    packet = packet[n:]
        except BaseException as e:
            if tls is not None:
                tls.close()
            raw.close()
            if not isinstance(e, (OSError, ValueError)):
                raise  # cancelled, or a fault of ours
            err = _tls_error(e)
            # How a broker that turns the node's certificate down ends the handshake, as the
            # node sees it: the alert it sends, the end of the stream, or, as the node is still
            # writing its last flight, the connection closed (the TLS module raises a socket's
            # errno as it is).
            if self._broker_checked and not handshaken and getattr(e, "errno", None) in (
                    _MBEDTLS_FATAL_ALERT, _MBEDTLS_CONN_EOF, _EPIPE, errno.ECONNRESET,
                    errno.ECONNABORTED, errno.ENOTCONN):
                cert = self._client_cert
                raise ClientCertRefused(_CERT_WANTED if cert is None else _CERT_REFUSED % cert)
            if not tcp_up and isinstance(err, OSError):
                self._addr = None  # moved, or never ours: ask the resolver again next time
            raise err
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
        out = bytearray(memoryview(self._tx)[: _put_header(self._tx, 0x10, size)])
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
        """Read the CONNACK; Refused when the broker turns the session down (credentials...)."""
        rx = self._rx
        self.sock.readinto(rx, 2)
        if rx[0] != _CONNACK:
            raise ProtocolError("expected CONNACK, got 0x%02x" % rx[0])
        if rx[1] != 2:
            raise ProtocolError("bad CONNACK (length %d)" % rx[1])
        self.sock.readinto(rx, 2)
        if rx[1]:
            raise Refused(rx[1])

    def _send_header(self, first_byte, size):
        self.sock.write(self._tx, _put_header(self._tx, first_byte, size))

    def _send_u16(self, value):
        tx = self._tx
        tx[0] = value >> 8
        tx[1] = value & 0xFF
        self.sock.write(tx, 2)

    def _send_str(self, s):
        self._send_u16(len(s))
        self.sock.write(s)

    def _next_pid(self):
        self.pid = self.pid % 0xFFFF + 1  # 1..65535: 0 is not a valid packet id
        return self.pid

    def publish(self, topic, msg, retain=False, qos=0):
        """Send a QoS 0 PUBLISH (umqtt's QoS 1 waits for the PUBACK: use publish_qos1())."""
        if qos:
            raise ValueError("QoS %d: use publish_qos1()" % qos)
        self._send_header(_PUBLISH | retain, 2 + len(topic) + len(msg))
        self._send_str(topic)
        self.sock.write(msg)

    def publish_qos1(self, topic, msg, retain=False, dup=False):
        """Send a QoS 1 PUBLISH and return its packet id; do not wait for the PUBACK."""
        pid = self._next_pid()
        self._send_header(_PUBLISH | 0x02 | retain | (dup << 3), 2 + len(topic) + 2 + len(msg))
        self._send_str(topic)
        self._send_u16(pid)
        self.sock.write(msg)
        return pid

    def send_subscribe(self, topic, qos=0):
        """Send SUBSCRIBE for one topic and return its packet id; the SUBACK comes later."""
        pid = self._next_pid()
        self._send_header(0x82, 2 + 2 + len(topic) + 1)
        self._send_u16(pid)
        self._send_str(topic)
        tx = self._tx
        tx[0] = qos
        self.sock.write(tx, 1)
        return pid

    def disconnect(self):
        """Send DISCONNECT (the broker then drops the will) and close the link."""
        try:
            self.sock.write(b"\xe0\x00")
        finally:
            self.close()

    def _read(self, n):
        """Read n (<= _SKIP_BYTES) bytes into the receive buffer, bounded, and return it."""
        self.sock.readinto(self._rx, n)
        return self._rx

    def _remaining_length(self):
        size = 0
        for shift in (0, 7, 14, 21):  # MQTT allows at most four length bytes
            byte = self._read(1)[0]
            size |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return size
        raise ProtocolError("remaining length longer than four bytes")

    def wait_msg(self):
        """Read one packet if any is waiting (or block, bounded, after setblocking(True)).

        PUBLISH goes to the callback (or, over MAX_INCOMING_BYTES, to on_oversized), PUBACK ids
        to `acked`, SUBACK ids to `subacked`; returns the packet type, or None when nothing was
        waiting.
        """
        first = self.sock.readinto(self._rx, 1)
        self.sock.setblocking(True)  # the rest of a packet follows promptly, or the link is bad
        if first is None:
            return None
        op = self._rx[0]
        kind = op & 0xF0
        size = self._remaining_length()
        if kind == _PUBLISH:
            self._receive_publish(op, size)
        elif op == _PUBACK or op == _SUBACK:
            expected = 2 if kind == _PUBACK else 3  # one topic per SUBSCRIBE
            if size != expected:
                raise ProtocolError("bad %s (length %d)"
                                    % ("PUBACK" if kind == _PUBACK else "SUBACK", size))
            body = self._read(size)
            pid = body[0] << 8 | body[1]
            if kind == _PUBACK:
                self.acked.append(pid)
            elif body[2] == _SUBSCRIBE_REFUSED:
                raise ProtocolError("broker refused a subscription")
            elif body[2] > 2:
                raise ProtocolError("bad SUBACK return code 0x%02x" % body[2])
            else:
                self.subacked.append(pid)
        elif op == _PINGRESP:
            if size:
                raise ProtocolError("bad PINGRESP (length %d)" % size)
        else:
            raise ProtocolError("unexpected packet type 0x%02x" % op)
        return kind

    def _send_puback(self, pid):
        tx = self._tx
        tx[0] = _PUBACK
        tx[1] = 2
        tx[2] = pid >> 8
        tx[3] = pid & 0xFF
        self.sock.write(tx, 4)

    def _receive_publish(self, op, size):
        qos = (op >> 1) & 3
        if qos > 1:
            # Never subscribed above QoS 1 (QoS 3 does not exist): the broker may not send it.
            raise ProtocolError("PUBLISH with QoS %d" % qos)
        if size < 2 + 2 * qos:
            raise ProtocolError("PUBLISH too short for its topic")
        if size > MAX_INCOMING_BYTES:
            self._skip_publish(qos, size)
            return
        body = bytearray(size)
        self.sock.readinto(body, size)
        topic_end = 2 + (body[0] << 8 | body[1])
        msg_start = topic_end + 2 * qos  # QoS 1 carries a packet id after the topic
        if msg_start > size:
            raise ProtocolError("PUBLISH topic longer than the packet")
        # Acknowledged before the callback runs: whatever it does (raise, reset the board), the
        # stream stays in step and the broker does not resend.
        if qos:
            self._send_puback(body[topic_end] << 8 | body[topic_end + 1])
        mv = memoryview(body)
        self.cb(bytes(mv[2:topic_end]), bytes(mv[msg_start:]), bool(op & 1))

    def _skip_publish(self, qos, size):
        """Read past a PUBLISH too big to hold, through the receive buffer, and acknowledge it."""
        rx = self._read(2)
        topic_len = rx[0] << 8 | rx[1]
        left = size - 2 - topic_len - 2 * qos
        if left < 0:
            raise ProtocolError("PUBLISH topic longer than the packet")
        if topic_len <= _SKIP_BYTES:
            topic = bytes(memoryview(self._read(topic_len))[:topic_len])
        else:
            topic = b""  # not worth holding: the size alone says what happened
            self._skip(topic_len)
        if qos:
            rx = self._read(2)
            pid = rx[0] << 8 | rx[1]
            self._skip(left)
            self._send_puback(pid)
        else:
            self._skip(left)
        self.oversized += 1
        self.on_oversized(topic, size)

    def _skip(self, n):
        while n:
            chunk = n if n < _SKIP_BYTES else _SKIP_BYTES
            self.sock.readinto(self._rx, chunk)
            n -= chunk

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass  # already gone: closing is all we wanted
        self.sock = None
        self._poller = None


async def _step(start, timeout_ms):
    """Yield to the loop for one handshake step; ETIMEDOUT once timeout_ms have passed."""
    if time.ticks_diff(time.ticks_ms(), start) > timeout_ms:
        raise OSError(errno.ETIMEDOUT)
    await asyncio.sleep_ms(_HANDSHAKE_STEP_MS)


def _put_header(buf, first_byte, size):
    """Write a fixed header into buf; return its length."""
    if size > _MAX_REMAINING:
        raise ValueError("packet of %d bytes is over MQTT's limit" % size)
    buf[0] = first_byte
    i = 1
    while True:
        buf[i] = size & 0x7F
        size >>= 7
        if not size:
            return i + 1
        buf[i] |= 0x80
        i += 1
