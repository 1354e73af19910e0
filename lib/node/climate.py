"""The DHT task: read no faster than the sensor allows, retry failures, filter, queue readings."""

import asyncio
import time

from micropython import const

from node.filters import MovingAverage
from node.limits import DHT_MIN_INTERVAL_S
from node.log import log
from node.supervisor import sleep_beating

_RETRIES = const(2)
# What each sensor can measure (datasheets); anything outside is a failed read, not weather.
# A DHT11 that lost its data line reads 0 °C / 0 %, or 255 in every byte.
# In tenths, as readings are kept.
_RANGE = {"DHT11": (0, 500, 200, 950), "DHT22": (-400, 800, 0, 1000)}


class Climate:
    """Owns the DHT sensor; one filtered reading per interval goes to the outbox.

    `settings` is the config's "dht" section as in force: `interval_s` is read at every
    reading, so a `set` command takes effect after the current wait. With `driver` "async"
    the sensor is read by `await sensor.read()` (node.dhtwire: tenths, the loop runs meanwhile);
    otherwise by the firmware driver's blocking `measure()`, which every sensor has (a
    settings dict without `driver`, as in tests, means that one).
    """

    def __init__(self, sensor, settings, outbox, topic, beat):
        model = settings["model"]
        self._sensor = sensor
        self._model = model
        self._settings = settings
        self._fast = settings.get("driver") == "async"
        self._min_interval_ms = DHT_MIN_INTERVAL_S[model] * 1000
        self._range = _RANGE[model]
        self._temperature = MovingAverage(settings["window"])  # tenths of a degree
        self._humidity = MovingAverage(settings["window"])  # tenths of a percent
        self._outbox = outbox
        self._topic = topic
        self._beat = beat
        self._last_read_ms = None
        self.errors = 0

    async def _wait_for_sensor(self):
        # The sensor's minimum interval holds across retries and intervals alike.
        if self._last_read_ms is not None:
            wait = self._min_interval_ms - time.ticks_diff(time.ticks_ms(), self._last_read_ms)
            if wait > 0:
                await asyncio.sleep_ms(wait)
        self._beat()  # retries of a failing sensor can take several seconds
        self._last_read_ms = time.ticks_ms()

    async def _measure(self):
        """(temperature, humidity) in tenths, or None after logging why the read failed."""
        sensor = self._sensor
        try:
            if self._fast:
                t, h = await sensor.read()
            else:
                sensor.measure()
                t = round(sensor.temperature() * 10)
                h = round(sensor.humidity() * 10)
        except OSError as e:
            return self._failed("no answer (%s)" % e)
        except Exception as e:  # the dht driver raises a bare Exception for a bad checksum
            if "checksum" not in str(e):
                raise
            return self._failed("checksum error")
        t_lo, t_hi, h_lo, h_hi = self._range
        if not (t_lo <= t <= t_hi and h_lo <= h <= h_hi) or (t == 0 and h == 0):
            return self._failed("implausible %s C %s %%" % (t / 10, h / 10))
        return t, h

    def _failed(self, why):
        self.errors += 1
        log("climate", "%s read failed: %s (%d errors so far)" % (self._model, why, self.errors))
        return None

    async def run(self):
        next_ms = time.ticks_ms()
        while True:
            self._beat()
            sample = None
            for _ in range(1 + _RETRIES):
                await self._wait_for_sensor()
                sample = await self._measure()
                if sample is not None:
                    self._temperature.push(sample[0])
                    self._humidity.push(sample[1])
                    break
            if sample is not None:
                temperature = round(self._temperature.mean()) / 10
                humidity = round(self._humidity.mean()) / 10
                seq = self._outbox.add(self._topic,
                                       (("temperature", temperature), ("humidity", humidity)))
                log("climate", "reading %d: %.1f C %.1f %%" % (seq, temperature, humidity))
            next_ms = time.ticks_add(next_ms, self._settings["interval_s"] * 1000)
            wait = time.ticks_diff(next_ms, time.ticks_ms())
            if wait < 0:  # fell behind (retries): restart the schedule rather than burst
                next_ms, wait = time.ticks_ms(), 0
            await sleep_beating(wait, self._beat)
