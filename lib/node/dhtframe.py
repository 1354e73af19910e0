"""DHT11/DHT22 frames from timed pulses: durations -> 5 bytes -> checksum -> tenths (pure).

`pulses` are machine.time_pulse_us results as node.dhtwire takes them: the sensor's 80 us low
and 80 us high response, then the high phase of each of the 40 bits (26-28 us a 0, 70 us a 1);
-2 or -1 where a pulse timed out. Runs on CPython and MicroPython alike.
"""

PULSES = 42  # the response's two pulses, then 40 bits
_ETIMEDOUT = 110
# A high phase longer than this is a 1: dht_readinto's threshold, between 28 and 70 us.
_ONE_ABOVE_US = 48


def decode(pulses, n, buf):
    """Fill buf[0:5] from the first `n` timed pulses (PULSES in a whole frame).

    OSError(ETIMEDOUT) if the frame is short or a pulse timed out (the stock driver's error for
    no answer); Exception("checksum error") if the fifth byte is not the sum of the first four
    (the stock driver's text, which the climate task looks for). Allocates nothing on success.
    """
    if n < PULSES:
        raise OSError(_ETIMEDOUT)
    for i in range(PULSES):
        if pulses[i] < 0:
            raise OSError(_ETIMEDOUT)
    for k in range(5):
        b = 0
        for i in range(2 + 8 * k, 10 + 8 * k):
            b = (b << 1) | (1 if pulses[i] > _ONE_ABOVE_US else 0)
        buf[k] = b
    if (buf[0] + buf[1] + buf[2] + buf[3]) & 0xFF != buf[4]:
        raise Exception("checksum error")


def tenths(model, buf):
    """(temperature in 0.1 °C, humidity in 0.1 %RH) of a checked 5-byte frame, as ints.

    DHT22: 16-bit big-endian tenths, the temperature's top bit its sign. DHT11: an integral and
    a decimal byte (tenths) each; the stock driver ignores the decimal bytes, newer DHT11s fill
    them, with the temperature's sign in the top bit of its decimal byte.
    """
    if model == "DHT22":
        h = buf[0] << 8 | buf[1]
        t = (buf[2] & 0x7F) << 8 | buf[3]
        sign = buf[2] & 0x80
    else:
        h = buf[0] * 10 + buf[1] % 10
        t = buf[2] * 10 + (buf[3] & 0x7F) % 10
        sign = buf[3] & 0x80
    return (-t if sign else t), h
