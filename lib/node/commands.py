"""Commands from `<prefix>/<node>/cmd`: check, carry out, and reply on `<prefix>/<node>/reply`.

Pure apart from settings.json: runs on CPython, the unix port and the board. The payload comes
from the network, so nothing in it is trusted: every reply is valid JSON, and a rejected command
touches nothing.
"""

import gc
import json

from node import settings as store
from node import spl, unload
from node.limits import IDENTIFY_MAX_S
from node.log import log

_MAX_PAYLOAD_BYTES = 512
# What importing node.config takes at its peak (10.5 KB on the 32-bit port from the x86 .mpy,
# 0.7 KB of it its names, which stay), with room for the reply: with less free the settings
# are not checked, as an import that fails part way keeps up to 8 KB of the heap for good.
_CONFIG_LOAD_BYTES = 12288
# A command is one flat object. MicroPython's parser spends about 76 bytes of heap per nesting
# level ('[' * 500 took 38 KB on the unix port), so deep nesting is refused before parsing.
_MAX_BRACKETS = 8
_ID_MAX_CHARS = 64
# At most 15 digits: JavaScript subscribers (Node-RED, MQTT Explorer) read integers beyond
# 2**53 (16 digits) inexactly, and could not match the reply to their command.
_ID_INT_LIMIT = 10**15
_NAME_MAX_CHARS = 32
_IDENTIFY_DEFAULT_S = 10
_BASE_KEYS = ("cmd", "id")
_SENSITIVITY = "audio.mic_sensitivity_dbfs"
_CALIBRATOR_DB = (94, 114)  # the two levels sound calibrators give (IEC 60942)
_CALIBRATE_DEFAULT_S = 5
_CALIBRATE_MAX_S = 30
# A calibrator's 1 kHz sine has a crest factor (peak over RMS) of 3.0 dB; anything far from it
# is not the calibrator (off, loose, or drowned by noise).
_CREST_DB = (2.0, 4.5)
_MEASURED_MIN_PCT = 90  # audio lost while measuring: the result would be too
_LATER = object()  # an action that replies when it is done (calibrate)


class CommandError(ValueError):
    """A rejected command; str() is the reply's "error" text."""


def _show(name):
    """A name from the payload as JSON text for a message, or a stand-in.

    Only short printable ASCII is echoed: MicroPython's json.dumps passes lone surrogates and
    other odd characters through as raw bytes, which would make a reply that is not UTF-8.
    """
    if isinstance(name, str) and len(name) <= _NAME_MAX_CHARS and _printable(name):
        return json.dumps(name)
    return "(a long or unprintable name)"


def _printable(text):
    for ch in text:
        if not " " <= ch <= "~":
            return False
    return True


def _kind(value):
    """What a wrong value is, without echoing it (MicroPython's json.dumps writes NaN as nan)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction or exponent"
    if isinstance(value, str):
        return "a string of length %d" % len(value)
    if isinstance(value, list):
        return "a list"
    return "an object"


def _integer(value, where):
    # bool is an int subclass in Python, but true is no number of seconds.
    if isinstance(value, bool) or not isinstance(value, int):
        raise CommandError("%s: expected an integer, got %s" % (where, _kind(value)))
    return value


def _number(value, where):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CommandError("%s: expected a number, got %s" % (where, _kind(value)))
    # json.loads takes NaN and Infinity (MicroPython's and CPython's), which no range check
    # would refuse.
    if value - value != 0:
        raise CommandError("%s: expected a finite number, got NaN or infinity" % where)
    return value


def _parse(payload):
    if len(payload) > _MAX_PAYLOAD_BYTES:
        raise CommandError(
            "payload: too large: %d bytes (at most %d)" % (len(payload), _MAX_PAYLOAD_BYTES)
        )
    if payload.count(b"[") + payload.count(b"{") > _MAX_BRACKETS:
        raise CommandError("payload: more than %d '[' or '{' (a command is one flat object)"
                           % _MAX_BRACKETS)
    # MicroPython's json.loads stops at a NUL byte and ignores the rest; JSON has no raw NUL.
    if b"\x00" in payload:
        raise CommandError("payload: not valid JSON (a NUL byte)")
    try:
        text = payload.decode()
    except UnicodeError:
        raise CommandError("payload: not UTF-8 text")
    try:
        msg = json.loads(text)
    except ValueError:
        raise CommandError("payload: not valid JSON")
    if not isinstance(msg, dict):
        raise CommandError('payload: expected a JSON object {"cmd": ...}, got %s' % _kind(msg))
    return msg


def _check_id(value):
    if isinstance(value, str):
        ok = len(value) <= _ID_MAX_CHARS and _printable(value)
    else:
        ok = (isinstance(value, int) and not isinstance(value, bool)
              and -_ID_INT_LIMIT < value < _ID_INT_LIMIT)
    if not ok:
        raise CommandError(
            "id: expected a string of at most %d printable ASCII characters or an integer of at"
            " most 15 digits, got %s" % (_ID_MAX_CHARS, _kind(value))
        )
    return value


def _check_keys(msg, cmd, allowed):
    for key in msg:
        if key not in _BASE_KEYS and key not in allowed:
            raise CommandError("%s: %s: no such key (known: %s)"
                               % (cmd, _show(key), ", ".join(_BASE_KEYS + allowed)))


def _lookup(cfg, dotted):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def _store(cfg, dotted, value):
    parts = dotted.split(".")
    for part in parts[:-1]:
        cfg = cfg[part]
    cfg[parts[-1]] = value


class Commands:
    """Carries out commands on the settings in force, and keeps the changed ones in flash.

    `live` is the validated config the tasks read their intervals from: the one place that
    holds the settings in force; `saved` (what settings.accepted() kept) is what settings_path
    holds on top of the file at config_path (config.json), which is read again for each
    command that changes settings: its parsed form is not kept in RAM between them. The
    node's own actions come as callables: `reboot()` schedules a reset, `identify(seconds)`
    flickers the LED, `changed()` hears that settings changed, `measure(seconds, done)` starts
    measuring the microphone's level for that long and calls done((rms_dbfs, peak_dbfs,
    measured_pct)) then (None: no audio), and `reply(payload)` publishes a reply that comes
    later (calibrate's).
    """

    def __init__(self, config_path, saved, settings_path, live, reboot, identify, changed,
                 measure, reply):
        self._config_path = config_path
        self._saved = saved
        self._path = settings_path
        self._live = live
        self._reboot = reboot
        self._identify = identify
        self._changed = changed
        self._measure = measure
        self._reply = reply
        self._measuring = False

    def handle(self, payload):
        """The reply to one payload (bytes, any content) as JSON bytes, or None when the command
        replies later through `reply` (calibrate); never raises for it."""
        reply = {}
        reply["ok"] = False
        try:
            msg = _parse(payload)
            if "id" in msg:
                reply["id"] = _check_id(msg["id"])
            cmd = msg.get("cmd")
            entry = _find(cmd)
            if entry is None:
                got = _show(cmd) if isinstance(cmd, str) else _kind(cmd)
                raise CommandError("cmd: expected one of %s, got %s" % (
                    ", ".join(_NAMES), got if "cmd" in msg else "nothing"))
            name, action, keys = entry
            reply["cmd"] = name
            _check_keys(msg, name, keys)
            if action(self, msg, reply) is _LATER:
                return None
            reply["ok"] = True
        except CommandError as e:
            reply["error"] = str(e)
        return json.dumps(reply).encode()

    def _set(self, msg, reply):
        merged = dict(self._saved)
        given = False
        for key in store.SETTABLE:
            if key in msg:
                # Typed here, not by validate(): its message would echo the value, and a NaN
                # or a raw surrogate does not survive MicroPython's json.dumps.
                check = _number if key in store.NUMBERS else _integer
                merged[key] = check(msg[key], "set: " + key)
                given = True
        if not given:
            raise CommandError("set: expected at least one of " + ", ".join(store.SETTABLE))
        _not_in_force(reply, self._save(merged, "set"))
        reply["settings"] = merged

    def _save(self, merged, where):
        """Validate config.json with `merged` on top, save it, put it in force; what of it the
        node cannot put in force now (`changed`'s words), or None."""
        # The ranges (DHT11 >= 1 s, DHT22 >= 2 s, ...) come from config.py alone.
        cfg = _validated(self._config_path, merged, where)
        try:
            store.save(self._path, merged)
        except OSError as e:
            raise CommandError("%s: cannot save %s (%s)" % (where, self._path, e))
        self._saved = merged
        return self._apply(cfg)

    def _calibrate(self, msg, reply):
        level = msg.get("level_db", _CALIBRATOR_DB[0])
        if isinstance(level, bool) or level not in _CALIBRATOR_DB:
            raise CommandError("calibrate: level_db: expected 94 or 114 (the calibrator's level"
                               " in dB SPL), got %s" % _kind(level))
        seconds = _seconds(msg, "calibrate", _CALIBRATE_DEFAULT_S, 2, _CALIBRATE_MAX_S)
        if self._measuring:
            raise CommandError("calibrate: already measuring; its reply comes first")
        self._measuring = True
        log("commands", "calibrate: measuring %d s for a %d dB calibrator" % (seconds, level))
        self._measure(seconds, lambda result: self._calibrated(reply, level, result))
        return _LATER

    def _calibrated(self, reply, level, result):
        """The measurement is in: the sensitivity it implies, saved and put in force."""
        self._measuring = False
        try:
            if result is None:
                raise CommandError("calibrate: no audio came from the microphone")
            rms, peak, measured_pct = result
            if measured_pct < _MEASURED_MIN_PCT:
                raise CommandError("calibrate: only %d %% of the audio was measured (the node "
                                   "was too busy); try again" % measured_pct)
            crest = peak - rms
            if not _CREST_DB[0] <= crest <= _CREST_DB[1]:
                raise CommandError(
                    "calibrate: not a steady tone (crest factor %.1f dB, a calibrator's sine "
                    "has 3.0): is the calibrator on the microphone and switched on?" % crest)
            sens = round(spl.sensitivity_dbfs(rms, level), 2)
            before = self._live["audio"]["mic_sensitivity_dbfs"]
            merged = dict(self._saved)
            merged[_SENSITIVITY] = sens
            _not_in_force(reply, self._save(merged, "calibrate"))
            reply["mic_sensitivity_dbfs"] = sens
            reply["level_db"] = level
            reply["previous_db"] = (None if before is None
                                    else round(rms + spl.offset_db(before), 2))
            reply["measured_dbfs"] = round(rms, 2)
            reply["settings"] = merged
            reply["ok"] = True
            log("commands", "calibrate: sensitivity %.2f dBFS" % sens)
        except CommandError as e:
            reply["error"] = str(e)
            log("commands", str(e))
        self._reply(json.dumps(reply).encode())

    def _reset_settings(self, msg, reply):
        cfg = _validated(self._config_path, {}, "config.json")  # first: it may fail now
        try:
            store.clear(self._path)
        except OSError as e:
            raise CommandError("reset_settings: cannot delete %s (%s)" % (self._path, e))
        self._saved = {}
        _not_in_force(reply, self._apply(cfg))
        reply["settings"] = self._saved

    def _identify_led(self, msg, reply):
        seconds = _seconds(msg, "identify", _IDENTIFY_DEFAULT_S, 1, IDENTIFY_MAX_S)
        self._identify(seconds)
        reply["seconds"] = seconds

    def _show_config(self, msg, reply):
        reply["config"] = self._live
        reply["settings"] = self._saved

    def _reboot_board(self, msg, reply):
        # Only schedules the reset: the reply still goes out first.
        self._reboot()

    def _apply(self, cfg):
        """Copy what changed from a validated config into the one in force; what of it is not
        in force for want of memory, in words (`changed`'s), or None."""
        changed = False
        for key in store.SETTABLE:
            value = _lookup(cfg, key)
            if value != _lookup(self._live, key):
                _store(self._live, key, value)
                changed = True
                log("commands", "%s set to %s by command" % (key, value))
        return self._changed() if changed else None


def _not_in_force(reply, off):
    # Saved, and in force at a boot with the room: what the node measures without meanwhile.
    if off is not None:
        reply["not_in_force"] = off


# The commands, what each may carry besides "cmd" and "id", and what carries it out.
_TABLE = (
    ("calibrate", Commands._calibrate, ("level_db", "seconds")),
    ("config", Commands._show_config, ()),
    ("identify", Commands._identify_led, ("seconds",)),
    ("reboot", Commands._reboot_board, ()),
    ("reset_settings", Commands._reset_settings, ()),
    ("set", Commands._set, store.SETTABLE),
)
_NAMES = tuple(entry[0] for entry in _TABLE)


def _validated(config_path, saved, where):
    """config.validate() of the file at config_path with the settings `saved` on top, its error
    as the reply's. The config code (7 KB of the board's heap) is loaded for the few commands
    that change settings, and leaves the heap again after; where the heap has no room for it,
    the reply says so and nothing changes."""
    gc.collect()
    free = gc.mem_free()
    if free < _CONFIG_LOAD_BYTES:
        raise CommandError(_no_room(where, "%d bytes free, %d needed to check it against "
                                           "config.json" % (free, _CONFIG_LOAD_BYTES)))
    try:
        from node import config
    except MemoryError as e:  # the heap had the bytes, not in the pieces they need
        why = str(e)
    else:
        try:
            return config.validate(store.overlay(config.read_json(config_path), saved), where)
        except config.ConfigError as e:
            raise CommandError(str(e))
        except MemoryError as e:
            why = str(e)
    finally:
        unload("config")
    raise CommandError(_no_room(where, why))


def _no_room(where, why):
    return "%s: no room in RAM now (%s): nothing changed, try again later" % (where, why)


def _seconds(msg, cmd, default, lo, hi):
    """The message's "seconds" (`default` when it has none): an integer in lo..hi."""
    if "seconds" not in msg:
        return default
    seconds = _integer(msg["seconds"], cmd + ": seconds")
    if not lo <= seconds <= hi:
        raise CommandError("%s: seconds: expected an integer in %d..%d, got %d"
                           % (cmd, lo, hi, seconds))
    return seconds


def _find(cmd):
    for entry in _TABLE:
        if entry[0] == cmd:
            return entry
    return None
