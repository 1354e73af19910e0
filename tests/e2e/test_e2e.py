"""End to end: the real main.py on the simulated board against Mosquitto over TLS on loopback.

A subscriber connected before the node starts checks every topic and payload of the contract
(DESIGN.md "Contracts"), seq continuity per boot, the sound level of a known sine, the last will
when the node hangs or dies, that failed DHT reads never reach the broker as data, and that a
killed or hung broker costs no reading. The figures (readings published vs taken, the sound
level, detection times) are printed: run with -s to see them.
"""

import json
import math
import re
import time

import pytest

from tests.e2e.infra import (  # noqa: F401  (fixtures are found by pytest in this namespace)
    CONNECT_TIMEOUT_S,
    CONNECTED_RX,
    HEAP_32_BIT,
    REPO,
    TAKEN_RX,
    assert_no_seq_gap,
    broker,
    broker_factory,
    certs,
    data_payloads,
    failed_since,
    make_node,
    node_factory,
    print_broker_log,
    print_node_log,
    start_broker,
    subscribe,
    subscriber_factory,
    taken,
)
from tools.hosttools import MP32

SINE_RMS_DBFS = -20.0
SINE_PEAK_DBFS = SINE_RMS_DBFS + 20 * math.log10(math.sqrt(2))  # -16.99: crest factor of a sine
LEVEL_TOLERANCE_DB = 0.1
# The node's clock is the host's on the simulator: ts is the moment the reading was queued.
TS_MAX_AGE_S = 15
TS_MAX_AHEAD_S = 2


def _topic_rx(topic):
    return "^" + re.escape(topic) + "$"


def _is_num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.fixture(scope="module")
def run(certs, tmp_path_factory, request):
    """One node run shared by the contract tests; the last test (the will) kills the node."""
    failed_before = request.session.testsfailed
    work = tmp_path_factory.mktemp("e2e")
    brk = start_broker(certs, work / "broker")
    sub = subscribe(certs, brk)
    node = make_node(certs, brk, work / "node", audio="sine:1000:-20")
    t = node.topics
    try:
        node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
        # Enough for every kind: telemetry every 5 s, a level every 2 s, climate every 1 s.
        sub.wait_for(_topic_rx(t.telemetry), timeout=15)
        sub.wait_for(_topic_rx(t.sound), timeout=15, count=4)
        sub.wait_for(_topic_rx(t.climate), timeout=15, count=6)
        yield node, sub, brk
    finally:
        node.stop()
        sub.close()
        brk.stop()
        if failed_since(request, failed_before):
            print_node_log(node)
            print_broker_log(brk)


def test_status_online_is_retained(run, certs):
    node, sub, brk = run
    status = sub.select(_topic_rx(node.topics.status))
    assert status, "no status message"
    assert status[0].text == "online", f"first status {status[0].text!r}, expected 'online'"
    # A subscriber that arrives later gets it from the broker's retained store.
    with subscribe(certs, brk, node.topics.status) as late:
        msg = late.wait_for(_topic_rx(node.topics.status), timeout=5)
    assert msg.retain, "status 'online' is not retained"
    assert msg.text == "online"


def test_climate_payloads(run):
    node, sub, _ = run
    boot = json.loads((node.flash / "boot.json").read_text())["boot"]
    msgs = sub.select(_topic_rx(node.topics.climate))
    assert len(msgs) >= 6
    for m in msgs:
        p = m.json()
        assert set(p) == {"boot", "seq", "ts", "temperature", "humidity"}, p
        assert p["boot"] == boot and isinstance(p["boot"], int), p
        assert isinstance(p["seq"], int) and p["seq"] >= 1, p
        assert _is_num(p["ts"]), p
        assert m.wall - TS_MAX_AGE_S <= p["ts"] <= m.wall + TS_MAX_AHEAD_S, (p, m.wall)
        assert _is_num(p["temperature"]) and -40 <= p["temperature"] <= 80, p
        assert _is_num(p["humidity"]) and 0 <= p["humidity"] <= 100, p
        assert not m.retain, "a reading must not be retained"
    first = msgs[0].json()
    print(f"\nclimate: {len(msgs)} messages, first {first}, ts type {type(first['ts']).__name__}")


def test_sound_level_of_a_sine(run):
    node, sub, _ = run
    msgs = sub.select(_topic_rx(node.topics.sound))
    assert len(msgs) >= 4
    rms, peak, measured = [], [], []
    for m in msgs:
        p = m.json()
        assert {"boot", "seq", "ts", "rms_dbfs", "peak_dbfs"} <= set(p), p
        assert _is_num(p["rms_dbfs"]) and _is_num(p["peak_dbfs"]), p
        # The share of the interval's samples measured: all of them, when the loop keeps up.
        assert 0 <= p["measured_pct"] <= 100, p
        assert m.wall - TS_MAX_AGE_S <= p["ts"] <= m.wall + TS_MAX_AHEAD_S, (p, m.wall)
        rms.append(p["rms_dbfs"])
        measured.append(p["measured_pct"])
        peak.append(p["peak_dbfs"])
    print(f"\nsound (SIM_AUDIO=sine:1000:-20): {len(msgs)} levels, rms_dbfs {rms}, "
          f"peak_dbfs {peak}, measured_pct {measured}; "
          f"extra fields {sorted(set(msgs[0].json()) - {'boot', 'seq', 'ts'})}")
    for r, pk in zip(rms, peak):
        assert abs(r - SINE_RMS_DBFS) <= LEVEL_TOLERANCE_DB, f"rms_dbfs {r}, expected -20.0"
        assert abs(pk - SINE_PEAK_DBFS) <= LEVEL_TOLERANCE_DB, f"peak_dbfs {pk}, expected -16.99"


def test_telemetry(run):
    node, sub, _ = run
    msgs = sub.select(_topic_rx(node.topics.telemetry))
    assert msgs
    p = msgs[-1].json()
    print(f"\ntelemetry: {p}")
    # The contract names the figures, not the keys: find each by its word.
    for word in ("uptime", "heap", "reconnect", "drop", "error", "version"):
        keys = [k for k in p if word in k.lower()]
        assert keys, f"telemetry has no {word} figure: {sorted(p)}"
        for k in keys:
            ok = isinstance(p[k], str) if word == "version" else _is_num(p[k])
            assert ok, f"telemetry {k} = {p[k]!r}"
    # Uptime is the node's: no more than the time since its process started.
    ran_s = msgs[-1].t - node.started_at
    for k in (k for k in p if "uptime" in k.lower()):
        scale = 1000 if k.lower().endswith("ms") else 1
        assert 0 <= p[k] / scale <= ran_s + 2, f"telemetry {k} = {p[k]} after {ran_s:.1f} s"


def test_seq_has_no_gap_and_every_reading_taken_arrives(run):
    node, sub, _ = run
    payloads = data_payloads(sub, node.topics)
    report = assert_no_seq_gap(payloads, first_seq=1)
    # Every reading the node logged as queued, up to the last seq seen, arrived on its topic.
    last = max(p["seq"] for p in payloads)
    arrived = {(p["_kind"], p["seq"]) for p in payloads}
    logged = {(kind, int(m.group(1))) for kind in TAKEN_RX for m in node.find(TAKEN_RX[kind])}
    missing = sorted(x for x in logged if x[1] <= last and x not in arrived)
    assert not missing, f"logged as taken but never published: {missing}"
    wrong = sorted(arrived - logged)
    assert not wrong, f"published but not logged as taken (or on the wrong topic): {wrong}"
    for kind in ("climate", "sound"):
        n = sum(1 for p in payloads if p["_kind"] == kind)
        print(f"\n{kind}: {n} published / {taken(node, kind)} taken (node log)", end="")
    print(f"\nseq per boot: {report}")


def test_node_listens_on_its_cmd_topic(run):
    node, _sub, brk = run
    # Mosquitto logs each subscription as "<client id> <qos> <topic>".
    rx = re.compile(rf"\b{re.escape(node.cfg['node_id'])} \d {re.escape(node.topics.cmd)}$", re.M)
    assert rx.search(brk.log()), f"{node.topics.cmd} not subscribed by the node"


def test_hung_node_goes_offline_by_keepalive_and_comes_back(run):
    node, sub, _brk = run
    t = node.topics
    keepalive_s = node.cfg["mqtt"]["keepalive_s"]
    mark, log_mark = sub.mark(), node.mark()
    t0 = time.monotonic()
    node.pause()  # SIGSTOP: the TCP connection stays open, nothing answers any more
    try:
        # MQTT: the broker gives up after 1.5 keepalive periods without a packet.
        offline = sub.wait_for(_topic_rx(t.status), timeout=keepalive_s * 1.5 + 5, since=mark,
                               where=lambda m: m.text == "offline")
    finally:
        node.resume()
    gone_s = offline.t - t0
    node.wait_for_line(CONNECTED_RX, timeout=20, since=log_mark)
    online = sub.wait_for(_topic_rx(t.status), timeout=5, since=mark,
                          where=lambda m: m.text == "online")
    data_mark = sub.mark()
    sub.wait_for(_topic_rx(t.climate), timeout=10, since=data_mark, count=2)
    print(f"\nhung node: 'offline' {gone_s:.1f} s after SIGSTOP (keepalive {keepalive_s} s), "
          f"'online' again {online.t - offline.t:.1f} s after SIGCONT; log: "
          f"{[m.string for m in node.find(r'mqtt: .*', since=log_mark)][:3]}")
    # The node was silent at most ~1 s before the freeze (a reading a second).
    assert keepalive_s * 1.5 - 1.5 <= gone_s <= keepalive_s * 1.5 + 3
    assert_no_seq_gap(data_payloads(sub, t), first_seq=1)


def test_last_will_offline_when_the_process_dies(run, certs):
    node, sub, brk = run
    mark = sub.mark()
    t0 = time.monotonic()
    node.kill()  # SIGKILL: no DISCONNECT; the kernel closes the socket, so the will goes at once
    msg = sub.wait_for(_topic_rx(node.topics.status), timeout=10, since=mark)
    print(f"\nstatus after SIGKILL: {msg.text!r} after {time.monotonic() - t0:.1f} s")
    assert msg.text == "offline"
    with subscribe(certs, brk, node.topics.status) as late:
        retained = late.wait_for(_topic_rx(node.topics.status), timeout=5)
    assert retained.retain and retained.text == "offline"


# --- failed DHT reads ------------------------------------------------------------------------
# One row per measure(); the last row repeats. The climate task retries a failed read twice,
# so three failures in a row leave one interval without a reading.
DHT_SCRIPT = """\
# temperature,humidity | timeout | checksum
25,50
timeout
checksum
25,50
timeout
timeout
timeout
checksum
25,50
"""
DHT_SCRIPT_FAILURES = 6


def test_failed_dht_reads_are_never_published(broker, subscriber_factory, node_factory, tmp_path):
    script = tmp_path / "dht.csv"
    script.write_text(DHT_SCRIPT)
    sub = subscriber_factory(broker)
    node = node_factory(broker, dht=script)
    t = node.topics
    node.wait_for_line(r"\bclimate: .*fail", timeout=CONNECT_TIMEOUT_S, count=DHT_SCRIPT_FAILURES)
    node.wait_for_line(TAKEN_RX["climate"], timeout=10, count=5)
    n_taken = taken(node, "climate")
    sub.wait_for(_topic_rx(t.climate), timeout=15, count=n_taken)
    msgs = sub.select(_topic_rx(t.climate))
    # Only good reads (all 25 °C / 50 %) enter the filter, so every average is exactly that.
    for m in msgs:
        p = m.json()
        assert (p["temperature"], p["humidity"]) == (25, 50), f"a failed read leaked in: {p}"
    failures = node.find(r"\bclimate: .*fail.*")
    print(f"\nDHT script with {DHT_SCRIPT_FAILURES} failed reads: climate {len(msgs)} published"
          f" / {n_taken} taken; {len(failures)} failures logged, e.g. {failures[0].group(0)!r}")
    assert len(failures) >= DHT_SCRIPT_FAILURES
    assert_no_seq_gap(data_payloads(sub, t), first_seq=1)
    assert node.running()


def test_a_dead_dht_publishes_no_climate_but_sound_goes_on(broker, subscriber_factory,
                                                           node_factory, tmp_path):
    script = tmp_path / "dht.csv"
    script.write_text("timeout\n")
    sub = subscriber_factory(broker)
    node = node_factory(broker, dht=script)
    t = node.topics
    node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
    sub.wait_for(_topic_rx(t.sound), timeout=15, count=3)
    assert not sub.select(_topic_rx(t.climate)), "climate published from a sensor that never read"
    assert not node.find(TAKEN_RX["climate"])
    failures = node.find(r"\bclimate: .*fail")
    print(f"\ndead DHT: 0 climate published, {len(failures)} failures logged, "
          f"{len(sub.select(_topic_rx(t.sound)))} sound levels published")
    assert len(failures) >= 3
    assert_no_seq_gap(data_payloads(sub, t), first_seq=1)
    assert node.running()


# --- broker faults -----------------------------------------------------------------------------
def _all_taken_arrived(node, subs, timeout):
    """Wait until every reading the node logged as taken is on some subscriber.

    Returns the payloads of all subscribers, each reading once (in seq order): a reading two
    subscribers both got is not a duplicate from the node.
    """
    t = node.topics

    def arrived():
        got = {(p["_kind"], p["seq"]) for s in subs for p in data_payloads(s, t)}
        logged = {(k, int(m.group(1))) for k in TAKEN_RX for m in node.find(TAKEN_RX[k])}
        return not (logged - got) and logged

    deadline = time.monotonic() + timeout
    while not arrived():
        if time.monotonic() > deadline:
            got = {(p["_kind"], p["seq"]) for s in subs for p in data_payloads(s, t)}
            logged = {(k, int(m.group(1))) for k in TAKEN_RX for m in node.find(TAKEN_RX[k])}
            raise AssertionError(f"taken but never published: {sorted(logged - got)}")
        time.sleep(0.2)
    unique = {(p["boot"], p["seq"], p["_kind"]): p for s in subs for p in data_payloads(s, t)}
    return [unique[k] for k in sorted(unique)]


def test_broker_killed_and_restarted_loses_nothing(broker, subscriber_factory, node_factory):
    sub = subscriber_factory(broker)
    node = node_factory(broker)
    t = node.topics
    node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
    sub.wait_for(_topic_rx(t.climate), timeout=10, count=2)
    log_mark = node.mark()
    t0 = time.monotonic()
    broker.kill()  # SIGKILL: the connection drops, retained messages and sessions are gone
    lost = node.wait_for_line(r"\bmqtt: .*retrying", timeout=10, since=log_mark)
    detect_s = lost.string.t - t0  # the match's string is the Line, which knows its time
    # The sensors go on; their readings wait in the outbox.
    node.wait_for_line(TAKEN_RX["climate"], timeout=10, since=log_mark, count=3)
    # Hold the node for the moment it takes to bring the broker back and subscribe again, so
    # that no reading can reach the broker before someone listens.
    node.pause()
    try:
        broker.start()
        sub2 = subscriber_factory(broker)
    finally:
        node.resume()
    down_s = time.monotonic() - t0
    back = node.wait_for_line(r"\bmqtt: connected; (\d+) readings waiting", timeout=30,
                              since=log_mark)
    payloads = _all_taken_arrived(node, [sub, sub2], timeout=15)
    report = assert_no_seq_gap(payloads, first_seq=1)
    tele = sub2.wait_for(_topic_rx(t.telemetry), timeout=10,
                         where=lambda m: m.json().get("mqtt_reconnects", 1) >= 1)
    print(f"\nbroker killed: loss logged after {detect_s:.1f} s ({lost.string!r}); broker down "
          f"{down_s:.1f} s; {back.group(1)} readings waiting at reconnect; seq {report}; "
          f"telemetry after: {tele.text}")


def test_hung_broker_is_detected_within_keepalive(broker, subscriber_factory, node_factory):
    sub = subscriber_factory(broker)
    node = node_factory(broker)
    t = node.topics
    keepalive_s = node.cfg["mqtt"]["keepalive_s"]
    node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
    sub.wait_for(_topic_rx(t.climate), timeout=10, count=2)
    log_mark = node.mark()
    t0 = time.monotonic()
    broker.pause()  # SIGSTOP: connections stay open, nothing is acknowledged or answered
    try:
        detected = node.wait_for_line(r"\bmqtt: .*retrying", timeout=keepalive_s + 5,
                                      since=log_mark).string
        detect_s = detected.t - t0
        # Sampling never waits for the network.
        node.wait_for_line(TAKEN_RX["climate"], timeout=5, since=log_mark, count=3)
    finally:
        broker.resume()
    node.wait_for_line(CONNECTED_RX, timeout=40, since=log_mark)
    payloads = _all_taken_arrived(node, [sub], timeout=15)
    report = assert_no_seq_gap(payloads, first_seq=1)
    print(f"\nbroker hung: node gave up after {detect_s:.1f} s (keepalive {keepalive_s} s): "
          f"{detected!r}; seq {report}")
    assert detect_s <= keepalive_s + 1, f"silent broker noticed after {detect_s:.1f} s"


# --- the harness itself --------------------------------------------------------------------------
def test_make_flash_copies_what_a_board_holds(tmp_path, certs):
    from sim.host.simnode import REPO, make_flash, sim_config, sim_secrets, write_json

    app = tmp_path / "app"
    (app / "lib" / "node").mkdir(parents=True)
    (app / "lib" / "umqtt").mkdir(parents=True)
    for name in ("boot.py", "main.py", "lib/node/a.mpy", "lib/umqtt/simple.py", "lib/x.txt"):
        (app / name).write_text("# " + name)
    (tmp_path / "cfg" / "certs").mkdir(parents=True)
    (tmp_path / "cfg" / "certs" / "ca.der").write_bytes(certs.ca_der.read_bytes())
    cfg = write_json(tmp_path / "cfg" / "config.json", sim_config(8883, "certs/ca.der"))
    sec = write_json(tmp_path / "cfg" / "secrets.json", sim_secrets())
    flash = make_flash(tmp_path / "flash", app, cfg, sec)
    files = sorted(str(p.relative_to(flash)) for p in flash.rglob("*") if p.is_file())
    assert files == ["boot.py", "certs/ca.der", "config.json", "lib/node/a.mpy",
                     "lib/umqtt/simple.py", "main.py", "secrets.json"]
    assert json.loads((flash / "config.json").read_text())["mqtt"]["ca"] == "certs/ca.der"
    # An absolute CA path stays as it is and nothing is copied for it.
    cfg2 = write_json(tmp_path / "cfg2.json", sim_config(8883, str(certs.ca_der)))
    flash2 = make_flash(tmp_path / "flash2", app, cfg2, sec)
    assert not list(flash2.glob("*.der"))
    # The repo itself is a valid app root.
    assert (make_flash(tmp_path / "flash3", REPO, cfg, sec) / "lib" / "node").is_dir()


def test_x64_bundle_runs_the_node_end_to_end(certs, tmp_path):
    """The mpy-cross bundle, not the source tree, on the simulated board: the bundle is complete."""
    from tools import bundle

    app = tmp_path / "build" / "x64"
    bundle.build(REPO, app, "x64", log=lambda line: None)
    assert not list((app / "lib").rglob("*.py")), "the bundle should hold .mpy only under lib/"
    brk = start_broker(certs, tmp_path / "broker")
    sub = subscribe(certs, brk)
    node = make_node(certs, brk, tmp_path / "node", app_root=app)
    try:
        node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
        sub.wait_for(_topic_rx(node.topics.sound), timeout=15, count=2)
        sub.wait_for(_topic_rx(node.topics.climate), timeout=15, count=3)
        assert not list((node.flash / "lib").rglob("*.py"))
        data = data_payloads(sub, node.topics)
        assert_no_seq_gap(data)
        for p in data:
            if p["_kind"] == "sound":
                assert abs(p["rms_dbfs"] - SINE_RMS_DBFS) <= LEVEL_TOLERANCE_DB
    finally:
        node.stop()
        sub.close()
        brk.stop()



@pytest.mark.skipif(not MP32.is_file(), reason="no 32-bit MicroPython (../shared/mp32) here")
def test_x86_bundle_runs_on_the_32_bit_port_in_its_heap(certs, tmp_path):
    from tools import bundle

    app = tmp_path / "build" / "x86"
    bundle.build(REPO, app, "x86", log=lambda line: None)
    brk = start_broker(certs, tmp_path / "broker")
    sub = subscribe(certs, brk)
    node = make_node(certs, brk, tmp_path / "node", app_root=app, heap=HEAP_32_BIT,
                     micropython=str(MP32))
    try:
        node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
        tele = sub.wait_for(_topic_rx(node.topics.telemetry), timeout=15).json()
        sub.wait_for(_topic_rx(node.topics.sound), timeout=15, count=2)
        assert "MemoryError" not in node.text(), node.text()
        assert_no_seq_gap(data_payloads(sub, node.topics))
        print(f"\nx86 bundle on micropython32 at HEAP={HEAP_32_BIT}: heap_free "
              f"{tele['heap_free']}, heap_min_free {tele['heap_min_free']} bytes")
    finally:
        node.stop()
        sub.close()
        brk.stop()
