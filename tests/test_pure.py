"""Pure modules (filters, outbox, payload) under the unix port, checked against CPython/numpy."""

import json
import random

import numpy as np

from conftest import REPO

_MOVING_AVERAGE = """
import json, sys
from node.filters import MovingAverage
window, samples = json.load(open(sys.argv[1]))
f = MovingAverage(window)
out = []
for s in samples:
    f.push(s)
    out.append(f.mean())
print(json.dumps(out))
"""


def test_moving_average_matches_numpy(mpy, tmp_path):
    rng = random.Random(7)
    for window in (1, 5, 60):
        samples = [rng.randint(-400, 800) for _ in range(500)]
        f = tmp_path / "in.json"
        f.write_text(json.dumps([window, samples]))
        got = json.loads(mpy(_MOVING_AVERAGE, f).stdout)
        x = np.array(samples, dtype=np.float64)
        for i, value in enumerate(got):
            ref = x[max(0, i - window + 1) : i + 1].mean()
            assert abs(value - ref) < 1e-9, (window, i, value, ref)


def test_moving_average_empty_and_bad_window(mpy):
    out = mpy("""
from node.filters import MovingAverage
f = MovingAverage(3)
try:
    f.mean()
except ValueError as e:
    print("empty:", e)
try:
    MovingAverage(0)
except ValueError as e:
    print("window:", e)
""").stdout
    assert "empty: no samples" in out and "window: window must be >= 1" in out


def test_moving_average_allocates_nothing_per_sample(mpy):
    out = mpy("""
import micropython
from node.filters import MovingAverage
f = MovingAverage(8)
for s in range(16):
    f.push(s)
micropython.heap_lock()
for s in range(1000):
    f.push(s % 500)
micropython.heap_unlock()
print("ok", len(f))
""").stdout
    assert out.strip() == "ok 8"


_OUTBOX = """
import json
from node.outbox import Outbox
box = Outbox(4, 7)
for i in range(6):
    box.add(b"t/climate", 1700000000 + i, (("temperature", 20 + i),))
print(json.dumps([box.taken, box.dropped, len(box)]))
seq, topic, body = box.peek()
print(json.dumps([seq, topic.decode(), json.loads(body)]))
box.pop(seq)
box.pop(seq)          # a repeated acknowledgement pops nothing more
box.pop(999)          # nor does one for a reading that is not the oldest
print(json.dumps([box.delivered, len(box), box.peek()[0]]))
"""


def test_outbox_drops_oldest_and_numbers_readings(mpy):
    lines = mpy(_OUTBOX).stdout.splitlines()
    assert json.loads(lines[0]) == [6, 2, 4]
    seq, topic, body = json.loads(lines[1])
    assert (seq, topic) == (3, "t/climate")
    assert body == {"boot": 7, "seq": 3, "ts": 1700000002, "temperature": 22}
    assert json.loads(lines[2]) == [1, 3, 4]


def test_outbox_same_on_cpython():
    import sys

    sys.path.insert(0, str(REPO / "lib"))
    try:
        from node.outbox import Outbox
    finally:
        sys.path.pop(0)
    box = Outbox(4, 7)
    for i in range(6):
        box.add(b"t/climate", 1700000000 + i, (("temperature", 20 + i),))
    assert (box.taken, box.dropped, len(box), box.peek()[0]) == (6, 2, 4, 3)


def test_lag_probe_percentiles(mpy):
    out = mpy("""
import json
from node.lagprobe import LagProbe
p = LagProbe()
for lag in [0] * 90 + [3] * 8 + [40, 730]:
    p.record(lag)
print(json.dumps(p.summary()))
print(json.dumps(p.summary()))
""").stdout.splitlines()
    assert json.loads(out[0]) == {"p50_ms": 0, "p99_ms": 40, "max_ms": 730}
    assert json.loads(out[1]) == {"p50_ms": 0, "p99_ms": 0, "max_ms": 0}


def test_reading_payload_exact_bytes(mpy):
    out = mpy("""
from node import payload
print(payload.reading(3, 41, 1795440000, (("rms_dbfs", -9.03), ("peak_dbfs", -6.0205),
                                          ("bad", float("nan")), ("inf", float("-inf")),
                                          ("n", 7), ("s", 'a"b'))).decode())
""").stdout.strip()
    assert out == ('{"boot":3,"seq":41,"ts":1795440000,"rms_dbfs":-9.03,"peak_dbfs":-6.02,'
                   '"bad":null,"inf":null,"n":7,"s":"a\\"b"}')
    assert json.loads(out)["rms_dbfs"] == -9.03


def test_boot_counter_survives_a_damaged_file(mpy, tmp_path):
    """boot.json is read at every boot: damage restarts the count, it never stops the boot."""
    out = mpy("""
from node import bootcount
print(bootcount.read("boot.json"), bootcount.increment("boot.json"), bootcount.increment("boot.json"))
for junk in ('{"boot": -4}', '{"boot": "7"}', '[1]', '{', '\\xff\\xfe', ''):
    open("boot.json", "w").write(junk)
    print(bootcount.read("boot.json"), bootcount.increment("boot.json"))
""", cwd=tmp_path).stdout.split("\n")
    assert out[0] == "0 1 2"
    assert out[1:7] == ["0 1"] * 6
