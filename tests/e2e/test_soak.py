"""Soak: a long broker outage at config.json's default rates, then every queued reading delivered.

Skipped unless SOAK=1 (it runs for minutes):

    SOAK=1 .venv/bin/python -m pytest tests/e2e/test_soak.py -s

SOAK_S sets the outage in seconds (default 600). Where the 32-bit 1.27 port is installed
(../shared/mp32: the board's word size, so heap figures near the board's) the node runs the x86
`.mpy` bundle on it, at SOAK_HEAP 128k by default; elsewhere the sources on the 64-bit unix port
at 512k (compiling them at import needs that much more). SOAK_HEAP=0: the port's default. The
simulator's modules' data and mbedTLS's session (~29 + ~4 KB) are in that heap; the board keeps
them outside the GC heap.

At the default rates (a climate reading every 5 s, a sound level every 10 s) a 10-minute outage
takes 180 readings. Past the journal's grace time (30 s) they go to flash (node.journal, 69
bytes each), so none is dropped. Where the heap has no room to load the journal (logged: "no
room in RAM to load it"), the RAM outbox keeps the newest it can hold (with a journal
configured, 32 places and 2 KB of bodies: about 25) and the oldest go. The node cannot
publish telemetry while the broker is away, but it logs the same figures every telemetry
interval (60 s): heap, queued and dropped are read from those lines and printed minute by
minute. Then the broker comes back and the test checks that exactly the oldest were dropped,
if any (`dropped` of them, one run of seqs), and everything else arrived.
"""

import os
import re
import time

import pytest

from sim.host.simnode import merge, write_json
from tests.e2e.faultkit import (  # noqa: F401  (fixtures are found by pytest in this namespace)
    ANY_TAKEN_RX,
    LAG_SANITY_MAX_MS,
    arrivals,
    crashed,
    figures,
    first_delivery_after,
    format_table,
    pbroker_factory,
    psub_factory,
    telemetry_log,
    wait_delivered,
)
from tests.e2e.infra import (  # noqa: F401
    CONNECT_TIMEOUT_S,
    CONNECTED_RX,
    HEAP_32_BIT,
    certs,
    node_factory,
)
from tools import bundle
from tools.hosttools import MP32, REPO

pytestmark = pytest.mark.skipif(
    os.environ.get("SOAK") != "1",
    reason="soak test: run with SOAK=1 (SOAK_S=outage seconds, default 600)")

SOAK_S = float(os.environ.get("SOAK_S", "600"))
ON_MP32 = MP32.is_file()
SOAK_HEAP = os.environ.get("SOAK_HEAP", HEAP_32_BIT if ON_MP32 else "512k")
# config.json's rates. make_node's `dht` and `audio` are the simulated sensors' inputs, so those
# two sections are written into the flash folder before the node starts.
DEFAULTS = {"mqtt": {"keepalive_s": 30}, "telemetry_interval_s": 60}
DEFAULT_SENSORS = {"dht": {"interval_s": 5}, "audio": {"publish_interval_s": 10}}
CHECK_EVERY_S = 5


def test_long_outage_at_default_rates(pbroker_factory, psub_factory, node_factory):
    brk = pbroker_factory()
    sub = psub_factory(brk, "soak")
    heap = None if SOAK_HEAP in ("", "0") else SOAK_HEAP
    extra = {}
    if ON_MP32:
        build = REPO / "build" / "x86"
        bundle.build(REPO, build, "x86", log=lambda line: None)
        extra = {"app_root": build, "micropython": str(MP32)}
    node = node_factory(brk, heap=heap, start=False, **extra, **DEFAULTS)
    merge(node.cfg, DEFAULT_SENSORS)
    write_json(node.flash / "config.json", node.cfg)
    node.start()
    assert node.cfg["mqtt"]["host"] == "127.0.0.1" and node.cfg["ntp"]["server"] is None
    capacity = node.cfg.get("outbox_size", 32 if node.cfg["journal"]["bytes"] else 100)
    t = node.topics
    node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
    # Start the outage just after a reading was acknowledged: nothing in flight.
    sub.wait_for(f"^{t.climate}$", timeout=15)
    time.sleep(0.15)
    first_queued = max(p["seq"] for p in arrivals([sub], t)) + 1
    mark = node.mark()
    t0 = time.monotonic()
    brk.stop()
    print(f"\nsoak: broker stopped for {SOAK_S:.0f} s (heap {heap or 'unix default'}, outbox "
          f"{capacity}, dht every {node.cfg['dht']['interval_s']} s, sound every "
          f"{node.cfg['audio']['publish_interval_s']} s, telemetry every "
          f"{node.cfg['telemetry_interval_s']} s)")
    shown = 0

    def show_progress():
        nonlocal shown
        for r in telemetry_log(node, mark)[shown:]:
            print(f"  outage {r['t'] - t0:5.0f} s: heap free {r['heap']:7d}, queued "
                  f"{r['queued']:3d}, dropped {r['dropped']:3d}, taken {r['taken']:3d}, "
                  f"loop lag max {r['lag']['max_ms']} ms", flush=True)
            shown += 1

    while time.monotonic() < t0 + SOAK_S:
        why = crashed(node)
        assert why is None, f"{why} after {time.monotonic() - t0:.0f} s of outage"
        show_progress()
        time.sleep(min(CHECK_EVERY_S, max(0.0, t0 + SOAK_S - time.monotonic())))
    time.sleep(0.5)  # a record due at the very end of the outage
    show_progress()
    during = telemetry_log(node, mark)
    brk.start()
    t_back = time.monotonic()
    back = node.wait_for_line(r"\bmqtt: connected; (\d+) readings waiting", timeout=120,
                              since=mark)
    waiting = int(back.group(1))
    # The readings taken offline: logged between the outage and the reconnect's record.
    offline = [int(m.group(2)) for m in map(re.compile(ANY_TAKEN_RX).search,
                                             node.lines[mark:node.lines.index(back.string)])
               if m]
    taken_offline = len(offline)
    # Drops happen only while the outbox is full: offline, before the reconnect.
    dropped = taken_offline - waiting
    oldest = list(range(first_queued, first_queued + dropped))
    payloads = wait_delivered(node, [sub], 60, skip=oldest)
    got = {p["seq"] for p in payloads}
    missing = sorted(set(range(1, max(got) + 1)) - got)
    tele = sub.wait_for(f"^{t.telemetry}$", timeout=node.cfg["telemetry_interval_s"] + 10,
                        where=lambda m: m.t > t_back).json()
    heaps = [r["heap"] for r in during]
    fig = figures(f"soak: {SOAK_S:.0f} s outage", node, [sub],
                  first_delivery_after([sub], t, t_back, 5),
                  f"{taken_offline} taken offline, {waiting} waiting at reconnect "
                  f"{back.string.t - t_back:.1f} s after the broker came back")
    print(f"soak: heap free during the outage min {min(heaps) if heaps else 'n/a'}, "
          f"first {heaps[0] if heaps else 'n/a'}, last {heaps[-1] if heaps else 'n/a'}; "
          f"telemetry after: heap_min_free {tele.get('heap_min_free')}, dropped "
          f"{tele.get('dropped')}, queued {tele.get('readings_queued')}, delivered "
          f"{tele.get('readings_delivered')}")
    print(format_table([fig], "test_soak figures"))
    assert offline == list(range(first_queued, first_queued + taken_offline)), offline
    assert missing == oldest, f"missing {missing}: expected the {dropped} oldest, {oldest}"
    assert tele["dropped"] == dropped, f"telemetry says dropped {tele['dropped']}, not {dropped}"
    no_room = node.find(r"\bjournal: no room in RAM to load it", mark)
    print(f"soak: journal {'could not be loaded: ' + no_room[0].string if no_room else 'loaded'}"
          f"; telemetry after: journaled {tele.get('journaled')}, replayed "
          f"{tele.get('replayed')}, journal_dropped {tele.get('journal_dropped')}, "
          f"journal_skipped {tele.get('journal_skipped')}")
    if no_room:
        assert waiting >= min(capacity, taken_offline), waiting
    else:
        assert waiting == taken_offline and not dropped, (waiting, taken_offline)
        assert tele["journaled"] > 0 and tele["journal_dropped"] == 0, tele
    assert crashed(node) is None, crashed(node)
    for r in telemetry_log(node):
        assert r["lag"]["max_ms"] <= LAG_SANITY_MAX_MS, f"event loop stuck: {r}"
