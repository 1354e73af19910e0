"""Updates over MQTT end to end: tools/ota.py (what `make ota` runs) sends a bundle through
Mosquitto to the node on the simulated board, which stages it, checks it, swaps it in and
reboots (the simulated board restarts after machine.reset(), as a board does).

An update is applied (the version changes, readings go on, seq without a gap in each boot); a
broken one (main.py raises at import) is rolled back by the node itself; a forged manifest is
refused with nothing written; a transfer goes on after the broker restarts in the middle. The
figures (run with -s): transfer time and throughput, the loop's lag and the heap's low point
during the transfer, the flash an update takes (staging + backup), the time from a broken
version's first boot to its rollback being reported.
"""

import shutil
import threading
import time

import pytest

from sim.host.simnode import write_json
from tests.e2e.infra import (  # noqa: F401  (fixtures are found by pytest in this namespace)
    CONNECT_TIMEOUT_S,
    CONNECTED_RX,
    REPO,
    assert_no_seq_gap,
    broker,
    broker_factory,
    certs,
    data_payloads,
    node_factory,
    subscriber_factory,
    wait_until,
)
from tools import bundle as bundles
from tools import ota
from tools.hosttools import MP32

KEY = "e2e-ota-key-" + "0" * 20
# Short trials, so that a rollback happens within a test.
TRIAL = {"stable_after_s": 5, "ota_trial_boots": 1, "ota_trial_s": 12}
BLOCK = 4096


def _variant(tmp, arch, version, main=None, change=None):
    """A bundle of this repo with VERSION `version` (and another main.py, if given; change
    (path, old, new): a line of a module changed)."""
    src = tmp / f"src-{arch}-{version}"
    if not src.exists():
        src.mkdir(parents=True)
        for name in bundles.TOP_FILES:
            shutil.copy(REPO / name, src / name)
        shutil.copytree(REPO / "lib", src / "lib",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        init = src / "lib" / "node" / "__init__.py"
        text = init.read_text()
        assert 'VERSION = "' in text
        init.write_text(text.replace(text.split('VERSION = "')[1].split('"')[0], version, 1))
        if main is not None:
            (src / "main.py").write_text(main)
        if change is not None:
            path, old, new = change
            text = (src / path).read_text()
            assert old in text
            (src / path).write_text(text.replace(old, new, 1))
    out = tmp / f"bundle-{arch}-{version}"
    bundles.build(src, out, arch, log=lambda line: None)
    return out


@pytest.fixture(scope="module")
def bundles_x64(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ota-bundles")
    return {
        "good": _variant(tmp, "x64", "0.1.0+ota"),
        "broken": _variant(tmp, "x64", "0.1.0+broken",
                           main='raise ImportError("broken on purpose")\n'),
        # Runs, every task alive, but never reaches the broker.
        "unconnected": _variant(tmp, "x64", "0.1.0+unconnected", change=(
            "lib/node/publisher.py", "        await self._link(self._beat)\n",
            '        raise OSError("never connects, on purpose")\n')),
    }


def _node(node_factory, broker, tmp_path, key=KEY, **kwargs):
    secrets = {"wifi_ssid": "sim-wifi", "wifi_password": "sim-password", "ota_key": key}
    node = node_factory(broker, secrets=secrets, reboot=True, **TRIAL, **kwargs)
    node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
    return node


def _operator(tmp_path, node, key=KEY):
    """CONFIG and SECRETS as `make ota` takes them: the node's config.json (beside its CA),
    and an operator's file with the key (the test broker takes anonymous clients)."""
    config = node.flash.parent / "config.json"
    secrets = write_json(tmp_path / "operator-secrets.json", {"ota_key": key})
    return config, secrets


def _send(node, tmp_path, bundle_dir, key=KEY, lines=None, **kwargs):
    config, secrets = _operator(tmp_path, node, key)
    out = lines if lines is not None else []
    transfers = ota.update_nodes([node.cfg["node_id"]], config, secrets, bundle_dir,
                                 log=out.append, timeout=50, **kwargs)
    return transfers[node.cfg["node_id"]], out


def _blocks(paths):
    return sum(-(-p.stat().st_size // BLOCK) for p in paths if p.is_file()) * BLOCK


def _version_of(sub, node, since=0):
    tele = sub.wait_for(f"^{node.topics.telemetry}$", timeout=15, since=since)
    return tele.json()["version"]


def test_an_update_is_applied_and_readings_go_on(broker, subscriber_factory, node_factory,
                                                 bundles_x64, tmp_path):
    sub = subscriber_factory(broker)
    node = _node(node_factory, broker, tmp_path)
    assert _version_of(sub, node) == "0.1.0"
    flash = node.flash
    trial_backup = {}

    def watch_flash():  # the backup exists from the swap until the trial is confirmed
        while "kb" not in trial_backup:
            state = flash / "ota.json"
            if state.is_file() and '"trial"' in state.read_text():
                trial_backup["kb"] = _blocks((flash / "ota" / "old").rglob("*")) / 1024
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_flash, daemon=True)
    watcher.start()
    t, log = _send(node, tmp_path, bundles_x64["good"])
    assert t.state == "applied", log
    assert t.version == "0.1.0+ota"
    watcher.join(5)
    mark = sub.mark()
    assert _version_of(sub, node, mark) == "0.1.0+ota"
    sub.wait_for(f"^{node.topics.climate}$", timeout=10, since=mark, count=2)
    # Readings per boot: the old version's until its reset, the new one's from seq 1.
    report = assert_no_seq_gap(data_payloads(sub, node.topics), first_seq=1)
    assert len(report) == 2, report
    late = subscriber_factory(broker, node.topics.all[:-1] + "ota")  # the outcome is retained
    outcome = late.wait_for(f"^{node.topics.all[:-1]}ota$", timeout=5)
    assert outcome.retain and outcome.json()["state"] == "applied"
    assert not (flash / "ota").exists() and not (flash / "ota.json").exists()
    assert not list((flash / "lib").rglob("*.py")), "the sources were moved aside, then dropped"
    assert not node.find(r"readings not delivered"), "the reset came before the outbox emptied"
    received = node.wait_for_line(r"ota: received (\d+) bytes in (\d+) ms \((\d+) B/s\); heap "
                                  r"free at least (\d+) bytes; loop late by p99 (\d+) ms, at "
                                  r"most (\d+) ms")
    f = ota.figures(t)
    update = ota.load_update(bundles_x64["good"])
    # In littlefs's 4 KB blocks: the stream, and the files taken out of it before it goes.
    stream_kb = -(-len(update.stream) // BLOCK) * BLOCK / 1024
    files_kb = sum(-(-size // BLOCK) for _p, size, _s in update.files) * BLOCK / 1024
    print(f"\nupdate (x64 bundle, {t.total / 1024:.1f} KB stream, window {ota.WINDOW} x "
          f"{t.chunk} B): transfer {f['transfer_s']:.2f} s = {f['kb_per_s']:.1f} KB/s at the "
          f"host, node says {int(received.group(3)) / 1024:.1f} KB/s; {t.bytes_sent / 1024:.1f} "
          f"KB sent; offer to 'applied' {f['total_s']:.1f} s (stable_after_s "
          f"{TRIAL['stable_after_s']} s included)")
    print(f"during the transfer: loop late by p99 {received.group(5)} ms, max "
          f"{received.group(6)} ms; flash beyond the app: stream {stream_kb:.0f} KB + files "
          f"taken out {files_kb:.0f} KB at the peak, then the backup "
          f"{trial_backup.get('kb', 0):.0f} KB (this node ran from sources) until confirmed; "
          f"seq {report}")
    print("\n".join(log))


def test_a_broken_update_is_rolled_back_by_the_node(broker, subscriber_factory, node_factory,
                                                    bundles_x64, tmp_path):
    sub = subscriber_factory(broker)
    node = _node(node_factory, broker, tmp_path)
    before = {str(p.relative_to(node.flash)): p.read_bytes()
              for p in (node.flash / "lib").rglob("*") if p.is_file()}
    t, log = _send(node, tmp_path, bundles_x64["broken"])
    assert t.state == "rolled_back", log
    assert t.version == "0.1.0" and "0.1.0+broken did not run stably" in t.reason, t.reason
    first = node.wait_for_line(r"boot\.py: update to 0\.1\.0\+broken on trial: boot 1 of 1")
    rolled = [m for m in sub.select(f"^{node.topics.all[:-1]}ota$")
              if m.json()["state"] == "rolled_back"][-1]
    assert "broken on purpose" in node.text()
    node.wait_for_line(r"boot\.py: update to 0\.1\.0\+broken failed its trial: putting 0\.1\.0 "
                       r"back")
    mark = sub.mark()
    assert _version_of(sub, node, mark) == "0.1.0"
    sub.wait_for(f"^{node.topics.climate}$", timeout=10, since=mark)
    after = {str(p.relative_to(node.flash)): p.read_bytes()
             for p in (node.flash / "lib").rglob("*") if p.is_file()}
    assert after == before
    assert not (node.flash / "ota").exists() and not (node.flash / "ota.json").exists()
    assert_no_seq_gap(data_payloads(sub, node.topics), first_seq=1)
    print(f"\nbroken update (main.py raises at import), ota_trial_boots 1, ota_trial_s "
          f"{TRIAL['ota_trial_s']}: rollback reported {rolled.t - first.string.t:.1f} s after "
          f"the broken version's first boot; reason: {rolled.json()['reason']}")


def test_a_version_that_never_connects_is_rolled_back_by_the_node(broker, node_factory,
                                                                  bundles_x64, tmp_path):
    node = _node(node_factory, broker, tmp_path)
    t, log = _send(node, tmp_path, bundles_x64["unconnected"])
    assert t.state == "rolled_back", log
    first = node.wait_for_line(r"boot\.py: update to 0\.1\.0\+unconnected on trial: boot 1")
    assert node.find(r"never connects, on purpose")
    back = node.wait_for_line(r"ota: rolled_back: 0\.1\.0\+unconnected")
    print(f"\nversion that never connects (its app runs, every task alive): rolled back, "
          f"reported {back.string.t - first.string.t:.1f} s after its first boot "
          f"(ota_trial_s {TRIAL['ota_trial_s']})")


def test_a_forged_manifest_is_refused_and_nothing_is_written(broker, subscriber_factory,
                                                             node_factory, bundles_x64,
                                                             tmp_path):
    sub = subscriber_factory(broker)
    node = _node(node_factory, broker, tmp_path)
    t, log = _send(node, tmp_path, bundles_x64["good"], key="not-the-nodes-key-at-all")
    assert t.state == "refused", log
    assert "does not verify with ota_key" in t.reason
    assert not (node.flash / "ota").exists()
    mark = sub.mark()
    sub.wait_for(f"^{node.topics.climate}$", timeout=10, since=mark, count=2)
    assert node.boots == 1 and _version_of(sub, node, mark) == "0.1.0"
    print(f"\nforged manifest: {t.state}: {t.reason}")


def test_a_transfer_goes_on_after_the_broker_restarts(broker, subscriber_factory,
                                                      node_factory, bundles_x64, tmp_path):
    node = _node(node_factory, broker, tmp_path)
    config, secrets = _operator(tmp_path, node)
    session = ota.Session(ota.load_target(config, secrets), ota.load_update(bundles_x64["good"]),
                          log=lambda line: None, window=1)  # slower: one chunk in flight
    session.connect()
    result = {}
    runner = threading.Thread(target=lambda: result.update(session.run(50)), daemon=True)
    try:
        session.offer([node.cfg["node_id"]])
        t = session.transfers[node.cfg["node_id"]]
        runner.start()
        wait_until(lambda: t.acked > t.total // 3, 20, 0.01, "a third of the stream")
        cut_at = t.acked
        broker.restart()
        runner.join(55)
    finally:
        session.close()
    assert t.state == "applied", (t, node.tail(30))
    fresh = node.find(r"ota: receiving the update to 0\.1\.0\+ota: ")
    assert len(fresh) == 1, "the transfer started over"
    print(f"\nbroker restarted at byte {cut_at} of {t.total}: {t.offers} offers, "
          f"{t.bytes_sent / 1024:.1f} KB sent for a {t.total / 1024:.1f} KB stream; "
          f"{ota.figures(t)}")
    assert t.bytes_sent < 1.5 * t.total


# The heap an update needs on the 32-bit 1.27 port: the node's own (HEAP_32_BIT in
# tests/e2e/test_e2e.py). The running node holds node.otaoffer, then node.ota and a chunk
# (about 7.5 KB at the low point); the stream is taken apart at the next boot, before the app's
# modules load. At HEAP_SHORT the node runs with less free than an update needs.
HEAP_32_BIT_OTA = "128k"
HEAP_SHORT = "120k"


def _x86_node(node_factory, broker, tmp_path, tmp_path_factory, heap):
    tmp = tmp_path_factory.mktemp("ota-x86")
    old = _variant(tmp, "x86", "0.1.0")
    new = _variant(tmp, "x86", "0.1.0+x86")
    node = _node(node_factory, broker, tmp_path, app_root=old, heap=heap,
                 micropython=str(MP32))
    return node, new


@pytest.mark.skipif(not MP32.is_file(), reason="no 32-bit MicroPython (../shared/mp32) here")
def test_an_update_fits_the_32_bit_port_in_its_heap(broker, subscriber_factory, node_factory,
                                                    tmp_path_factory, tmp_path):
    sub = subscriber_factory(broker)
    node, new = _x86_node(node_factory, broker, tmp_path, tmp_path_factory, HEAP_32_BIT_OTA)
    tele = sub.wait_for(f"^{node.topics.telemetry}$", timeout=15).json()
    t, log = _send(node, tmp_path, new)
    assert t.state == "applied", (log, node.tail(40))
    assert "MemoryError" not in node.text()
    received = node.wait_for_line(r"ota: received .* heap free at least (\d+) bytes")
    verified = node.wait_for_line(r"ota: stream verified; heap free at least (\d+) bytes")
    at_boot = node.wait_for_line(r"boot\.py: update to \S+ taken apart and swapped in \(heap "
                                 r"free (\d+) bytes\)")
    chunks = node.wait_for_line(r"ota: at byte 0 of \d+, in chunks of (\d+) bytes")
    mark = sub.mark()
    after = sub.wait_for(f"^{node.topics.telemetry}$", timeout=15, since=mark).json()
    assert after["version"] == "0.1.0+x86"
    f = ota.figures(t)
    print(f"\nx86 bundle on micropython32 at HEAP={HEAP_32_BIT_OTA}: heap free {tele['heap_free']}"
          f" before the update, at least {verified.group(1)} during it (after a collection, "
          f"every 8 KB of the transfer and while verifying; {received.group(1)} at the end of "
          f"the transfer), {at_boot.group(1)} at boot with the stream taken apart, "
          f"{after['heap_free']} after it (version {after['version']}); chunks of "
          f"{chunks.group(1)} bytes; transfer {f['transfer_s']:.2f} s, {f['kb_per_s']:.1f} KB/s;"
          f" offer to 'applied' {f['total_s']:.1f} s")


@pytest.mark.skipif(not MP32.is_file(), reason="no 32-bit MicroPython (../shared/mp32) here")
def test_an_offer_the_heap_has_no_room_for_is_refused_and_the_node_runs_on(
        broker, subscriber_factory, node_factory, tmp_path_factory, tmp_path):
    """Refused before any of the update's code loads: a load that fails part way would leave
    its names and holes in the heap, and the node would limp on."""
    sub = subscriber_factory(broker)
    node, new = _x86_node(node_factory, broker, tmp_path, tmp_path_factory, HEAP_SHORT)
    t, log = _send(node, tmp_path, new)
    assert t.state == "refused", (log, node.tail(40))
    assert t.reason.startswith("not enough heap for an update: "), t.reason
    assert not (node.flash / "ota").exists()
    mark = sub.mark()
    after = sub.wait_for(f"^{node.topics.telemetry}$", timeout=15, since=mark).json()
    sub.wait_for(f"^{node.topics.climate}$", timeout=10, since=mark, count=2)
    assert "MemoryError" not in node.text() and "task died" not in node.text()
    assert after["version"] == "0.1.0"
    print(f"\nx86 bundle on micropython32 at HEAP={HEAP_SHORT}: {t.state}: {t.reason}; heap "
          f"free {after['heap_free']} after it")
