"""One-line log records for the serial console: '<uptime s> <component>: <text>'."""

import time

_last_ticks_ms = time.ticks_ms()
_uptime_ms = 0


def uptime_ms():
    """Milliseconds since the app started.

    ticks_ms() has an arbitrary origin on some ports and wraps every 2^30 ms (12.4 days) on the
    ESP32, so the uptime is accumulated from differences; the node logs far more often than that.
    """
    global _last_ticks_ms, _uptime_ms
    now = time.ticks_ms()
    _uptime_ms += time.ticks_diff(now, _last_ticks_ms)
    _last_ticks_ms = now
    return _uptime_ms


def log(component, text):
    ms = uptime_ms()
    print("%d.%03d %s: %s" % (ms // 1000, ms % 1000, component, text))
