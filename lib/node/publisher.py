"""The MQTT task: connect over TLS, announce, drain the outbox with QoS 1, keep the link alive.

Every network call is either polled from asyncio or bounded by the client's I/O timeout, so the
sampling tasks keep their schedule while the broker is slow, silent, refusing or gone.
Readings leave the outbox only when the broker has acknowledged them (stop-and-wait: one in
flight, so order is kept and a reconnect resends exactly the unacknowledged one).
"""

import asyncio
import random
import time

from micropython import const

from node.log import log
from node.mqtt import MQTTException
from node.supervisor import sleep_beating

_POLL_MS = const(20)
_CONNECT_TIMEOUT_MS = const(10000)
_BACKOFF_MIN_MS = const(1000)
_BACKOFF_MAX_MS = const(60000)
# While nothing accepts the connection (refused, unreachable, DNS, no TLS answer) the backoff
# stops growing at 4 s: such attempts cost the board and the broker next to nothing (no
# handshake maths), and a restarted broker is then found within 4 s rather than up to 60.
_BACKOFF_UNREACHABLE_MAX_MS = const(4000)

# What a broken link, a refusing broker or a bad peer raises: retried with backoff. The TLS
# layer reports certificate and host-name failures as ValueError; umqtt uses assert on some
# malformed packets.
TRANSIENT = (OSError, ValueError, MQTTException, AssertionError, IndexError)


class Publisher:
    def __init__(self, client, outbox, topics, keepalive_s, beat, link):
        self._client = client
        self._handlers = {}  # subscribed topic (bytes) -> handler(msg)
        self.on_connect = _nothing  # called after each connect, once "online" is out
        self._link = link  # async: returns once the network is up
        self._outbox = outbox
        self._topics = topics
        self._keepalive_ms = keepalive_s * 1000
        self._beat = beat  # the supervisor's heartbeat for this task
        self._last_sent_seq = 0  # a reading sent before a reconnect goes again marked DUP
        self._reached = False  # this attempt got a TLS session up
        self._answered = False  # this session got a well-formed packet back
        self._unacked_subs = []  # packet ids of SUBSCRIBEs not yet acknowledged
        self.connected = False
        self.refused = False  # the broker (TLS or CONNACK) turned the last attempt away
        self.reconnects = 0
        self.last_error = None
        client.set_last_will(topics.status.encode(), b"offline", retain=True, qos=1)
        client.set_callback(self._on_message)

    def subscribe(self, topic, handler):
        """Subscribe to `topic` (exact, no wildcards) on every connect; handler(msg) per message."""
        self._handlers[topic.encode()] = handler

    def _on_message(self, topic, msg):
        handler = self._handlers.get(topic)
        if handler is None:
            # Not subscribed: a broker that sends anyway is noted, not obeyed.
            log("mqtt", "ignored a message on %s (%d bytes)" % (topic, len(msg)))
            return
        handler(msg)

    async def run(self):
        backoff_ms = _BACKOFF_MIN_MS
        while True:
            self._answered = self._reached = False
            try:
                await self._connect()
                await self._session()
            except TRANSIENT as e:
                self._client.close()
                if self.connected:
                    self.reconnects += 1
                self.connected = False
                self.refused = isinstance(e, ValueError) or type(e) is MQTTException
                self.last_error = _describe(e)
                if self._answered:  # the last session was healthy: start the backoff afresh
                    backoff_ms = _BACKOFF_MIN_MS
                elif not (self._reached or isinstance(e, ValueError)):  # TLS refusal: slow down
                    backoff_ms = min(backoff_ms, _BACKOFF_UNREACHABLE_MAX_MS)
                # Full jitter: nodes that lost the broker together do not return in step.
                delay_ms = backoff_ms // 2 + random.getrandbits(16) * backoff_ms // 131072
                log("mqtt", "%s; retrying in %d ms" % (self.last_error, delay_ms))
                backoff_ms = min(backoff_ms * 2, _BACKOFF_MAX_MS)
                await sleep_beating(delay_ms, self._beat)

    async def _connect(self):
        client = self._client
        await self._link(self._beat)
        log("mqtt", "connecting to %s:%d" % (client.server, client.port))
        await client.open(_CONNECT_TIMEOUT_MS)  # TCP, TLS and CONNECT
        self._reached = True  # TLS is up: failures from here on are the broker's or ours
        self._beat()
        start = time.ticks_ms()
        while not client.readable():
            if time.ticks_diff(time.ticks_ms(), start) > _CONNECT_TIMEOUT_MS:
                raise OSError("no CONNACK within %d ms" % _CONNECT_TIMEOUT_MS)
            self._beat()
            await asyncio.sleep_ms(_POLL_MS)
        client.read_connack()
        client.publish(self._topics.status.encode(), b"online", retain=True)
        self.connected = True
        self._unacked_subs = [client.send_subscribe(topic) for topic in self._handlers]
        log("mqtt", "connected; %d readings waiting" % len(self._outbox))
        self.on_connect()

    async def _session(self):
        client = self._client
        outbox = self._outbox
        half_keepalive_ms = self._keepalive_ms // 2
        in_flight = 0  # seq of the reading awaiting its PUBACK, 0 for none
        in_flight_pid = 0
        sent_ms = last_tx_ms = last_rx_ms = time.ticks_ms()
        ping_ms = None  # when the outstanding PINGREQ was sent
        while True:
            self._beat()
            now = time.ticks_ms()
            while client.readable():
                if client.check_msg() is not None:
                    self._answered = True  # a well-formed packet: the broker is healthy
                last_rx_ms = now = time.ticks_ms()
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
            if not in_flight and len(outbox):
                in_flight, topic, body = outbox.peek()
                dup = in_flight == self._last_sent_seq
                in_flight_pid = client.publish_qos1(topic, body, dup=dup)
                self._last_sent_seq = in_flight
                sent_ms = last_tx_ms = now
                continue  # the next reading goes as soon as this one is acknowledged
            if ping_ms is not None:
                if time.ticks_diff(now, ping_ms) > half_keepalive_ms:
                    raise OSError("no PINGRESP within %d ms: broker silent" % half_keepalive_ms)
            elif (time.ticks_diff(now, last_tx_ms) >= half_keepalive_ms
                  or time.ticks_diff(now, last_rx_ms) >= half_keepalive_ms):
                client.ping()
                ping_ms = last_tx_ms = now
            await asyncio.sleep_ms(_POLL_MS)

    def publish_now(self, topic, body, retain=False):
        """Best-effort QoS 0 (telemetry): dropped when offline, never queued ahead of readings."""
        if not self.connected:
            return False
        try:
            self._client.publish(topic, body, retain=retain)
        except TRANSIENT as e:
            # The session loop sees the broken link on its next read and reconnects.
            log("mqtt", "telemetry not sent: %s" % _describe(e))
            return False
        return True


def _nothing():
    pass


def _describe(e):
    text = str(e).strip()
    name = type(e).__name__
    if name == "ValueError":
        return "TLS refused: " + (text or "handshake failed")
    if isinstance(e, MQTTException) and text.isdigit():
        return "broker refused CONNECT (return code %s)" % text
    return "%s: %s" % (name, text) if text else name
