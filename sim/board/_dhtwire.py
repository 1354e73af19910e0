"""The DHT data line for the simulated machine: start pulse in, the sensor's pulse train out.

The sensor on a GPIO is the model of the last dht.DHT11/DHT22 made on it (or `attach(gpio,
"DHT22")`). The node drives the pin low in OPEN_DRAIN mode (DHT11 >= 18 ms, DHT22 >= 1 ms) and
writes 1 to release it; the sensor then answers as its datasheet says: 20-40 us high, 80 us low,
80 us high, then per bit 50 us low and 26-28 us (0) or 70 us (1) high, then 50 us low, with a
few us of jitter. machine.time_pulse_us reads that train: the data bytes and failures come from
dht.py's SIM_DHT script and interval (shared with the stock model), so `timeout` rows, reads too
soon and start pulses too short get no answer at all, and `checksum` rows a bad fifth byte.

The train runs on a clock of its own that each time_pulse_us call advances, and the call blocks
until the host's clock has caught up: a frame takes its real ~4.5 ms, and a caller is assumed to
keep up with the wire (the board's viper loop does, with interrupts off; the host cannot tell
its own scheduling from the app's). Everything after the release is allocation-free.
"""

import time
from array import array

import _simenv
import dht
from micropython import const

_OPEN_DRAIN = const(7)  # machine.Pin.OPEN_DRAIN
_MIN_START_US = {11: 18000, 22: 1000}
_MAX_EDGES = const(86)  # 2 per bit, 4 for the response, the final low and its release
_JITTER_US = const(3)

_edges = array("i", bytes(4 * _MAX_EDGES))  # level changes, us after the release; first falls
_frame = [-1, 0, 0, 0, 0]  # [gpio or -1, edge count, release ticks_us, cursor us, rng state]
_fall_us = {}  # gpio -> (ticks_us, ticks_ms) when the node pulled it low: a start pulse
_data = bytearray(5)


def attach(gpio, model):
    """Put a DHT11 or DHT22 on `gpio` without making a stock dht object (tests)."""
    dht.attached[gpio] = dht.DHT22 if model == "DHT22" else dht.DHT11


def _jitter(spread):
    # A 19-bit LCG on the frame's state: small ints even on a 32-bit port, so no heap.
    s = (_frame[4] * 1101 + 12345) & 0x7FFFF
    _frame[4] = s
    return (s >> 8) % (2 * spread + 1) - spread


def driven(gpio, mode, level):
    """machine.Pin's output level on `gpio` changed (or was set again)."""
    cls = dht.attached.get(gpio)
    if cls is None:
        return
    if level == 0:
        if gpio not in _fall_us:
            _fall_us[gpio] = (time.ticks_us(), time.ticks_ms())
        if _frame[0] == gpio:
            _frame[0] = -1  # the node pulled the line down mid-frame: the sensor stops
        return
    fall = _fall_us.pop(gpio, None)
    if fall is None or mode != _OPEN_DRAIN:
        return  # already high, or a push-pull 1 that no sensor answer could pull down
    now = time.ticks_us()
    _frame[0] = -1
    low_us = time.ticks_diff(now, fall[0])
    kind = cls._KIND
    if low_us < _MIN_START_US[kind]:
        _simenv.say("%s start pulse too short (%d us, needs %d)"
                    % (cls._NAME, low_us, _MIN_START_US[kind]))
        return
    # The interval counts from the start of the start pulse, as the stock model's from measure().
    if dht.too_soon(gpio, cls._NAME, cls._MIN_INTERVAL_MS, fall[1]):
        return
    row = dht.next_row()
    if row[0] == 1:  # timeout: the sensor never answers
        return
    data = _data
    if row[0] == 0:  # a checksum row sends the last data again, with a bad fifth byte
        src = row[3] if kind == 11 else row[4]
        for j in range(4):  # not a slice: that would allocate
            data[j] = src[j]
    total = data[0] + data[1] + data[2] + data[3]
    data[4] = (total + (1 if row[0] == 2 else 0)) & 0xFF  # a checksum row: one off
    _frame[4] = (now ^ (total << 8)) & 0x7FFFF
    e = _edges
    t = 30 + _jitter(10)  # Tgo: the sensor answers 20-40 us after the release
    e[0] = t
    t += 80 + _jitter(_JITTER_US)
    e[1] = t
    t += 80 + _jitter(_JITTER_US)
    e[2] = t
    n = 3
    for k in range(40):
        t += 50 + _jitter(_JITTER_US)
        e[n] = t
        bit = (data[k >> 3] >> (7 - (k & 7))) & 1
        t += (70 if bit else 27) + _jitter(2)
        e[n + 1] = t
        n += 2
    t += 50 + _jitter(_JITTER_US)  # the end-of-frame low, then the line is released
    e[n] = t
    _frame[0] = gpio
    _frame[1] = n + 1
    _frame[2] = now
    _frame[3] = 0


def _level_at(i):
    # Level after i edges: high before the first, the first edge falls.
    return 1 - (i & 1)


def _block(cursor):
    _frame[3] = cursor
    wait = cursor - time.ticks_diff(time.ticks_us(), _frame[2])
    if wait > 0:
        time.sleep_us(wait)


def time_pulse_us(gpio, pulse_level, timeout_us):
    """machine.time_pulse_us on a DHT line: -2 if the pulse never starts, -1 if it never ends."""
    level = 1 if pulse_level else 0
    if _frame[0] != gpio:
        # No frame on this line: it stays high (released, pulled up) whatever is awaited.
        time.sleep_us(timeout_us)
        return -1 if level else -2
    e = _edges
    n = _frame[1]
    c = _frame[3]
    i = 0
    while i < n and e[i] <= c:
        i += 1
    start = c
    if _level_at(i) != level:
        if i >= n or e[i] - c >= timeout_us:
            _block(c + timeout_us)
            return -2
        start = e[i]
        i += 1
    if i >= n or e[i] - start >= timeout_us:
        _block(start + timeout_us)
        return -1
    _block(e[i])
    return e[i] - start
