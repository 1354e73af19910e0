"""The telemetry task: every `telemetry_interval_s`, the node's health on its telemetry topic."""

import asyncio
import gc

from node import VERSION, payload
from node.log import log, uptime_ms

_HEAP_SAMPLE_S = 5


class Telemetry:
    """Collects what the other parts count; publishes it best effort (QoS 0, never queued).

    `node` is the running app (node.wiring.Node): its config in force, outbox, tasks, Wi-Fi, clock
    and lag probe are read at each message, so this module keeps no counter but the heap
    minimum: each count has one owner, the part that counts it.
    """

    def __init__(self, node):
        self._node = node
        self._topic = node.topics.telemetry.encode()
        gc.collect()
        self.heap_min_free = gc.mem_free()

    def _sample_heap(self):
        gc.collect()  # free after a collection: what the app could still get
        heap = gc.mem_free()
        self.heap_min_free = min(self.heap_min_free, heap)
        return heap

    def pairs(self):
        """The message's (key, value) pairs, in the contract's order."""
        node = self._node
        heap = self._sample_heap()
        outbox = node.outbox
        publisher = node.publisher
        spill = node.spill
        lag = node.lag.summary()
        log("telemetry", "taken %d delivered %d queued %d dropped %d heap %d lag %s"
            % (outbox.taken, outbox.delivered, len(outbox), outbox.dropped, heap, lag))
        return (
            ("boot", node.boot),
            ("ts", node.clock.now()),
            ("uptime_s", uptime_ms() // 1000),
            ("version", VERSION),
            ("heap_free", heap),
            ("heap_min_free", self.heap_min_free),
            ("rssi", node.wifi.rssi()),
            ("reset_cause", node.cause),
            ("wifi_reconnects", node.wifi.reconnects),
            ("mqtt_reconnects", publisher.reconnects),
            ("readings_taken", outbox.taken),
            ("readings_delivered", outbox.delivered),
            ("readings_queued", len(outbox)),
            ("dropped", outbox.dropped),
            ("journaled", spill.journaled),
            ("replayed", spill.replayed),
            ("journal_dropped", spill.dropped),
            ("journal_skipped", spill.skipped),
            ("sensor_errors", node.climate.errors),
            ("audio_frames", node.sound.frames),
            ("audio_frames_missed", node.sound.frames_missed),
            ("ntp_syncs", node.clock.syncs),
            ("connect_ms", publisher.connect_ms),
            # Why the link last failed (the broker refused the client certificate, ...): a node
            # that got back in says what kept it out. null when nothing failed since boot.
            ("last_link_failure", publisher.last_error),
            ("handler_errors", publisher.handler_errors),
            ("oversized_skipped", publisher.oversized),
            ("commands_dropped", node.command_rate.dropped),
            ("loop_lag", lag),
        )

    async def run(self):
        node = self._node
        waited_s = 0
        while True:
            # The minimum is sampled between messages too: a peak (an outage's outbox, a
            # reconnect) that is over by the next message still counts.
            await asyncio.sleep(_HEAP_SAMPLE_S)
            waited_s += _HEAP_SAMPLE_S
            if waited_s < node.cfg["telemetry_interval_s"]:
                self._sample_heap()
                continue
            waited_s = 0
            try:
                body = payload.telemetry(self.pairs())
            except MemoryError as e:
                # Best effort: a message is skipped, never the task (the watchdog would reset
                # the board and lose every reading in RAM over a heap too full for a moment).
                log("telemetry", "no room in RAM for the message (%s): skipped" % e)
                continue
            node.publisher.publish_now(self._topic, body)
