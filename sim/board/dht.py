"""dht for the simulated board: DHT11 and DHT22 as the board's frozen driver presents them.

Same classes, methods and errors as micropython-lib's drivers/dht/dht.py: measure() fills the
5-byte `buf` the way the sensor would and checks its checksum, so a bad checksum raises the
driver's own Exception("checksum error") and a silent sensor raises OSError(ETIMEDOUT).

Readings come from SIM_DHT, a CSV script with one row per measure(): `temperature,humidity`,
`timeout` or `checksum`; `#` starts a comment, blank lines are skipped, the last row repeats.
Without SIM_DHT the readings drift slowly around 22 °C / 45 %RH. The sensor's minimum interval
between reads (DHT11 1 s, DHT22 2 s) is enforced: a read too soon fails with ETIMEDOUT and a
`sim:` line on stderr, which is how the tests prove that the app respects it.

measure() blocks as long as the firmware's dht_readinto (drivers/dht/dht.c): the line held high
for 250 ms, the 18 ms start pulse, then about 5 ms of bits with interrupts off; about 268 ms
when the sensor does not answer. The script, the interval and the byte encoding are shared
with the wire model (_dhtwire), which plays the same sensor to machine.time_pulse_us.
"""

import math
import time

import _simenv
from micropython import const

_ETIMEDOUT = const(110)
# dht_readinto: mp_hal_delay_ms(250) with the line high, mp_hal_delay_ms(18) low, then the
# frame (~5 ms) timed with interrupts off. The VM is blocked throughout, as on the board.
_IDLE_MS = const(250)
_START_MS = const(18)
_FRAME_MS = const(5)

_GOOD = const(0)
_TIMEOUT = const(1)
_CHECKSUM = const(2)

_script = []  # rows (kind, temperature, humidity); empty: the default drift
_state = [None, 0]  # [ticks_ms when the script was loaded, index of the next row]
_last_read = {}  # pin -> ticks_ms of its last read: the interval belongs to the sensor
attached = {}  # gpio -> the class (DHT11 or DHT22) of the last sensor made on it, for _dhtwire


def _load_script():
    path = _simenv.env("SIM_DHT")
    if path is None:
        return
    try:
        with open(path) as f:
            lines = f.read().split("\n")
    except OSError as e:
        _simenv.config_error("SIM_DHT", "cannot read %s (%s)" % (path, e))
    for number, line in enumerate(lines, 1):
        row = line.split("#", 1)[0].strip()
        if not row:
            continue
        word = row.lower()
        if word == "timeout":
            _script.append((_TIMEOUT, 0.0, 0.0, None, None))
        elif word == "checksum":
            _script.append((_CHECKSUM, 0.0, 0.0, None, None))
        else:
            fields = row.split(",")
            try:
                t, h = float(fields[0]), float(fields[1])
                if len(fields) != 2 or not 0 <= h <= 100:
                    raise ValueError
            except (ValueError, IndexError):
                _simenv.config_error(
                    "SIM_DHT", "%s:%d: %r is not 'temperature,humidity' (humidity 0..100), "
                    "'timeout' or 'checksum'" % (path, number, line.strip()))
            _script.append((_GOOD, t, h, _encode(11, t, h), _encode(22, t, h)))
    if not _script:
        _simenv.config_error("SIM_DHT", "%s has no readings" % path)


def check():
    """Parse SIM_DHT now (_firmware does, so a bad script fails before the app starts)."""
    if _state[0] is None:
        _state[0] = time.ticks_ms()
        _load_script()


def _encode(kind, t, h):
    """The 4 data bytes a DHT11 (kind 11) or DHT22 (22) sends for t °C, h %RH."""
    if kind == 11:
        # Whole degrees and percent, within the sensor's 0..50 °C range, decimal bytes 0 (the
        # stock driver reads only the integral bytes).
        return bytes((round(h), 0, max(0, min(50, round(t))), 0))
    # Tenths, big-endian, sign in the top bit of the temperature; range -40..80 °C.
    h10 = round(h * 10)
    t10 = round(max(-40.0, min(80.0, t)) * 10)
    return bytes((h10 >> 8, h10 & 0xFF, (abs(t10) >> 8) | (0x80 if t10 < 0 else 0),
                  abs(t10) & 0xFF))


def next_row():
    """(kind, t, h, DHT11 bytes, DHT22 bytes) of the next read; encodings made at load time,
    so a scripted read allocates nothing (the default drift does)."""
    check()
    if not _script:
        # About 22 °C / 45 %RH, drifting over ten minutes: plausible and never the same twice.
        s = time.ticks_diff(time.ticks_ms(), _state[0]) / 1000
        t = 22 + 1.5 * math.sin(s * 2 * math.pi / 600)
        h = 45 + 5 * math.sin(s * 2 * math.pi / 900)
        return (_GOOD, t, h, _encode(11, t, h), _encode(22, t, h))
    i = _state[1]
    if i < len(_script) - 1:
        _state[1] = i + 1
    return _script[i]


def too_soon(gpio, name, min_interval_ms, now=None):
    """True (and a `sim:` line) if a read at ticks_ms `now` (default: now) comes sooner than
    the sensor allows; otherwise the read counts from then."""
    if now is None:
        now = time.ticks_ms()
    last = _last_read.get(gpio)
    if last is not None:
        since = time.ticks_diff(now, last)
        if since < min_interval_ms:
            _simenv.say("%s read too soon (%d ms after the last)" % (name, since))
            return True
    _last_read[gpio] = now
    return False


class DHTBase:
    _NAME = "DHT"
    _KIND = 22
    _MIN_INTERVAL_MS = 2000

    def __init__(self, pin):
        from machine import Pin

        self.pin = pin
        self.buf = bytearray(5)
        if isinstance(pin, Pin):
            attached[pin._id] = type(self)

    def _pin_id(self):
        from machine import Pin

        if not isinstance(self.pin, Pin):
            raise ValueError("expecting a pin")
        return self.pin._id

    def measure(self):
        pin = self._pin_id()
        time.sleep_ms(_IDLE_MS + _START_MS)
        if too_soon(pin, self._NAME, self._MIN_INTERVAL_MS):
            raise OSError(_ETIMEDOUT)
        row = next_row()
        kind = row[0]
        if kind == _TIMEOUT:
            raise OSError(_ETIMEDOUT)
        time.sleep_ms(_FRAME_MS)
        buf = self.buf
        if kind == _GOOD:
            buf[0:4] = row[3] if self._KIND == 11 else row[4]
            buf[4] = (buf[0] + buf[1] + buf[2] + buf[3]) & 0xFF
        else:
            # A corrupted transfer: the last data with a checksum that does not match.
            buf[4] = (buf[0] + buf[1] + buf[2] + buf[3] + 1) & 0xFF
        # The driver's own check, so the failure is the one the board raises.
        if (buf[0] + buf[1] + buf[2] + buf[3]) & 0xFF != buf[4]:
            raise Exception("checksum error")


class DHT11(DHTBase):
    _NAME = "DHT11"
    _KIND = 11
    _MIN_INTERVAL_MS = 1000

    def humidity(self):
        return self.buf[0]

    def temperature(self):
        return self.buf[2]


class DHT22(DHTBase):
    _NAME = "DHT22"
    _MIN_INTERVAL_MS = 2000

    def humidity(self):
        return (self.buf[0] << 8 | self.buf[1]) * 0.1

    def temperature(self):
        t = ((self.buf[2] & 0x7F) << 8 | self.buf[3]) * 0.1
        if self.buf[2] & 0x80:
            t = -t
        return t
