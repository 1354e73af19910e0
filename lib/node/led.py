"""The status LED: what the node is doing, told by blink patterns that are easy to tell apart.

| mode       | pattern                                    | meaning                               |
| ---------- | ------------------------------------------ | ------------------------------------- |
| CONNECTING | fast even blink, 5 Hz (100 ms on/off)      | joining Wi-Fi / connecting to MQTT    |
| RUNNING    | 50 ms blip every 3 s                       | connected, publishing                 |
| ERROR      | double blink (150 ms on/off twice), 2 s    | a fault the node could not fix itself |
| safe mode  | slow even blink, 1 Hz (500 ms on/off)      | bad config or unfinished deploy: REPL |
| identify   | flicker, 12.5 Hz (40 ms on/off), N seconds | "this one": then back to the mode     |

The pin is anything with value(v), e.g. machine.Signal(pin, invert=True) for an LED wired to
3V3 that lights when the GPIO is low. With pin None (no LED) every call does nothing.
"""

import asyncio
import time

from micropython import const

from node.limits import IDENTIFY_MAX_S

CONNECTING = const(0)
RUNNING = const(1)
ERROR = const(2)

# Step durations in ms, on first then alternating; indexed by mode.
_PATTERNS_MS = ((100, 100), (50, 2950), (150, 150, 150, 1550))
_IDENTIFY_MS = (40, 40)
_SAFE_TOGGLE_MS = const(500)
_FOLLOW_MS = const(500)
# run()'s longest sleep: a set() or identify() shows within this, even during a 2950 ms "off".
_POLL_MS = const(100)


class StatusLed:
    def __init__(self, pin):
        self._pin = pin
        self._mode = CONNECTING
        self._identify_until_ms = None  # ticks_ms when identify ends; None: not identifying
        self._level = 0
        if pin is not None:
            pin.value(0)
            # Bound once: taking a bound method allocates, and the timer callback must not.
            self._toggle_cb = self._toggle

    def set(self, mode):
        """Show CONNECTING, RUNNING or ERROR from now on (after an identify in progress)."""
        if not 0 <= mode < len(_PATTERNS_MS):
            raise ValueError("LED mode %r" % (mode,))
        self._mode = mode

    def identify(self, seconds):
        """Flicker for `seconds` (0 ends an identify early), then show the mode again."""
        if not 0 <= seconds <= IDENTIFY_MAX_S:
            raise ValueError("identify for 0..%d s, not %r" % (IDENTIFY_MAX_S, seconds))
        self._identify_until_ms = time.ticks_add(time.ticks_ms(), int(seconds * 1000))

    async def run(self):
        """The asyncio task that plays the patterns; its loop allocates nothing."""
        pin = self._pin
        if pin is None:
            return
        pattern = _PATTERNS_MS[self._mode]
        step = 0
        due_ms = time.ticks_ms()
        while True:
            now = time.ticks_ms()
            until = self._identify_until_ms
            if until is not None and time.ticks_diff(until, now) <= 0:
                # Cleared, not kept: an old deadline would look current again once ticks wrap.
                until = self._identify_until_ms = None
            want = _IDENTIFY_MS if until is not None else _PATTERNS_MS[self._mode]
            if want is not pattern:
                # A new pattern starts at once with its first "on", whatever the old was doing.
                pattern = want
                step = 0
                due_ms = now
            if time.ticks_diff(now, due_ms) >= 0:
                pin.value(1 - (step & 1))
                # From now, not from due_ms: after the loop was blocked (a TLS handshake takes
                # ~1 s) the pattern resumes instead of racing through the steps it missed.
                due_ms = time.ticks_add(now, pattern[step])
                step = (step + 1) % len(pattern)
            wait_ms = time.ticks_diff(due_ms, now)
            await asyncio.sleep_ms(wait_ms if wait_ms < _POLL_MS else _POLL_MS)

    async def follow(self, link):
        """The asyncio task that shows the MQTT link's state (a node.publisher.Publisher)."""
        while True:
            if link.connected:
                self.set(RUNNING)
            else:
                # Turned away (bad certificate, credentials): waiting will not mend it.
                self.set(ERROR if link.refused else CONNECTING)
            await asyncio.sleep_ms(_FOLLOW_MS)

    def safe_mode(self, timer):
        """Blink slowly from `timer` (a machine.Timer): in safe mode main.py returns to the
        REPL, so there is no asyncio loop for run(); the timer keeps blinking at the REPL."""
        if self._pin is None:
            return
        self._level = 1
        self._pin.value(1)
        timer.init(mode=timer.PERIODIC, period=_SAFE_TOGGLE_MS, callback=self._toggle_cb)

    def _toggle(self, timer):
        # A soft timer callback (scheduled, not in the ISR), yet kept allocation-free: it may
        # run between any two bytecodes of whatever the REPL is doing.
        self._level ^= 1
        self._pin.value(self._level)
