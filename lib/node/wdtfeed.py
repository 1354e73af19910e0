"""Keeps an armed watchdog fed from a timer while no app runs: the REPL, a deploy, safe mode.

On the ESP32 machine.WDT cannot be stopped and survives a soft reset (Ctrl-D, and every
mpremote command, make deploy included, soft-resets into the raw REPL, where boot.py runs but
main.py does not). Fed by nobody, it would reset the board in the middle of a copy. boot.py
starts this after a soft reset, and the app after a Ctrl-C; the app stops it before its own
supervisor takes over, which feeds the watchdog only while every task is alive, so a hung app
still resets.
"""

from micropython import const

TIMER_ID = const(1)  # machine.Timer 0 blinks the LED in safe mode (node.safemode)
_timer = None


def start(wdt, timer, period_ms):
    """Feed `wdt` every `period_ms` from `timer` (a machine.Timer) until stop()."""
    global _timer
    stop()
    feed = wdt.feed  # bound once: the callback must not allocate
    wdt.feed()
    timer.init(mode=timer.PERIODIC, period=period_ms, callback=lambda t: feed())
    _timer = timer


def stop():
    global _timer
    timer, _timer = _timer, None
    if timer is not None:
        timer.deinit()
