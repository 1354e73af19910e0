"""DHT11/DHT22 read that does not stall asyncio: the start pulse is awaited, only the ~5 ms frame
is timed with interrupts off; decode() turns the timed pulses into readings (pure).

The firmware's driver (drivers/dht/dht.c, dht_readinto) blocks the VM for about 273 ms per read:
mp_hal_delay_ms(250) with the line high (the driver's habit, not the sensor's need), 18 ms low,
then the frame. Here the line idles high between reads, the start pulse is an
`await asyncio.sleep_ms()` with the pin held low, and the frame is timed by calling
machine.time_pulse_us in a viper loop: each call waits out the 50 us low phase of a bit and
times its high phase (26-28 us a 0, 70 us a 1), as dht_readinto does. node.dhtframe decodes
the timings (pure, tested on the host from recorded pulse trains), with the stock driver's
errors: OSError(ETIMEDOUT) for no answer, Exception("checksum error") for a bad checksum.
"""

import asyncio
from array import array

import machine
import micropython
from micropython import const

from node.dhtframe import PULSES, decode, tenths

# dht_readinto's limits: 100 us for the response to start, 150 us for its pulses, 100 us per bit.
_RESPONSE_TIMEOUT_US = const(150)
_BIT_TIMEOUT_US = const(100)
# Start pulse: DHT11 needs at least 18 ms low, DHT22 at least 1 ms. asyncio.sleep_ms(n) may wake
# up to 1 ms early in real time (a ticks_ms boundary), hence the margin.
_START_MS = {"DHT11": 20, "DHT22": 2}


@micropython.viper
def _capture(pin, pulses, time_pulse_us) -> int:
    # Runs with interrupts off: release the line, then time the response and the 40 bits into
    # the buffer allocated once. Stops at the first timeout (its -1/-2 is kept for decode()).
    p = ptr32(pulses)
    pin(1)  # open drain: the pull-up takes the line high, the sensor answers 20-40 us later
    d = int(time_pulse_us(pin, 0, _RESPONSE_TIMEOUT_US))
    p[0] = d
    if d < 0:
        return 1
    d = int(time_pulse_us(pin, 1, _RESPONSE_TIMEOUT_US))
    p[1] = d
    if d < 0:
        return 2
    i = 2
    while i < 42:  # PULSES: viper needs the literal
        d = int(time_pulse_us(pin, 1, _BIT_TIMEOUT_US))
        p[i] = d
        i += 1
        if d < 0:
            break
    return i


class Sensor:
    """One DHT on one pin: the asyncio fast path (`await read()`) and the firmware's driver
    (`measure()`, `temperature()`, `humidity()`, passed to `stock`), for dht.driver "stock"."""

    def __init__(self, stock, model):
        self._model = model
        self._start_ms = _START_MS[model]
        self._pin = pin = stock.pin
        self.measure = stock.measure
        self.temperature = stock.temperature
        self.humidity = stock.humidity
        # Allocated once: a read allocates nothing while interrupts are off.
        self.pulses = array("i", bytes(4 * PULSES))
        self.buf = bytearray(5)
        pin.init(pin.OPEN_DRAIN, value=1)  # released: the line idles high between reads

    def capture(self):
        """Release the line and time the frame, interrupts off; the number of pulses timed."""
        irq = machine.disable_irq()
        try:
            return _capture(self._pin, self.pulses, machine.time_pulse_us)
        finally:
            machine.enable_irq(irq)

    async def read(self):
        """(temperature, humidity) in tenths; the errors are the stock driver's."""
        pin = self._pin
        pin.init(pin.OPEN_DRAIN, value=0)  # the start pulse; the sensor waits for its end
        n = -1
        try:
            await asyncio.sleep_ms(self._start_ms)
            n = self.capture()
        finally:
            if n < 0:
                pin(1)  # cancelled during the start pulse: leave the line released
        decode(self.pulses, n, self.buf)
        return tenths(self._model, self.buf)
