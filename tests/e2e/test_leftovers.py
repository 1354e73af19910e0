"""What others leave on the broker cannot stop the node: oversized and retained messages, and a
flood of commands (issue: "What others leave on the broker").

Each scenario prints its figures; timings are reported, never asserted.
"""

import json
import re
import time

from tests.e2e.infra import (  # noqa: F401  (fixtures are found by pytest in this namespace)
    CONNECT_TIMEOUT_S,
    assert_no_seq_gap,
    broker,
    broker_factory,
    certs,
    data_payloads,
    node_factory,
    subscriber_factory,
    wait_until,
)

SUBSCRIBED_RX = r"\bmqtt: subscribed to "
_BIG_BYTES = 6000


def _rx(topic):
    return "^" + re.escape(topic) + "$"


def _telemetry(sub, node, since=0):
    return [m.json() for m in sub.select(_rx(node.topics.telemetry), since)]


def test_oversized_retained_messages_are_skipped_and_readings_flow(broker, subscriber_factory,
                                                                   node_factory):
    """6 KB retained on cmd and on homeassistant/status before the node boots: skipped once
    each, no reconnect, every reading delivered in order."""
    sub = subscriber_factory(broker, "#")
    sub.publish("nodes/test-node/cmd", b"x" * _BIG_BYTES, retain=True)
    sub.publish("homeassistant/status", b"y" * _BIG_BYTES, retain=True)
    node = node_factory(broker)
    node.wait_for_line(SUBSCRIBED_RX, CONNECT_TIMEOUT_S)
    # Two telemetry intervals (TEST_CONFIG: 5 s) of readings after the oversized ones came.
    mark = sub.mark()
    sub.wait_for(_rx(node.topics.telemetry), timeout=15, since=mark, count=2)
    text = node.text()
    skipped = [line for line in text.splitlines() if "skipped a message of" in line]
    assert len(skipped) == 2, skipped  # one log line per topic
    assert any("on nodes/test-node/cmd" in line for line in skipped)
    assert any("on homeassistant/status" in line for line in skipped)
    assert "retrying in" not in text, "an oversized message cost a reconnect"
    last = _telemetry(sub, node)[-1]
    assert last["oversized_skipped"] == 2 and last["mqtt_reconnects"] == 0, last
    statuses = [m.text for m in sub.select(_rx(node.topics.status))]
    assert statuses.count("online") == 1, statuses  # the status did not flap
    payloads = data_payloads(sub, node.topics)
    assert_no_seq_gap(payloads)
    seqs = [p["seq"] for p in payloads]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), seqs  # in order, no resends
    print(f"\noversized retained: {len(seqs)} readings delivered in order, "
          f"{last['oversized_skipped']} skipped, 0 reconnects, status online once")


def test_a_retained_reboot_is_not_obeyed_and_is_cleared(broker, subscriber_factory,
                                                        node_factory):
    sub = subscriber_factory(broker, "#")
    sub.publish("nodes/test-node/cmd", json.dumps({"cmd": "reboot"}), retain=True)
    node = node_factory(broker, reboot=True)
    node.wait_for_line(SUBSCRIBED_RX, CONNECT_TIMEOUT_S)
    reply = sub.wait_for(_rx(node.topics.reply), timeout=10).json()
    assert reply["ok"] is False and "ignored a retained command" in reply["error"], reply
    node.wait_for_line(r"commands: ignored a retained command", 5)
    # Readings flow in the one boot: no reboot came of it.
    sub.wait_for(_rx(node.topics.climate), timeout=10, count=5)
    assert "rebooting by command" not in node.text()
    assert {p["boot"] for p in data_payloads(sub, node.topics)} == {1}
    assert len(sub.select(_rx(node.topics.reply))) == 1  # one reply per boot
    # The broker let the node clear it: a new subscriber gets no retained command.
    late = subscriber_factory(broker, "nodes/test-node/cmd")
    time.sleep(1.5)
    left = [m for m in late.select(".*") if m.retain and m.payload]
    assert left == [], left
    print("\nretained reboot: 1 boot, 1 reply, cleared on the broker")


def test_a_flood_of_commands_is_bounded(broker, subscriber_factory, node_factory):
    """1000 commands within about a second: a few are carried out, the rest dropped and
    counted; the sampling tasks keep their schedule."""
    sub = subscriber_factory(broker, "#")
    node = node_factory(broker)
    node.wait_for_line(SUBSCRIBED_RX, CONNECT_TIMEOUT_S)
    sub.wait_for(_rx(node.topics.telemetry), timeout=15)
    rate = node.cfg.get("commands_per_s", 5)
    mark = sub.mark()
    t0 = time.monotonic()
    for i in range(1000):
        sub.client.publish(node.topics.cmd, json.dumps({"cmd": "nope", "id": i}), qos=0)
    sent_s = time.monotonic() - t0
    # The second telemetry after the flood comes when it has long settled: its count is final.
    last = sub.wait_for(_rx(node.topics.telemetry), timeout=15, since=mark, count=2).json()
    handled = len(sub.select(_rx(node.topics.reply), mark))
    dropped = last["commands_dropped"]
    assert handled + dropped == 1000, (handled, dropped)
    assert handled <= rate * 4 + rate * (sent_s + 2), handled  # the burst, then the rate
    assert node.running() and "task died" not in node.text()
    payloads = data_payloads(sub, node.topics)
    assert_no_seq_gap(payloads)
    # How late readings arrived around the flood: receive time minus their ts.
    flood = sub.select(r"/(climate|sound)$", mark)
    delays = [m.wall - m.json()["ts"] for m in flood]
    lags = [t["loop_lag"]["max_ms"] for t in _telemetry(sub, node, mark)]
    print(f"\ncommand flood: 1000 sent in {sent_s:.2f} s; {handled} handled, {dropped} dropped "
          f"(rate {rate}/s); loop lag max per telemetry interval {lags} ms; readings after the "
          f"flood arrived {min(delays):.1f}..{max(delays):.1f} s after their ts")
