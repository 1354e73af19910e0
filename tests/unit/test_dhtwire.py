"""The DHT fast path: node.dhtframe decodes recorded pulse trains (CPython, the unix port and the
32-bit port alike), node.dhtwire reads the simulated wire end to end and allocates nothing while
interrupts are off."""

import json
import random

from node import dhtframe

from tests.conftest import CLEAN_ENV, REPO

SIM = REPO / "sim" / "board"


# ---- recorded pulse trains ---------------------------------------------------------------

def frame_bytes(model, t, h):
    if model == "DHT22":
        h10, t10 = round(h * 10), round(t * 10)
        data = [h10 >> 8, h10 & 0xFF, (abs(t10) >> 8) | (0x80 if t10 < 0 else 0), abs(t10) & 0xFF]
    else:  # integral and decimal bytes; the temperature's sign in the decimal byte's top bit
        h10, t10 = round(h * 10), round(t * 10)
        data = [h10 // 10, h10 % 10, abs(t10) // 10, abs(t10) % 10 | (0x80 if t10 < 0 else 0)]
    return [*data, sum(data) & 0xFF]


def pulses_of(data, rng, jitter=3):
    """What time_pulse_us returns for a frame: 80 us low, 80 us high, then each bit's high."""
    out = [80 + rng.randint(-jitter, jitter), 80 + rng.randint(-jitter, jitter)]
    for byte in data:
        for bit in range(7, -1, -1):
            high = 70 if byte >> bit & 1 else rng.choice((26, 27, 28))
            out.append(high + rng.randint(-jitter, jitter))
    return out


def expected(model, pulses, n):
    """The reference: what decode() + tenths() must give (or the error's kind)."""
    if n < 42 or any(p < 0 for p in pulses[:42]):
        return "OSError 110"
    bits = [1 if p > 48 else 0 for p in pulses[2:42]]
    data = [int("".join(map(str, bits[8 * k : 8 * k + 8])), 2) for k in range(5)]
    if sum(data[:4]) & 0xFF != data[4]:
        return "checksum error"
    if model == "DHT22":
        t, h = (data[2] & 0x7F) << 8 | data[3], data[0] << 8 | data[1]
        return [-t if data[2] & 0x80 else t, h]
    t, h = data[2] * 10 + (data[3] & 0x7F) % 10, data[0] * 10 + data[1] % 10
    return [-t if data[3] & 0x80 else t, h]


def cases():
    rng = random.Random(11)
    out = []
    good = [("DHT22", -12.3, 55.5), ("DHT22", -40, 0), ("DHT22", 80, 100), ("DHT22", 21.1, 40),
            ("DHT22", -0.1, 99.9), ("DHT11", 21.4, 45), ("DHT11", 0, 20), ("DHT11", 50, 95),
            ("DHT11", 23, 50.3), ("DHT11", -1.5, 30)]
    for model, t, h in good:
        for jitter in (0, 3, 6):
            p = pulses_of(frame_bytes(model, t, h), rng, jitter)
            out.append((f"{model} {t} {h} jitter {jitter}", model, p, 42))
    base = pulses_of(frame_bytes("DHT22", 21.5, 48.2), rng)
    out.append(("no answer", "DHT22", [-2] + [0] * 41, 1))
    out.append(("response never ends", "DHT22", [80, -1] + [0] * 40, 2))
    for cut in (2, 20, 41):  # the frame stopped at the first timeout
        p = base[:cut] + [-2] + [0] * (41 - cut)
        out.append((f"bit {cut - 2} never starts", "DHT22", p, cut + 1))
        p = base[:cut] + [-1] + [0] * (41 - cut)
        out.append((f"bit {cut - 2} never ends", "DHT22", p, cut + 1))
    out.append(("39 bits", "DHT22", base[:41] + [0], 41))
    bad = list(base)
    bad[40] = 70 if bad[40] < 48 else 27  # one bit of the checksum flipped
    out.append(("bad checksum", "DHT22", bad, 42))
    bad = list(base)
    bad[5] = 70 if bad[5] < 48 else 27  # one data bit flipped
    out.append(("bad data bit", "DHT11", bad, 42))
    out.append(("all zeros", "DHT11", [80, 80] + [27] * 40, 42))
    out.append(("all ones", "DHT22", [80, 80] + [70] * 40, 42))
    out.append(("stuck high", "DHT22", [80, 80] + [99] * 40, 42))
    return out


CASES = cases()

_DECODE = """
import json, sys
from node.dhtframe import decode, tenths
buf = bytearray(5)
for name, model, pulses, n in json.load(open(sys.argv[1])):
    try:
        decode(pulses, n, buf)
        print(json.dumps(list(tenths(model, buf))))
    except OSError as e:
        print(json.dumps("OSError %d" % e.args[0]))
    except Exception as e:
        print(json.dumps(str(e)))
"""


def decode_cpython(model, pulses, n):
    buf = bytearray(5)
    try:
        dhtframe.decode(pulses, n, buf)
        return list(dhtframe.tenths(model, buf))
    except OSError as e:
        return "OSError %d" % e.args[0]
    except Exception as e:  # noqa: BLE001  (the stock driver's bare Exception, checked below)
        return str(e)


def test_decoder_on_cpython_matches_the_reference():
    for name, model, pulses, n in CASES:
        assert decode_cpython(model, pulses, n) == expected(model, pulses, n), name


def test_decoder_values_and_errors():
    # The reference itself, on the cases that matter to the climate task.
    by_name = {name: expected(model, p, n) for name, model, p, n in CASES}
    assert by_name["DHT22 -12.3 55.5 jitter 6"] == [-123, 555]
    assert by_name["DHT22 -0.1 99.9 jitter 3"] == [-1, 999]
    assert by_name["DHT11 21.4 45 jitter 6"] == [214, 450]
    assert by_name["DHT11 23 50.3 jitter 3"] == [230, 503]
    assert by_name["DHT11 -1.5 30 jitter 0"] == [-15, 300]
    assert by_name["no answer"] == by_name["bit 39 never ends"] == "OSError 110"
    assert by_name["bad checksum"] == by_name["all ones"] == "checksum error"
    assert by_name["all zeros"] == [0, 0]  # valid bytes; the climate task calls it implausible


def test_decoder_on_micropython(mpy_each, tmp_path):
    f = tmp_path / "cases.json"
    f.write_text(json.dumps(CASES))
    out = [json.loads(line) for line in mpy_each(_DECODE, f).stdout.splitlines()]
    assert len(out) == len(CASES)
    for (name, model, pulses, n), got in zip(CASES, out):
        assert got == expected(model, pulses, n), name


# ---- the fast path on the simulated wire -------------------------------------------------

_WIRE = """
import asyncio, dht, sys, time
from machine import Pin
from node import dhtwire

def sensor(model, gpio):
    cls = dht.DHT22 if model == "DHT22" else dht.DHT11
    return dhtwire.Sensor(cls(Pin(gpio)), model)

async def read(s):
    try:
        return list(await s.read())
    except OSError as e:
        return "OSError %d" % e.args[0]
    except Exception as e:
        return str(e)
"""


def run_wire(run, src, script):
    return run(_WIRE + src, path=[SIM], env={"SIM_DHT": str(script)})


def test_fast_path_reads_the_simulated_sensor(mpy_each, tmp_path):
    script = tmp_path / "dht.csv"
    script.write_text("-12.3,55.5\ntimeout\nchecksum\n21.07,40.04\n")
    src = """
s = sensor("DHT22", 5)
async def main():
    out = []
    for wait_ms in (0, 1000, 2100, 2100, 2100):   # the second read comes too soon
        await asyncio.sleep_ms(wait_ms)
        t0 = time.ticks_ms()
        out.append(await read(s))
        out.append(time.ticks_diff(time.ticks_ms(), t0))
    print(out)
asyncio.run(main())
"""
    proc = run_wire(mpy_each, src, script)
    out = eval(proc.stdout)
    values, took_ms = out[0::2], out[1::2]
    assert values == [[-123, 555], "OSError 110", "OSError 110", "checksum error", [211, 400]]
    assert "sim: DHT22 read too soon" in proc.stderr
    assert all(ms < 15 for ms in took_ms), took_ms  # a 2 ms start pulse and a ~5 ms frame


def test_fast_path_dht11_needs_an_18_ms_start_pulse(mpy, tmp_path):
    script = tmp_path / "dht.csv"
    script.write_text("23,50\n")
    src = """
s = sensor("DHT11", 4)
pin = Pin(4)
pin.init(Pin.OPEN_DRAIN, value=0)
time.sleep_ms(5)                       # what a DHT22 would take; a DHT11 does not answer
n = s.capture()
print(n, list(s.pulses)[:1])
time.sleep_ms(1100)
print(asyncio.run(read(s)))
"""
    proc = run_wire(lambda *a, env, **k: mpy(*a, env={**CLEAN_ENV, **env}, **k), src, script)
    lines = proc.stdout.splitlines()
    assert lines == ["1 [-2]", "[230, 500]"]
    assert "sim: DHT11 start pulse too short (" in proc.stderr


def test_capture_and_decode_allocate_nothing(mpy_each, tmp_path):
    script = tmp_path / "dht.csv"
    script.write_text("21.5,48.2\n")
    src = """
import micropython
from node.dhtframe import decode
s = sensor("DHT11", 4)
print(asyncio.run(read(s)))           # the first read sets up the simulator's state
pin = Pin(4)
for _ in range(2):
    time.sleep_ms(1050)
    pin.init(Pin.OPEN_DRAIN, value=0)
    time.sleep_ms(20)
    micropython.heap_lock()
    try:
        n = s.capture()
        decode(s.pulses, n, s.buf)
    finally:
        micropython.heap_unlock()
    print(n, list(s.buf))
"""
    lines = run_wire(mpy_each, src, script).stdout.splitlines()
    assert lines == ["[220, 480]", "42 [48, 0, 22, 0, 70]", "42 [48, 0, 22, 0, 70]"]
