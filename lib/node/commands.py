"""Commands from `<prefix>/<node>/cmd`: check, carry out, and reply on `<prefix>/<node>/reply`.

Pure apart from settings.json: runs on CPython, the unix port and the board. The payload comes
from the network, so nothing in it is trusted: every reply is valid JSON, and a rejected command
touches nothing.
"""

import json

from node import config
from node import settings as store

_MAX_PAYLOAD_BYTES = 512
# A command is one flat object. MicroPython's parser spends about 76 bytes of heap per nesting
# level ('[' * 500 took 38 KB on the unix port), so deep nesting is refused before parsing.
_MAX_BRACKETS = 8
_ID_MAX_CHARS = 64
# At most 15 digits: JavaScript subscribers (Node-RED, MQTT Explorer) read integers beyond
# 2**53 (16 digits) inexactly, and could not match the reply to their command.
_ID_INT_LIMIT = 10**15
_NAME_MAX_CHARS = 32
_IDENTIFY_DEFAULT_S = 10
_IDENTIFY_MAX_S = 60
_COMMANDS = ("config", "identify", "reboot", "reset_settings", "set")
_BASE_KEYS = ("cmd", "id")


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


class Commands:
    """Carries out commands; holds the settings in force, and saves them in settings_path.

    settings must be ones config.validate() accepts on top of raw_config (settings.accepted()).
    """

    def __init__(self, raw_config, settings, settings_path, actions):
        self._raw = raw_config
        self._settings = settings
        self._path = settings_path
        self._actions = actions
        # The values in force, so that actions.apply() hears only of real changes.
        cfg = config.validate(store.overlay(raw_config, settings))
        self._live = {}
        for key in store.SETTABLE:
            self._live[key] = _lookup(cfg, key)

    def handle(self, payload):
        """The reply to one payload (bytes, any content) as JSON bytes; never raises for it."""
        reply = {}
        reply["ok"] = False
        reboot = False
        try:
            msg = _parse(payload)
            if "id" in msg:
                reply["id"] = _check_id(msg["id"])
            cmd = msg.get("cmd")
            if cmd not in _COMMANDS:
                got = _show(cmd) if isinstance(cmd, str) else _kind(cmd)
                raise CommandError("cmd: expected one of %s, got %s" % (
                    ", ".join(_COMMANDS), got if "cmd" in msg else "nothing"))
            reply["cmd"] = cmd
            if cmd == "set":
                self._set(msg, reply)
            elif cmd == "reset_settings":
                self._reset(msg, reply)
            elif cmd == "identify":
                _check_keys(msg, cmd, ("seconds",))
                seconds = _IDENTIFY_DEFAULT_S
                if "seconds" in msg:
                    seconds = _integer(msg["seconds"], "identify: seconds")
                    if not 1 <= seconds <= _IDENTIFY_MAX_S:
                        raise CommandError("identify: seconds: expected an integer in 1..%d, got %d"
                                           % (_IDENTIFY_MAX_S, seconds))
                self._actions.identify(seconds)
                reply["seconds"] = seconds
            elif cmd == "config":
                _check_keys(msg, cmd, ())
                reply["config"] = self._actions.config()
                reply["settings"] = self._settings
            else:
                _check_keys(msg, cmd, ())
                reboot = True
            reply["ok"] = True
        except (CommandError, config.ConfigError) as e:
            reply["error"] = str(e)
        out = json.dumps(reply).encode()
        if reboot:
            # After the reply is built: reboot() only schedules the reset, so the reply goes out.
            self._actions.reboot()
        return out

    def _set(self, msg, reply):
        _check_keys(msg, "set", store.SETTABLE)
        merged = dict(self._settings)
        given = False
        for key in store.SETTABLE:
            if key in msg:
                # Typed here, not by validate(): its message would echo the value, and a NaN
                # or a raw surrogate does not survive MicroPython's json.dumps.
                merged[key] = _integer(msg[key], "set: " + key)
                given = True
        if not given:
            raise CommandError("set: expected at least one of " + ", ".join(store.SETTABLE))
        # The ranges (DHT11 >= 1 s, DHT22 >= 2 s, ...) come from config.py alone.
        cfg = config.validate(store.overlay(self._raw, merged), "set")
        try:
            store.save(self._path, merged)
        except OSError as e:
            raise CommandError("set: cannot save %s (%s)" % (self._path, e))
        self._settings = merged
        self._apply(cfg)
        reply["settings"] = merged

    def _reset(self, msg, reply):
        _check_keys(msg, "reset_settings", ())
        try:
            store.clear(self._path)
        except OSError as e:
            raise CommandError("reset_settings: cannot delete %s (%s)" % (self._path, e))
        self._settings = {}
        self._apply(config.validate(self._raw))
        reply["settings"] = self._settings

    def _apply(self, cfg):
        for key in store.SETTABLE:
            value = _lookup(cfg, key)
            if value != self._live[key]:
                self._live[key] = value
                self._actions.apply(key, value)
