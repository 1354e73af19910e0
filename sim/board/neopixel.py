"""neopixel for the simulated ESP32: the firmware's built-in WS2812 driver, whose writes are
logged to SIM_PIN_LOG as "<ticks_ms> <gpio> #rrggbb" (several pixels: comma-separated; RGBW:
#rrggbbww) whenever what the LEDs show changes, as machine.Pin levels are.

The firmware's interface and memory layout: NeoPixel(pin, n, bpp=3, timing=1) sets the pin to
an output, keeps `buf` (n * bpp bytes, in the LEDs' wire order G, R, B, W), `bpp` and `timing`
(ns of high/low for a 0 and a 1 bit: 1 is 800 kHz, 0 is 400 kHz, or a 4-tuple); pixels are
(r, g, b[, w]) tuples set by index or fill(), and only write() sends them. As there, setting a
pixel and writing allocate nothing (when no SIM_PIN_LOG is watching).
"""

import machine

_ORDER = (1, 0, 2, 3)  # where r, g, b, w go in a pixel's bytes
_TIMING_800KHZ_NS = (400, 850, 800, 450)
_TIMING_400KHZ_NS = (800, 1700, 1600, 900)


class NeoPixel:
    def __init__(self, pin, n, bpp=3, timing=1):
        self.pin = pin
        self.n = n
        self.bpp = bpp
        self.buf = bytearray(n * bpp)
        pin.init(pin.OUT)
        if isinstance(timing, int):
            timing = _TIMING_800KHZ_NS if timing else _TIMING_400KHZ_NS
        self.timing = timing
        self._shown = None  # the bytes of the last write() that changed what the LEDs show

    def __len__(self):
        return self.n

    def __setitem__(self, i, colour):
        base = i * self.bpp
        for k in range(self.bpp):
            self.buf[base + _ORDER[k]] = colour[k]

    def __getitem__(self, i):
        base = i * self.bpp
        return tuple(self.buf[base + _ORDER[k]] for k in range(self.bpp))

    def fill(self, colour):
        for i in range(self.n):
            self[i] = colour

    def write(self):
        # The firmware clocks buf out with machine.bitstream: 30 us per RGB LED at 800 kHz,
        # nothing worth simulating. What the LEDs show is logged, when that is asked for.
        if machine._pin_log is None or self.buf == self._shown:
            return
        self._shown = bytes(self.buf)
        machine._log_output(self.pin._id, _as_text(self))


def _as_text(pixels):
    # Apart from write(): the generators' closure would allocate at every call of it.
    return ",".join("#" + "".join("%02x" % c for c in pixels[i]) for i in range(pixels.n))
