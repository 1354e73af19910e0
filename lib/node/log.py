"""One-line log records for the serial console: '<uptime s> <component>: <text>'."""

import time

_START_MS = time.ticks_ms()


def log(component, text):
    ms = time.ticks_diff(time.ticks_ms(), _START_MS)
    print("%d.%03d %s: %s" % (ms // 1000, ms % 1000, component, text))
