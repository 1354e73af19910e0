"""Settings changed by command, kept in flash as settings.json: {"dht.interval_s": 10, ...}: the
intervals (`set`) and the microphone's sensitivity (`set` or `calibrate`).

A flat JSON object of dotted config keys whose values overlay config.json's; node.config.validate()
stays the one judge of what is allowed. Pure apart from the file system: CPython, unix port, board.
"""

import json
import os

from node.log import log

SETTABLE = ("dht.interval_s", "audio.publish_interval_s", "telemetry_interval_s",
            "audio.mic_sensitivity_dbfs")
# The settings that are numbers (with a fraction); the others are integers.
NUMBERS = ("audio.mic_sensitivity_dbfs",)
# errno.ENOENT on every MicroPython port (py/mperrno.h), as on Linux; spares importing errno.
_ENOENT = 2
# Four settings take under 150 bytes: a larger file is damage, and must not exhaust the heap.
_MAX_FILE_BYTES = 512


def _read(name):
    """The file's first bytes (one more than allowed), or None when there is no such file."""
    try:
        with open(name, "rb") as f:
            return f.read(_MAX_FILE_BYTES + 1)
    except OSError as e:
        if e.errno == _ENOENT:
            return None
        raise


def load(path):
    """The persisted settings; {} when there are none. Damage is logged and skipped, not raised."""
    name = path
    try:
        data = _read(name)
        if data is None:
            # On FAT a reset inside save()'s rename leaves only the complete .tmp (see save()).
            name = path + ".tmp"
            data = _read(name)
            if data is None:
                return {}
            log("settings", "%s: missing; using %s left by an interrupted save" % (path, name))
    except OSError as e:
        log("settings", "%s: cannot read it (%s); ignoring it" % (name, e))
        return {}
    if len(data) > _MAX_FILE_BYTES:
        log("settings", "%s: larger than %d bytes; ignoring it" % (name, _MAX_FILE_BYTES))
        return {}
    try:
        raw = json.loads(data.decode())
    except (ValueError, UnicodeError):  # not UTF-8, not JSON
        log("settings", "%s: not valid JSON; ignoring it" % name)
        return {}
    if not isinstance(raw, dict):
        log("settings", "%s: expected an object {...}; ignoring it" % name)
        return {}
    good = {}
    bad = []
    for key, value in raw.items():
        if key not in SETTABLE:
            bad.append("%s (no such setting)" % json.dumps(key))
        elif isinstance(value, bool) or not isinstance(value, (int, float) if key in NUMBERS
                                                       else int):
            bad.append("%s (not %s)" % (key, "a number" if key in NUMBERS else "an integer"))
        else:
            good[key] = value
    if bad:
        log("settings", "%s: ignoring %s; settable: %s" % (name, ", ".join(bad),
                                                           ", ".join(SETTABLE)))
    return good


def save(path, settings):
    """Write the settings so that a reset at any moment leaves the old file or the new one.

    The text goes to path + ".tmp", then os.rename() puts it in place. On littlefs (the ESP32
    port's default file system) MicroPython's rename is lfs_rename(): it replaces an existing file
    in one atomic metadata commit. On FAT, MicroPython's rename removes the old file and then
    renames, so a reset between the two leaves only the complete .tmp, which load() then reads.
    """
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(settings))
    os.rename(tmp, path)


def clear(path):
    """Forget the persisted settings (OSError if the file system refuses)."""
    # The .tmp goes first: with it left alone, load() could bring back what was forgotten.
    for name in (path + ".tmp", path):
        try:
            os.remove(name)
        except OSError as e:
            if e.errno != _ENOENT:
                raise


def overlay(raw_config, settings):
    """A new raw config with each setting at its dotted path; raw_config is left untouched.

    Only the dicts along each path are copied. A section that is not an object is left as it is,
    for config.validate() to report.
    """
    out = dict(raw_config)
    for key, value in settings.items():
        parts = key.split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                break
            child = dict(child)
            node[part] = child
            node = child
        else:
            node[parts[-1]] = value
    return out


def accepted(raw_config, settings):
    """The settings that config.validate() accepts on top of raw_config; the rest logged, dropped.

    A saved setting can go stale when config.json changes (dht.interval_s 1 suits a DHT11, not a
    DHT22). It must not stop the node in safe mode, where no command could fix it. Each setting is
    checked alone: their limits depend on config.json, not on each other. ConfigError when
    raw_config itself is invalid.
    """
    from node import config  # here, not at the top: node.app unloads it before the node is built

    config.validate(raw_config)
    kept = {}
    for key, value in settings.items():
        try:
            config.validate(overlay(raw_config, {key: value}), "settings.json")
        except config.ConfigError as e:
            log("settings", "ignoring %s" % e)
        else:
            kept[key] = value
    return kept
