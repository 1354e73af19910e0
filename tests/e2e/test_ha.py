"""Where users live: Home Assistant discovery and remote commands, end to end.

The real main.py on the simulated board against Mosquitto over TLS; a subscriber plays Home
Assistant (it checks every discovery message against HA's rules, and says `online` on
homeassistant/status) and the user sending commands on <prefix>/<node>/cmd.
"""

import json
import re
import time

import pytest

from tests.e2e.infra import (  # noqa: F401  (fixtures are found by pytest in this namespace)
    CONNECT_TIMEOUT_S,
    CONNECTED_RX,
    assert_no_seq_gap,
    broker,
    broker_factory,
    certs,
    data_payloads,
    node_factory,
    subscribe,
    subscriber_factory,
)

ID_RX = r"[a-zA-Z0-9_-]+"
CONFIG_TOPIC_RX = rf"^homeassistant/sensor/({ID_RX})/({ID_RX})/config$"
# Home Assistant's units per sensor device class (developers.home-assistant.io, SensorDeviceClass).
UNITS = {"temperature": {"°C", "°F", "K"}, "humidity": {"%"}, "signal_strength": {"dB", "dBm"},
         "duration": {"d", "h", "min", "s", "ms"}, "sound_pressure": {"dB", "dBA"}}
STATE_CLASSES = {"measurement", "total", "total_increasing"}
TEMPLATE_RX = re.compile(r"^\{\{ *value_json\.([a-z0-9_]+) *\}\}$")
# mic_sensitivity_dbfs set: the node also reports dB(A), and announces it.
# The node's subscriptions (cmd, homeassistant/status) are in place: commands reach it.
SUBSCRIBED_RX = r"\bmqtt: subscribed to "
HA_CONFIG = {"audio": {"publish_interval_s": 2, "mic_sensitivity_dbfs": -26},
             "commands_per_s": 100}


def _rx(topic):
    return "^" + re.escape(topic) + "$"


def _reply(sub, node, since, **where):
    """The first reply after `since` whose fields include `where` (e.g. id=...)."""
    msg = sub.wait_for(_rx(node.topics.reply), timeout=10, since=since,
                       where=lambda m: all(m.json().get(k) == v for k, v in where.items()))
    return msg.json()


@pytest.fixture
def ha_node(broker, subscriber_factory, node_factory):
    sub = subscriber_factory(broker, "#")
    node = node_factory(broker, config=HA_CONFIG)
    node.wait_for_line(SUBSCRIBED_RX, CONNECT_TIMEOUT_S)
    sub.wait_for(CONFIG_TOPIC_RX, timeout=10, count=6)
    return node, sub


def check_discovery(messages, node, payload_by_topic):
    """Every config message by HA's rules; returns {object_id: config}."""
    seen = {}
    for m in messages:
        match = re.match(CONFIG_TOPIC_RX, m.topic)
        assert match, f"discovery topic {m.topic!r} breaks HA's pattern"
        node_id, object_id = match.groups()
        assert node_id == node.cfg["node_id"]
        assert m.retain, f"{m.topic} is not retained: HA would forget it on restart"
        c = m.json()
        for key in ("name", "unique_id", "state_topic", "value_template", "availability_topic",
                    "device", "expire_after"):
            assert key in c, f"{object_id}: no {key}"
        assert re.fullmatch(ID_RX, c["unique_id"]), c["unique_id"]
        assert c["availability_topic"] == node.topics.status
        assert c.get("payload_available", "online") == "online"
        assert c.get("payload_not_available", "offline") == "offline"
        device = c["device"]
        assert node.cfg["node_id"] in device["identifiers"]
        for key in ("name", "model", "sw_version"):
            assert device.get(key), f"{object_id}: device has no {key}"
        dc, unit = c.get("device_class"), c.get("unit_of_measurement")
        if dc is not None:
            assert unit in UNITS[dc], f"{object_id}: {unit!r} is not a unit of {dc}"
        assert c.get("state_class") in STATE_CLASSES
        assert isinstance(c["expire_after"], int) and c["expire_after"] > 0
        field = TEMPLATE_RX.match(c["value_template"])
        assert field, f"{object_id}: template {c['value_template']!r}"
        sample = payload_by_topic.get(c["state_topic"])
        assert sample is not None, f"{object_id}: nothing arrived on {c['state_topic']}"
        assert field.group(1) in sample, f"{object_id}: {field.group(1)} not in {sample}"
        seen[object_id] = c
    ids = [c["unique_id"] for c in seen.values()]
    assert len(ids) == len(set(ids)), f"unique_id repeated: {ids}"
    return seen


def latest_payloads(sub, node):
    out = {}
    for topic in (node.topics.climate, node.topics.sound, node.topics.telemetry):
        msgs = sub.select(_rx(topic))
        if msgs:
            out[topic] = msgs[-1].json()
    return out


def test_discovery_follows_home_assistant_rules(ha_node, certs, broker):
    node, sub = ha_node
    sub.wait_for(_rx(node.topics.telemetry), timeout=10)
    # Home Assistant subscribing after the node announced: the broker's retained store has
    # every config (a live subscriber sees them with retain=0, as MQTT 3.1.1 says).
    with subscribe(certs, broker, "homeassistant/#") as late:
        late.wait_for(CONFIG_TOPIC_RX, timeout=5, count=6)
        time.sleep(0.5)  # anything more that is retained arrives at once
        announced = late.select(CONFIG_TOPIC_RX)
    configs = check_discovery(announced, node, latest_payloads(sub, node))
    by_field = {TEMPLATE_RX.match(c["value_template"]).group(1): c for c in configs.values()}
    # calibrated, no noise events: the dB SPL levels, and no event sensor
    assert set(by_field) == {"temperature", "humidity", "rms_dbfs", "laeq_dba", "la10_dba",
                             "la50_dba", "la90_dba", "lceq_dbc", "lzeq_dbz", "rssi",
                             "uptime_s"}, sorted(by_field)
    assert by_field["temperature"]["device_class"] == "temperature"
    assert by_field["laeq_dba"]["unit_of_measurement"] == "dBA"
    assert by_field["lceq_dbc"]["unit_of_measurement"] == "dB"
    assert by_field["rms_dbfs"]["unit_of_measurement"] == "dBFS"
    print(f"\ndiscovery: {len(configs)} sensors: {sorted(configs)}")


def test_discovery_is_announced_again_when_home_assistant_comes_online(ha_node):
    _, sub = ha_node
    before = len(sub.select(CONFIG_TOPIC_RX))
    mark = sub.mark()
    sub.publish("homeassistant/status", "online", qos=0)
    sub.wait_for(CONFIG_TOPIC_RX, timeout=10, since=mark, count=before)
    # Anything else on that topic is not a reason to announce.
    mark = sub.mark()
    sub.publish("homeassistant/status", "offline", qos=0)
    time.sleep(1.5)
    assert not sub.select(CONFIG_TOPIC_RX, mark)


def test_discovery_prefix_is_configurable_and_can_be_switched_off(broker, subscriber_factory,
                                                                  node_factory):
    sub = subscriber_factory(broker, "#")
    custom = node_factory(broker, node_id="custom-node", discovery={"prefix": "ha2"})
    off = node_factory(broker, node_id="quiet-node", discovery={"enabled": False})
    for n in (custom, off):
        n.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
    sub.wait_for(r"^ha2/sensor/custom-node/", timeout=10, count=5)
    sub.wait_for(_rx(off.topics.telemetry), timeout=15)  # the quiet node did run and publish
    assert not sub.select(r"^homeassistant/")
    assert not sub.select(r"quiet-node/[^/]+/config$")
    assert "announced" not in off.text()


def test_every_command_and_its_malformed_forms(ha_node):
    node, sub = ha_node
    secrets = json.loads((node.flash / "secrets.json").read_text())
    mark = sub.mark()
    # config: the effective configuration, never a secret
    sub.publish(node.topics.cmd, json.dumps({"cmd": "config", "id": 1}))
    r = _reply(sub, node, mark, id=1)
    assert r["ok"] and r["config"]["dht"]["interval_s"] == 1, r
    text = json.dumps(r)
    for value in secrets.values():
        if value:
            assert value not in text, "a secret leaked into the config reply"
    # set: the sampling interval changes at once and is saved
    sub.publish(node.topics.cmd, json.dumps({"cmd": "set", "id": 2, "dht.interval_s": 3}))
    r = _reply(sub, node, mark, id=2)
    assert r["ok"] and r["settings"] == {"dht.interval_s": 3}, r
    assert json.loads((node.flash / "settings.json").read_text()) == {"dht.interval_s": 3}
    node.wait_for_line(r"dht.interval_s set to 3 by command", 5)
    # identify: the LED blinks (seen in the simulated pin log)
    sub.publish(node.topics.cmd, json.dumps({"cmd": "identify", "id": 3, "seconds": 2}))
    assert _reply(sub, node, mark, id=3)["ok"]
    # malformed forms: each gets an error reply naming the problem, and nothing changes
    bad = [
        (b"not json", "JSON"),
        (b"[1, 2]", "object"),
        (json.dumps({"id": 10}).encode(), "cmd"),
        (json.dumps({"cmd": "format_flash", "id": 11}).encode(), "format_flash"),
        (json.dumps({"cmd": "set", "id": 12, "dht.interval_s": 0}).encode(), "interval_s"),
        (json.dumps({"cmd": "set", "id": 13, "dht.interval_s": True}).encode(), "interval_s"),
        (json.dumps({"cmd": "set", "id": 14, "wifi_password": "x"}).encode(), "wifi_password"),
        (json.dumps({"cmd": "identify", "id": 15, "seconds": 3600}).encode(), "seconds"),
        (json.dumps({"cmd": "reboot", "id": 16, "now": True}).encode(), "now"),
        (b"{" * 600, "512"),
    ]
    for payload, word in bad:
        m2 = sub.mark()
        sub.publish(node.topics.cmd, payload)
        r = sub.wait_for(_rx(node.topics.reply), timeout=10, since=m2).json()
        assert r["ok"] is False and word.lower() in r["error"].lower(), (payload[:40], r)
    assert json.loads((node.flash / "settings.json").read_text()) == {"dht.interval_s": 3}
    assert node.running()
    assert_no_seq_gap(data_payloads(sub, node.topics))


def test_a_setting_survives_a_reboot_by_command(broker, subscriber_factory, node_factory):
    sub = subscriber_factory(broker, "#")
    node = node_factory(broker, reboot=True)
    node.wait_for_line(SUBSCRIBED_RX, CONNECT_TIMEOUT_S)
    sub.wait_for(_rx(node.topics.status), timeout=10, where=lambda m: m.text == "online")
    mark = sub.mark()
    sub.publish(node.topics.cmd, json.dumps({"cmd": "set", "id": "a",
                                             "audio.publish_interval_s": 3}))
    assert _reply(sub, node, mark, id="a")["ok"]
    sub.publish(node.topics.cmd, json.dumps({"cmd": "reboot", "id": "b"}))
    assert _reply(sub, node, mark, id="b")["ok"]
    node.wait_for_line(r"rebooting by command", 10)
    node.wait_for_line(SUBSCRIBED_RX, CONNECT_TIMEOUT_S, count=2)
    assert node.boots == 2
    mark = sub.mark()
    sub.publish(node.topics.cmd, json.dumps({"cmd": "config", "id": "c"}))
    r = _reply(sub, node, mark, id="c")
    assert r["config"]["audio"]["publish_interval_s"] == 3, r
    assert r["settings"] == {"audio.publish_interval_s": 3}
    # Each boot numbers its readings from 1, without a gap.
    sub.wait_for(_rx(node.topics.sound), timeout=10, since=mark)
    report = assert_no_seq_gap(data_payloads(sub, node.topics))
    assert len(report) == 2, report


def test_fuzzed_commands_over_mqtt_never_cost_a_reading(ha_node):
    """A thousand hostile payloads on cmd: a reply to each, the node runs on, no seq gap."""
    import random

    node, sub = ha_node
    rng = random.Random(2026)
    tokens = [b"{", b"}", b"[", b"]", b'"cmd"', b'"set"', b'"reboot"', b":", b",", b"1e999",
              b"-0", b"null", b"true", b'"\\ud800"', b'"dht.interval_s"', b"9" * 40, b'"id"']
    payloads = []
    for i in range(1000):
        kind = i % 4
        if kind == 0:
            payloads.append(bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80))))
        elif kind == 1:
            payloads.append(b"".join(rng.choice(tokens) for _ in range(rng.randrange(1, 30))))
        elif kind == 2:
            value = rng.choice([0, -1, 2**31, 2**63, 1.5, "3", None, [], {}, 10**20])
            payloads.append(json.dumps({"cmd": "set", "dht.interval_s": value}).encode())
        else:
            payloads.append(json.dumps({"cmd": rng.choice(["config", "identify", "nope"]),
                                        "seconds": rng.randrange(-5, 100)}).encode())
    mark = sub.mark()
    t0 = time.monotonic()
    for i, p in enumerate(payloads):
        sub.client.publish(node.topics.cmd, p, qos=0)
        # Within the node's command rate (HA_CONFIG: 100 a second, bursts of 400): every
        # payload is parsed and answered, none dropped as a flood.
        time.sleep(max(0.0, t0 + i / 80 - time.monotonic()))
    replies = sub.wait_for(_rx(node.topics.reply), timeout=60, since=mark, count=len(payloads))
    elapsed = time.monotonic() - t0
    got = [m.json() for m in sub.select(_rx(node.topics.reply), mark)]
    ok = sum(r["ok"] for r in got)
    print(f"\ncmd fuzz over MQTT: {len(payloads)} payloads, {len(got)} replies "
          f"({ok} ok, {len(got) - ok} errors) in {elapsed:.1f} s")
    assert replies and node.running()
    assert "task died" not in node.text()
    sub.wait_for(_rx(node.topics.climate), timeout=10, since=sub.mark())
    assert_no_seq_gap(data_payloads(sub, node.topics))
