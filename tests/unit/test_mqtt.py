"""node.mqtt.Client on a scripted fake transport: the exact bytes it writes, what it makes of the
exact bytes it reads, and which exception each failure becomes.

As micropython-lib's umqtt test does with io.BytesIO, but through the client's own transport:
`socket` (getaddrinfo, socket()), `select.poll` and the SSLContext are replaced by fakes in the
MicroPython process, so no test touches the network. Every case runs in one MicroPython process
(the `results` fixture); each prints `name<TAB>repr(outcome)` and the tests below compare.
"""

import ast

import pytest

HARNESS = r"""
import asyncio, errno, gc, micropython
from node import mqtt
from umqtt.simple import MQTTException

POLLIN, POLLOUT, POLLERR, POLLHUP = 1, 4, 8, 16


class Fill:
    # n bytes of b"x" served without holding them, and with the heap locked while they are
    # served: the client may not allocate while it reads past them.
    locked = False

    def __init__(self, n):
        self.n = n


def lock_heap(flag):
    if flag != Fill.locked:
        Fill.locked = flag
        (micropython.heap_lock if flag else micropython.heap_unlock)()


class FakeTls:
    # Writes are collected in `out`; reads come from `chunks`: bytes (a read gets at most one
    # piece, as from one TCP segment), None (nothing waiting), an exception (raised), a Fill.
    # After the last chunk the stream ends (a read returns 0).
    def __init__(self, chunks=(), pending_writes=0, write_error=None, checks_broker=False):
        self.chunks = list(chunks)
        self.checks_broker = checks_broker  # the handshake reaches the broker's certificate
        self.ctx = None
        self.out = bytearray()
        self.pending = pending_writes  # writes that return None: the handshake waits for the peer
        self.write_error = write_error
        self.writes = 0
        self.closed = False

    def write(self, buf, n=None):
        self.writes += 1
        if self.checks_broker:  # as mbedTLS does for each certificate of the broker's chain
            self.checks_broker = False
            for depth in (1, 0):
                assert self.ctx.verify_callback(memoryview(b"cert"), depth) == 0
        if self.write_error is not None:
            raise self.write_error
        if self.pending:
            self.pending -= 1
            return None
        data = bytes(buf) if n is None else bytes(buf)[:n]
        self.out += data
        return len(data)

    def readinto(self, buf, n=None):
        if n is None:
            n = len(buf)
        if not self.chunks:
            return 0
        c = self.chunks[0]
        if isinstance(c, Fill):
            lock_heap(True)
            k = n if n < c.n else c.n
            for i in range(k):
                buf[i] = 0x78
            c.n -= k
            if c.n == 0:
                lock_heap(False)
                self.chunks.pop(0)
            return k
        self.chunks.pop(0)
        if c is None:
            return None
        if isinstance(c, Exception):
            raise c
        k = min(n, len(c))
        buf[:k] = c[:k]
        if k < len(c):
            self.chunks.insert(0, c[k:])
        return k

    def events(self, mask):
        return POLLIN if self.chunks else 0

    def close(self):
        self.closed = True


class FakeRaw:
    def __init__(self, connect_error=None, polls_to_connect=0, poll_events=POLLOUT):
        self.connect_error = connect_error
        self.polls_to_connect = polls_to_connect  # polls before the TCP handshake is over
        self.poll_events = poll_events
        self.log = []
        self.closed = False

    def setblocking(self, flag):
        self.log.append(("setblocking", flag))

    def settimeout(self, t):
        self.log.append(("settimeout", t))

    def connect(self, addr):
        self.log.append(("connect", addr))
        raise self.connect_error or OSError(errno.EINPROGRESS)

    def events(self, mask):
        if self.polls_to_connect is None:
            return 0  # never connects
        if self.polls_to_connect:
            self.polls_to_connect -= 1
            return 0
        return self.poll_events & (mask | POLLERR | POLLHUP)

    def close(self):
        self.closed = True


class FakePoll:
    def register(self, obj, mask):
        self.obj = obj
        self.mask = mask

    def ipoll(self, timeout):
        ev = self.obj.events(self.mask)
        if ev:
            yield (self.obj, ev)


class FakeSelect:
    POLLIN = POLLIN
    POLLOUT = POLLOUT
    POLLERR = POLLERR
    POLLHUP = POLLHUP
    poll = FakePoll


class FakeSocketModule:
    SOCK_STREAM = 1

    def __init__(self, answer=None, error=None):
        self.answer = answer
        self.error = error
        self.lookups = []
        self.raws = []
        self.next_raws = []

    def getaddrinfo(self, host, port, af=0, kind=0):
        self.lookups.append((host, port, kind))
        if self.error is not None:
            raise self.error
        if self.answer is not None:
            return self.answer
        return [(2, 1, 0, "", ("10.0.0.%d" % len(self.lookups), port))]

    def socket(self):
        raw = self.next_raws.pop(0) if self.next_raws else FakeRaw()
        self.raws.append(raw)
        return raw


class FakeContext:
    def __init__(self, *tls):
        self.tls = list(tls)
        self.wraps = []

    def wrap_socket(self, raw, server_hostname=None, do_handshake_on_connect=True):
        self.wraps.append((server_hostname, do_handshake_on_connect))
        tls = self.tls.pop(0) if self.tls else FakeTls()
        tls.ctx = self
        return tls


mqtt.select = FakeSelect


def client(ctx=None, host="broker.example", **kw):
    return mqtt.Client(b"node1", host, 8883, ctx or FakeContext(), "broker.example", **kw)


def linked(*chunks):
    # A client past open(): the bounded stream over a fake TLS object.
    c = client()
    tls = FakeTls(chunks)
    raw = FakeRaw()
    c.sock = mqtt._BoundedStream(raw, tls, 500)
    c._poller = FakePoll()
    c._poller.register(tls, POLLIN)
    got = []
    c.set_callback(lambda topic, msg, retained: got.append((topic, msg, retained)))
    return c, tls, raw, got


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def pub(flags, topic, msg_len, pid=None):
    # A PUBLISH header up to the message: (bytes, message length)
    body = len(topic).to_bytes(2, "big") + topic + (b"" if pid is None else pid.to_bytes(2, "big"))
    return bytes([flags]) + varint(len(body) + msg_len) + body


def outcome(f):
    try:
        return f()
    except Exception as e:  # report what escaped, by type and text
        lock_heap(False)
        if isinstance(e, OSError) and isinstance(e.errno, int) and len(e.args) == 1:
            return ("raised", "OSError", errno.errorcode.get(e.errno, e.errno))
        return ("raised", type(e).__name__, str(e))


def case(f):
    print("%s\t%r" % (f.__name__, outcome(f)))
    return f


def run(coro):
    return asyncio.run(coro)
"""

CASES = r"""
# --- packets written --------------------------------------------------------------------------

@case
def connect_will_and_credentials():
    c = client(user=b"u", password=b"pw", keepalive_s=30)
    c.set_last_will(b"t/status", b"offline", retain=True, qos=1)
    return bytes(c._connect_packet())

@case
def connect_plain():
    return bytes(client(keepalive_s=60)._connect_packet())

@case
def connect_two_length_bytes():
    return bytes(client(user=b"u", password=b"p" * 200, keepalive_s=300)._connect_packet())

@case
def publish_qos0():
    c, tls, raw, got = linked()
    c.publish(b"a/b", b"hi")
    c.publish(b"a/b", b"hi", retain=True)
    return bytes(tls.out)

@case
def publish_qos0_long():
    c, tls, raw, got = linked()
    c.publish(b"a/b", b"m" * 200)
    return bytes(tls.out[:9])

@case
def publish_qos_argument():
    c, tls, raw, got = linked()
    c.publish(b"a/b", b"hi", qos=1)

@case
def publish_qos1_flags():
    c, tls, raw, got = linked()
    pids = [c.publish_qos1(b"a/b", b"hi"), c.publish_qos1(b"a/b", b"hi", dup=True),
            c.publish_qos1(b"a/b", b"hi", retain=True),
            c.publish_qos1(b"a/b", b"hi", retain=True, dup=True)]
    return pids, bytes(tls.out)

@case
def packet_id_wraps():
    c, tls, raw, got = linked()
    c.pid = 65534
    pids = [c.publish_qos1(b"t", b""), c.send_subscribe(b"s"), c.publish_qos1(b"t", b"")]
    return pids, bytes(tls.out)

@case
def subscribe():
    c, tls, raw, got = linked()
    c.pid = 6
    return c.send_subscribe(b"cmd/x", 1), bytes(tls.out)

@case
def ping_and_disconnect():
    c, tls, raw, got = linked()
    c.ping()
    c.disconnect()
    return bytes(tls.out), tls.closed, raw.closed, c.sock

@case
def write_short_or_refused():
    c, tls, raw, got = linked()
    tls.pending = 1  # the socket stayed full for the whole bound
    return outcome(c.ping), c.sock is not None

# --- CONNACK ----------------------------------------------------------------------------------

@case
def connack_accepted():
    c, tls, raw, got = linked(b"\x20\x02\x00\x00", b"\xd0\x00")
    return c.read_connack(), c.check_msg()

@case
def connack_refusals():
    out = []
    for code in range(1, 7):
        c, tls, raw, got = linked(bytes([0x20, 2, 0, code]))
        try:
            c.read_connack()
        except mqtt.Refused as e:
            out.append((code, e.code, str(e), isinstance(e, MQTTException)))
    return out

@case
def connack_wrong_type():
    c, tls, raw, got = linked(b"\x30\x02\x00\x00")
    return outcome(c.read_connack)

@case
def connack_bad_length():
    c, tls, raw, got = linked(b"\x20\x03\x00\x00\x00")
    return outcome(c.read_connack)

@case
def connack_truncated():
    c, tls, raw, got = linked(b"\x20\x02\x00")
    return outcome(c.read_connack)

# --- packets read -----------------------------------------------------------------------------

@case
def nothing_waiting():
    c, tls, raw, got = linked(None)
    return c.check_msg(), raw.log, bytes(tls.out)

@case
def acks_and_pingresp():
    c, tls, raw, got = linked(b"\x40\x02\x12\x34", b"\x90\x03\x00\x07\x01", b"\xd0\x00",
                              b"\x90\x03\x00\x08\x00")
    ops = [c.check_msg() for _ in range(4)]
    return ops, c.acked, c.subacked, bytes(tls.out)

@case
def suback_refused():
    c, tls, raw, got = linked(b"\x90\x03\x00\x07\x80")
    return outcome(c.check_msg), c.subacked

@case
def suback_bad_code():
    c, tls, raw, got = linked(b"\x90\x03\x00\x07\x03")
    return outcome(c.check_msg)

@case
def publish_qos0_in():
    c, tls, raw, got = linked(b"\x30\x07\x00\x03a/bhi", b"\x31\x07\x00\x03a/bhi")
    return c.check_msg(), c.check_msg(), got, bytes(tls.out)

@case
def publish_qos1_in():
    c, tls, raw, got = linked(b"\x32\x09\x00\x03a/b\x12\x34hi", b"\x33\x05\x00\x01t\xab\xcd")
    return c.check_msg(), c.check_msg(), got, bytes(tls.out)

@case
def publish_fragmented():
    c, tls, raw, got = linked(b"\x32", b"\x09\x00", b"\x03a", b"/b\x12", b"\x34h", b"i",
                              b"\xd0", b"\x00")
    return c.check_msg(), c.check_msg(), got, bytes(tls.out)

@case
def length_across_reads():
    body = b"\x00\x01t" + b"m" * 200
    c, tls, raw, got = linked(b"\x30\xcb", b"\x01" + body[:50], body[50:])
    return c.check_msg(), [(t, len(m), r) for t, m, r in got]

@case
def truncated():
    out = []
    for data in (b"", b"\x30", b"\x30\x07\x00\x03a/", b"\x40\x02\x12", b"\x90\x03\x00",
                 b"\x32\x09\x00\x03a/b\x12"):
        c, tls, raw, got = linked(data)
        out.append(outcome(c.check_msg) + (got,))
    return out

@case
def timeout_mid_packet():
    c, tls, raw, got = linked(b"\x40", None)
    return outcome(c.check_msg)

@case
def malformed():
    out = []
    for data in (b"\x30\xff\xff\xff\xff\x01", b"\x00\x00", b"\xf0\x00", b"\x20\x02\x00\x00",
                 b"\x34\x05\x00\x01t\x00\x01", b"\x36\x05\x00\x01t\x00\x01",
                 b"\x30\x05\x00\x09abc", b"\x32\x05\x00\x02ab\x00", b"\x30\x01\x00",
                 b"\x32\x03\x00\x00\x00", b"\xd0\x01\x00", b"\x40\x03\x00\x01\x00",
                 b"\x40\x01\x00", b"\x41\x02\x00\x01", b"\x90\x02\x00\x01"):
        c, tls, raw, got = linked(data)
        out.append(outcome(c.check_msg))
    return out

@case
def tls_errors_while_reading():
    out = []
    for err in (OSError(-110), OSError(-104), OSError(-0x7200),
                OSError(-0x7100, "SSL - Verification of the message MAC failed"),
                OSError(-0x7280), ValueError("\nThe certificate is not correctly signed\n"),
                OSError(errno.ECONNRESET)):
        c, tls, raw, got = linked(b"\x40", err)
        e = outcome(c.check_msg)
        out.append(e)
    return out

@case
def tls_error_while_writing():
    c, tls, raw, got = linked()
    tls.write_error = OSError(-0x7780, "SSL - A fatal alert message was received from our peer")
    return outcome(lambda: c.publish(b"t", b"m"))

@case
def callback_errors_propagate():
    c, tls, raw, got = linked(b"\x32\x05\x00\x01t\x00\x09", b"\xd0\x00")

    def boom(topic, msg, retained):
        raise ValueError("handler bug")

    c.set_callback(boom)
    return outcome(c.check_msg), bytes(tls.out), c.check_msg()

@case
def callback_default():
    c = client()
    c.sock = mqtt._BoundedStream(FakeRaw(), FakeTls([b"\x30\x03\x00\x01t"]), 500)
    return c.check_msg()

# --- oversized PUBLISH ------------------------------------------------------------------------

def sized(size, flags=0x30, pid=None, chunk=None, topic=b"big", then=b"\xd0\x00"):
    # A PUBLISH whose remaining length is `size`, then another packet.
    msg_len = size - 2 - len(topic) - (0 if pid is None else 2)
    head = pub(flags, topic, msg_len, pid)
    data = head + b"y" * msg_len + then
    chunks = [data] if chunk is None else [data[i:i + chunk] for i in range(0, len(data), chunk)]
    c, tls, raw, got = linked(*chunks)
    seen = []
    c.on_oversized = lambda topic, n: seen.append((topic, n))
    ops = [c.check_msg(), c.check_msg()]
    return (ops, [(t, len(m), r) for t, m, r in got], c.oversized, seen, bytes(tls.out),
            len(tls.chunks))

@case
def limit():
    return mqtt.MAX_INCOMING_BYTES

@case
def header_of_2049():
    return pub(0x30, b"big", 2044)

@case
def below_limit():
    return sized(2047)

@case
def at_limit():
    return sized(2048)

@case
def over_limit():
    return sized(2049)

@case
def over_limit_qos1():
    return sized(2049, 0x32, pid=0xABCD)

@case
def over_limit_retained_fragmented():
    # The retained 6 KB message that made the node reconnect forever, in 100-byte pieces.
    return sized(6000, 0x33, pid=0x0102, chunk=100)

@case
def over_limit_long_topic():
    return sized(3000, 0x32, pid=0x0005, topic=b"t" * 300, then=b"\x40\x02\x00\x09")

@case
def over_limit_topic_longer_than_packet():
    c, tls, raw, got = linked(b"\x30\xb8\x17\xff\xff" + b"y" * 100)
    return outcome(c.check_msg), c.oversized

@case
def over_limit_qos2():
    c, tls, raw, got = linked(pub(0x34, b"big", 3000, 1))
    return outcome(c.check_msg), c.oversized

@case
def over_limit_truncated():
    c, tls, raw, got = linked(pub(0x30, b"big", 3000) + b"y" * 1000)
    return outcome(c.check_msg), c.oversized

@case
def over_limit_allocates_nothing_per_byte():
    # 64 KB read past with the heap locked (Fill); a bytearray of its size would fail.
    c, tls, raw, got = linked(pub(0x32, b"big", 65536, 7), Fill(65536), b"\xd0\x00")
    seen = []
    c.on_oversized = lambda topic, n: seen.append((topic, n))
    return c.check_msg(), c.check_msg(), seen, bytes(tls.out)

@case
def on_oversized_errors_propagate():
    c, tls, raw, got = linked(pub(0x30, b"big", 3000) + b"y" * 3000, b"\xd0\x00")

    def boom(topic, n):
        raise KeyError(topic)

    c.on_oversized = boom
    return outcome(c.check_msg), c.oversized, c.check_msg()

# --- open() -----------------------------------------------------------------------------------

def fake_net(**kw):
    net = FakeSocketModule(**kw)
    mqtt.socket = net
    return net

@case
def open_drives_handshake():
    net = fake_net()
    tls = FakeTls([b"\x20\x02\x00\x00"], pending_writes=3)
    ctx = FakeContext(tls)
    c = client(ctx, user=b"u", password=b"pw")
    net.next_raws.append(FakeRaw(polls_to_connect=2))
    run(c.open(1000))
    before = c.readable()
    c.read_connack()
    raw = net.raws[0]
    return (net.lookups, raw.log, ctx.wraps, tls.writes, bytes(tls.out), before, c.readable(),
            c.dns_lookups)

@case
def open_handshake_timeout():
    net = fake_net()
    tls = FakeTls(pending_writes=10 ** 6)
    c = client(FakeContext(tls, FakeTls()))
    e = outcome(lambda: run(c.open(30)))
    raw = net.raws[0]
    # TCP was up: the address is kept for the next attempt.
    run(c.open(1000))
    return e, raw.closed, tls.closed, c.sock is not None, len(net.lookups), c.dns_lookups

@case
def open_tcp_timeout():
    net = fake_net()
    net.next_raws.append(FakeRaw(polls_to_connect=None))
    ctx = FakeContext()
    c = client(ctx)
    e = outcome(lambda: run(c.open(30)))
    wraps = len(ctx.wraps)
    run(c.open(1000))  # never reached: look it up again
    return e, net.raws[0].closed, wraps, len(net.lookups), c.dns_lookups, net.raws[1].log[1]

@case
def open_refused():
    net = fake_net()
    net.next_raws.append(FakeRaw(poll_events=POLLOUT | POLLERR | POLLHUP))
    tls = FakeTls(write_error=OSError(errno.ECONNREFUSED))
    c = client(FakeContext(tls))
    e = outcome(lambda: run(c.open(1000)))
    run(c.open(1000))
    return e, net.raws[0].closed, tls.closed, len(net.lookups)

@case
def open_unreachable():
    net = fake_net()
    net.next_raws.append(FakeRaw(connect_error=OSError(errno.EHOSTUNREACH)))
    c = client()
    e = outcome(lambda: run(c.open(1000)))
    run(c.open(1000))
    return e, net.raws[0].closed, len(net.lookups)

@case
def open_dns_failure():
    out = []
    for err, answer in ((OSError(-2), None), (None, [])):
        net = fake_net(error=err, answer=answer)
        c = client()
        e = outcome(lambda: run(c.open(1000)))
        out.append((e[:2], e[2].startswith("DNS lookup of broker.example failed"), net.raws,
                    c.dns_lookups))
    return out

@case
def open_dns_cached():
    net = fake_net()
    c = client()
    for _ in range(3):
        run(c.open(1000))
    return len(net.lookups), c.dns_lookups, [r.log[1] for r in net.raws]

@case
def open_ip_literal():
    net = fake_net()
    c = client(host="192.0.2.7")
    run(c.open(1000))
    run(c.open(1000))
    return len(net.lookups), c.dns_lookups

@case
def open_tls_refusals():
    out = []
    for err in (ValueError("\nThe certificate validity starts in the future\n"),
                ValueError("\nThe certificate is not correctly signed by the trusted CA\n"
                           "\nThe certificate validity starts in the future\n"),
                ValueError("\nThe certificate Common Name (CN) does not match with the "
                           "expected CN\n"),
                OSError(-0x7780, "SSL - A fatal alert message was received from our peer"),
                OSError(-0x7780), OSError(-0x7280)):
        net = fake_net()
        tls = FakeTls(write_error=err)
        c = client(FakeContext(tls))
        try:
            run(c.open(1000))
        except (mqtt.TlsError, OSError) as e:
            kinds = [k.__name__ for k in (mqtt.CertificateDateError, mqtt.TlsError, MQTTException,
                                          OSError) if isinstance(e, k)]
            text = errno.errorcode.get(e.args[0]) if isinstance(e, OSError) else str(e)
        run(c.open(1000))  # TLS was reached: the address stands
        out.append((kinds, text, net.raws[0].closed, tls.closed, len(net.lookups)))
    return out

@case
def open_client_cert_refusals():
    # The broker ends the handshake after its certificate was checked: over the node's own
    # certificate (or its lack of one). Anything else keeps its own kind.
    out = []
    for err, checks, pending, cert in (
            (OSError(32), True, 0, "/node-cert.der"),  # EPIPE: closed under the last flight
            (OSError(-0x7780), True, 0, "/node-cert.der"),  # the broker's fatal alert
            (OSError(-0x7280), True, 0, None),  # end of stream, no certificate configured
            (OSError(errno.ECONNRESET), True, 0, None),
            (OSError(errno.ENOTCONN), True, 0, "/c.der"),
            (OSError(errno.ECONNRESET), False, 0, "/c.der"),  # before the broker's certificate
            (ValueError("\nThe certificate is not correctly signed by the trusted CA\n"), True, 0,
             "/c.der"),  # the broker's certificate itself failed
            (OSError(errno.EHOSTUNREACH), True, 0, "/c.der"),  # not an answer from the broker
            (None, True, 10 ** 6, "/c.der")):  # stalled after its certificate: ETIMEDOUT
        fake_net()
        tls = FakeTls(write_error=err, checks_broker=checks, pending_writes=pending)
        c = client(FakeContext(tls), client_cert=cert)
        try:
            run(c.open(100))
        except (mqtt.TlsError, OSError) as e:
            kinds = [k.__name__ for k in (mqtt.ClientCertRefused, mqtt.TlsError, OSError)
                     if isinstance(e, k)]
            text = errno.errorcode.get(e.args[0]) if isinstance(e, OSError) else str(e)
        out.append((kinds, text, tls.closed))
    # Refused once, then accepted: the next handshake starts with a clean slate.
    fake_net()
    ctx = FakeContext(FakeTls(write_error=OSError(32), checks_broker=True), FakeTls())
    c = client(ctx, client_cert="/c.der")
    first = outcome(lambda: run(c.open(100)))
    run(c.open(100))
    out.append((first[1], c.sock is not None))
    return out

@case
def open_wrap_refused():
    net = fake_net()

    class Ctx:
        def wrap_socket(self, raw, **kw):
            raise ValueError("CERT_REQUIRED requires server_hostname")

    c = client(Ctx())
    return outcome(lambda: run(c.open(1000))), net.raws[0].closed

@case
def open_cancelled():
    net = fake_net()
    tls = FakeTls(pending_writes=10 ** 6)
    c = client(FakeContext(tls))

    async def main():
        t = asyncio.create_task(c.open(10000))
        await asyncio.sleep_ms(20)
        t.cancel()
        try:
            await t
        except asyncio.CancelledError:
            return "cancelled"

    return run(main()), net.raws[0].closed, tls.closed, len(net.lookups)

@case
def close_after_open():
    net = fake_net()
    tls = FakeTls()
    c = client(FakeContext(tls))
    run(c.open(1000))
    c.close()
    c.close()
    return tls.closed, net.raws[0].closed, c.sock, c._poller

@case
def error_kinds():
    return ([k.__name__ for k in mqtt.LINK_ERRORS],
            [issubclass(mqtt.ProtocolError, MQTTException),
             issubclass(mqtt.TlsError, MQTTException),
             issubclass(mqtt.CertificateDateError, mqtt.TlsError),
             issubclass(mqtt.Refused, MQTTException), issubclass(mqtt.Refused, mqtt.TlsError),
             issubclass(mqtt.ProtocolError, mqtt.TlsError)])
"""


@pytest.fixture(scope="module")
def results(mpy):
    proc = mpy(HARNESS + CASES, timeout=60)
    out = {}
    for line in proc.stdout.splitlines():
        name, _, value = line.partition("\t")
        out[name] = ast.literal_eval(value)
    return out


def raised(kind, text):
    return ("raised", kind, text)


def connect(flags, keepalive, payload):
    body = b"\x00\x04MQTT\x04" + bytes([flags]) + keepalive.to_bytes(2, "big") + payload
    assert len(body) < 128
    return b"\x10" + bytes([len(body)]) + body


# --- packets written ---------------------------------------------------------------------------


def test_connect_with_will_and_credentials(results):
    # user, password, will retain, will QoS 1, will, clean session
    assert results["connect_will_and_credentials"] == connect(
        0xEE, 30, b"\x00\x05node1\x00\x08t/status\x00\x07offline\x00\x01u\x00\x02pw"
    )
    assert results["connect_will_and_credentials"][:2] == b"\x10\x2b"


def test_connect_without_will_or_credentials(results):
    assert results["connect_plain"] == b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x05node1"


def test_connect_length_over_127_takes_two_bytes(results):
    got = results["connect_two_length_bytes"]
    # 10 + 7 + 3 + 202 = 222 = 0x5e + 1 * 128
    assert got[:15] == b"\x10\xde\x01\x00\x04MQTT\x04\xc2\x01\x2c\x00\x05"
    assert got[15:] == b"node1\x00\x01u\x00\xc8" + b"p" * 200


def test_publish_qos0(results):
    one = b"\x00\x03a/bhi"
    assert results["publish_qos0"] == b"\x30\x07" + one + b"\x31\x07" + one
    assert results["publish_qos0_long"] == b"\x30\xcd\x01\x00\x03a/bm"  # 205 bytes
    assert results["publish_qos_argument"] == raised("ValueError", "QoS 1: use publish_qos1()")


def test_publish_qos1_dup_and_retain(results):
    pids, out = results["publish_qos1_flags"]
    assert pids == [1, 2, 3, 4]
    assert out == (b"\x32\x09\x00\x03a/b\x00\x01hi"  # QoS 1
                   + b"\x3a\x09\x00\x03a/b\x00\x02hi"  # DUP
                   + b"\x33\x09\x00\x03a/b\x00\x03hi"  # RETAIN
                   + b"\x3b\x09\x00\x03a/b\x00\x04hi")  # DUP and RETAIN


def test_packet_id_wraps_from_65535_to_1(results):
    pids, out = results["packet_id_wraps"]
    assert pids == [65535, 1, 2]
    assert out == (b"\x32\x05\x00\x01t\xff\xff"
                   + b"\x82\x06\x00\x01\x00\x01s\x00"
                   + b"\x32\x05\x00\x01t\x00\x02")


def test_subscribe(results):
    assert results["subscribe"] == (7, b"\x82\x0a\x00\x07\x00\x05cmd/x\x01")


def test_ping_and_disconnect(results):
    assert results["ping_and_disconnect"] == (b"\xc0\x00\xe0\x00", True, True, None)


def test_short_write_is_a_timeout(results):
    assert results["write_short_or_refused"] == (raised("OSError", "ETIMEDOUT"), True)


# --- CONNACK -----------------------------------------------------------------------------------


def test_connack_accepted(results):
    assert results["connack_accepted"] == (None, 0xD0)


def test_connack_refusals_name_the_code(results):
    reasons = ["unacceptable protocol version", "identifier rejected", "server unavailable",
               "bad user name or password", "not authorised", "reserved code"]
    assert results["connack_refusals"] == [
        (code, code, f"broker refused CONNECT: {reason} (return code {code})", True)
        for code, reason in enumerate(reasons, 1)
    ]


def test_connack_malformed(results):
    assert results["connack_wrong_type"] == raised("ProtocolError", "expected CONNACK, got 0x30")
    assert results["connack_bad_length"] == raised("ProtocolError", "bad CONNACK (length 3)")
    assert results["connack_truncated"] == raised("OSError", "ECONNRESET")


# --- packets read ------------------------------------------------------------------------------


def test_nothing_waiting(results):
    # Polled without blocking, then the bound is back for whatever follows.
    assert results["nothing_waiting"] == (
        None, [("settimeout", 0.5), ("setblocking", False), ("settimeout", 0.5)], b""
    )


def test_puback_suback_pingresp(results):
    assert results["acks_and_pingresp"] == ([0x40, 0x90, 0xD0, 0x90], [0x1234], [7, 8], b"")


def test_suback_refused_or_bad(results):
    assert results["suback_refused"] == (raised("ProtocolError", "broker refused a subscription"),
                                         [])
    assert results["suback_bad_code"] == raised("ProtocolError", "bad SUBACK return code 0x03")


def test_incoming_publish_qos0(results):
    assert results["publish_qos0_in"] == (
        0x30, 0x30, [(b"a/b", b"hi", False), (b"a/b", b"hi", True)], b""
    )


def test_incoming_publish_qos1_is_acknowledged(results):
    assert results["publish_qos1_in"] == (
        0x30, 0x30, [(b"a/b", b"hi", False), (b"t", b"", True)],
        b"\x40\x02\x12\x34\x40\x02\xab\xcd",
    )


def test_packet_in_pieces(results):
    assert results["publish_fragmented"] == (0x30, 0xD0, [(b"a/b", b"hi", False)],
                                             b"\x40\x02\x12\x34")
    assert results["length_across_reads"] == (0x30, [(b"t", 200, False)])


def test_truncated_packets_are_a_reset_link(results):
    reset = raised("OSError", "ECONNRESET")
    assert results["truncated"] == [reset + ([],)] * 6


def test_timeout_mid_packet(results):
    assert results["timeout_mid_packet"] == raised("OSError", "ETIMEDOUT")


def test_malformed_packets_are_protocol_errors(results):
    texts = [
        "remaining length longer than four bytes",
        "unexpected packet type 0x00",
        "unexpected packet type 0xf0",
        "unexpected packet type 0x20",
        "PUBLISH with QoS 2",
        "PUBLISH with QoS 3",
        "PUBLISH topic longer than the packet",
        "PUBLISH topic longer than the packet",
        "PUBLISH too short for its topic",
        "PUBLISH too short for its topic",
        "bad PINGRESP (length 1)",
        "bad PUBACK (length 3)",
        "bad PUBACK (length 1)",
        "unexpected packet type 0x41",
        "bad SUBACK (length 2)",
    ]
    assert results["malformed"] == [raised("ProtocolError", t) for t in texts]


def test_tls_errors_while_reading_become_their_kind(results):
    assert results["tls_errors_while_reading"] == [
        raised("OSError", "ETIMEDOUT"),  # a socket errno, negated by the TLS layer
        raised("OSError", "ECONNRESET"),
        raised("TlsError", "mbedTLS error -0x7200"),
        raised("TlsError", "SSL - Verification of the message MAC failed"),
        raised("OSError", "ECONNRESET"),  # MBEDTLS_ERR_SSL_CONN_EOF
        raised("TlsError", "The certificate is not correctly signed"),
        raised("OSError", "ECONNRESET"),
    ]
    assert results["tls_error_while_writing"] == raised(
        "TlsError", "SSL - A fatal alert message was received from our peer"
    )


def test_callback_errors_propagate_unchanged(results):
    # Acknowledged before the callback ran, and the next packet is still read.
    assert results["callback_errors_propagate"] == (
        raised("ValueError", "handler bug"), b"\x40\x02\x00\x09", 0xD0
    )
    assert results["callback_default"] == 0x30


# --- oversized PUBLISH -------------------------------------------------------------------------


def test_limit(results):
    assert results["limit"] == 2048
    assert results["header_of_2049"] == b"\x30\x81\x10\x00\x03big"


def test_up_to_the_limit_is_delivered(results):
    assert results["below_limit"] == ([0x30, 0xD0], [(b"big", 2042, False)], 0, [], b"", 0)
    assert results["at_limit"] == ([0x30, 0xD0], [(b"big", 2043, False)], 0, [], b"", 0)


def test_over_the_limit_is_skipped(results):
    assert results["over_limit"] == ([0x30, 0xD0], [], 1, [(b"big", 2049)], b"", 0)


def test_over_the_limit_qos1_is_acknowledged(results):
    assert results["over_limit_qos1"] == (
        [0x30, 0xD0], [], 1, [(b"big", 2049)], b"\x40\x02\xab\xcd", 0
    )


def test_retained_6kb_in_pieces_is_skipped_and_the_stream_stays_in_step(results):
    assert results["over_limit_retained_fragmented"] == (
        [0x30, 0xD0], [], 1, [(b"big", 6000)], b"\x40\x02\x01\x02", 0
    )


def test_over_the_limit_with_a_long_topic(results):
    # A 300-byte topic is not held (reported as b""), yet the packet id after it is found.
    assert results["over_limit_long_topic"] == (
        [0x30, 0x40], [], 1, [(b"", 3000)], b"\x40\x02\x00\x05", 0
    )


def test_over_the_limit_still_checked(results):
    assert results["over_limit_topic_longer_than_packet"] == (
        raised("ProtocolError", "PUBLISH topic longer than the packet"), 0
    )
    assert results["over_limit_qos2"] == (raised("ProtocolError", "PUBLISH with QoS 2"), 0)
    assert results["over_limit_truncated"] == (raised("OSError", "ECONNRESET"), 0)


def test_skipping_allocates_nothing_per_byte(results):
    assert results["over_limit_allocates_nothing_per_byte"] == (
        0x30, 0xD0, [(b"big", 65536 + 7)], b"\x40\x02\x00\x07"
    )


def test_on_oversized_errors_propagate(results):
    assert results["on_oversized_errors_propagate"] == (raised("KeyError", "b'big'"), 1, 0xD0)


# --- open() ------------------------------------------------------------------------------------


def test_open_drives_the_handshake_with_connect(results):
    lookups, log, wraps, writes, sent, before, after, dns = results["open_drives_handshake"]
    assert lookups == [("broker.example", 8883, 1)]
    assert log == [("setblocking", False), ("connect", ("10.0.0.1", 8883)), ("settimeout", 0.5)]
    assert wraps == [("broker.example", False)]
    assert writes == 4  # three None (handshake pending), then CONNECT in one write
    assert sent == b"\x10\x18\x00\x04MQTT\x04\xc2\x00\x1e\x00\x05node1\x00\x01u\x00\x02pw"
    assert (before, after, dns) == (True, False, 1)


def test_open_times_out_and_closes(results):
    # TLS never answers: ETIMEDOUT, both sockets closed, the address kept.
    assert results["open_handshake_timeout"] == (raised("OSError", "ETIMEDOUT"), True, True,
                                                 True, 1, 1)


def test_open_tcp_timeout_forgets_the_address(results):
    assert results["open_tcp_timeout"] == (raised("OSError", "ETIMEDOUT"), True, 0, 2, 2,
                                           ("connect", ("10.0.0.2", 8883)))


def test_open_refused_or_unreachable_forgets_the_address(results):
    assert results["open_refused"] == (raised("OSError", "ECONNREFUSED"), True, True, 2)
    assert results["open_unreachable"] == (raised("OSError", "EHOSTUNREACH"), True, 2)


def test_open_dns_failure_names_the_host(results):
    assert results["open_dns_failure"] == [(("raised", "OSError"), True, [], 1)] * 2


def test_dns_is_looked_up_once(results):
    assert results["open_dns_cached"] == (1, 1, [("connect", ("10.0.0.1", 8883))] * 3)


def test_ip_literal_is_no_dns_lookup(results):
    assert results["open_ip_literal"] == (1, 0)


def test_open_tls_refusals(results):
    assert results["open_tls_refusals"] == [
        (["CertificateDateError", "TlsError", "MQTTException"],
         "The certificate validity starts in the future", True, True, 1),
        (["CertificateDateError", "TlsError", "MQTTException"],
         "The certificate is not correctly signed by the trusted CA; "
         "The certificate validity starts in the future", True, True, 1),
        (["TlsError", "MQTTException"],
         "The certificate Common Name (CN) does not match with the expected CN", True, True, 1),
        (["TlsError", "MQTTException"],
         "SSL - A fatal alert message was received from our peer", True, True, 1),
        (["TlsError", "MQTTException"], "mbedTLS error -0x7780", True, True, 1),
        (["OSError"], "ECONNRESET", True, True, 1),  # the peer hung up mid-handshake
    ]


def test_open_client_cert_refusals(results):
    """A handshake the broker ends after its certificate was checked, before it finished, was
    ended over the node's certificate: ClientCertRefused (a TlsError) names the file, or says
    that the broker wants one."""
    refused = ["ClientCertRefused", "TlsError"]
    with_cert = "the broker refused the client certificate %s"
    without = "the broker requires a client certificate (mqtt.cert, mqtt.key)"
    assert results["open_client_cert_refusals"] == [
        (refused, with_cert % "/node-cert.der", True),
        (refused, with_cert % "/node-cert.der", True),
        (refused, without, True),
        (refused, without, True),
        (refused, with_cert % "/c.der", True),
        (["OSError"], "ECONNRESET", True),
        (["TlsError"], "The certificate is not correctly signed by the trusted CA", True),
        (["OSError"], "EHOSTUNREACH", True),
        (["OSError"], "ETIMEDOUT", True),
        ("ClientCertRefused", True),
    ]


def test_open_wrap_refused(results):
    assert results["open_wrap_refused"] == (
        raised("TlsError", "CERT_REQUIRED requires server_hostname"), True
    )


def test_open_cancelled_closes(results):
    assert results["open_cancelled"] == ("cancelled", True, True, 1)


def test_close_after_open(results):
    assert results["close_after_open"] == (True, True, None, None)


def test_error_kinds(results):
    assert results["error_kinds"] == (
        ["OSError", "MQTTException"], [True, True, True, True, False, False]
    )
