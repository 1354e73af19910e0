"""Fault injection: never lose a reading, never hang (loopback only).

The real node (main.py on the simulated board, TEST_CONFIG: keepalive 5 s, a climate reading a
second, a sound level every 2 s) publishes to a Mosquitto over TLS that is restarted, killed,
absent at boot, frozen, replaced by an impostor, or down longer than the outbox holds; the faults
Mosquitto cannot play (silence, malformed packets) are in test_fakebroker_faults.py. A
subscriber with a persistent session on a persistent broker (tests/e2e/faultkit.py) sees every
message the broker accepted, so a seq gap it sees is the node's.

Every scenario prints one line of figures and the module prints them all as a table at the end:
run `pytest tests/e2e/test_faults.py -s`. Loop lag is printed against the issue's budget (p99 20 ms,
max 250 ms), never asserted: only a stuck loop (LAG_SANITY_MAX_MS) fails a test.
"""

import statistics
import time
from types import SimpleNamespace

from sim.host.simnode import format_seq_report, merge, write_json
from tests.e2e.faultkit import (  # noqa: F401  (fixtures are found by pytest in this namespace)
    ANY_TAKEN_RX,
    DELIVERY_TIMEOUT_S,
    LAG_SANITY_MAX_MS,
    RETRY_RX,
    arrivals,
    crashed,
    figures,
    figures_table,
    finish_lag,
    first_delivery_after,
    on_loopback_only,
    pbroker_factory,
    psub_factory,
    retry_delays_ms,
    taken,
    telemetry_log,
    wait_delivered,
)
from tests.e2e.infra import (  # noqa: F401
    CONNECT_TIMEOUT_S,
    CONNECTED_RX,
    assert_no_seq_gap,
    broker_factory,
    certs,
    make_node,
    node_factory,
    seq_report,
)

_, record, figures_table = figures_table("test_faults figures")


def _start(pbroker_factory, psub_factory, node_factory, name, **overrides):
    """A persistent broker, a persistent subscriber on it, then the node; returns all three
    once the node has delivered two climate readings."""
    brk = pbroker_factory()
    sub = psub_factory(brk, f"faults-{name}")
    node = node_factory(brk, **overrides)
    on_loopback_only(node)
    node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
    sub.wait_for("/climate$", timeout=10, count=2)
    return brk, sub, node


def _quiet_moment(sub):
    """Return just after a reading was delivered and acknowledged: the node then has nothing
    in flight for most of a second (readings come once a second, all in the same ms)."""
    sub.wait_for("/climate$", timeout=5, since=sub.mark())
    time.sleep(0.15)


def _check_run(node, subs, timeout=DELIVERY_TIMEOUT_S, skip=()):
    """Every reading taken arrived, seq without a gap per boot, node alive, loop never stuck."""
    payloads = wait_delivered(node, subs, timeout, skip)
    why = crashed(node)
    assert why is None, why
    if not skip:
        assert_no_seq_gap(payloads, first_seq=1)
    for r in telemetry_log(node):
        assert r["lag"]["max_ms"] <= LAG_SANITY_MAX_MS, f"event loop stuck: telemetry {r}"
    return payloads


def _delivered_after(psub_factory, brk, sub, node, t_back, timeout=20):
    """Broker back at t_back: seconds to the first reading delivered; then every reading taken
    arrived (_check_run) and the lag window holding the reconnect is in."""
    watch = psub_factory.watch(brk)
    back = first_delivery_after([sub, watch], node.topics, t_back, timeout)
    _check_run(node, [sub])
    finish_lag(node)
    return back


# --- Mosquitto faults --------------------------------------------------------------------------
BASELINE_WINDOWS = 3  # telemetry intervals: the first holds the boot and the connect


def test_baseline_without_faults(pbroker_factory, psub_factory, node_factory):
    """No fault: the reference for the figures of the others (loop lag above all)."""
    _, sub, node = _start(pbroker_factory, psub_factory, node_factory, "baseline")
    node.wait_for_line(r"\btelemetry: taken", timeout=6 * BASELINE_WINDOWS,
                       count=BASELINE_WINDOWS)
    _check_run(node, [sub])
    windows = ", ".join("/".join(str(r["lag"][k]) for k in ("p50_ms", "p99_ms", "max_ms"))
                        for r in telemetry_log(node))
    record(figures("baseline (no fault)", node, [sub], None,
                   f"lag per {node.cfg['telemetry_interval_s']} s window: {windows}"))


RESTARTS = 5


def test_broker_restarted_five_times(pbroker_factory, psub_factory, node_factory):
    brk, sub, node = _start(pbroker_factory, psub_factory, node_factory, "restarts")
    backs, down = [], []
    for _ in range(RESTARTS):
        mark = node.mark()
        t0 = time.monotonic()
        brk.stop()  # SIGTERM: Mosquitto closes every connection and saves its sessions
        node.wait_for_line(RETRY_RX, timeout=10, since=mark)
        node.wait_for_line(ANY_TAKEN_RX, timeout=5, since=mark)  # one reading waits offline
        brk.start()  # same port
        t_back = time.monotonic()
        down.append(t_back - t0)
        watch = psub_factory.watch(brk)
        node.wait_for_line(CONNECTED_RX, timeout=20, since=mark)
        backs.append(first_delivery_after([sub, watch], node.topics, t_back, 20))
        watch.close()
    payloads = _check_run(node, [sub])
    finish_lag(node)
    fig = record(figures(
        "restart x5", node, [sub], max(backs),
        f"back->1st per restart {', '.join(f'{b:.2f}' for b in backs)} s; down "
        f"{statistics.mean(down):.1f} s each"))
    print("\n".join(format_seq_report(seq_report(payloads))))
    assert len(node.find(CONNECTED_RX)) >= RESTARTS + 1
    assert fig.delivered == fig.taken


def test_broker_killed_then_back_on_the_same_port(pbroker_factory, psub_factory, node_factory):
    brk, sub, node = _start(pbroker_factory, psub_factory, node_factory, "sigkill")
    # A reading the broker acknowledged but had not yet passed on dies with it (a broker's
    # loss, not the node's): kill it when nothing is in flight.
    _quiet_moment(sub)
    mark = node.mark()
    t0 = time.monotonic()
    brk.kill()  # SIGKILL: no goodbye; sessions as last autosaved (every second)
    lost = node.wait_for_line(RETRY_RX, timeout=10, since=mark).string
    node.wait_for_line(ANY_TAKEN_RX, timeout=5, since=mark, count=2)
    brk.start()
    t_back = time.monotonic()
    back = _delivered_after(psub_factory, brk, sub, node, t_back)
    record(figures("SIGKILL, back on same port", node, [sub], back,
                   f"loss logged {lost.t - t0:.2f} s after SIGKILL; down {t_back - t0:.1f} s"))


def test_broker_down_when_the_node_boots(pbroker_factory, psub_factory, node_factory):
    brk = pbroker_factory()  # only to own a port and the subscriber's session on it
    psub_factory(brk, "faults-late").close()
    brk.stop()
    node = node_factory(brk)
    on_loopback_only(node)
    node.wait_for_line(RETRY_RX, timeout=CONNECT_TIMEOUT_S, count=3)
    climate_before = len(node.find(r"\bclimate: reading"))
    brk.start()
    t_back = time.monotonic()
    sub = psub_factory(brk, "faults-late")
    back = _delivered_after(psub_factory, brk, sub, node, t_back)
    failures = node.find(RETRY_RX)
    record(figures("broker down at boot", node, [sub], back,
                   f"{len(failures)} attempts failed first ({failures[0].group(1)!r}); "
                   f"{climate_before} climate readings queued meanwhile"))
    assert climate_before >= 2, "the sensors waited for the broker"


def test_broker_frozen_for_three_keepalives(pbroker_factory, psub_factory, node_factory):
    brk, sub, node = _start(pbroker_factory, psub_factory, node_factory, "frozen")
    keepalive_s = node.cfg["mqtt"]["keepalive_s"]
    mark = node.mark()
    t0 = time.monotonic()
    brk.pause()  # SIGSTOP: connections stay open, nothing is answered
    try:
        detected = node.wait_for_line(RETRY_RX, timeout=keepalive_s * 3, since=mark).string
        while time.monotonic() < t0 + 3 * keepalive_s:
            assert crashed(node) is None, crashed(node)
            time.sleep(0.2)
        taken_frozen = len(node.find(ANY_TAKEN_RX, mark))
    finally:
        brk.resume()
    t_back = time.monotonic()
    back = _delivered_after(psub_factory, brk, sub, node, t_back, timeout=30)
    detect_s = detected.t - t0
    attempts = len(node.find(RETRY_RX, mark))
    record(figures(
        f"frozen {3 * keepalive_s} s (SIGSTOP)", node, [sub], back,
        f"silence detected after {detect_s:.2f} s: {detected.split(': ', 1)[1]!r}; "
        f"{attempts} failed attempts, {taken_frozen} readings taken while frozen"))
    assert detect_s <= 1.5 * keepalive_s, (
        f"silent broker noticed after {detect_s:.1f} s (keepalive {keepalive_s} s): {detected}")


def test_tls_refused_then_the_right_broker(certs, broker_factory, pbroker_factory, psub_factory,
                                          node_factory):
    impostor = broker_factory("impostor")
    port = impostor.port
    impostor.stop()
    good = pbroker_factory(port=port)  # the subscriber's session waits on the real broker
    psub_factory(good, "faults-impostor").close()
    good.stop()
    impostor.start()  # the impostor takes the port back
    node = node_factory(impostor)
    on_loopback_only(node)
    refusals = node.wait_for_line(r"\bmqtt: TLS refused.*retrying", timeout=CONNECT_TIMEOUT_S,
                                  count=3)
    impostor.stop()
    good.start()
    t_back = time.monotonic()
    sub = psub_factory(good, "faults-impostor")
    back = _delivered_after(psub_factory, good, sub, node, t_back)
    assert node.cfg["node_id"] not in impostor.log(), "a CONNECT reached the impostor"
    record(figures("TLS refused (impostor), then right broker", node, [sub], back,
                   f"{len(node.find(r'TLS refused'))} refusals, e.g. "
                   f"{refusals.string.split(': ', 1)[1]!r}"))


OUTBOX = 8


def _overflow(pbroker_factory, psub_factory, node_factory, name, outbox, readings_offline,
              freeze_s=0.0):
    """An outage that overflows an outbox of `outbox`; with freeze_s the broker, once back,
    hangs that long right after the node reconnects (a busy broker: the oldest queued reading
    is in flight while new ones arrive). Returns what happened as a SimpleNamespace."""
    # The journal off: these runs are about what the RAM outbox drops (with the journal, the
    # readings past its watermark go to flash instead: tests/e2e/test_journal.py).
    brk, sub, node = _start(pbroker_factory, psub_factory, node_factory, name,
                            outbox_size=outbox, journal={"bytes": 0})
    t = node.topics
    # Nothing in flight when the broker goes: a reading in flight could reach the subscriber
    # and still be dropped from the outbox (and counted) before its PUBACK.
    _quiet_moment(sub)
    mark = node.mark()
    first_queued = max(p["seq"] for p in arrivals([sub], t)) + 1
    brk.stop()
    node.wait_for_line(ANY_TAKEN_RX, timeout=20, since=mark, count=readings_offline)
    brk.start()
    connected = node.wait_for_line(CONNECTED_RX, timeout=20, since=mark).string
    if freeze_s:
        brk.pause()
        time.sleep(freeze_s)  # under the node's PUBACK limit (half the keepalive)
        brk.resume()
    t_online = time.monotonic()
    # The count is final once the backlog has drained: with room in the outbox nothing drops.
    # (Right after the reconnect it may still grow: readings arriving while the backlog
    # drains find the outbox full.)
    tele = sub.wait_for(f"^{t.telemetry}$", timeout=2 * node.cfg["telemetry_interval_s"] + 5,
                        where=lambda m: m.t > max(connected.t, t_online)
                        and m.json()["readings_queued"] <= 2).json()
    dropped = tele["dropped"]
    assert dropped > 0, f"the outage did not overflow the outbox: {tele}"
    # The oldest go, except the one in flight when the outbox overflowed (if any): it will
    # arrive, so the next oldest goes in its place.
    payloads = _check_run(node, [sub], skip=range(first_queued, first_queued + dropped + 1))
    got = {p["seq"] for p in payloads}
    # Readings taken while the backlog drained (from the reconnect until the first reading
    # taken after it arrived: the outbox is FIFO) find the outbox still full, with a reading
    # in flight.
    online = [int(m.group(2)) for m in node.find(ANY_TAKEN_RX, mark)
              if m.string.t > connected.t]
    drained_t = min((m.t for m in sub.messages if m.topic in (t.climate, t.sound)
                     and online and m.json()["seq"] >= min(online)), default=connected.t)
    during_drain = [m.string for m in node.find(ANY_TAKEN_RX, mark)
                    if connected.t < m.string.t <= drained_t]
    finish_lag(node)
    return SimpleNamespace(
        node=node, sub=sub, first_queued=first_queued, dropped=dropped, got=got,
        missing=sorted(set(range(1, max(got) + 1)) - got), during_drain=during_drain,
        oldest=list(range(first_queued, first_queued + dropped)))


def test_outage_longer_than_the_outbox_drops_exactly_the_oldest(pbroker_factory, psub_factory,
                                                                node_factory):
    r = _overflow(pbroker_factory, psub_factory, node_factory, "overflow", OUTBOX, OUTBOX + 6)
    missing = r.missing
    note = f"missing seqs {missing[0]}..{missing[-1]}" if missing else "none missing"
    if missing != r.oldest:
        note += f" (not the {r.dropped} dropped: {r.oldest[0]}..{r.oldest[-1]})"
    record(figures(f"outage > outbox ({OUTBOX})", r.node, [r.sub], None, note))
    # Whatever the timing: exactly `dropped` went, the oldest first, and the newest arrived.
    assert missing and missing[0] == r.first_queued, (
        f"missing {missing}: the oldest queued ({r.first_queued}) should go first")
    assert len(missing) == r.dropped, f"telemetry dropped {r.dropped}, missing {missing}"
    newest = sorted(s for s in r.got if s > max(missing))
    assert newest == list(range(max(missing) + 1, max(r.got) + 1))
    # The outbox holds OUTBOX readings, the one in flight when the link broke among them: when
    # readings taken during the drain overflow it while that one is still unacknowledged, it
    # keeps its place (and arrives) and the ring holds one newer reading less.
    kept_in_flight = r.first_queued - 1 in r.got and len(newest) == OUTBOX - 1
    assert len(newest) >= OUTBOX or kept_in_flight, (
        f"the {OUTBOX} newest queued did not all arrive: {newest}")
    if r.during_drain:
        # The outbox also overflowed online, with a reading in flight: that one stays (it
        # will arrive) and the next oldest goes instead, so the run has a hole.
        print(f"readings while the backlog drained: {r.during_drain}")
        assert set(missing) <= set(range(r.first_queued, r.first_queued + r.dropped + 1))
    else:
        assert missing == r.oldest, (
            f"missing seqs {missing}: expected one run of exactly the {r.dropped} dropped")


def test_dropped_counts_only_readings_that_never_arrive(pbroker_factory, psub_factory,
                                                       node_factory):
    r = _overflow(pbroker_factory, psub_factory, node_factory, "evicted", 4, 6, freeze_s=2.0)
    arrived = [p["seq"] for p in arrivals([r.sub], r.node.topics)]
    print(f"\nbroker hung 2 s right after the reconnect, outbox 4: telemetry dropped "
          f"{r.dropped}, missing {r.missing}; arrival order {arrived}\n"
          + "\n".join(m.string for m in r.node.find(r"\b(mqtt|climate|sound|telemetry): ")))
    # Exactly `dropped` never arrived, all among the oldest (the one in flight kept its place).
    assert len(r.missing) == r.dropped, (
        f"telemetry dropped {r.dropped}, but {r.missing} never arrived")
    assert set(r.missing) <= set(range(r.first_queued, r.first_queued + r.dropped + 1)), (
        f"missing {r.missing}: not among the oldest {r.dropped} + the one in flight")


# config.json's defaults, not TEST_CONFIG's short ones. make_node's `audio` and `dht` are the
# simulated sensors' inputs, so those two sections are set in the flash folder before the start.
DEFAULT_SETTINGS = {"mqtt": {"keepalive_s": 30}, "telemetry_interval_s": 60}
DEFAULT_SENSORS = {"dht": {"interval_s": 5}, "audio": {"publish_interval_s": 10}}
DEFAULT_OUTAGE_S = 10
DEFAULT_NODES = 3  # three independent samples of the backoff's jitter in one outage


def test_time_to_first_reading_after_a_10s_outage_at_default_settings(
        pbroker_factory, psub_factory, node_factory):
    brk = pbroker_factory()
    sub = psub_factory(brk, "faults-defaults")
    nodes = []
    for i in range(DEFAULT_NODES):
        n = node_factory(brk, node_id=f"default-{i}", start=False, **DEFAULT_SETTINGS)
        merge(n.cfg, DEFAULT_SENSORS)
        write_json(n.flash / "config.json", n.cfg)
        nodes.append(n.start())
    for n in nodes:
        on_loopback_only(n)
        n.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
        sub.wait_for(f"^{n.topics.climate}$", timeout=10)
    marks = [n.mark() for n in nodes]
    brk.stop()
    time.sleep(DEFAULT_OUTAGE_S)
    brk.start()
    t_back = time.monotonic()
    watch = psub_factory.watch(brk)
    backs = []
    for n, mark in zip(nodes, marks):
        backs.append(first_delivery_after([sub, watch], n.topics, t_back, 70))
        _check_run(n, [sub])
        delays = retry_delays_ms(n, mark)
        record(figures(
            f"default settings, {DEFAULT_OUTAGE_S} s outage ({n.cfg['node_id']})", n, [sub],
            backs[-1], f"retry delays {delays} ms"))
    print(f"\ntime from broker back to first reading delivered after a {DEFAULT_OUTAGE_S} s "
          f"outage at default settings (keepalive 30 s): "
          f"{', '.join(f'{b:.2f}' for b in backs)} s (median {statistics.median(backs):.2f} s)")
