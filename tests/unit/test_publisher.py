"""The MQTT publisher's policy (lib/node/publisher.py) on a virtual clock and a scripted client.

Each test runs one scenario under the MicroPython unix port (about 30 ms each): a fake client
plays the broker (CONNACK, PUBACK, SUBACK, PINGRESP, messages and failures, each due at a virtual
time) and a clock whose sleep_ms() moves virtual time on and yields once, so a 60 s backoff or a
30 s keepalive costs microseconds. The script prints what happened as one JSON line ("RESULT
..."); the assertions are made here. What test_faults.py proves against real brokers in real
time, these prove for the policy alone, in milliseconds.
"""

import json
import re
import textwrap

import pytest

# The MicroPython side: fakes, scenario set-up and the report. A scenario's body is appended.
_HARNESS = r'''
import asyncio
import errno
import json
import random
import time

import node.publisher as P
from node.mqtt import (CertificateDateError, ClientCertRefused, ProtocolError, Refused,
                       TlsError)
from node.outbox import Outbox
from node.payload import Topics

TOPICS = Topics("sensors", "n1")
CLIMATE = TOPICS.climate.encode()


class FakeClock:
    """Virtual time: sleep_ms() moves it on and yields once, so long waits cost nothing."""

    def __init__(self):
        self.origin = 0  # ticks at virtual 0: set near the wrap to prove ticks_diff is used
        self.t = 0  # virtual ms since the scenario started

    def ticks_ms(self):
        return time.ticks_add(self.origin, self.t)

    async def sleep_ms(self, ms):
        self.t += ms
        await asyncio.sleep_ms(0)


CLOCK = FakeClock()
LOG = []  # [virtual ms, component, text]


def _log(component, text):
    LOG.append([CLOCK.t, component, text])
    print("%d.%03d %s: %s" % (CLOCK.t // 1000, CLOCK.t % 1000, component, text))


P.log = _log  # the publisher's own name for node.log.log

# How the fake broker answers one connection (one open()); plan() overrides these.
_PLAN = {
    "open": None,  # raised by open(); the socket stays None (TLS never reached)
    "connack_ms": 0,  # CONNACK readable this long after open(); None: never
    "connack": None,  # raised by read_connack() (Refused, ProtocolError)
    "puback_ms": 30,  # PUBACK this long after each QoS 1 PUBLISH; None: never
    "pubacks": None,  # how many PUBLISHes this connection acknowledges; None: all
    "puback_pid": None,  # pid -> the pid the PUBACK carries (default: the same)
    "suback_ms": 30,
    "pingresp_ms": 30,  # None: PINGREQs go unanswered
    "events": (),  # (ms after CONNACK, kind, ...): "publish" topic msg retained,
                   # "error" exception (check_msg raises it), "noise" (check_msg -> None)
}


def plan(**kw):
    p = dict(_PLAN)
    for k in kw:
        if k not in p:
            raise KeyError(k)
    p.update(kw)
    return p


class FakeClient:
    """node.mqtt.Client's interface, scripted by one plan per open() (the last one repeats)."""

    def __init__(self, plans):
        self.plans = list(plans)
        self.plan = None
        self.sock = None
        self.server = "broker.test"
        self.port = 8883
        self.acked = []
        self.subacked = []
        self.cb = None
        self.will = None
        self.pid = 0
        self.inbox = []  # [due virtual ms, order, packet]: what the broker has sent
        self.order = 0
        self.sent = []  # [kind, virtual ms, ...] of every call that goes to the broker
        self.opens = []
        self.at_open = []  # [refused, reconnects, connected] as each open() starts
        self.publish_error = None  # raised by publish() (QoS 0) when set
        self.outstanding = []  # pids of QoS 1 PUBLISHes not yet acknowledged to the caller
        self.in_flight_at_send = []
        self.pubacks_left = None

    def set_last_will(self, topic, msg, retain=False, qos=0):
        self.will = [topic.decode(), msg.decode(), retain, qos]

    def set_callback(self, cb):
        self.cb = cb

    def _schedule(self, after_ms, *packet):
        self.order += 1
        self.inbox.append([CLOCK.t + after_ms, self.order, packet])
        self.inbox.sort()

    def _next_pid(self):
        self.pid = self.pid % 0xFFFF + 1
        return self.pid

    async def open(self, timeout_ms):
        self.plan = self.plans.pop(0) if len(self.plans) > 1 else self.plans[0]
        self.opens.append(CLOCK.t)
        self.at_open.append([PUB.refused, PUB.reconnects, PUB.connected])
        self.sent.append(["open", CLOCK.t, timeout_ms])
        await asyncio.sleep_ms(0)
        if self.plan["open"] is not None:
            raise self.plan["open"]
        self.sock = object()
        self.outstanding = []
        self.pubacks_left = self.plan["pubacks"]
        if self.plan["connack_ms"] is not None:
            self._schedule(self.plan["connack_ms"], "connack")

    def readable(self):
        if self.sock is None:
            raise AssertionError("readable() on a closed client")
        return bool(self.inbox) and self.inbox[0][0] <= CLOCK.t

    def _take(self):
        if self.inbox and self.inbox[0][0] <= CLOCK.t:
            return self.inbox.pop(0)[2]
        return None

    def read_connack(self):
        packet = self._take()
        if packet != ("connack",):
            raise AssertionError("read_connack() with %r waiting" % (packet,))
        if self.plan["connack"] is not None:
            raise self.plan["connack"]
        for event in self.plan["events"]:
            self._schedule(event[0], *event[1:])

    def check_msg(self):
        packet = self._take()
        if packet is None or packet[0] == "noise":
            return None
        kind = packet[0]
        if kind == "error":
            raise packet[1]
        if kind == "puback":
            if packet[1] in self.outstanding:
                self.outstanding.remove(packet[1])
            self.acked.append(packet[1])
            return 0x40
        if kind == "suback":
            self.subacked.append(packet[1])
            return 0x90
        if kind == "pingresp":
            return 0xD0
        if kind == "publish":
            self.cb(packet[1].encode(), packet[2].encode(), packet[3])
            return 0x30
        raise AssertionError("unknown packet %r" % (packet,))

    def publish(self, topic, msg, retain=False):
        if self.sock is None:
            raise AssertionError("publish() on a closed client")
        if self.publish_error is not None:
            raise self.publish_error
        self.sent.append(["publish", CLOCK.t, topic.decode(), msg.decode(), retain])

    def publish_qos1(self, topic, msg, retain=False, dup=False):
        pid = self._next_pid()
        self.in_flight_at_send.append(len(self.outstanding))
        self.outstanding.append(pid)
        self.sent.append(["qos1", CLOCK.t, topic.decode(), msg.decode(), dup, pid, retain])
        left = self.pubacks_left
        if self.plan["puback_ms"] is not None and (left is None or left > 0):
            if left is not None:
                self.pubacks_left = left - 1
            f = self.plan["puback_pid"]
            self._schedule(self.plan["puback_ms"], "puback", f(pid) if f else pid)
        return pid

    def send_subscribe(self, topic):
        pid = self._next_pid()
        self.sent.append(["subscribe", CLOCK.t, topic.decode(), pid])
        if self.plan["suback_ms"] is not None:
            self._schedule(self.plan["suback_ms"], "suback", pid)
        return pid

    def ping(self):
        self.sent.append(["ping", CLOCK.t])
        if self.plan["pingresp_ms"] is not None:
            self._schedule(self.plan["pingresp_ms"], "pingresp")

    def close(self):
        self.sent.append(["close", CLOCK.t])
        self.sock = None
        self.inbox = []


class FixedRandom:
    """random for the jitter, pinned: 0 gives exactly half the backoff."""

    def __init__(self, bits):
        self.bits = bits

    def getrandbits(self, n):
        return self.bits


PUB = CLIENT = OUTBOX = None
BEATS = []
LINKS = []
ERRORS = []  # what a task of the scenario raised, re-raised by until()
SEEN = {}  # what a scenario's drive() observed, reported as "seen"
HANDLED = []  # [virtual ms, topic, msg, retained] of each handler call
_CLOCK_SET_AT = [0]


def beat():
    BEATS.append(CLOCK.t)


async def link(beat_fn):
    LINKS.append(CLOCK.t)
    await asyncio.sleep_ms(0)


def clock_set():
    at = _CLOCK_SET_AT[0]
    return at is not None and CLOCK.t >= at


def setup(*plans, keepalive_s=60, clock_set_at=0, origin=0, bits=0, seed=None):
    """A publisher on the fake client; the jitter pinned to `bits`, or random from `seed`."""
    global PUB, CLIENT, OUTBOX
    CLOCK.origin = origin
    _CLOCK_SET_AT[0] = clock_set_at
    if seed is None:
        P.random = FixedRandom(bits)
    else:
        random.seed(seed)
    CLIENT = FakeClient(plans or [plan()])
    OUTBOX = Outbox(20, 7, lambda: 1700000000, lambda: CLOCK.t, 4096)
    PUB = P.Publisher(CLIENT, OUTBOX, TOPICS, keepalive_s, beat, link, clock_set, CLOCK)
    return PUB


def add(n=1):
    for _ in range(n):
        OUTBOX.add(CLIMATE, [("t", 21.5)])


def handler(topic):
    def on_message(msg, retained):
        HANDLED.append([CLOCK.t, topic, msg.decode(), retained])
    return on_message


async def _recording(coro):
    try:
        await coro
    except Exception as e:
        ERRORS.append(e)


async def until(cond, limit_ms=600000):
    """Yield until cond() holds; raise what a task raised, or on virtual time running out or
    standing still."""
    last_t = CLOCK.t
    still = 0
    while not cond():
        if ERRORS:
            raise ERRORS[0]
        if CLOCK.t > limit_ms:
            raise AssertionError("not done by virtual %d ms" % CLOCK.t)
        still = still + 1 if CLOCK.t == last_t else 0
        if still > 100000:
            raise AssertionError("virtual time stands still at %d ms" % CLOCK.t)
        last_t = CLOCK.t
        await asyncio.sleep_ms(0)


async def at(ms):
    await until(lambda: CLOCK.t >= ms)


def go(stop, drive=None, limit_ms=600000):
    """Run the publisher (and drive()) until stop() holds (or virtual ms `stop`); report."""
    if isinstance(stop, int):
        end_ms = stop

        def stop():
            return CLOCK.t >= end_ms

    async def main():
        task = asyncio.create_task(_recording(PUB.run()))
        if drive is not None:
            asyncio.create_task(_recording(drive()))
        await until(stop, limit_ms)
        task.cancel()
        await asyncio.sleep_ms(0)

    asyncio.run(main())
    print("RESULT " + json.dumps({
        "t": CLOCK.t, "log": LOG, "sent": CLIENT.sent, "opens": CLIENT.opens,
        "at_open": CLIENT.at_open, "links": LINKS, "beats": BEATS, "will": CLIENT.will,
        "in_flight_at_send": CLIENT.in_flight_at_send, "handled": HANDLED, "seen": SEEN,
        "connected": PUB.connected, "refused": PUB.refused, "reconnects": PUB.reconnects,
        "handler_errors": PUB.handler_errors, "last_error": PUB.last_error,
        "queued": len(OUTBOX), "delivered": OUTBOX.delivered,
    }))
'''

_RETRY = re.compile(r"; retrying in (\d+) ms$")
STATUS = "sensors/n1/status"
CMD = "sensors/n1/cmd"
CLIMATE = "sensors/n1/climate"
# Equal jitter pinned to its lowest value (FixedRandom(0)) is half the backoff: 1 s doubling
# per failure, capped at 4 s (nothing answers) or 60 s.
UNREACHABLE_DELAYS = [500, 1000, 2000, 2000, 2000, 2000, 2000]
GROWING_DELAYS = [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]
GROWING_BACKOFFS = [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000, 60000]


def run(mpy, body):
    """Run one scenario; its JSON report, with its stdout as "stdout" (printed, so a failing
    test shows the scenario's log)."""
    proc = mpy(_HARNESS + textwrap.dedent(body), timeout=60)
    print(proc.stdout)
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert len(results) == 1, proc.stdout
    report = json.loads(results[0][len("RESULT "):])
    report["stdout"] = proc.stdout
    return report


def texts(r, component="mqtt"):
    return [text for _, comp, text in r["log"] if comp == component]


def delays(r):
    return [int(m.group(1)) for m in map(_RETRY.search, texts(r)) if m]


def failures(r):
    """[virtual ms, what] of each failure logged."""
    return [[t, _RETRY.sub("", text)] for t, comp, text in r["log"] if _RETRY.search(text)]


def sent(r, kind):
    return [s[1:] for s in r["sent"] if s[0] == kind]


def readings(r):
    """(seq, dup) of each QoS 1 PUBLISH, in order."""
    return [(json.loads(msg)["seq"], dup) for _, _, msg, dup, _, _ in sent(r, "qos1")]


def gaps(values):
    return [b - a for a, b in zip(values, values[1:])]


def max_beat_gap(r):
    return max(gaps([0, *r["beats"], r["t"]]))


# --- Backoff --------------------------------------------------------------------------------


def test_backoff_while_nothing_answers_doubles_from_1s_and_stops_at_4s(mpy):
    r = run(mpy, """
        setup(plan(open=OSError(errno.ECONNREFUSED)))
        go(lambda: len(CLIENT.opens) >= 8)
    """)
    assert delays(r) == UNREACHABLE_DELAYS
    # Each delay is slept, not just logged: the next attempt comes exactly that much later.
    assert gaps(r["opens"]) == UNREACHABLE_DELAYS
    assert r["links"] == r["opens"]  # the link (Wi-Fi) is asked for before every attempt
    assert texts(r).count("connecting to broker.test:8883") == 8
    assert r["reconnects"] == 0
    assert r["connected"] is False


def test_backoff_stops_at_4s_for_a_certificate_date_error(mpy):
    r = run(mpy, """
        setup(plan(open=CertificateDateError("The certificate validity starts in the future")))
        go(lambda: len(CLIENT.opens) >= 8)
    """)
    assert delays(r) == UNREACHABLE_DELAYS


# Failures after which waiting longer is worth it: each, repeated, grows the backoff to 60 s.
_GROWING = {
    "tls refused": 'plan(open=TlsError("X509 - Certificate verification failed"))',
    "connect refused": "plan(connack=Refused(5))",
    "protocol error": 'plan(connack=ProtocolError("expected CONNACK, got 0x30"))',
    "no connack": "plan(connack_ms=None)",
    "lost after tls": 'plan(events=[(0, "error", OSError(errno.ECONNRESET))])',
}


@pytest.mark.parametrize("kind", _GROWING)
def test_backoff_grows_to_60s_once_something_answered(mpy, kind):
    r = run(mpy, f"""
        setup({_GROWING[kind]})
        go(lambda: len(CLIENT.opens) >= 9)
    """)
    assert delays(r) == GROWING_DELAYS


def test_backoff_falls_back_to_4s_when_nothing_answers_any_more(mpy):
    r = run(mpy, """
        setup(*[plan(open=TlsError("bad certificate"))] * 4, plan(open=OSError(errno.EHOSTUNREACH)))
        go(lambda: len(CLIENT.opens) >= 7)
    """)
    assert delays(r) == [500, 1000, 2000, 4000, 2000, 2000]


def test_backoff_is_equal_jitter_at_its_highest(mpy):
    r = run(mpy, """
        setup(plan(open=TlsError("bad certificate")), bits=65535)
        go(lambda: len(CLIENT.opens) >= 9)
    """)
    # backoff/2 + 65535 * backoff // 2**17: just under the backoff
    assert delays(r) == [999, 1999, 3999, 7999, 15999, 31999, 59999, 59999]


@pytest.mark.parametrize("seed", [1, 2])
def test_backoff_jitter_is_random_within_half_to_whole_backoff(mpy, seed):
    r = run(mpy, f"""
        setup(plan(open=TlsError("bad certificate")), seed={seed})
        go(lambda: len(CLIENT.opens) >= 11)
    """)
    got = delays(r)
    assert len(got) == len(GROWING_BACKOFFS)
    for delay, backoff in zip(got, GROWING_BACKOFFS):
        assert backoff // 2 <= delay < backoff, (delay, backoff)
    jitter = [d - b // 2 for d, b in zip(got, GROWING_BACKOFFS)]
    assert len(set(jitter)) == len(jitter)  # random, not a fixed fraction
    assert gaps(r["opens"]) == got


def test_backoff_jitter_differs_between_nodes(mpy):
    one, two = (run(mpy, f"""
        setup(plan(open=OSError(errno.ECONNREFUSED)), seed={seed})
        go(lambda: len(CLIENT.opens) >= 6)
    """) for seed in (11, 12))
    assert delays(one) != delays(two)


# A session that connects, is answered at once (a PUBLISH on a topic nobody subscribed to, due
# with the CONNACK), and breaks `ms` later; after three TLS refusals (backoff now 8 s) and
# followed by unreachable attempts.
_SESSION_AFTER_3_REFUSALS = """
    refusal = plan(open=TlsError("bad certificate"))
    first = [(0, "publish", "sensors/n1/retained", "x", True)] if {answered} else []
    if {noise}:
        first = [(0, "noise")]
    setup(refusal, refusal, refusal,
          plan(pingresp_ms=None,
               events=first + [({ms}, "error", OSError(errno.ECONNRESET))]),
          plan(open=OSError(errno.ECONNREFUSED)))
    go(lambda: len(CLIENT.opens) >= 6)
"""


@pytest.mark.parametrize(("ms", "answered", "noise", "after"), [
    (30000, True, False, [500, 1000]),  # answered, 30 s: a healthy session, start afresh
    (29980, True, False, [4000, 2000]),  # 20 ms short
    (5000, True, False, [4000, 2000]),  # answered, but broke after 5 s
    (40000, False, False, [4000, 2000]),  # 40 s, but nothing ever came back
    (40000, False, True, [4000, 2000]),  # bytes came, but never a well-formed packet
], ids=["stable", "20ms-short", "5s", "unanswered", "noise-only"])
def test_backoff_starts_afresh_only_after_an_answered_30s_session(mpy, ms, answered, noise,
                                                                  after):
    r = run(mpy, _SESSION_AFTER_3_REFUSALS.format(ms=ms, answered=answered, noise=noise))
    assert delays(r) == [500, 1000, 2000, *after]
    start = r["opens"][3]
    assert failures(r)[3] == [start + ms, "OSError: [Errno 104] ECONNRESET"]
    assert r["reconnects"] == 1


def test_backoff_reset_and_keepalive_across_a_ticks_wrap(mpy):
    # ticks_ms() wraps 20 s into the run: every interval must be taken with ticks_diff().
    r = run(mpy, """
        refusal = plan(open=TlsError("bad certificate"))
        setup(refusal, refusal, refusal,
              plan(events=[(0, "publish", "sensors/n1/retained", "x", True),
                           (30000, "error", OSError(errno.ECONNRESET))]),
              refusal, keepalive_s=10, origin=time.ticks_add(0, -20000))
        go(lambda: len(CLIENT.opens) >= 5)
    """)
    assert r["opens"][3] == 3500
    assert [t for t, in sent(r, "ping")] == [8500, 13500, 18500, 23500, 28500]
    assert delays(r) == [500, 1000, 2000, 500]


# --- Classification ------------------------------------------------------------------------

_KINDS = [
    ("plan(open=OSError(errno.ECONNREFUSED))", False, "OSError: [Errno 111] ECONNREFUSED"),
    ('plan(open=OSError("DNS lookup of broker.test failed (-2)"))', False,
     "OSError: DNS lookup of broker.test failed (-2)"),
    ("plan(open=OSError())", False, "OSError"),
    ('plan(open=CertificateDateError("The certificate validity starts in the future"))', False,
     "clock problem: the broker's certificate is not valid yet by this board's clock"
     " (The certificate validity starts in the future)"),
    ('plan(open=TlsError("The certificate Common Name (CN) does not match"))', True,
     "TLS refused: The certificate Common Name (CN) does not match"),
    ('plan(open=TlsError(""))', True, "TLS refused: handshake failed"),
    ('plan(open=ClientCertRefused("the broker refused the client certificate /c.der"))', True,
     "TLS refused: the broker refused the client certificate /c.der"),
    ("plan(connack=Refused(4))", True,
     "broker refused CONNECT: bad user name or password (return code 4)"),
    ("plan(connack=Refused(5))", True,
     "broker refused CONNECT: not authorised (return code 5)"),
    ('plan(connack=ProtocolError("bad CONNACK (length 3)"))', False,
     "ProtocolError: bad CONNACK (length 3)"),
    ("plan(connack_ms=None)", False, "OSError: no CONNACK within 10000 ms"),
    ('plan(events=[(100, "error", ProtocolError("unexpected packet type 0x50"))])', False,
     "ProtocolError: unexpected packet type 0x50"),
]


@pytest.mark.parametrize(("failing", "refused", "described"), _KINDS,
                         ids=["tcp-refused", "dns", "bare-oserror", "cert-date", "tls-cn",
                              "tls-no-text", "client-cert", "bad-credentials", "not-authorised",
                              "bad-connack", "no-connack", "protocol-in-session"])
def test_each_kind_of_failure_is_classified_and_described(mpy, failing, refused, described):
    r = run(mpy, f"""
        setup({failing}, plan(open=OSError(errno.ECONNREFUSED)))
        go(lambda: len(CLIENT.opens) >= 3)
    """)
    assert failures(r)[0][1] == described
    # [refused, ...] as the next attempts start: a refusal is shown until an attempt is not one
    assert [a[0] for a in r["at_open"]] == [False, refused, False]
    assert r["last_error"] == "OSError: [Errno 111] ECONNREFUSED"


def test_a_connect_after_a_refusal_is_no_longer_refused(mpy):
    """The LED shows ERROR for `refused`: a broker that lets the node in again clears it."""
    r = run(mpy, """
        setup(plan(connack=Refused(5)), plan())
        go(lambda: PUB.connected)
    """)
    assert [a[0] for a in r["at_open"]] == [False, True]
    assert r["connected"] is True and r["refused"] is False


def test_reconnects_counts_only_lost_sessions_that_had_connected(mpy):
    r = run(mpy, """
        lost = plan(events=[(1000, "error", OSError(errno.ECONNRESET))])
        setup(plan(open=OSError(errno.ECONNREFUSED)), plan(connack=Refused(3)), lost,
              plan(open=TlsError("bad certificate")), plan(connack_ms=None), lost, plan())
        go(lambda: len(CLIENT.opens) >= 7 and PUB.connected)
    """)
    # [refused, reconnects, connected] as each attempt starts
    assert [a[1] for a in r["at_open"]] == [0, 0, 0, 1, 1, 1, 2]
    assert [a[2] for a in r["at_open"]] == [False] * 7
    assert r["reconnects"] == 2
    assert r["connected"] is True


# --- The clock before TLS -------------------------------------------------------------------

_WAITING = ("waiting for the clock (NTP) before TLS: the broker's certificate cannot be"
            " checked against a clock that reads 2000")


def test_no_tls_attempt_before_the_clock_is_set(mpy):
    r = run(mpy, """
        setup(clock_set_at=3000)
        go(5000)
    """)
    assert r["links"] == [0]  # the network first, then the clock
    assert r["opens"] == [3000]  # polled every 500 ms
    assert texts(r)[:3] == [_WAITING, "clock set: connecting", "connecting to broker.test:8883"]
    assert r["connected"] is True
    assert max_beat_gap(r) <= 500


def test_never_a_tls_attempt_while_the_clock_stays_unset(mpy):
    r = run(mpy, """
        setup(clock_set_at=None)
        SEEN["publish_now"] = PUB.publish_now(b"sensors/n1/telemetry", b"{}")
        go(120000)
    """)
    assert r["opens"] == []
    assert texts(r) == [_WAITING]
    assert max_beat_gap(r) <= 500
    assert len(r["beats"]) >= 240
    assert r["seen"] == {"publish_now": False}  # offline: nothing sent


# --- Connect --------------------------------------------------------------------------------


def test_connect_announces_online_subscribes_then_calls_on_connect(mpy):
    r = run(mpy, """
        setup(plan(pubacks=1, events=[(1000, "error", OSError(errno.ECONNRESET))]), plan())
        PUB.subscribe("sensors/n1/cmd", handler("cmd"))
        PUB.subscribe("homeassistant/status", handler("ha"))
        SEEN["on_connect"] = []

        def on_connect():
            SEEN["on_connect"].append([PUB.connected, [s[:3] for s in CLIENT.sent]])

        PUB.on_connect = on_connect
        add(2)
        go(lambda: len(CLIENT.opens) == 2 and PUB.connected and not OUTBOX)
    """)
    assert r["will"] == [STATUS, "offline", True, 1]
    calls = r["seen"]["on_connect"]
    assert len(calls) == 2  # once per connect
    for (connected, before), start in zip(calls, r["opens"]):
        assert connected is True
        session = before[before.index(["open", start, 10000]):]
        assert session[1] == ["publish", start, STATUS]  # "online" first, before any reading
        assert {s[2] for s in session[2:]} == {CMD, "homeassistant/status"}
        assert [s[0] for s in session[2:]] == ["subscribe", "subscribe"]
    assert [s[2:] for s in sent(r, "publish")] == [["online", True]] * 2
    assert [line for line in texts(r) if line.startswith("connected")] == [
        "connected; 2 readings waiting", "connected; 1 readings waiting"]
    subscribed = [line for line in texts(r) if line.startswith("subscribed to ")]
    assert len(subscribed) == 2
    assert set(subscribed[0][len("subscribed to "):].split(", ")) == {
        CMD, "homeassistant/status"}


def test_no_connack_within_10s_fails_the_attempt(mpy):
    r = run(mpy, """
        setup(plan(connack_ms=None), plan())
        go(lambda: PUB.connected)
    """)
    assert r["sent"][0] == ["open", 0, 10000]
    assert failures(r) == [[10020, "OSError: no CONNACK within 10000 ms"]]  # 20 ms polls
    assert r["sent"][1] == ["close", 10020]
    assert r["opens"] == [0, 10520]
    waiting = [t for t in r["beats"] if t <= 10020]
    assert max(gaps(waiting)) == 20  # beating while it waits for the CONNACK
    assert r["reconnects"] == 0


# --- Delivery -------------------------------------------------------------------------------


def test_readings_go_in_order_one_in_flight_popped_on_their_puback(mpy):
    r = run(mpy, """
        setup(plan(puback_ms=100))
        add(3)

        async def drive():
            await at(50)
            SEEN["queued at 50"] = len(OUTBOX)
            await at(150)
            SEEN["queued at 150"] = len(OUTBOX)

        go(lambda: OUTBOX.delivered == 3, drive)
    """)
    qos1 = sent(r, "qos1")
    assert readings(r) == [(1, False), (2, False), (3, False)]
    assert [(t, topic, retain) for t, topic, _, _, _, retain in qos1] == [
        (0, CLIMATE, False), (100, CLIMATE, False), (200, CLIMATE, False)]
    assert r["in_flight_at_send"] == [0, 0, 0]  # stop and wait
    assert r["seen"] == {"queued at 50": 3, "queued at 150": 2}
    assert r["queued"] == 0
    assert json.loads(qos1[0][2]) == {"boot": 7, "seq": 1, "ts": 1700000000, "t": 21.5}


def test_a_puback_for_another_pid_pops_nothing(mpy):
    r = run(mpy, """
        setup(plan(puback_pid=lambda pid: pid + 1000), plan(), keepalive_s=10)
        add(1)

        async def drive():
            await at(5000)
            SEEN["queued at 5000"] = len(OUTBOX)

        go(lambda: OUTBOX.delivered == 1, drive)
    """)
    assert r["seen"] == {"queued at 5000": 1}
    assert failures(r) == [[5020, "OSError: no PUBACK for seq 1 within 5000 ms"]]
    assert readings(r) == [(1, False), (1, True)]
    assert r["reconnects"] == 1


def test_the_unacknowledged_reading_is_resent_as_dup_after_a_reconnect(mpy):
    r = run(mpy, """
        setup(plan(pubacks=1), plan(), keepalive_s=10)
        add(2)

        async def drive():
            await at(5200)  # during the backoff
            add(1)

        go(lambda: OUTBOX.delivered == 3, drive)
    """)
    # seq 1 acknowledged at 40 ms (20 ms polls) and seq 2 sent; no PUBACK for it within half
    # the keepalive
    assert failures(r) == [[5060, "OSError: no PUBACK for seq 2 within 5000 ms"]]
    assert delays(r) == [500]
    assert readings(r) == [(1, False), (2, False), (2, True), (3, False)]
    first, resent = sent(r, "qos1")[1:3]
    assert resent[2] == first[2]  # the same reading, byte for byte (seq, ts)
    assert resent[0] == 5560
    assert r["reconnects"] == 1


# --- Keepalive ------------------------------------------------------------------------------


def test_pingreq_after_half_the_keepalive_without_traffic(mpy):
    r = run(mpy, """
        setup(keepalive_s=10)
        go(31000)
    """)
    assert [t for t, in sent(r, "ping")] == [5000, 10000, 15000, 20000, 25000, 30000]
    assert r["opens"] == [0]
    assert failures(r) == []


def test_no_pingreq_while_readings_flow(mpy):
    r = run(mpy, """
        setup(keepalive_s=10)

        async def drive():
            for t in range(0, 20001, 2000):
                await at(t)
                add(1)

        go(31000, drive)
    """)
    assert len(sent(r, "qos1")) == 11
    pings = [t for t, in sent(r, "ping")]
    assert pings == [pings[0], pings[0] + 5000]
    assert 25000 <= pings[0] <= 25020  # half the keepalive after the last reading went


def test_pingreq_when_nothing_was_received_even_just_after_sending(mpy):
    r = run(mpy, """
        setup(plan(puback_ms=1000), keepalive_s=10)

        async def drive():
            await at(4900)
            add(1)

        go(6000, drive)
    """)
    assert [t for t, *_ in sent(r, "qos1")] == [4900]
    assert [t for t, in sent(r, "ping")] == [5000]  # nothing received since the CONNACK


def test_pingreq_when_nothing_was_sent_even_while_messages_come_in(mpy):
    r = run(mpy, """
        setup(plan(events=[(ms, "publish", "sensors/n1/cmd", "x", False)
                           for ms in range(1000, 12001, 1000)]), keepalive_s=10)
        PUB.subscribe("sensors/n1/cmd", handler("cmd"))
        go(12500)
    """)
    assert len(r["handled"]) == 12
    assert [t for t, in sent(r, "ping")] == [5000, 10000]


def test_a_silent_broker_is_dropped_half_a_keepalive_after_the_ping(mpy):
    r = run(mpy, """
        setup(plan(pingresp_ms=None), plan(), keepalive_s=10)
        go(lambda: len(CLIENT.opens) == 2 and PUB.connected)
    """)
    assert [t for t, in sent(r, "ping")] == [5000]
    assert failures(r) == [[10020, "OSError: no PINGRESP within 5000 ms: broker silent"]]
    assert r["opens"] == [0, 10520]
    assert r["reconnects"] == 1


def test_any_packet_clears_the_outstanding_ping(mpy):
    r = run(mpy, """
        setup(plan(pingresp_ms=None,
                   events=[(7000, "publish", "sensors/n1/other", "x", False)]),
              plan(), keepalive_s=10)
        go(lambda: len(CLIENT.opens) == 2)
    """)
    # The message at 7 s answers the ping of 5 s; the next one, at 10 s, goes unanswered.
    assert [t for t, in sent(r, "ping")] == [5000, 10000]
    assert failures(r) == [[15020, "OSError: no PINGRESP within 5000 ms: broker silent"]]


# --- Handlers -------------------------------------------------------------------------------


def test_messages_reach_the_handler_of_their_topic_only(mpy):
    r = run(mpy, """
        setup(plan(events=[(100, "publish", "sensors/n1/cmd", "a", False),
                           (200, "publish", "sensors/n1/cmd", "b", True),
                           (300, "publish", "sensors/n1/other", "zzz", False),
                           (400, "publish", "homeassistant/status", "online", True)]))
        PUB.subscribe("sensors/n1/cmd", handler("cmd"))
        PUB.subscribe("homeassistant/status", handler("ha"))
        go(1000)
    """)
    assert r["handled"] == [[100, "cmd", "a", False], [200, "cmd", "b", True],
                            [400, "ha", "online", True]]
    ignored = [line for line in texts(r) if line.startswith("ignored a message on ")]
    assert len(ignored) == 1
    assert "sensors/n1/other" in ignored[0]
    assert ignored[0].endswith(" (3 bytes)")
    assert r["handler_errors"] == 0


def test_a_failing_handler_is_counted_and_printed_and_the_session_goes_on(mpy):
    r = run(mpy, """
        setup(plan(events=[(100, "publish", "sensors/n1/cmd", "a", False),
                           (200, "publish", "sensors/n1/cmd", "b", False)]))
        calls = []

        def on_cmd(msg, retained):
            calls.append(CLOCK.t)
            if len(calls) == 1:
                {}["missing"]

        PUB.subscribe("sensors/n1/cmd", on_cmd)

        async def drive():
            await at(500)
            add(2)

        go(lambda: OUTBOX.delivered == 2, drive)
        print("calls", calls)
    """)
    assert r["handler_errors"] == 1
    errors = [line for line in texts(r) if "failed" in line]
    assert errors == [
        "handler for sensors/n1/cmd failed (a bug; the link stays up): KeyError('missing',)"]
    assert "Traceback (most recent call last):" in r["stdout"]
    assert "calls [100, 200]" in r["stdout"]  # the next message is handled as before
    assert r["opens"] == [0]
    assert r["connected"] is True
    assert readings(r) == [(1, False), (2, False)]


def test_a_failing_on_connect_is_counted_and_printed_and_the_session_goes_on(mpy):
    r = run(mpy, """
        setup()

        def on_connect():
            raise ValueError("boom")

        PUB.on_connect = on_connect
        add(2)
        go(lambda: OUTBOX.delivered == 2)
    """)
    assert r["handler_errors"] == 1
    assert [line for line in texts(r) if "failed" in line] == [
        "on_connect failed (a bug; the link stays up): ValueError('boom',)"]
    assert "Traceback (most recent call last):" in r["stdout"]
    assert "ValueError: boom" in r["stdout"]
    assert r["opens"] == [0]
    assert r["reconnects"] == 0


@pytest.mark.parametrize("raised", ["OSError(errno.ECONNRESET)", 'ProtocolError("bad")'])
def test_a_link_error_from_a_handler_drops_the_link(mpy, raised):
    r = run(mpy, f"""
        setup(plan(events=[(100, "publish", "sensors/n1/cmd", "a", False)]), plan())

        def on_cmd(msg, retained):
            raise {raised}  # as its own publish would, on a broken link

        PUB.subscribe("sensors/n1/cmd", on_cmd)
        go(lambda: len(CLIENT.opens) == 2 and PUB.connected)
    """)
    described = {"OSError(errno.ECONNRESET)": "OSError: [Errno 104] ECONNRESET",
                 'ProtocolError("bad")': "ProtocolError: bad"}[raised]
    assert failures(r) == [[100, described]]
    assert r["handler_errors"] == 0
    assert r["reconnects"] == 1


# --- publish_now ----------------------------------------------------------------------------


def test_publish_now_sends_only_while_connected_and_never_raises_a_link_error(mpy):
    r = run(mpy, """
        setup(plan(open=OSError(errno.ECONNREFUSED)), plan())
        topic = b"sensors/n1/telemetry"
        SEEN["before run"] = PUB.publish_now(topic, b"0")

        async def drive():
            await at(100)  # backing off
            SEEN["backing off"] = PUB.publish_now(topic, b"1")
            await until(lambda: PUB.connected)
            SEEN["connected"] = PUB.publish_now(topic, b"2", retain=True)
            CLIENT.publish_error = OSError(errno.ECONNRESET)
            SEEN["link error"] = PUB.publish_now(topic, b"3")
            CLIENT.publish_error = TlsError("mbedTLS error -0x7100")
            SEEN["tls error"] = PUB.publish_now(topic, b"4")
            SEEN["still connected"] = PUB.connected
            CLIENT.publish_error = None

        go(2000, drive)
    """)
    assert r["seen"] == {"before run": False, "backing off": False, "connected": True,
                         "link error": False, "tls error": False, "still connected": True}
    assert [s[1:] for s in sent(r, "publish")] == [
        [STATUS, "online", True], ["sensors/n1/telemetry", "2", True]]
    assert [line for line in texts(r) if line.startswith("not sent")] == [
        "not sent on sensors/n1/telemetry: OSError: [Errno 104] ECONNRESET",
        "not sent on sensors/n1/telemetry: TLS refused: mbedTLS error -0x7100"]


# --- Heartbeats -----------------------------------------------------------------------------


def test_beats_every_500ms_in_every_state(mpy):
    r = run(mpy, """
        refusal = plan(open=TlsError("bad certificate"))
        setup(*[refusal] * 7,  # up to the 30 s delays of a 60 s backoff
              plan(connack_ms=None),  # 10 s waiting for a CONNACK
              plan(events=[(20000, "error", OSError(errno.ECONNRESET))]),
              plan(open=OSError(errno.ECONNREFUSED)), plan(),
              keepalive_s=10, clock_set_at=2000)

        async def drive():
            for t in range(0, 100001, 3000):  # then idle sessions, pinging
                await at(t)
                add(1)

        go(200000, drive)
    """)
    assert texts(r)[0] == _WAITING
    assert 30000 in delays(r)
    assert "OSError: no CONNACK within 10000 ms" in [what for _, what in failures(r)]
    assert r["reconnects"] == 1
    assert r["connected"] is True
    assert sent(r, "ping")
    assert r["delivered"] == 20  # sessions ran (and the outbox dropped the oldest)
    assert max_beat_gap(r) <= 500


def test_oversized_messages_are_named_once_per_topic_for_the_first_eight(mpy):
    """Every skip is counted by the client; the log names each topic once, and a flood on ever
    new topics names only the first eight."""
    r = run(mpy, """
        setup(plan())
        for i in range(12):
            for _ in range(3):
                PUB._on_oversized(b"big/%d" % i, 6000)
        go(100)
    """)
    named = [t for t in texts(r) if t.startswith("skipped a message of 6000 bytes on big/")]
    assert [t.split(" on ")[1].split(" ")[0] for t in named] == [f"big/{i}" for i in range(8)]
