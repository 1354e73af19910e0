"""Home Assistant MQTT discovery: the retained config messages that make the node's sensors
appear in Home Assistant as one device, without any YAML there. Pure: CPython and MicroPython.
"""

import json

# One row per sensor: (object id, name, state topic (a Topics attribute), field of that topic's
# JSON, device_class, unit, state_class, diagnostic). HA accepts only certain units per device
# class (sound_pressure: dB or dBA), so the dBFS level has no device class. Uptime is
# total_increasing, as ESPHome's: a reboot is a meter reset, so HA's sum is the total uptime.
_SENSORS = (
    ("temperature", "Temperature", "climate", "temperature", "temperature", "°C", "measurement",
     False),
    ("humidity", "Humidity", "climate", "humidity", "humidity", "%", "measurement", False),
    ("sound_rms", "Sound RMS", "sound", "rms_dbfs", None, "dBFS", "measurement", False),
    ("sound_laeq", "Sound LAeq", "sound", "laeq_dba", "sound_pressure", "dBA", "measurement",
     False),
    ("rssi", "Wi-Fi signal", "telemetry", "rssi", "signal_strength", "dBm", "measurement", True),
    ("uptime", "Uptime", "telemetry", "uptime_s", "duration", "s", "total_increasing", True),
)
_DBA_OBJECT_ID = "sound_laeq"


def messages(discovery_prefix, node_id, topics, version, model, manufacturer, dba,
             climate_expire_s, sound_expire_s, telemetry_expire_s):
    """Yield (topic, payload bytes) for every sensor, each to be published retained.

    One message at a time: only one payload (~0.55 KB) and its dict are on the heap. The dB(A)
    sensor's topic gets an empty payload when `dba` is False: that deletes a config retained
    while the microphone was calibrated (HA removes the entity), and costs nothing when there
    is none, so the node needs no memory of what it announced before.
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
    for object_id, name, kind, field, device_class, unit, state_class, diagnostic in _SENSORS:
        topic = base + object_id + "/config"
        if object_id == _DBA_OBJECT_ID and not dba:
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
            "expire_after": expire_s[kind],
            "availability_topic": topics.status,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
        }
        if device_class is not None:
            config["device_class"] = device_class
        if diagnostic:
            config["entity_category"] = "diagnostic"
        yield topic, json.dumps(config, separators=(",", ":")).encode()
