"""The MQTT task: connect over TLS, announce, drain the outbox with QoS 1, keep the link alive.

Every network call is either polled from asyncio or bounded by the client's I/O timeout, so the
sampling tasks keep their schedule while the broker is slow, silent, refusing or gone.
Readings leave the outbox only when the broker has acknowledged them (stop-and-wait: one in
flight, so order is kept and a reconnect resends exactly the unacknowledged one).

What the link raises (node.mqtt.LINK_ERRORS) is sorted by kind, each with its own backoff; an
error in a message handler or in `on_connect` is a bug in this node, not a broken link: it is
printed with its traceback and counted, and the session goes on.
"""

import asyncio
import random
import sys
import time

from micropython import const

from node.log import log
from node.mqtt import LINK_ERRORS, MAX_INCOMING_BYTES, CertificateDateError, Refused, TlsError
from node.supervisor import sleep_beating

_POLL_MS = const(20)
_CONNECT_TIMEOUT_MS = const(10000)
_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(60000)
# While nothing accepts the connection (refused, unreachable, DNS, no TLS answer) the backoff
# stops growing at 4 s: such attempts cost the board and the broker next to nothing (no
# handshake maths), and a restarted broker is then found within 4 s rather than up to 60.
_BACKOFF_UNREACHABLE_MAX_MS = const(4000)
# A session must have been answered and have lasted this long before the backoff starts afresh:
# a broker (or something retained on it) that breaks every session soon after CONNACK must not
# make the node reconnect, and flap its status online/offline, once a second.
_STABLE_SESSION_MS = const(30000)
_CLOCK_POLL_MS = const(100)
_PACKETS_PER_PASS = const(4)
# Topics whose oversized messages were logged, each once: at most this many are named.
_OVERSIZED_TOPICS_LOGGED = const(8)


class Ticks:
    """The time source of the publisher's policy (ticks, sleeps): the board's, unless a test
    drives its own. Not node.sntp.Clock, which is the wall clock."""

    ticks_ms = staticmethod(time.ticks_ms)
    sleep_ms = staticmethod(asyncio.sleep_ms)


async def connect(client, beat, clock=Ticks):
    """Open TCP and TLS, send CONNECT and read the CONNACK: the one connect sequence (the
    publisher's, and safe mode's announcement). Raises what the link raises."""
    await client.open(_CONNECT_TIMEOUT_MS)
    beat()
    start = clock.ticks_ms()
    while not client.readable():
        if time.ticks_diff(clock.ticks_ms(), start) > _CONNECT_TIMEOUT_MS:
            raise OSError("no CONNACK within %d ms" % _CONNECT_TIMEOUT_MS)
        beat()
        await clock.sleep_ms(_POLL_MS)
    client.read_connack()


class Publisher:
    """`link(beat)` returns once the network is up; `clock_set()` tells whether the board's
    clock can date a certificate (no TLS attempt before it can)."""

    def __init__(self, client, outbox, topics, keepalive_s, beat, link, clock_set,
                 clock=Ticks):
        self._client = client
        self._handlers = {}  # subscribed topic (bytes) -> handler(msg, retained)
        self.on_connect = _nothing  # called after each connect, once "online" is out
        self._link = link
        self._clock_set = clock_set
        self._clock = clock
        self._outbox = outbox
        self._topics = topics
        self._keepalive_ms = keepalive_s * 1000
        self._beat = beat  # the supervisor's heartbeat for this task
        self._answered_ms = None  # when this session first got a well-formed packet back
        self._unacked_subs = []  # packet ids of SUBSCRIBEs not yet acknowledged
        self.connected = False
        self.refused = False  # the broker (TLS or CONNACK) turned the last attempt away
        self.reconnects = 0
        self.handler_errors = 0
        self.connect_ms = None  # how long the last successful connect took
        self.last_error = None
        self._oversized_topics = []
        client.set_last_will(topics.status.encode(), b"offline", retain=True, qos=1)
        client.set_callback(self._on_message)
        client.on_oversized = self._on_oversized

    @property
    def oversized(self):
        """Incoming messages too large to take, skipped (acknowledged, the session kept)."""
        return self._client.oversized

    def subscribe(self, topic, handler):
        """Subscribe to `topic` (exact, no wildcards) on every connect; handler(msg, retained)
        per message."""
        self._handlers[topic.encode()] = handler

    def _on_message(self, topic, msg, retained):
        handler = self._handlers.get(topic)
        if handler is None:
            # Not subscribed: a broker that sends anyway is noted, not obeyed.
            log("mqtt", "ignored a message on %s (%d bytes)" % (_topic_name(topic), len(msg)))
            return
        self._guard(topic, handler, msg, retained)

    def _on_oversized(self, topic, size):
        # Counted always (client.oversized); named once per topic, for the first few topics,
        # so a flood of large messages on ever new topics cannot flood the log either.
        seen = self._oversized_topics
        if topic in seen or len(seen) >= _OVERSIZED_TOPICS_LOGGED:
            return
        seen.append(topic)
        log("mqtt", "skipped a message of %d bytes on %s (limit %d): too large to take; "
            "logged once per topic" % (size, _topic_name(topic) or "(a topic over 256 bytes)",
                                       MAX_INCOMING_BYTES))

    def _guard(self, topic, fn, *args):
        """fn(*args), a message handler (for `topic`) or on_connect (topic None)."""
        try:
            fn(*args)
        except LINK_ERRORS:
            raise  # the handler's own publish found the link broken: reconnect
        except Exception as e:  # noqa: BLE001 - a bug here must not look like a broken link
            self.handler_errors += 1
            what = "on_connect" if topic is None else "handler for " + _topic_name(topic)
            log("mqtt", "%s failed (a bug; the link stays up): %r" % (what, e))
            sys.print_exception(e)

    async def run(self):
        clock = self._clock
        backoff_ms = _BACKOFF_MIN_MS
        while True:
            self._answered_ms = None
            try:
                await self._connect()
                await self._session()
            except LINK_ERRORS as e:
                # open() sets the client's socket only once TCP and TLS are up.
                reached = self._client.sock is not None
                self._client.close()
                if self.connected:
                    self.reconnects += 1
                self.connected = False
                self.refused = isinstance(e, Refused) or (
                    isinstance(e, TlsError) and not isinstance(e, CertificateDateError))
                self.last_error = _describe(e)
                answered = self._answered_ms
                if answered is not None and time.ticks_diff(
                        clock.ticks_ms(), answered) >= _STABLE_SESSION_MS:
                    backoff_ms = _BACKOFF_MIN_MS  # a healthy session: start afresh
                elif not (reached or isinstance(e, TlsError)) or isinstance(
                        e, CertificateDateError):
                    # Nothing answered, or only the clock is wrong: neither is helped by waiting.
                    backoff_ms = min(backoff_ms, _BACKOFF_UNREACHABLE_MAX_MS)
                # Equal jitter (half fixed, half random): nodes that lost the broker together
                # do not return in step, and none retries sooner than half the backoff.
                delay_ms = backoff_ms // 2 + random.getrandbits(16) * backoff_ms // 131072
                log("mqtt", "%s; retrying in %d ms" % (self.last_error, delay_ms))
                backoff_ms = min(backoff_ms * 2, _BACKOFF_MAX_MS)
                await sleep_beating(delay_ms, self._beat, clock.sleep_ms)

    async def _wait_for_clock(self):
        if self._clock_set():
            return
        log("mqtt", "waiting for the clock (NTP) before TLS: the broker's certificate cannot"
            " be checked against a clock that reads 2000")
        while not self._clock_set():
            self._beat()
            await self._clock.sleep_ms(_CLOCK_POLL_MS)
        log("mqtt", "clock set: connecting")

    async def _connect(self):
        client = self._client
        await self._link(self._beat)
        await self._wait_for_clock()
        log("mqtt", "connecting to %s:%d" % (client.server, client.port))
        start = self._clock.ticks_ms()
        await connect(client, self._beat, self._clock)
        # TCP, TLS (on the ESP32 about 1 s of CPU in one blocking call) and CONNACK.
        self.connect_ms = time.ticks_diff(self._clock.ticks_ms(), start)
        client.publish(self._topics.status.encode(), b"online", retain=True)
        self.connected = True
        self.refused = False
        self._unacked_subs = [client.send_subscribe(topic) for topic in self._handlers]
        log("mqtt", "connected; %d readings waiting" % len(self._outbox))
        self._guard(None, self.on_connect)

    async def _session(self):
        client = self._client
        outbox = self._outbox
        ticks_ms = self._clock.ticks_ms
        half_keepalive_ms = self._keepalive_ms // 2
        in_flight = 0  # seq of the reading awaiting its PUBACK, 0 for none
        in_flight_pid = 0
        sent_ms = last_tx_ms = last_rx_ms = ticks_ms()
        ping_ms = None  # when the outstanding PINGREQ was sent
        while True:
            self._beat()
            now = ticks_ms()
            # A bounded number of packets per pass: a flood from the broker (a thousand
            # commands) must not hold the loop; the rest wait for the next pass, at once.
            backlog = False
            for _ in range(_PACKETS_PER_PASS):
                backlog = client.readable()
                if not backlog:
                    break
                if client.check_msg() is not None and self._answered_ms is None:
                    self._answered_ms = now  # a well-formed packet: the broker is healthy
                last_rx_ms = now = ticks_ms()
                ping_ms = None  # any packet proves the broker is alive
            if in_flight:
                if in_flight_pid in client.acked:
                    outbox.pop(in_flight)
                    in_flight = 0
                elif time.ticks_diff(now, sent_ms) > half_keepalive_ms:
                    raise OSError("no PUBACK for seq %d within %d ms" % (in_flight,
                                                                        half_keepalive_ms))
            if client.subacked and self._unacked_subs:
                for pid in client.subacked:
                    if pid in self._unacked_subs:
                        self._unacked_subs.remove(pid)
                if not self._unacked_subs:
                    log("mqtt", "subscribed to %s" % b", ".join(self._handlers).decode())
            client.acked.clear()
            client.subacked.clear()
            item = None if in_flight else outbox.send_next()
            if item is not None:
                # dup: sent before (a reconnect since, or a reset before it left the journal).
                in_flight, topic, body, dup = item
                in_flight_pid = client.publish_qos1(topic, body, dup=dup)
                sent_ms = last_tx_ms = now
                continue  # the next reading goes as soon as this one is acknowledged
            if ping_ms is not None:
                if time.ticks_diff(now, ping_ms) > half_keepalive_ms:
                    raise OSError("no PINGRESP within %d ms: broker silent" % half_keepalive_ms)
            elif (time.ticks_diff(now, last_tx_ms) >= half_keepalive_ms
                  or time.ticks_diff(now, last_rx_ms) >= half_keepalive_ms):
                client.ping()
                ping_ms = last_tx_ms = now
            await self._clock.sleep_ms(0 if backlog else _POLL_MS)

    def publish_now(self, topic, body, retain=False):
        """Best-effort QoS 0 (telemetry): dropped when offline, never queued ahead of readings."""
        if not self.connected:
            return False
        try:
            self._client.publish(topic, body, retain=retain)
        except LINK_ERRORS as e:
            # The session loop sees the broken link on its next read and reconnects.
            log("mqtt", "not sent on %s: %s" % (topic.decode(), _describe(e)))
            return False
        return True


def _nothing():
    pass


def _topic_name(topic):
    """A topic from the broker as text for the log: whatever a peer sends must not raise."""
    try:
        return topic.decode()
    except UnicodeError:
        return "(a topic that is not UTF-8)"


def _describe(e):
    text = str(e).strip()
    if isinstance(e, CertificateDateError):
        return ("clock problem: the broker's certificate is not valid yet by this board's clock"
                " (%s)" % text)
    if isinstance(e, TlsError):
        return "TLS refused: " + (text or "handshake failed")
    if isinstance(e, Refused):
        return text  # "broker refused CONNECT: <reason> (return code N)"
    name = type(e).__name__
    return "%s: %s" % (name, text) if text else name
