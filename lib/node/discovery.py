"""Home Assistant MQTT discovery: the retained config messages that make the node's sensors
appear in Home Assistant as one device, without any YAML there. Pure: CPython and MicroPython.
"""

import json

# One row per sensor, its fields split by "|": object id, name, state topic (a Topics
# attribute), field of that topic's JSON, device_class, unit, state_class, diagnostic ("d"),
# what it needs ("dba": a calibrated microphone, "event": noise events on); empty: none. One
# string, not a table of tuples: this module is loaded at every connect, and 12 rows of 9
# strings cost the heap 1.6 KB more. HA accepts only certain units per device class
# (sound_pressure: dB or dBA), so the dBFS level has no device class and the C- and Z-weighted
# ones read dB. Uptime is total_increasing, as ESPHome's: a reboot is a meter reset, so HA's
# sum is the total uptime. An event comes when it comes: no expire_after; its other fields as
# attributes.
_SENSORS = (
    "temperature|Temperature|climate|temperature|temperature|°C|measurement||\n"
    "humidity|Humidity|climate|humidity|humidity|%|measurement||\n"
    "sound_rms|Sound RMS|sound|rms_dbfs||dBFS|measurement||\n"
    "sound_laeq|Sound LAeq|sound|laeq_dba|sound_pressure|dBA|measurement||dba\n"
    "sound_la10|Sound LA10|sound|la10_dba|sound_pressure|dBA|measurement||dba\n"
    "sound_la50|Sound LA50|sound|la50_dba|sound_pressure|dBA|measurement||dba\n"
    "sound_la90|Sound LA90|sound|la90_dba|sound_pressure|dBA|measurement||dba\n"
    "sound_lceq|Sound LCeq|sound|lceq_dbc|sound_pressure|dB|measurement||dba\n"
    "sound_lzeq|Sound LZeq|sound|lzeq_dbz|sound_pressure|dB|measurement||dba\n"
    "noise_event|Noise event|event|lafmax_dba|sound_pressure|dBA|measurement||event\n"
    "rssi|Wi-Fi signal|telemetry|rssi|signal_strength|dBm|measurement|d|\n"
    "uptime|Uptime|telemetry|uptime_s|duration|s|total_increasing|d|\n"
)


def _rows():
    """The rows of _SENSORS split into their fields, one at a time."""
    at = 0
    while at < len(_SENSORS):
        end = _SENSORS.index("\n", at)
        yield _SENSORS[at:end].split("|")
        at = end + 1


def messages(discovery_prefix, node_id, topics, version, model, manufacturer, dba,
             climate_expire_s, sound_expire_s, telemetry_expire_s, events=False):
    """Yield (topic, payload bytes) for every sensor, each to be published retained.

    One message at a time: only one payload (~0.55 KB) and its dict are on the heap. A sensor
    whose reading the node does not give (dB SPL levels without `dba`, the event sensor without
    `events`) gets an empty payload: that deletes a config retained while it did (HA removes the
    entity), and costs nothing when there is none, so the node needs no memory of what it
    announced before.
    """
    device = {
        "identifiers": [node_id],
        "name": node_id,
        "model": model,
        "manufacturer": manufacturer,
        "sw_version": version,
    }
    expire_s = {"climate": climate_expire_s, "sound": sound_expire_s,
                "telemetry": telemetry_expire_s}
    base = discovery_prefix + "/sensor/" + node_id + "/"
    given = {"": True, "dba": dba, "event": dba and events}
    for row in _rows():
        object_id, name, kind, field, device_class, unit, state_class, diagnostic, needs = row
        topic = base + object_id + "/config"
        if not given[needs]:
            yield topic, b""
            continue
        unique_id = node_id + "_" + object_id
        config = {
            "name": name,
            "unique_id": unique_id,
            # HA 2025.10 replaced "object_id" with this (object_id stops working in 2026.4);
            # older versions ignore it and derive the entity id from device and entity names.
            "default_entity_id": "sensor." + unique_id,
            "state_topic": getattr(topics, kind),
            "value_template": "{{ value_json.%s }}" % field,
            "unit_of_measurement": unit,
            "state_class": state_class,
            "availability_topic": topics.status,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
        }
        if kind in expire_s:
            config["expire_after"] = expire_s[kind]
        else:
            config["json_attributes_topic"] = getattr(topics, kind)
        if device_class:
            config["device_class"] = device_class
        if diagnostic:
            config["entity_category"] = "diagnostic"
        yield topic, json.dumps(config, separators=(",", ":")).encode()
