"""`make plot` (tools/plot.py): readings from a recording into readings.csv, readings.png and
readings.json, and the option checks. The PNG is decoded and its panels checked for drawn lines,
and the points per series are read back from the figure, so a plot that silently drops a series
fails. A simulator run and a live broker are in tests/e2e/test_plot.py."""

import csv
import json
import math

import numpy as np
import pytest

from tools import plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def floats(rows, column):
    return [float(r[column]) for r in rows]


def drawn_pixels_per_band(png, bands=3):
    """Pixels of the first node's blue (C0, antialiased) in each horizontal third of the image:
    background, grid and text are grey, so blue well above red is a drawn line."""
    import matplotlib.image

    img = matplotlib.image.imread(png)
    blue = (img[:, :, 2] - img[:, :, 0]) > 0.15
    return [int(b.sum()) for b in np.array_split(blue, bands, axis=0)], img.shape


def check_outputs(out):
    """The three files exist and agree; returns (csv rows, summary)."""
    rows = read_csv(out / "readings.csv")
    summary = json.loads((out / "readings.json").read_text())
    png = out / "readings.png"
    assert png.read_bytes()[:8] == PNG_MAGIC, "readings.png is not a PNG"
    assert summary["rows"] == len(rows)
    assert summary["png"]["bytes"] == png.stat().st_size
    return rows, summary


# ---- a hand-made recording --------------------------------------------------------------------


def _msg(t, topic, payload, retain=False):
    return json.dumps({"t": t, "topic": topic, "payload": payload, "retain": retain})


def _climate(boot, seq, ts, temp, hum):
    return {"boot": boot, "seq": seq, "ts": ts, "temperature": temp, "humidity": hum}


T0 = 1_750_000_000
# (line, problem reported on stderr or None). Line numbers are the list index + 1.
RECORDING = [
    (_msg(T0, "nodes/a/status", "online", retain=True), None),
    (_msg(T0 + 1, "nodes/a/climate", _climate(3, 1, T0, 21.5, 40.0)), None),
    ("garbage that is not JSON", "not JSON"),
    (_msg(T0 + 2, "nodes/a/sound", {"boot": 3, "seq": 2, "ts": T0 + 2, "rms_dbfs": -31.25,
                                    "peak_dbfs": -25.0, "laeq_dba": 55.5}), None),
    (_msg(T0 + 3, "nodes/a/climate", _climate(3, 1, T0, 21.5, 40.0)), None),  # QoS 1 resend
    ("", None),
    (_msg(T0 + 4, "nodes/a/climate", "<html>not json</html>"), "payload is not JSON"),
    (_msg(T0 + 5, "nodes/a/telemetry", {"uptime_s": 12, "heap_free": 100000}), None),
    ("[1, 2, 3]", "not a message"),
    (_msg(T0 + 6, "nodes/b/climate", json.dumps(_climate(1, 1, T0 + 1, 19, 55))), None),
    (_msg(T0 + 7, "nodes/a/climate", {**_climate(3, 3, T0 + 5, 22.0, 41.0), "seq": True}),
     "seq: expected an integer"),
    (_msg(T0 + 8, "nodes/a/climate", {"boot": 3, "seq": 4, "ts": T0 + 6, "temperature": 22}),
     "no 'humidity'"),
    (_msg(T0 + 9, "nodes/a/climate", _climate(3, 5, T0 + 7, None, 42.0)), None),  # NaN -> null
    (_msg(T0 + 10, "nodes/a/climate", _climate(3, 1, T0, 30.0, 40.0)), "seen again"),
    # a reboot: boot 4 starts at seq 1 again, and the line breaks there
    (_msg(T0 + 20, "nodes/a/climate", _climate(4, 1, T0 + 20, 23.0, 43.0)), None),
    # arrived late but measured earlier: rows are sorted by ts
    (_msg(T0 + 21, "nodes/a/sound", {"boot": 3, "seq": 6, "ts": T0 + 8, "rms_dbfs": -40.0,
                                     "peak_dbfs": -35.0, "laeq_dba": 50.0}), None),
    # sent before the node's clock was set: "ts": null, so the receive time stands in; the
    # QoS 1 resend arrives later but is the same reading
    (_msg(T0 + 30, "nodes/b/sound", {"boot": 1, "seq": 2, "ts": None, "rms_dbfs": -50.0,
                                     "peak_dbfs": -45.0}), None),
    (_msg(T0 + 31, "nodes/b/sound", {"boot": 1, "seq": 2, "ts": None, "rms_dbfs": -50.0,
                                     "peak_dbfs": -45.0}), None),
    (_msg(T0 + 32, "nodes/b/sound", {"boot": 1, "seq": 3, "rms_dbfs": -50.0}), "no 'ts'"),
    ('{"t": 1, "topic": "nodes/a/climate", "payload": {"boot": 4, "se', "not JSON"),  # cut off
]


def test_a_recording_with_junk_is_plotted_and_the_junk_reported(tmp_path, capsys):
    rec = tmp_path / "rec.jsonl"
    rec.write_text("\n".join(line for line, _ in RECORDING) + "\n")
    out = tmp_path / "out"
    assert plot.main(["--recording", str(rec), "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()

    for n, (_, problem) in enumerate(RECORDING, 1):
        mine = [e for e in err if e.startswith(f"plot: {rec}:{n}: ")]
        if problem:
            assert len(mine) == 1 and problem in mine[0], f"line {n}: {problem!r} not in {err}"
        else:
            assert not mine, f"line {n} reported: {mine}"
    assert len(err) == sum(1 for _, p in RECORDING if p), err

    rows, summary = check_outputs(out)
    assert [(r["node"], r["boot"], r["seq"]) for r in rows] == [
        ("a", "3", "1"), ("b", "1", "1"), ("a", "3", "2"), ("a", "3", "5"), ("a", "3", "6"),
        ("a", "4", "1"), ("b", "1", "2"),
    ]
    assert list(rows[0]) == list(plot.CSV_COLUMNS)
    first = rows[0]
    assert (first["temperature_c"], first["humidity_pct"], first["kind"]) == ("21.5", "40.0",
                                                                              "climate")
    assert first["iso_time"] == "2025-06-15T15:06:40Z" and first["ts"] == str(T0)
    sound = rows[2]
    assert (sound["rms_dbfs"], sound["peak_dbfs"], sound["laeq_dba"]) == ("-31.25", "-25.0",
                                                                         "55.5")
    assert rows[3]["temperature_c"] == "" and rows[3]["humidity_pct"] == "42.0"
    assert rows[-1]["ts"] == str(T0 + 30) and rows[-1]["rms_dbfs"] == "-50.0"
    assert summary["duplicates_removed"] == 3 and summary["ts_from_receive_time"] == 1
    assert summary["series"] == {
        "temperature/a": 2, "humidity/a": 3, "rms_dbfs/a": 2, "laeq_dba/a": 2,
        "temperature/b": 1, "humidity/b": 1, "rms_dbfs/b": 1,
    }  # fmt: skip


def test_the_figure_has_three_labelled_panels_sharing_time(tmp_path):
    rec = tmp_path / "rec.jsonl"
    rec.write_text("\n".join(line for line, _ in RECORDING) + "\n")
    rows, _ = plot.load(rec, lambda where, what: None)
    fig = plot.figure(rows)
    temp_ax, hum_ax, sound_ax, laeq_ax = fig.axes  # the dB(A) twin of the sound panel last
    assert "°C" in temp_ax.get_ylabel() and "%" in hum_ax.get_ylabel()
    assert "dBFS" in sound_ax.get_ylabel() and "dB(A)" in laeq_ax.get_ylabel()
    assert "UTC" in sound_ax.get_xlabel() and fig.get_suptitle()
    assert temp_ax.get_shared_x_axes().joined(temp_ax, sound_ax)
    lines = {line.get_gid(): line for ax in fig.axes for line in ax.get_lines()}
    assert {g: lines[g].axes for g in ("temperature/a", "humidity/b", "rms_dbfs/a",
                                       "laeq_dba/a")} == {
        "temperature/a": temp_ax, "humidity/b": hum_ax, "rms_dbfs/a": sound_ax,
        "laeq_dba/a": laeq_ax,
    }  # fmt: skip
    # One line per node and series; node a's climate line breaks at the reboot (boot 3 -> 4).
    assert lines["temperature/a"].get_color() == lines["rms_dbfs/a"].get_color()
    assert lines["temperature/a"].get_color() != lines["temperature/b"].get_color()
    hum = list(lines["humidity/a"].get_ydata())
    assert hum[:2] == [40.0, 42.0] and math.isnan(hum[2]) and hum[3:] == [43.0], hum


def test_a_recording_without_readings_fails(tmp_path, capsys):
    rec = tmp_path / "rec.jsonl"
    rec.write_text(_msg(T0, "nodes/a/status", "online") + "\nnot json\n")
    assert plot.main(["--recording", str(rec), "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "FAILED: no climate or sound readings" in captured.out
    assert f"{rec}:2: skipped: not JSON" in captured.err
    assert plot.main(["--recording", str(tmp_path / "missing.jsonl"),
                      "--out", str(tmp_path / "out")]) == 1
    assert "recording not found" in capsys.readouterr().out


@pytest.mark.parametrize("argv, error", [
    (["--recording", "x.jsonl", "--broker", "h:1"], "exclude each other"),
    (["--duration", "-3"], "positive number"),
    (["--duration", "soon"], "expected seconds"),
    (["--recording", "x.jsonl", "--duration", "5"], "for a live run"),
    (["--broker", "h:1", "--dht", "x.csv"], "for a simulator run"),
    (["--ca", "ca.pem"], "go with --broker"),
    (["--cert", "operator.pem", "--key", "operator.key"], "go with --broker"),
])  # fmt: skip
def test_bad_options_are_refused(argv, error, capsys):
    with pytest.raises(SystemExit) as exc:
        plot.parse_args(argv)
    assert exc.value.code == 2 and error in capsys.readouterr().err


def test_broker_address_and_ca_are_checked(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert plot.main(["--broker", "nohost:99999", "--ca", "x", "--out", out]) == 1
    assert "expected HOST:PORT" in capsys.readouterr().out
    assert plot.main(["--broker", "127.0.0.1:1", "--out", out]) == 1
    assert "--broker needs --ca" in capsys.readouterr().out
    assert plot.main(["--broker", "127.0.0.1:1", "--ca", str(tmp_path / "no.pem"),
                      "--out", out]) == 1
    assert "file not found" in capsys.readouterr().out
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert plot.main(["--broker", "127.0.0.1:1", "--ca", str(ca), "--cert", str(ca),
                      "--out", out]) == 1
    assert "--cert and --key go together" in capsys.readouterr().out
    assert plot.main(["--broker", "127.0.0.1:1", "--ca", str(ca), "--cert", str(ca), "--key",
                      str(tmp_path / "no.key"), "--out", out]) == 1
    assert "--key: file not found" in capsys.readouterr().out


def test_png_size_rejects_a_non_png(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"GIF89a" + bytes(30))
    with pytest.raises(ValueError):
        plot.png_size(bad)
