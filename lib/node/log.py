"""One-line log records for the serial console: '<uptime s> <component>: <text>'."""

import time

_START_MS = time.ticks_ms()


def uptime_ms():
    """Milliseconds since the app started (ticks_ms() has an arbitrary origin on some ports)."""
    return time.ticks_diff(time.ticks_ms(), _START_MS)


def log(component, text):
    ms = uptime_ms()
    print("%d.%03d %s: %s" % (ms // 1000, ms % 1000, component, text))
