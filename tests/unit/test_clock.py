"""node.sntp.Clock: what the board's clock can be trusted for after each kind of reset.

After a power-on the ESP32's RTC reads 2000-01-01 and TLS (which checks certificate dates)
fails. The clock's floor (the last time seen, in clock.json) lets a warm boot verify the broker
at once, while readings stay undated until NTP answers.
"""

import json

from sim.net.fakentp import server_answer

_CLOCK = """
import asyncio, json, sys
from node import sntp

rtc = [%(rtc)d]
sets = []

def set_rtc(t):
    sets.append(t)
    rtc[0] = t

settings = {"server": %(server)s, "port": %(port)d, "resync_s": 3600}
clock = sntp.Clock(settings, lambda: True, lambda: rtc[0], set_rtc, "clock.json")
clock.start()
out = {"before": [clock.can_verify(), clock.now()], "sets": list(sets)}
if %(sync)s:
    out["synced"] = asyncio.run(clock.sync(300))
    out["after"] = [clock.can_verify(), clock.now(), clock.syncs]
    out["ntp_loaded"] = "node.ntp" in sys.modules  # the protocol's code, between queries
try:
    out["file"] = json.load(open("clock.json"))
except (OSError, ValueError):  # none, or the damaged one a test wrote
    out["file"] = None
print("RESULT " + json.dumps(out))
"""

POWER_ON = 946684800  # 2000-01-01: what the RTC reads after a power-on
FLOOR = 1800000000
NOW = 1800003600


def run(mpy, tmp_path, rtc, floor=None, server=None, port=123, sync=False):
    if floor is not None:
        (tmp_path / "clock.json").write_text(floor if isinstance(floor, str) else json.dumps(floor))
    script = _CLOCK % {"rtc": rtc, "server": json.dumps(server) if server else "None",
                       "port": port, "sync": sync}
    proc = mpy(script, cwd=tmp_path)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[7:]), proc.stdout


def test_power_on_with_a_floor_verifies_but_does_not_date(mpy, tmp_path):
    r, log = run(mpy, tmp_path, POWER_ON, {"t": FLOOR, "source": "ntp"})
    assert r["sets"] == [FLOOR]  # the RTC is moved to the floor...
    assert r["before"] == [True, None]  # ...so TLS can check dates; readings stay undated
    assert r["file"] == {"t": FLOOR, "source": "floor"}
    assert "set to the last time seen, 1800000000" in log


def test_a_soft_reset_after_a_floor_only_boot_is_still_undated(mpy, tmp_path):
    r, _ = run(mpy, tmp_path, FLOOR + 30, {"t": FLOOR, "source": "floor"})
    assert r["sets"] == [] and r["before"] == [True, None]


def test_a_clock_set_by_ntp_survives_a_soft_reset(mpy, tmp_path):
    r, _ = run(mpy, tmp_path, NOW, {"t": FLOOR, "source": "ntp"})
    assert r["sets"] == [] and r["before"] == [True, NOW]


def test_an_rtc_set_by_other_means_is_trusted(mpy, tmp_path):
    """The simulator on the host's clock, or `mpremote rtc --set`: no floor file at all."""
    r, _ = run(mpy, tmp_path, NOW)
    assert r["before"] == [True, NOW] and r["file"] is None


def test_power_on_without_floor_or_ntp_says_why_tls_cannot_work(mpy, tmp_path):
    r, log = run(mpy, tmp_path, POWER_ON)
    assert r["before"] == [False, None] and r["sets"] == []
    assert "no time seen before: no TLS until NTP sets it" in log
    assert "ntp.server is null" in log


def test_a_damaged_floor_is_no_floor(mpy, tmp_path):
    for junk in ('{"t": "soon"}', "{", "[1]", '{"t": 1800000000}', "\xff"):
        r, _ = run(mpy, tmp_path, POWER_ON, junk)
        assert r["before"] == [False, None] and r["sets"] == [], junk


def test_ntp_sets_and_dates_and_moves_the_floor(mpy, tmp_path, ntp_server):
    server = ntp_server(lambda req: server_answer(NOW))
    r, log = run(mpy, tmp_path, POWER_ON, {"t": FLOOR, "source": "ntp"}, server="127.0.0.1",
                 port=server.port, sync=True)
    assert r["synced"] is True and r["after"] == [True, NOW, 1]
    assert r["ntp_loaded"] is False  # unloaded until the next query
    assert r["sets"] == [FLOOR]  # sets made by start(); sync's comes after the snapshot
    assert r["file"] == {"t": NOW, "source": "ntp"}
    assert "clock set by NTP (was unset)" in log


def test_a_lost_answer_is_logged_and_leaves_the_clock_as_it_was(mpy, tmp_path, ntp_server):
    server = ntp_server(lambda req: None)
    r, log = run(mpy, tmp_path, POWER_ON, server="127.0.0.1", port=server.port, sync=True)
    assert r["synced"] is False and r["after"] == [False, None, 0]
    assert r["ntp_loaded"] is False  # after a failed query too
    assert "NTP from 127.0.0.1 failed: no answer from 127.0.0.1 within 300 ms" in log


_KNOWN = """
import json, sys
from node import sntp
print(json.dumps(sntp.known_time(int(sys.argv[1]), "clock.json")))
"""


def test_what_is_known_of_the_time_before_the_clock_starts(mpy, tmp_path):
    """sntp.known_time, which the CA file's date checks use (node.cafile): a lower bound, and
    whether it is the time itself, for each case Clock.start() tells apart."""
    def known(rtc, floor=None):
        (tmp_path / "clock.json").unlink(missing_ok=True)
        if floor is not None:
            (tmp_path / "clock.json").write_text(json.dumps(floor))
        return json.loads(mpy(_KNOWN, rtc, cwd=tmp_path).stdout)

    assert known(NOW, {"t": FLOOR, "source": "ntp"}) == [NOW, True]  # kept across a reset
    assert known(NOW) == [NOW, True]  # set by other means
    assert known(FLOOR + 30, {"t": FLOOR, "source": "floor"}) == [FLOOR + 30, False]
    assert known(POWER_ON, {"t": FLOOR, "source": "ntp"}) == [FLOOR, False]  # the floor
    assert known(POWER_ON) == [None, False]


def test_no_room_for_the_ntp_query_is_logged_and_asked_again(mpy, tmp_path):
    """node.ntp is imported for each query: a heap too full for it costs that query, never the
    clock's task, and the next query works."""
    out = mpy("""
import asyncio, builtins
from node import sntp
real_import = builtins.__import__
def no_room(name, *args):
    if args and args[2] and "ntp" in args[2]:
        raise MemoryError("memory allocation failed, allocating 512 bytes")
    return real_import(name, *args)
clock = sntp.Clock({"server": "127.0.0.1", "port": 9, "resync_s": 3600}, lambda: True,
                   lambda: 946684800, lambda t: None, "clock.json")
builtins.__import__ = no_room
print("FIRST", asyncio.run(clock.sync(100)))
builtins.__import__ = real_import
print("SECOND", asyncio.run(clock.sync(100)))
""", cwd=tmp_path).stdout
    assert "FIRST False" in out, out
    assert ("no room in RAM for the NTP query (memory allocation failed, allocating 512 bytes)"
            in out), out
    # The next query imports it: no answer on port 9, so it fails as a query, not for RAM.
    assert "SECOND False" in out and "NTP from 127.0.0.1 failed: no answer" in out, out
