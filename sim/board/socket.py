"""socket for the simulated board: the unix port's own socket, with the ESP32's name lookup.

On the board getaddrinfo() asks lwIP's DNS client and blocks the whole interpreter until the
answer, or until lwIP gives up (then OSError -202, EAI_FAIL). The host's resolver answers
"localhost" at once. SIM_DNS sets what a lookup of a name does (an IP literal is parsed, never
looked up, on both):
  delay:<ms>  answer after <ms> (default delay:20, a nearby resolver);
  fail        fail at once with OSError(-202), as for an unknown name;
  hang:<ms>   block <ms>, then fail with OSError(-202): a resolver that never answers.
While Wi-Fi is down (network, SIM_WIFI) a lookup fails too. Everything else is the real module.
"""

import sys
import time

import _simenv

_path = sys.path
sys.path = ()  # the built-in socket, not this file
try:
    from socket import *  # noqa: F403
    from socket import getaddrinfo as _getaddrinfo
finally:
    sys.path = _path
del _path

from micropython import const  # noqa: E402

_EAI_FAIL = const(-202)  # lwIP's EAI_FAIL, raised as OSError(-202) by the ESP32 port
_DEFAULT = "delay:20"
_mode = []


def _dns_mode():
    """SIM_DNS as (kind, ms): ("delay", 20), ("fail", 0) or ("hang", ms)."""
    if not _mode:
        text = _simenv.env("SIM_DNS", _DEFAULT)
        kind, _, ms = text.partition(":")
        try:
            if kind == "fail" and not ms:
                value = 0
            elif kind in ("delay", "hang"):
                value = int(ms)
                if value < 0:
                    raise ValueError
            else:
                raise ValueError
        except ValueError:
            _simenv.config_error("SIM_DNS", "%r is not delay:<ms>, fail or hang:<ms>" % text)
        _mode.append((kind, value))
    return _mode[0]


def _is_ip_literal(host):
    parts = host.split(".")
    return (len(parts) == 4 and all(p.isdigit() for p in parts)) or ":" in host


def _wifi_connected():
    network = sys.modules.get("network")
    wlan = network.WLAN._ifaces.get(network.STA_IF) if network is not None else None
    if wlan is None:
        return True  # a script that never made a WLAN: the host's own link
    return wlan.isconnected()


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    if not isinstance(host, str) or _is_ip_literal(host):
        return _getaddrinfo(host, port, af, type, proto, flags)
    kind, ms = _dns_mode()
    t0 = time.ticks_ms()
    if kind == "fail" or not _wifi_connected():
        why = "SIM_DNS=fail" if kind == "fail" else "no Wi-Fi"
        _simenv.say("DNS: getaddrinfo(%r) failed at once (%s): OSError(%d)"
                    % (host, why, _EAI_FAIL))
        raise OSError(_EAI_FAIL)
    time.sleep_ms(ms)  # blocking: the board's lookup stops the interpreter
    took = time.ticks_diff(time.ticks_ms(), t0)
    if kind == "hang":
        _simenv.say("DNS: getaddrinfo(%r) blocked %d ms without an answer (SIM_DNS=hang): "
                    "OSError(%d)" % (host, took, _EAI_FAIL))
        raise OSError(_EAI_FAIL)
    _simenv.say("DNS: getaddrinfo(%r) took %d ms (SIM_DNS=delay:%d)" % (host, took, ms))
    return _getaddrinfo(host, port, af, type, proto, flags)
