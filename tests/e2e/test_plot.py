"""`make plot` (tools/plot.py) end to end: a simulator run (the real node for a few seconds
against Mosquitto) and a live broker, each into readings.csv, readings.png and readings.json,
checked as tests/tools/test_plot.py checks a recording."""

import json
import subprocess
import sys
import time

from tests.conftest import REPO
from tests.e2e.infra import broker, broker_factory, certs  # noqa: F401
from tests.tools.test_plot import _climate, check_outputs, drawn_pixels_per_band, floats

PLOT = [sys.executable, "-m", "tools.plot"]  # from the repo root, as `make plot` runs it
SIM_RUN_S = 14  # two sound intervals (5 s in the sim config) and the node's start-up


# ---- a real simulator run ---------------------------------------------------------------------


def test_a_simulator_run_is_plotted(tmp_path):
    # A rising DHT script, with temperature and humidity far apart: a column mix-up, a constant
    # or a missing value shows in the CSV.
    dht = tmp_path / "dht.csv"
    dht.write_text("".join(f"{20 + i * 0.5:.1f},{60 + i}\n" for i in range(30)))
    out = tmp_path / "out"
    started = time.monotonic()
    proc = subprocess.run(
        [*PLOT, "--duration", str(SIM_RUN_S), "--out", str(out),
         "--work", str(tmp_path / "sim"), "--dht", str(dht)],
        cwd=REPO, capture_output=True, text=True, timeout=SIM_RUN_S + 45,
    )  # fmt: skip
    took = time.monotonic() - started
    assert proc.returncode == 0, f"plot.py exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    rows, summary = check_outputs(out)

    climate = [r for r in rows if r["kind"] == "climate"]
    sound = [r for r in rows if r["kind"] == "sound"]
    assert len(climate) >= 4 and len(sound) >= 2, f"{len(climate)} climate, {len(sound)} sound"
    assert {r["node"] for r in rows} == {"sim-node"}
    assert len({r["boot"] for r in rows}) == 1
    seqs = [int(r["seq"]) for r in rows]
    assert seqs == sorted(set(seqs)), f"seq not increasing: {seqs}"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"seq gap: {seqs}"
    ts = floats(rows, "ts")
    assert ts == sorted(ts) and ts[-1] - ts[0] >= 5
    assert all(r["iso_time"].endswith("Z") for r in rows)
    temps, hums = floats(climate, "temperature_c"), floats(climate, "humidity_pct")
    assert all(20 <= t < 35 for t in temps) and all(60 <= h < 90 for h in hums), (temps, hums)
    assert temps == sorted(temps) and temps[-1] > temps[0], f"not the rising script: {temps}"
    rms = floats(sound, "rms_dbfs")
    assert all(abs(x + 20) < 0.5 for x in rms), f"the default sine is -20 dBFS: {rms}"
    assert all(r["temperature_c"] == "" for r in sound) and all(r["rms_dbfs"] == "" for r in
                                                                 climate)

    assert summary["series"] == {
        "temperature/sim-node": len(climate),
        "humidity/sim-node": len(climate),
        "rms_dbfs/sim-node": len(sound),
    }
    recording = out / "recording.jsonl"
    assert recording.is_file(), "a live run keeps its recording"
    counts, shape = drawn_pixels_per_band(out / "readings.png")
    assert shape[:2] == (summary["png"]["height"], summary["png"]["width"])
    assert all(n > 300 for n in counts), f"a panel without a drawn line: {counts} pixels"
    print(f"\nsim run {took:.1f} s: {len(rows)} rows ({len(climate)} climate, {len(sound)} "
          f"sound), series {summary['series']}, PNG {summary['png']}")


# ---- a live broker ----------------------------------------------------------------------------


def test_a_live_broker_is_recorded_and_plotted(broker, certs, tmp_path):
    import paho.mqtt.client as mqtt

    from sim.net.broker import tls_context

    out = tmp_path / "out"
    proc = subprocess.Popen(
        [*PLOT, "--broker", f"{broker.host}:{broker.port}",
         "--ca", str(certs.ca_pem), "--server-hostname", "localhost", "--duration", "3",
         "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        first = proc.stdout.readline()
        assert "subscribed to nodes/#" in first, first + proc.stderr.read()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-plot-pub")
        pub.tls_set_context(tls_context(certs.ca_pem, "localhost"))
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        now = int(time.time())
        for seq in range(1, 4):
            payload = json.dumps(_climate(1, seq, now + seq, 20.0 + seq, 50.0))
            pub.publish("nodes/live/climate", payload, qos=1).wait_for_publish(5)
        pub.publish("nodes/live/sound", json.dumps(
            {"boot": 1, "seq": 4, "ts": now + 4, "rms_dbfs": -33.0, "peak_dbfs": -30.0}),
            qos=1).wait_for_publish(5)  # fmt: skip
        pub.publish("elsewhere/x/climate", "{}", qos=1).wait_for_publish(5)  # not subscribed
        pub.loop_stop()
        pub.disconnect()
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"{first}{stdout}\n{stderr}"
    rows, summary = check_outputs(out)
    assert [(r["node"], r["seq"], r["kind"]) for r in rows] == [
        ("live", "1", "climate"), ("live", "2", "climate"), ("live", "3", "climate"),
        ("live", "4", "sound"),
    ]
    assert floats(rows[:3], "temperature_c") == [21.0, 22.0, 23.0]
    assert summary["series"] == {"temperature/live": 3, "humidity/live": 3, "rms_dbfs/live": 1}
    assert len((out / "recording.jsonl").read_text().splitlines()) == 4
