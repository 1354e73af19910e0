"""One measurement for test_dht_cost.py, under the unix port with sim/board on the path: the
climate task (real DHT driver on the simulated board) beside the sound task (real I2S) and a
loop-lag probe. Prints one JSON line: lag p99/max, samples lost, DHT reads."""

import asyncio
import json
import sys

from node import board
from node.climate import Climate
from node.dsp import LevelMeter
from node.lagprobe import LagProbe
from node.outbox import Outbox
from node.sound import Sound

driver, rate_hz, run_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
audio = {"sck": 32, "ws": 25, "sd": 33, "rate_hz": rate_hz, "bits": 16, "frame_samples": 512,
         "publish_interval_s": 5, "mic_sensitivity_dbfs": None}
dht_settings = {"model": "DHT11", "pin": 4, "interval_s": 1, "window": 1, "driver": driver}
class Box(Outbox):
    """Counts the climate readings queued."""

    climate = 0

    def add(self, topic, pairs, age_ms=0):
        self.climate += topic == b"c"
        return super().add(topic, pairs, age_ms)


box = Box(200, 1, lambda: 1800000000, lambda: 0, 4096)
i2s = board.microphone(audio)
sound = Sound(i2s, LevelMeter(16, rate_hz), audio, box, b"s", b"e", lambda: None,
              board.mic_ring_samples(rate_hz))
climate = Climate(board.dht_sensor("DHT11", 4), dht_settings, box, b"c", lambda: None)
lag = LagProbe()


async def main():
    for coro in (sound.run(), lag.run()):
        asyncio.create_task(coro)  # noqa: RUF006  (MicroPython keeps every task)
    await asyncio.sleep_ms(1000)  # the sound task settles before the DHT starts
    lost0 = i2s.lost_samples
    lag.summary()
    asyncio.create_task(climate.run())  # noqa: RUF006
    await asyncio.sleep_ms(run_s * 1000)
    s = lag.summary()
    readings = box.climate
    print(json.dumps({"driver": driver, "rate_hz": rate_hz, "p99_ms": s["p99_ms"],
                      "max_ms": s["max_ms"], "lost": i2s.lost_samples - lost0,
                      "overruns": i2s.overruns, "errors": climate.errors,
                      "readings": readings}))


asyncio.run(main())
