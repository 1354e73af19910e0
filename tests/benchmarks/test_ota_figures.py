"""The figures of updates over MQTT on the 32-bit 1.27 port (../shared/mp32/micropython32), the
board's word size, with x86 bundles: printed, never asserted beyond the outcome.

    .venv/bin/python -m pytest -s tests/benchmarks/test_ota_figures.py

- the idle cost: heap_free of the node at HEAP=128k with the repo's config.json (`make sim`'s
  run, as ../briefs' tryheap does), without and with an ota_key (its two subscriptions);
- an update: transfer time and throughput, offer to "applied", the heap's low point while it
  runs (heap_min_free of the update, after a collection), the heap at the boot that takes the
  stream apart, the flash it needs (stream + files taken out, then the backup);
- a broken update (main.py raises at import): from its first boot to "rolled_back" reported.
"""

import json
import re
import subprocess

import pytest

from sim.host.simnode import write_json
from tests.e2e.infra import (  # noqa: F401  (fixtures are found by pytest in this namespace)
    broker,
    broker_factory,
    certs,
    node_factory,
    subscriber_factory,
)
from tests.e2e.test_ota import HEAP_32_BIT_OTA, KEY, TRIAL, _node, _send, _variant
from tools import ota
from tools.hosttools import MP32, REPO

pytestmark = pytest.mark.skipif(not MP32.is_file(),
                                reason="no 32-bit MicroPython (../shared/mp32) here")
BLOCK = 4096  # littlefs's block on the ESP32


def _sim_heap_free(app, secrets=None):
    """heap_free of the first telemetry of `make sim` (repo config.json) at HEAP=128k."""
    cmd = [str(REPO / ".venv" / "bin" / "python"), "-m", "sim.host.run", "--duration", "14",
           "--app", str(app), "--heap", "128k", "--micropython", str(MP32), "--config", "",
           "--secrets", str(secrets) if secrets else "", "--audio", "", "--dht", "",
           "--record", "", "--clock", ""]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    found = re.findall(r'"heap_free":(\d+)', out)
    assert found, out[-2000:]
    return int(found[0]), "MemoryError" in out


def test_idle_cost_at_128k(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ota-idle")
    app = _variant(tmp, "x86", "0.1.0")
    secrets = write_json(tmp / "secrets.json", {"wifi_ssid": "sim-wifi",
                                                 "wifi_password": "sim-password",
                                                 "ota_key": KEY})
    off, off_err = _sim_heap_free(app)
    on, on_err = _sim_heap_free(app, secrets)
    print(f"\nidle, x86 bundle on micropython32 at HEAP=128k, config.json as committed: "
          f"heap_free {off} bytes without an ota_key, {on} with one (its subscriptions: "
          f"{off - on} bytes){'; MemoryError seen' if off_err or on_err else ''}")


def test_update_figures(broker, subscriber_factory, node_factory, tmp_path_factory, tmp_path):
    tmp = tmp_path_factory.mktemp("ota-fig")
    old = _variant(tmp, "x86", "0.1.0")
    new = _variant(tmp, "x86", "0.1.0+x86")
    sub = subscriber_factory(broker)
    node = _node(node_factory, broker, tmp_path, app_root=old, heap=HEAP_32_BIT_OTA,
                 micropython=str(MP32))
    before = sub.wait_for(f"^{node.topics.telemetry}$", timeout=15).json()
    t, log = _send(node, tmp_path, new)
    assert t.state == "applied", log
    low = node.wait_for_line(r"ota: stream verified; heap free at least (\d+) bytes")
    at_boot = node.wait_for_line(r"boot\.py: update to \S+ taken apart and swapped in \(heap "
                                 r"free (\d+) bytes\)")
    chunk = node.wait_for_line(r"ota: at byte 0 of \d+, in chunks of (\d+) bytes")
    f = ota.figures(t)
    update = ota.load_update(new)
    stream_kb = -(-len(update.stream) // BLOCK) * BLOCK / 1024
    files_kb = sum(-(-size // BLOCK) for _p, size, _s in update.files) * BLOCK / 1024
    old_kb = sum(-(-p.stat().st_size // BLOCK) for p in (old / "lib").rglob("*")
                 if p.is_file()) * BLOCK / 1024
    print(f"\nupdate, x86 bundle ({len(update.files)} files, {len(update.stream) / 1024:.1f} KB "
          f"stream) on micropython32 at HEAP={HEAP_32_BIT_OTA}, chunks of {chunk.group(1)} B, "
          f"{ota.WINDOW} in flight: transfer {f['transfer_s']:.2f} s = {f['kb_per_s']:.1f} "
          f"KB/s, offer to 'applied' {f['total_s']:.1f} s (stable_after_s "
          f"{TRIAL['stable_after_s']} s and two reboots included)")
    print(f"heap: {before['heap_free']} free before, heap_min_free during the update "
          f"{low.group(1)} (the update's peak: {before['heap_free'] - int(low.group(1))} bytes); "
          f"{at_boot.group(1)} free at the boot that takes the stream apart")
    print(f"flash in {BLOCK // 1024} KB blocks: stream {stream_kb:.0f} KB + files taken out "
          f"{files_kb:.0f} KB at the peak (at boot, before the stream goes), then the backup "
          f"of the old lib/ {old_kb:.0f} KB until the trial is confirmed")
    print("\n".join(log))


def test_rollback_figure(broker, subscriber_factory, node_factory, tmp_path_factory, tmp_path):
    tmp = tmp_path_factory.mktemp("ota-rb")
    old = _variant(tmp, "x86", "0.1.0")
    broken = _variant(tmp, "x86", "0.1.0+broken", main='raise ImportError("broken on purpose")\n')
    sub = subscriber_factory(broker)
    node = _node(node_factory, broker, tmp_path, app_root=old, heap=HEAP_32_BIT_OTA,
                 micropython=str(MP32))
    t, log = _send(node, tmp_path, broken)
    assert t.state == "rolled_back", log
    first = node.wait_for_line(r"boot\.py: update to 0\.1\.0\+broken on trial: boot 1 of 1")
    rolled = [m for m in sub.select(f"^{node.topics.all[:-1]}ota$")
              if json.loads(m.payload)["state"] == "rolled_back"][-1]
    print(f"\nbroken update (main.py raises at import) on micropython32 at HEAP={HEAP_32_BIT_OTA},"
          f" ota_trial_boots {TRIAL['ota_trial_boots']}, ota_trial_s {TRIAL['ota_trial_s']}: "
          f"rollback reported {rolled.t - first.string.t:.1f} s after the broken version's first"
          f" boot")
