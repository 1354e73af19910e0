"""The status LED (lib/node/led.py) under the unix port, and the simulated machine.Timer and pin
log it is tested with. Timings are checked loosely (order, rough durations and ratios): the
host's scheduler is not the board's."""

import json
import statistics

import pytest

from sim.host.simnode import read_pin_log
from tests.conftest import REPO

SIM = REPO / "sim" / "board"

# An LED that counts what it is told, allocating nothing, even under heap_lock.
_RECORDER = """
import asyncio, json, time, micropython
from node import led

class Recorder:
    def __init__(self):
        self.n = 0
    def value(self, v):
        self.n += 1
"""


def segments(events, start_ms, end_ms):
    """(level, duration ms) of each steady level that begins and ends within [start, end]."""
    changes = []
    for t, v in events:
        if not changes or changes[-1][1] != v:
            changes.append((t, v))
    return [
        (v, t_next - t)
        for (t, v), (t_next, _) in zip(changes, changes[1:])
        if t >= start_ms and t_next <= end_ms
    ]


def durations(segs, level):
    return [d for v, d in segs if v == level]


def near(value, target, slack=0.35):
    return target * (1 - slack) - 20 <= value <= target * (1 + slack) + 20


# The simulated board's LEDs of both kinds, as config.py makes their config section.
GPIO_LED = {"kind": "gpio", "pin": 2, "inverted": False}
WS2812_LED = {"kind": "ws2812", "pin": 38, "brightness": 32}
BLACK = (0, 0, 0)

_PATTERNS = """
import asyncio, json, sys, time
from node import board, led

marks = []
def mark(name, t0):
    marks.append((name, time.ticks_diff(time.ticks_ms(), t0)))

status = led.StatusLed(board.status_led(json.loads(sys.argv[1])))

async def main():
    t0 = time.ticks_ms()
    task = asyncio.create_task(status.run())
    mark("connecting", t0)
    await asyncio.sleep_ms(1000)
    status.set(led.RUNNING)
    mark("running", t0)
    await asyncio.sleep_ms(3300)
    status.set(led.ERROR)
    mark("error", t0)
    await asyncio.sleep_ms(2300)
    status.identify(1)
    mark("identify", t0)
    await asyncio.sleep_ms(500)
    status.set(led.RUNNING)  # changes the mode under the identify
    await asyncio.sleep_ms(1800)
    mark("end", t0)
    print(json.dumps({"t0": t0, "marks": marks, "dead": task.done()}))

asyncio.run(main())
"""


def lit(shown):
    return int(shown not in (0, BLACK))


def colours_between(events, start_ms, end_ms):
    return {v for t, v in events if start_ms <= t < end_ms and v != BLACK}


@pytest.mark.parametrize("cfg", [GPIO_LED, WS2812_LED], ids=["gpio", "ws2812"])
def test_each_mode_has_its_documented_pattern(mpy, tmp_path, cfg):
    log = tmp_path / "pins.log"
    out = json.loads(mpy(_PATTERNS, json.dumps(cfg), path=[SIM], timeout=60,
                         env={"SIM_PIN_LOG": str(log)}).stdout)
    assert not out["dead"]
    shown = [(t - out["t0"], v) for t, gpio, v in read_pin_log(log) if gpio == cfg["pin"]]
    events = [(t, lit(v)) for t, v in shown]
    marks = dict(out["marks"])
    # Each window skips the first step after a switch, which may be cut short.
    conn = segments(events, marks["connecting"], marks["running"])
    run = segments(events, marks["running"], marks["error"] + 50)
    err = segments(events, marks["error"], marks["identify"])
    ident = segments(events, marks["identify"], marks["identify"] + 1000)
    after = [(t, v) for t, v in events if t > marks["identify"] + 950]

    # connecting: an even 5 Hz blink
    on, off = durations(conn, 1), durations(conn, 0)
    assert len(on) >= 3 and len(off) >= 3, conn
    assert near(statistics.median(on), 100) and near(statistics.median(off), 100), conn

    # running: a short blip, then ~3 s dark
    on, off = durations(run, 1), durations(run, 0)
    assert on and off, run
    assert near(on[0], 50) and near(off[0], 2950, 0.1), run
    assert off[0] > 20 * on[0]

    # error: on, short off, on, long off: two blinks per 2 s
    assert [v for v, _ in err[:4]] == [1, 0, 1, 0] or [v for v, _ in err[1:5]] == [1, 0, 1, 0]
    off = durations(err, 0)
    short, long_ = [d for d in off if d < 600], [d for d in off if d >= 600]
    assert short and long_, err
    assert near(statistics.median(short), 150) and near(statistics.median(long_), 1550, 0.15)
    assert all(near(d, 150) for d in durations(err, 1)), err

    # identify: a 12.5 Hz flicker, faster than anything else
    on = durations(ident, 1)
    assert len(on) >= 8 and near(statistics.median(on), 40), ident

    # after it, the mode set during the identify (running): a blip (which may merge with the
    # flicker's last "on"), then dark to the end
    after = segments(after + [(marks["end"], -1)], 0, marks["end"])
    assert [v for v, _ in after[-2:]] == [1, 0], after
    assert after[-2][1] < 40 + 50 + 60 and after[-1][1] > 1000, after

    if cfg["kind"] == "gpio":
        return
    # A WS2812 plays the same steps in the mode's colour, at led.brightness 32 of 255: the
    # table's full 255 shows as 32, its 128 (running's dimmer green) rounded up to 17.
    assert shown[0] == (shown[0][0], BLACK)  # dark from the start
    assert colours_between(shown, 0, marks["running"]) == {(0, 0, 32)}  # blue
    assert colours_between(shown, marks["running"] + 10, marks["error"]) == {(0, 17, 0)}  # green
    assert colours_between(shown, marks["error"] + 10, marks["identify"]) == {(32, 0, 0)}  # red
    assert colours_between(shown, marks["identify"] + 10,
                           marks["identify"] + 950) == {(32, 32, 32)}  # white
    # identify(1) ends at most 1000 ms after its mark: then the blip of running's green
    assert colours_between(shown, marks["identify"] + 1000, marks["end"]) == {(0, 17, 0)}


# `light` and `out` (what counts the steps) for the kind named by argv[1]: a GPIO LED on the
# recorder, or a WS2812 as the simulated neopixel, through a tap that counts its writes.
_LIGHTS = _RECORDER + """
import sys

class Tap:
    def __init__(self, pixels):
        self.pixels = pixels
        self.n = 0
    def __setitem__(self, i, colour):
        self.pixels[i] = colour
    def write(self):
        self.n += 1
        self.pixels.write()

if sys.argv[1] == "gpio":
    light = out = Recorder()
else:
    import machine, neopixel
    from node.ws2812 import Ws2812Led
    out = Tap(neopixel.NeoPixel(machine.Pin(38), 1))
    light = Ws2812Led(out, 32)
"""

_NO_ALLOC = _LIGHTS + """
status = led.StatusLed(light)

async def main():
    task = asyncio.create_task(status.run())
    await asyncio.sleep_ms(250)  # started, first steps taken
    before = out.n
    micropython.heap_lock()
    try:
        await asyncio.sleep_ms(600)
        status.set(led.ERROR)
        status.identify(1)
        await asyncio.sleep_ms(600)
        status.set(led.RUNNING)
        await asyncio.sleep_ms(600)
    finally:
        micropython.heap_unlock()
    print(json.dumps({"steps": out.n - before, "dead": task.done()}))

asyncio.run(main())
"""


@pytest.mark.parametrize("kind", ["gpio", "ws2812"])
def test_run_allocates_nothing(mpy, kind):
    # An allocation under heap_lock raises MemoryError inside the task, which then ends.
    proc = mpy(_NO_ALLOC, kind, path=[SIM])
    out = json.loads(proc.stdout)
    assert out["steps"] >= 20 and not out["dead"], proc.stdout + proc.stderr
    assert "MemoryError" not in proc.stderr


def test_no_pin_makes_every_call_a_no_op(mpy):
    out = mpy("""
import asyncio
from node import led

class Timer:
    PERIODIC = 1
    inits = 0
    def init(self, **kw):
        Timer.inits += 1

status = led.StatusLed(None)
status.set(led.ERROR)
status.identify(5)
status.safe_mode(Timer())
asyncio.run(asyncio.wait_for_ms(status.run(), 200))  # returns by itself, no timeout
print("timer inits", Timer.inits)
""").stdout
    assert out.strip() == "timer inits 0"


def test_bad_mode_and_identify_time_are_refused(mpy):
    out = mpy("""
from node import led
status = led.StatusLed(None)
for call in (lambda: status.set(7), lambda: status.identify(-1), lambda: status.identify(4000)):
    try:
        call()
    except ValueError as e:
        print("ValueError:", e)
""").stdout
    assert out.count("ValueError:") == 3, out


_SAFE_MODE = """
import json, machine, sys, time
from node import board, led
status = led.StatusLed(board.status_led(json.loads(sys.argv[1])))
status.safe_mode(machine.Timer(0))
# What the REPL does in safe mode: wait for input; scheduled callbacks run meanwhile.
time.sleep_ms(2750)
"""


# A GPIO LED wired to 3V3, lit at a low level; the WS2812 shows amber at brightness 32.
@pytest.mark.parametrize("cfg,dark,lit", [
    ({**GPIO_LED, "inverted": True}, 1, 0),
    (WS2812_LED, BLACK, (32, 13, 0)),
], ids=["gpio", "ws2812"])
def test_safe_mode_blinks_from_the_timer_at_the_repl(mpy, tmp_path, cfg, dark, lit):
    log = tmp_path / "pins.log"
    mpy(_SAFE_MODE, json.dumps(cfg), path=[SIM], env={"SIM_PIN_LOG": str(log)})
    lines = read_pin_log(log)
    assert {gpio for _, gpio, _ in lines} == {cfg["pin"]}
    shown = [v for _, _, v in lines]
    # StatusLed() turns the LED off, safe_mode() on, then the timer toggles.
    assert shown[:3] == [dark, lit, dark], lines
    assert set(shown) == {dark, lit}, lines
    assert all(a != b for a, b in zip(shown, shown[1:])), "only changes are logged"
    gaps = [b[0] - a[0] for a, b in zip(lines[1:], lines[2:])]
    assert len(gaps) >= 4, lines
    assert all(near(g, 500, 0.2) for g in gaps), gaps


@pytest.mark.parametrize("kind", ["gpio", "ws2812"])
def test_safe_mode_callback_allocates_nothing(mpy, kind):
    proc = mpy(_LIGHTS + """
import machine
status = led.StatusLed(light)
status.safe_mode(machine.Timer(0))
micropython.heap_lock()
time.sleep_ms(1300)
micropython.heap_unlock()
print("toggles", out.n - 2)
""", kind, path=[SIM])
    assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr, proc.stderr
    assert int(proc.stdout.split()[-1]) >= 2, proc.stdout


_IMPORTED = """
import json, sys
from node import app, board, startup, wiring  # noqa: F401 - everything the app imports
light = board.status_led(json.loads(sys.argv[1]))
print(json.dumps([type(light).__name__, "neopixel" in sys.modules,
                  "node.ws2812" in sys.modules]))
"""


def test_ws2812_code_is_imported_only_for_a_ws2812(mpy):
    """A board with a plain LED spends no RAM on the WS2812 driver nor the firmware's neopixel,
    whatever the whole app imports."""
    def imported(cfg):
        return json.loads(mpy(_IMPORTED, json.dumps(cfg), path=[SIM]).stdout)

    assert imported(GPIO_LED) == ["Signal", False, False]
    assert imported({**GPIO_LED, "pin": None}) == ["NoneType", False, False]
    assert imported(WS2812_LED) == ["Ws2812Led", True, True]


# ---- the simulated machine.Timer and SIM_PIN_LOG ---------------------------------------------

def test_sim_timer_periodic_one_shot_deinit_and_shared_ids(mpy):
    out = json.loads(mpy("""
import json, machine, time
hits = {"p": 0, "o": 0, "old": 0}
def cb(key):
    def f(t):
        hits[key] += 1
    return f
t = machine.Timer(0)
t.init(mode=machine.Timer.PERIODIC, period=100, callback=cb("p"))
machine.Timer(1, mode=machine.Timer.ONE_SHOT, period=50, callback=cb("o"))
time.sleep_ms(1050)
t.deinit()
stopped = hits["p"]
time.sleep_ms(300)
# Timer(n) again is the same timer: init() on it replaces the first callback.
machine.Timer(2).init(period=50, callback=cb("old"))
machine.Timer(2).init(period=10000, callback=cb("old"))
time.sleep_ms(300)
errors = []
for bad in (lambda: machine.Timer(4), lambda: machine.Timer(0).init(period=10, hard=True)):
    try:
        bad()
    except ValueError as e:
        errors.append(str(e))
print(json.dumps([stopped, hits, errors]))
""", path=[SIM]).stdout)
    stopped, hits, errors = out
    assert 9 <= stopped <= 11, out
    assert hits["p"] == stopped and hits["o"] == 1 and hits["old"] == 0, out
    assert errors == ["invalid Timer number, max 4", "hard Timers are not implemented"]


def test_sim_pin_log_records_changes_relative_to_the_flash_folder(mpy, tmp_path):
    mpy("""
import machine
p = machine.Pin(5, machine.Pin.OUT, value=1)
p.value(1)
p.off()
p.on()
machine.Pin(6, machine.Pin.OUT).value(0)
""", path=[SIM], cwd=tmp_path, env={"SIM_PIN_LOG": "pins.log"})
    lines = [line.split() for line in (tmp_path / "pins.log").read_text().splitlines()]
    assert [(g, v) for _, g, v in lines] == [("5", "1"), ("5", "0"), ("5", "1")]
    ticks = [int(t) for t, _, _ in lines]
    assert ticks == sorted(ticks)
