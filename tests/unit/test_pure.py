"""Pure modules (filters, outbox, payload) under the unix port, checked against CPython/numpy."""

import json
import random

import numpy as np
import pytest

from tools.hosttools import REPO

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
now = [0]
box = Outbox(4, 7, lambda: now[0], lambda: 0, 4096)
for i in range(6):
    now[0] = 1700000000 + i                   # the outbox stamps each reading as it is added
    box.add(b"t/climate", (("temperature", 20 + i),))
now[0] = 1800000000
print(json.dumps([box.taken, box.dropped, len(box)]))
seq, topic, body, dup = box.send_next()
print(json.dumps([seq, topic.decode(), json.loads(body), dup]))
box.pop(seq)
box.pop(seq)          # a repeated acknowledgement pops nothing more
box.pop(999)          # nor does one for a reading that is not the oldest
first, again = box.send_next(), box.send_next()   # a resend (after a reconnect) is a DUP
print(json.dumps([box.delivered, len(box), first[0], first[3], again[0], again[3]]))
"""


def test_outbox_drops_oldest_and_numbers_readings(mpy):
    lines = mpy(_OUTBOX).stdout.splitlines()
    assert json.loads(lines[0]) == [6, 2, 4]
    seq, topic, body, dup = json.loads(lines[1])
    assert (seq, topic, dup) == (3, "t/climate", False)
    assert body == {"boot": 7, "seq": 3, "ts": 1700000002, "temperature": 22}
    assert json.loads(lines[2]) == [1, 3, 4, False, 4, True]


def test_outbox_same_on_cpython():
    from node.outbox import Outbox  # lib/ is on pytest's pythonpath (pyproject.toml)

    box = Outbox(4, 7, lambda: 1800000000, lambda: 0, 4096)
    for i in range(6):
        box.add(b"t/climate", (("temperature", 20 + i),))
    seq, _, body, _ = box.send_next()
    assert (box.taken, box.dropped, len(box), seq) == (6, 2, 4, 3)
    assert json.loads(body) == {"boot": 7, "seq": 3, "ts": 1800000000, "temperature": 22}


def test_a_full_outbox_never_evicts_the_reading_in_flight(mpy):
    """It will reach the broker: dropping it would count a delivered reading as lost."""
    out = mpy("""
from node.outbox import Outbox
box = Outbox(4, 1, lambda: 1800000000, lambda: 0, 4096)
for i in range(4):
    box.add(b"t", (("n", i),))
seq = box.send_next()[0]                 # seq 1 goes out...
for i in range(3):
    box.add(b"t", (("n", i),))           # ...while 3 more arrive: 2, 3, 4 are dropped
box.pop(seq)                             # 1's PUBACK
order = []
while len(box):
    s = box.send_next()[0]
    order.append(s)
    box.pop(s)
print(box.dropped, box.delivered, order)
""").stdout.strip()
    assert out == "3 4 [5, 6, 7]"  # taken 7 = delivered 4 (1, 5, 6, 7) + dropped 3


def test_readings_taken_before_the_clock_is_set_are_corrected_or_marked(mpy):
    out = mpy("""
from node.outbox import Outbox
now = [None]   # Unix time: unknown until "NTP" answers
up = [5000]    # uptime in ms
box = Outbox(8, 1, lambda: now[0], lambda: up[0], 4096)
box.add(b"t", (("temperature", 20.5),))           # taken at uptime 5 s, time unknown
up[0] = 65000
print(box.send_next()[2].decode())                  # still unknown when sent: marked null
box.add(b"t", (("temperature", 21.0),))           # taken at uptime 65 s
now[0] = 1800000000                                 # the clock is set at uptime 95 s...
up[0] = 95000
seq, _, body, _ = box.send_next()
print(body.decode())                                # ...so the first was taken 90 s before
now[0] = 1800000100                                 # a resend 100 s later...
up[0] = 195000
print(box.send_next()[2].decode())                  # ...keeps the ts worked back first
box.pop(seq)
print(box.send_next()[2].decode())                  # and the second was taken 30 s before
now[0] = 1800000001
box.add(b"t", (("temperature", 21.5),))
now[0] = 1800000500
box.pop(2)
print(box.send_next()[2].decode())                  # a reading stamped when taken keeps it
""").stdout.splitlines()
    assert out == [
        '{"boot":1,"seq":1,"ts":null,"temperature":20.50}',
        '{"boot":1,"seq":1,"ts":1799999910,"temperature":20.50}',
        '{"boot":1,"seq":1,"ts":1799999910,"temperature":20.50}',
        '{"boot":1,"seq":2,"ts":1799999970,"temperature":21.00}',

        '{"boot":1,"seq":3,"ts":1800000001,"temperature":21.50}',
    ]


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
print(payload.reading(3, 41, 1795440000, payload.fields((
    ("rms_dbfs", -9.03), ("peak_dbfs", -6.0205), ("bad", float("nan")), ("inf", float("-inf")),
    ("n", 7), ("s", 'a"b')))).decode())
""").stdout.strip()
    assert out == ('{"boot":3,"seq":41,"ts":1795440000,"rms_dbfs":-9.03,"peak_dbfs":-6.02,'
                   '"bad":null,"inf":null,"n":7,"s":"a\\"b"}')
    assert json.loads(out)["rms_dbfs"] == -9.03


def test_boot_counter_survives_a_damaged_file(mpy, tmp_path):
    """boot.json is read at every boot: damage restarts the count, it never stops the boot."""
    out = mpy("""
from node import bootcount
print(bootcount.read("boot.json"), bootcount.increment("boot.json"),
      bootcount.increment("boot.json"))
for junk in ('{"boot": -4}', '{"boot": "7", "unstable": true}', '[1]', '{', '\\xff\\xfe', '',
             '{"boot": 1e999}'):
    open("boot.json", "w").write(junk)
    print(bootcount.read("boot.json"), bootcount.increment("boot.json"))
open("boot.json", "wb").write(b"\\xff\\xfe{")
print(bootcount.read("boot.json"), bootcount.increment("boot.json"))
""", cwd=tmp_path).stdout.split("\n")
    assert out[0] == "0 (1, 1) (2, 2)"
    assert out[1:9] == ["0 (1, 1)"] * 8


def test_boot_loop_count_is_cleared_by_a_stable_run(mpy, tmp_path):
    out = mpy("""
import json
from node import bootcount
for _ in range(3):
    bootcount.increment("boot.json")
state = json.load(open("boot.json"))
print(bootcount.read("boot.json"), state["unstable"])
bootcount.mark_stable("boot.json")
state = json.load(open("boot.json"))
print(bootcount.read("boot.json"), state["unstable"])
print(bootcount.increment("boot.json"))
""", cwd=tmp_path).stdout.split()
    assert out == ["3", "3", "3", "0", "(4,", "1)"]


def test_a_soft_reset_gets_a_boot_number_but_is_not_counted_unstable(mpy, tmp_path):
    out = mpy("""
from node import bootcount
print(bootcount.increment("boot.json"), bootcount.increment("boot.json", False),
      bootcount.increment("boot.json", False), bootcount.increment("boot.json"))
""", cwd=tmp_path).stdout.strip()
    assert out == "(1, 1) (2, 1) (3, 1) (4, 2)"


@pytest.mark.parametrize("config, expected", [
    (None, 5),  # no config.json: the protection stays on
    ('{"safe_mode_boots": 3}', 3),
    ('{"safe_mode_boots": 1}', 5),  # one crash is not a loop: below the minimum, the default
    ('{"safe_mode_boots": true}', 5),
    ('{"safe_mode_boots": "9"}', 5),
    ('[3]', 5),
    ('{"safe_mode_boots": 3', 5),  # an invalid config must not switch the protection off
])
def test_safe_mode_limit_comes_from_config_or_the_default(mpy, tmp_path, config, expected):
    if config is not None:
        (tmp_path / "config.json").write_text(config)
    out = mpy("from node import bootcount\nprint(bootcount.safe_mode_boots('config.json'))",
              cwd=tmp_path).stdout.strip()
    assert out == str(expected)


_OUTBOX_RING = """
import gc, json, sys
from node.outbox import Outbox

# xorshift32: the same sequence of operations under both interpreters
state = [2463534242]
def rnd(n):
    s = state[0]
    s ^= (s << 13) & 0xFFFFFFFF
    s ^= s >> 17
    s ^= (s << 5) & 0xFFFFFFFF
    state[0] = s
    return s % n

box = Outbox(40, 2, lambda: 1800000000, lambda: 0, 2048)
sent = {}        # seq -> (length, letter) of the text it was given, until delivered or dropped
delivered = []   # seqs in delivery order
in_flight = None
violations = 0
bad = 0

def deliver(seq, topic, body, dup):
    global bad
    p = json.loads(body)
    if (len(p["v"]), p["v"][0]) != sent.pop(seq) or p["seq"] != seq or p["boot"] != 2:
        bad += 1
    for older in [s for s in sent if s < seq]:  # dropped: they can never come now
        del sent[older]
    delivered.append(seq)

for step in range(4000):
    op = rnd(10)
    if op < 6:
        # bodies of 10..250 bytes: the ring fills by bytes before it fills by count
        text = "xyz"[rnd(3)] * (10 + rnd(240))
        seq = box.add(b"t/sound" if rnd(2) else b"t/climate", (("v", text),))
        sent[seq] = (len(text), text[0])
    elif len(box):
        if in_flight is None or rnd(3) == 0:  # send, or resend after a "reconnect"
            in_flight = box.send_next()
        if rnd(2):
            deliver(*in_flight)
            box.pop(in_flight[0])
            in_flight = None
    if box.taken != box.delivered + box.dropped + len(box):
        violations += 1
while len(box):
    item = box.send_next()
    deliver(*item)
    box.pop(item[0])
seqs = delivered
print(json.dumps({"taken": box.taken, "delivered": box.delivered, "dropped": box.dropped,
                  "violations": violations, "bad": bad, "ordered": seqs == sorted(seqs),
                  "unique": len(set(seqs)) == len(seqs), "checksum": sum(seqs) % 100003}))
"""


def _ring_result(out):
    return json.loads(out.strip().splitlines()[-1])


def test_outbox_ring_keeps_every_body_intact_and_in_order(mpy):
    """Thousands of adds, sends, resends and acknowledgements through a 2 KB ring: every
    reading delivered is the one added under its seq, in order, and the counts add up."""
    r = _ring_result(mpy(_OUTBOX_RING).stdout)
    assert r["violations"] == 0 and r["bad"] == 0, r
    assert r["ordered"] and r["unique"], r
    assert r["dropped"] > 500 and r["delivered"] > 500, r  # both paths well exercised
    assert r["taken"] == r["delivered"] + r["dropped"]


def test_outbox_ring_same_on_cpython(mpy, tmp_path):
    """Differential: the same operations give the same deliveries under CPython."""
    import subprocess
    import sys

    script = tmp_path / "ring.py"
    script.write_text(_OUTBOX_RING)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO / "lib")}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert _ring_result(proc.stdout) == _ring_result(mpy(_OUTBOX_RING).stdout)


def test_outbox_is_bounded_in_bytes_and_keeps_the_one_in_flight(mpy):
    out = mpy("""
import gc, json
from node.outbox import Outbox
box = Outbox(100, 1, lambda: 1800000000, lambda: 0, 2048)
for i in range(10):
    box.add(b"t", (("v", "x" * 180),))       # ~190 bytes each: 10 fill the 2 KB ring
first = box.send_next()[0]                   # seq 1 goes out...
for i in range(5):
    box.add(b"t", (("v", "y" * 180),))       # ...while 5 more need room
print(json.dumps([len(box), box.dropped]))
box.pop(first)                               # 1 was kept aside and is delivered
order = []
while len(box):
    s = box.send_next()[0]
    order.append(s)
    box.pop(s)
print(json.dumps([box.delivered, box.dropped, order[:2], order[-1]]))
seq = box.add(b"t", (("v", "z" * 600),))     # larger than any reading may be: dropped, counted
print(json.dumps([seq, len(box), box.dropped]))
gc.collect()
free = gc.mem_free()
for i in range(2000):                        # an outage: the ring is reused, the heap is not
    box.add(b"t", (("v", "w" * (i % 200)),))
gc.collect()
print(json.dumps([len(box) <= 100, free - gc.mem_free()]))
""").stdout.splitlines()
    # 186-byte bodies: 11 fit the ring. Room for 12..15 took 1 (moved aside: in flight), then
    # the oldest not in flight, 2, 3 and 4; 11 + the one aside are queued.
    assert json.loads(out[0]) == [12, 3], out
    assert json.loads(out[1]) == [12, 3, [5, 6], 15], out  # delivered, dropped, order
    assert json.loads(out[2]) == [16, 0, 4], out
    bounded, grown = json.loads(out[3])
    assert bounded and grown < 512, out  # nothing kept per reading outside the ring
