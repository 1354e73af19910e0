"""The climate task with a fake DHT: interval kept, failures retried and counted, never
published."""

import json

import pytest

_RUN = """
import asyncio, json, sys, time
from node.climate import Climate
from node.outbox import Outbox

class FakeDHT:
    # One script row per measure(): [t, h], "timeout", "checksum" or "boom".
    def __init__(self, rows):
        self.rows = rows
        self.calls = []
        self.value = None
    def measure(self):
        self.calls.append(time.ticks_ms())
        row = self.rows.pop(0) if len(self.rows) > 1 else self.rows[0]
        if row == "timeout":
            raise OSError(110)
        if row == "checksum":
            raise Exception("checksum error")
        if row == "boom":
            raise RuntimeError("driver bug")
        self.value = row
    def temperature(self):
        return self.value[0]
    def humidity(self):
        return self.value[1]
    async def read(self):
        # node.dhtwire.Sensor's fast path: the start pulse lets other tasks run; tenths.
        await asyncio.sleep_ms(20)
        self.measure()
        return round(self.value[0] * 10), round(self.value[1] * 10)

model, interval_s, window, rows, run_ms, driver = json.load(open(sys.argv[1]))
dht = FakeDHT(rows)
box = Outbox(50, 1, lambda: 1800000000, lambda: 0, 4096)
beats = []
settings = {"model": model, "interval_s": interval_s, "window": window}
if driver:
    settings["driver"] = driver
c = Climate(dht, settings, box, b"t", lambda: beats.append(1))

async def main():
    try:
        await asyncio.wait_for_ms(c.run(), run_ms)
    except asyncio.TimeoutError:
        pass

try:
    asyncio.run(main())
    outcome = "ok"
except RuntimeError as e:
    outcome = "raised " + str(e)
readings = []
while len(box):
    seq, topic, body, _ = box.send_next()
    readings.append(json.loads(body))
    box.pop(seq)
gaps = [time.ticks_diff(b, a) for a, b in zip(dht.calls, dht.calls[1:])]
print(json.dumps({"readings": readings, "errors": c.errors, "gaps": gaps, "outcome": outcome,
                  "beats": len(beats)}))
"""


def run(mpy, tmp_path, model, interval_s, window, rows, run_ms, driver=None):
    f = tmp_path / "case.json"
    f.write_text(json.dumps([model, interval_s, window, rows, run_ms, driver]))
    proc = mpy(_RUN, f, path=[])
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("driver", [None, "stock", "async"])
def test_filtered_readings_one_per_interval(mpy, tmp_path, driver):
    rows = [[20, 40], [22, 42], [24, 44], [26, 46]]
    out = run(mpy, tmp_path, "DHT11", 1, 2, rows, 3500, driver)
    temps = [r["temperature"] for r in out["readings"]]
    hums = [r["humidity"] for r in out["readings"]]
    assert temps == [20.0, 21.0, 23.0, 25.0]  # window of 2
    assert hums == [40.0, 41.0, 43.0, 45.0]
    assert [r["seq"] for r in out["readings"]] == [1, 2, 3, 4]
    assert out["errors"] == 0


@pytest.mark.parametrize("driver", ["stock", "async"])
def test_failures_retried_counted_never_published(mpy, tmp_path, driver):
    # timeout, checksum and an implausible DHT11 frame (0 C / 0 %, 255) before a good read
    rows = ["timeout", "checksum", [21, 50], [0, 0], [255, 255], "timeout", [23, 52]]
    out = run(mpy, tmp_path, "DHT11", 2, 1, rows, 7500, driver)
    assert out["outcome"] == "ok"
    assert out["errors"] == 5
    values = [(r["temperature"], r["humidity"]) for r in out["readings"]]
    assert values[:2] == [(21.0, 50.0), (23.0, 52.0)]
    for t, h in values:
        assert 0 < t <= 50 and 20 <= h <= 95


def test_never_reads_faster_than_the_sensor_allows(mpy, tmp_path):
    # All reads failing makes the task retry as fast as it may: DHT11 1 s, DHT22 2 s.
    for model, min_gap in (("DHT11", 1000), ("DHT22", 2000)):
        out = run(mpy, tmp_path, model, min_gap // 1000, 3, ["timeout"], 5000)
        assert out["readings"] == []
        assert len(out["gaps"]) >= 2
        assert min(out["gaps"]) >= min_gap - 1, (model, out["gaps"])
        assert out["beats"] >= 3  # still reporting to the supervisor while failing


@pytest.mark.parametrize("driver", ["stock", "async"])
def test_unexpected_driver_error_is_not_swallowed(mpy, tmp_path, driver):
    out = run(mpy, tmp_path, "DHT22", 2, 3, ["boom"], 500, driver)
    assert out["outcome"] == "raised driver bug"
