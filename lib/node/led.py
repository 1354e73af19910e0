"""The status LED: what the node is doing, told by patterns that are easy to tell apart, as
blinks on a one-colour LED (led.kind "gpio") and in colour too on a WS2812 ("ws2812").

| mode       | colour | pattern                                     | meaning                     |
| ---------- | ------ | ------------------------------------------- | --------------------------- |
| CONNECTING | blue   | fast even blink, 5 Hz (100 ms on/off)       | joining Wi-Fi / MQTT        |
| RUNNING    | green  | 50 ms blip every 3 s (dimmer than the rest) | connected, publishing       |
| ERROR      | red    | double blink (150 ms on/off twice), 2 s     | turned away: will not mend  |
| safe mode  | amber  | slow even blink, 1 Hz (500 ms on/off)       | no app: the REPL is free    |
| identify   | white  | flicker, 12.5 Hz (40 ms on/off), N seconds  | "this one": then the mode   |

The LED is anything with value(v) (node.board.status_led makes one): v is 0 for dark, or the
mode whose colour to light, where the LED has colours. So a machine.Signal drives a one-colour
LED as it is (any v but 0 lights it; Signal(pin, invert=True) for an LED wired to 3V3 that
lights at a low GPIO), and node.ws2812 an RGB one. With no LED (None) every call does nothing.
"""

import asyncio
import time

from micropython import const

from node.limits import IDENTIFY_MAX_S

# The modes, which are also what run() passes to the LED's value() (0: dark).
CONNECTING = const(1)
RUNNING = const(2)
ERROR = const(3)
_SAFE_MODE = const(4)
_IDENTIFY = const(5)

# Safe mode blinks evenly: a periodic timer toggles it at this period.
_SAFE_MODE_MS = const(500)
# The patterns, indexed by mode (0: dark). Both kinds play the same steps, in ms, lit first then
# alternating; a WS2812 lights them in the mode's colour, 0xRRGGBB at full scale, which
# node.ws2812 scales by led.brightness. Running's green is dimmer: it shows all day.
# Two tuples of small ints, not one of (colour, steps) pairs: about 200 bytes less heap.
#          dark      connecting running   error     safe mode identify
COLOURS = (0x000000, 0x0000FF, 0x008000, 0xFF0000, 0xFF6000, 0xFFFFFF)
_STEPS_MS = ((), (100, 100), (50, 2950), (150, 150, 150, 1550), (_SAFE_MODE_MS, _SAFE_MODE_MS),
             (40, 40))
_FOLLOW_MS = const(500)
# run()'s longest sleep: a set() or identify() shows within this, even during a 2950 ms "off".
_POLL_MS = const(100)


class StatusLed:
    def __init__(self, light):
        self._light = light
        self._mode = CONNECTING
        self._identify_until_ms = None  # ticks_ms when identify ends; None: not identifying
        self._lit = False
        if light is not None:
            light.value(0)
            # Bound once: taking a bound method allocates, and the timer callback must not.
            self._toggle_cb = self._toggle

    def set(self, mode):
        """Show CONNECTING, RUNNING or ERROR from now on (after an identify in progress)."""
        if mode not in (CONNECTING, RUNNING, ERROR):
            raise ValueError("LED mode %r" % (mode,))
        self._mode = mode

    def identify(self, seconds):
        """Flicker for `seconds` (0 ends an identify early), then show the mode again."""
        if not 0 <= seconds <= IDENTIFY_MAX_S:
            raise ValueError("identify for 0..%d s, not %r" % (IDENTIFY_MAX_S, seconds))
        self._identify_until_ms = time.ticks_add(time.ticks_ms(), int(seconds * 1000))

    async def run(self):
        """The asyncio task that plays the patterns; its loop allocates nothing."""
        light = self._light
        if light is None:
            return
        showing = 0  # the mode whose pattern is playing: none yet
        steps = ()
        step = 0
        due_ms = time.ticks_ms()
        while True:
            now = time.ticks_ms()
            until = self._identify_until_ms
            if until is not None and time.ticks_diff(until, now) <= 0:
                # Cleared, not kept: an old deadline would look current again once ticks wrap.
                until = self._identify_until_ms = None
            want = _IDENTIFY if until is not None else self._mode
            if want != showing:
                # A new pattern starts at once with its first "on", whatever the old was doing.
                showing = want
                steps = _STEPS_MS[want]
                step = 0
                due_ms = now
            if time.ticks_diff(now, due_ms) >= 0:
                light.value(0 if step & 1 else showing)
                # From now, not from due_ms: after the loop was blocked (a TLS handshake takes
                # ~1 s) the pattern resumes instead of racing through the steps it missed.
                due_ms = time.ticks_add(now, steps[step])
                step = (step + 1) % len(steps)
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
        if self._light is None:
            return
        self._lit = True
        self._light.value(_SAFE_MODE)
        timer.init(mode=timer.PERIODIC, period=_SAFE_MODE_MS, callback=self._toggle_cb)

    def _toggle(self, timer):
        # A soft timer callback (scheduled, not in the ISR), yet kept allocation-free: it may
        # run between any two bytecodes of whatever the REPL is doing.
        self._lit = not self._lit
        self._light.value(_SAFE_MODE if self._lit else 0)
