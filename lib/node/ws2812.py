"""A WS2812 (NeoPixel) as the status LED for node.led.StatusLed: value(mode) lights it in the
mode's colour from node.led's table, scaled by led.brightness; value(0) darkens it.

Imported only for led.kind "ws2812" (node.board.status_led), so a board with a plain LED
spends no RAM on it. The pixels come from the firmware's neopixel module; a test passes a fake.
"""

from micropython import const

from node.led import COLOURS

_FULL_SCALE = const(255)


class Ws2812Led:
    def __init__(self, pixels, brightness):
        self._pixels = pixels
        # Every colour as (r, g, b) at `brightness` (1..255), made once: value() allocates
        # nothing. Rounded up, so a dim colour at a low brightness lights instead of going black.
        self._colours = tuple(
            tuple((((rgb >> shift) & 0xFF) * brightness + _FULL_SCALE - 1) // _FULL_SCALE
                  for shift in (16, 8, 0))
            for rgb in COLOURS
        )

    def value(self, mode):
        # One pixel: 24 bits at 800 kHz, 30 us on the wire: short enough for the event loop.
        self._pixels[0] = self._colours[mode]
        self._pixels.write()
