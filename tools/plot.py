"""`make plot`: temperature, humidity and sound level over time, as a CSV table and a PNG chart.

    python -m tools.plot [--recording FILE | --broker HOST:PORT --ca FILE [--server-hostname N]
                         [--user U --password P] [--cert FILE --key FILE] [--topic nodes/#]]
                         [--duration S] [--out DIR]

Where the readings come from (one of):
- --recording FILE: JSON lines, one message each, {"t": receive time, "topic": ...,
  "payload": parsed JSON or text, "retain": bool}, as `make sim RECORD=FILE` writes them;
- --broker HOST:PORT --ca FILE: subscribe (TLS, server verified) for --duration seconds;
- neither: run the simulated node against a local Mosquitto as `make sim` does (sim/host/run.py),
  for --duration seconds (default 60), in its own folder (.sim/plot/, unless --work).
A live run is kept as DIR/recording.jsonl, so it can be plotted again with --recording.

Writes into --out (default build/plot):
- readings.csv: one row per distinct (node, boot, seq) (QoS 1 resends dropped), sorted by ts
  (a reading sent before the node's clock was set has "ts": null: its receive time stands in);
- readings.png: three panels sharing the time axis (temperature, humidity, sound level), one
  line per node; a line breaks where a node rebooted or went quiet;
- readings.json: a summary, with the points of each series counted from the drawn figure.
Lines of a recording that are not a message, and data messages that break the contract, are
skipped and reported on stderr with their line number. Empty option values mean "not set".
"""

import argparse
import csv
import json
import math
import ssl
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from tools.hosttools import REPO

DATA_KINDS = ("climate", "sound")
CSV_COLUMNS = ("node", "boot", "seq", "ts", "iso_time", "kind", "temperature_c",
               "humidity_pct", "rms_dbfs", "peak_dbfs", "laeq_dba")
# Payload key -> CSV column, and whether a data message must carry it.
_FIELDS = {
    "climate": (("temperature", "temperature_c", True), ("humidity", "humidity_pct", True)),
    "sound": (("rms_dbfs", "rms_dbfs", True), ("peak_dbfs", "peak_dbfs", False),
              ("laeq_dba", "laeq_dba", False)),
}
# The drawn series: (series name, CSV column, panel index, twin axis, line style).
_SERIES = (
    ("temperature", "temperature_c", 0, False, "-"),
    ("humidity", "humidity_pct", 1, False, "-"),
    ("rms_dbfs", "rms_dbfs", 2, False, "-"),
    ("laeq_dba", "laeq_dba", 2, True, "--"),
)
_DEFAULT_OUT = REPO / "build" / "plot"
_DEFAULT_DURATION_S = 60.0
# A line breaks when the time to the next point exceeds this many typical intervals (and the
# minimum): a node that was off is not drawn as if it had measured a straight line meanwhile.
_GAP_INTERVALS = 10
_MIN_GAP_S = 60.0
_MAX_WARNINGS = 50
_CONNECT_TIMEOUT_S = 10.0


class PlotError(Exception):
    """Ends the tool; str() is the reason printed last."""


class Warnings:
    """Problems with the input, printed to stderr as `plot: <where>: <what>` (the first 50)."""

    def __init__(self, out=None):
        self.out = out  # None: sys.stderr at the time of writing
        self.count = 0

    def __call__(self, where, what):
        self.count += 1
        if self.count <= _MAX_WARNINGS:
            print(f"plot: {where}: {what}", file=self.out or sys.stderr)

    def finish(self):
        if self.count > _MAX_WARNINGS:
            print(f"plot: ... {self.count - _MAX_WARNINGS} more problems not shown",
                  file=self.out or sys.stderr)


# --- reading a recording -------------------------------------------------------------------
def read_recording(path, warn):
    """(line number, record) for each JSON-lines record {"topic": str, "payload": ...}."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            where = f"{path}:{lineno}"
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as e:
                warn(where, f"skipped: not JSON ({e})")
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("topic"), str):
                warn(where, "skipped: not a message (expected an object with a \"topic\")")
                continue
            yield lineno, rec


def _number(value):
    """A finite number (int or float, not bool), None for null; anything else is ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{value!r} is not a number")
    if not math.isfinite(value):
        return None  # the node writes NaN as null; a NaN from elsewhere means the same
    return value


def _integer(payload, key):
    value = payload.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: expected an integer, got {value!r}")
    return value


def parse_reading(topic, payload, received=None):
    """A CSV row (dict) from a climate/sound message; None for any other topic.

    A reading sent before the node's clock was set carries "ts": null (README); its ts is then
    `received` (the recording's receive time), and row["ts_received"] is True. Raises
    ValueError naming what breaks the contract (README "Topics and payloads").
    """
    levels = topic.split("/")
    kind = levels[-1]
    if kind not in DATA_KINDS or len(levels) < 2:
        return None
    if isinstance(payload, str):  # a recording from another tool may keep the payload as text
        try:
            payload = json.loads(payload)
        except ValueError:
            raise ValueError(f"payload is not JSON: {payload[:60]!r}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"payload is not a JSON object: {str(payload)[:60]!r}")
    row = dict.fromkeys(CSV_COLUMNS)
    row.update(node=levels[-2], kind=kind, boot=_integer(payload, "boot"),
               seq=_integer(payload, "seq"))
    if "ts" not in payload:
        raise ValueError("no 'ts'")
    try:
        row["ts"] = _number(payload["ts"])
        if row["ts"] is None and payload["ts"] is None:
            row["ts"] = _number(received)
            row["ts_received"] = True
    except ValueError as e:
        raise ValueError(f"ts: {e}") from None
    if row["ts"] is None:
        raise ValueError(f"ts: expected Unix time in seconds, got {payload['ts']!r}")
    try:
        row["iso_time"] = iso_time(row["ts"])
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"ts: {row['ts']!r} is not a time") from None
    for key, column, required in _FIELDS[kind]:
        if required and key not in payload:
            raise ValueError(f"no {key!r}")
        try:
            row[column] = _number(payload.get(key))
        except ValueError as e:
            raise ValueError(f"{key}: {e}") from None
    return row


def iso_time(ts):
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def readings(records, warn, source="input"):
    """Rows from (line number, record) pairs: data messages only, one per (node, boot, seq),
    sorted by ts then seq. Returns (rows, stats)."""
    kept, first_line = {}, {}
    stats = {"messages": 0, "other_messages": 0, "duplicates_removed": 0, "bad_messages": 0,
             "ts_from_receive_time": 0}
    for lineno, rec in records:
        stats["messages"] += 1
        where = f"{source}:{lineno}"
        try:
            row = parse_reading(rec["topic"], rec.get("payload"), rec.get("t"))
        except ValueError as e:
            stats["bad_messages"] += 1
            warn(where, f"skipped {rec['topic']}: {e}")
            continue
        if row is None:
            stats["other_messages"] += 1
            continue
        received = row.pop("ts_received", False)
        key = (row["node"], row["boot"], row["seq"])
        if key in kept:
            stats["duplicates_removed"] += 1
            # A resend carries the same values; a "ts": null resend arrives at another time.
            same = _values(kept[key]) == _values(row) and (
                received or first_line[key][1] or kept[key]["ts"] == row["ts"])
            if not same:
                warn(where, f"{rec['topic']} boot {key[1]} seq {key[2]} seen again with other "
                            f"values (first on line {first_line[key][0]}): kept the first")
            continue
        kept[key], first_line[key] = row, (lineno, received)
        stats["ts_from_receive_time"] += received
    rows = sorted(kept.values(), key=lambda r: (r["ts"], r["seq"], r["node"], r["boot"]))
    return rows, stats


def _values(row):
    return {k: v for k, v in row.items() if k not in ("ts", "iso_time")}


def load(path, warn):
    path = Path(path)
    if not path.is_file():
        raise PlotError(f"recording not found: {path}")
    try:
        return readings(read_recording(path, warn), warn, source=str(path))
    except OSError as e:
        raise PlotError(f"cannot read {path}: {e}") from None


# --- writing ---------------------------------------------------------------------------------
def write_csv(rows, path):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, CSV_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def _segments(rows, column):
    """(x, y) of one node's series with NaN between points where the line should break."""
    pts = [(r["ts"], r["boot"], r[column]) for r in rows if r[column] is not None]
    steps = [b[0] - a[0] for a, b in zip(pts, pts[1:]) if b[0] > a[0]]
    gap_s = max(_MIN_GAP_S, _GAP_INTERVALS * statistics.median(steps)) if steps else _MIN_GAP_S
    xs, ys = [], []
    for i, (ts, boot, value) in enumerate(pts):
        if i and (boot != pts[i - 1][1] or ts - pts[i - 1][0] > gap_s):
            xs.append((ts + pts[i - 1][0]) / 2)
            ys.append(math.nan)
        xs.append(ts)
        ys.append(value)
    return xs, ys


def figure(rows):
    """The matplotlib Figure (Agg canvas): three stacked panels sharing the time axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 9), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True)
    labels = ("temperature (°C)", "humidity (%)", "sound level (dBFS rms)")
    titles = ("Temperature", "Relative humidity", "Sound level")
    for ax, label, title in zip(axes, labels, titles):
        ax.set_ylabel(label)
        ax.set_title(title, loc="left", fontsize="medium")
        ax.grid(True, alpha=0.3)
    locator = AutoDateLocator()
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=timezone.utc))
    axes[-1].set_xlabel("time (UTC)")
    twin = None
    if any(r["laeq_dba"] is not None for r in rows):
        twin = axes[2].twinx()
        twin.set_ylabel("LAeq (dB(A), dashed)")

    nodes = sorted({r["node"] for r in rows})
    colors = [f"C{i % 10}" for i in range(len(nodes))]
    for node, color in zip(nodes, colors):
        mine = [r for r in rows if r["node"] == node]
        for name, column, panel, on_twin, style in _SERIES:
            xs, ys = _segments(mine, column)
            if not xs:
                continue
            ax = twin if on_twin else axes[panel]
            label = f"{node} LAeq" if on_twin else node
            times = [datetime.fromtimestamp(x, timezone.utc) for x in xs]
            ax.plot(times, ys, linestyle=style, color=color, marker=".", markersize=4,
                    linewidth=1.2, label=label, gid=f"{name}/{node}")
    for panel, ax in enumerate(axes):
        handles, names = ax.get_legend_handles_labels()
        if panel == 2 and twin is not None:
            more = twin.get_legend_handles_labels()
            handles, names = handles + more[0], names + more[1]
        if handles:
            ax.legend(handles, names, loc="upper left", fontsize="small", ncols=min(4, len(names)))
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center",
                    color="grey")
    if rows:
        span = f"{_clock(rows[0]['ts'])} to {_clock(rows[-1]['ts'])} UTC"
        what = f"{len(nodes)} node{'s' * (len(nodes) != 1)}: {', '.join(nodes)}"
        fig.suptitle(f"Sensor readings, {span} ({what})")
    else:
        fig.suptitle("Sensor readings (none)")
    return fig


def _clock(ts):
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def series_points(fig):
    """{series name: points drawn} read back from the figure's lines (NaN breaks not counted)."""
    counts = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            gid = line.get_gid()
            if gid:
                counts[gid] = sum(1 for y in line.get_ydata() if not math.isnan(y))
    return dict(sorted(counts.items()))


def png_size(path):
    """(width, height) from a PNG's header; ValueError if the file is not a PNG."""
    head = Path(path).read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def write_outputs(rows, stats, out):
    """readings.csv, readings.png and readings.json in out; returns the summary dict."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "readings.csv")
    fig = figure(rows)
    png = out / "readings.png"
    fig.savefig(png, format="png")
    width, height = png_size(png)
    summary = {
        "rows": len(rows),
        "rows_per_kind": {k: sum(r["kind"] == k for r in rows) for k in DATA_KINDS},
        "nodes": sorted({r["node"] for r in rows}),
        "first_ts": rows[0]["ts"] if rows else None,
        "last_ts": rows[-1]["ts"] if rows else None,
        **stats,
        "series": series_points(fig),
        "png": {"bytes": png.stat().st_size, "width": width, "height": height},
    }
    (out / "readings.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --- live sources ----------------------------------------------------------------------------
def _host_port(value):
    host, sep, port = value.rpartition(":")
    if not sep or "]" in port:  # no port given (an IPv6 literal alone ends in "]")
        host, port = value, "8883"
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise PlotError(f"--broker: expected HOST:PORT, got {value!r}")
    return host, int(port)


def record_broker(args, path):
    """Subscribe to args.topic for args.duration seconds, recording into path."""
    from sim.host.run import Recorder
    from sim.net.broker import Subscriber

    host, port = _host_port(args.broker)
    if not args.ca:
        raise PlotError("--broker needs --ca (the CA that signed the broker's certificate)")
    if not Path(args.ca).is_file():
        raise PlotError(f"--ca: file not found: {args.ca}")
    if bool(args.user) != bool(args.password):
        raise PlotError("--user and --password go together")
    if bool(args.cert) != bool(args.key):
        raise PlotError("--cert and --key go together (a client certificate and its key)")
    for name in ("cert", "key"):
        if getattr(args, name) and not Path(getattr(args, name)).is_file():
            raise PlotError(f"--{name}: file not found: {getattr(args, name)}")
    recorder = Recorder(path)
    try:
        sub = Subscriber(host, port, args.topic, ca=args.ca,
                         server_hostname=args.server_hostname or None,
                         username=args.user or None, password=args.password or None,
                         on_message=recorder.write, certfile=args.cert or None,
                         keyfile=args.key or None)
    except (ssl.SSLError, ValueError) as e:  # a key that is not the certificate's, ...
        raise PlotError(f"--cert/--key: {e}") from None
    try:
        try:
            sub.connect(timeout=_CONNECT_TIMEOUT_S)
        except (ConnectionError, OSError, ValueError) as e:
            raise PlotError(str(e)) from None
        print(f"plot: subscribed to {args.topic} on {host}:{port}; recording for "
              f"{args.duration:g} s (Ctrl-C stops early)", flush=True)
        try:
            time.sleep(args.duration)
        except KeyboardInterrupt:
            print("plot: interrupted; plotting what arrived", flush=True)
        sub.close()
    finally:
        recorder.close()
    print(f"plot: recorded {recorder.count} messages to {path}", flush=True)


def record_sim(args, path):
    """A `make sim` run (local Mosquitto + the node) for args.duration s, recorded into path.

    Returns the simulator's exit code. Only its notes and summary are shown unless --verbose.
    """
    from sim.host import run as sim

    class Console(sim.Console):
        def node(self, line):
            if args.verbose:
                super().node(line)

        def mqtt(self, msg):
            if args.verbose:
                super().mqtt(msg)

    sim_args = sim.parse_args(["--duration", f"{args.duration:g}", "--audio", args.audio,
                               "--dht", args.dht, "--record", str(path)])
    work = Path(args.work) if args.work else sim.WORK / "plot"
    return sim.simulate(sim_args, Console(), work=work)


# --- command line ----------------------------------------------------------------------------
def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recording", default="", help="a JSON-lines recording to plot")
    ap.add_argument("--broker", default="", help="HOST:PORT of a TLS broker to subscribe to")
    ap.add_argument("--ca", default="", help="CA file (PEM or DER) for --broker")
    ap.add_argument("--server-hostname", default="", help="name the broker's certificate carries")
    ap.add_argument("--user", default="", help="MQTT user name for --broker")
    ap.add_argument("--password", default="", help="MQTT password for --broker")
    ap.add_argument("--cert", default="",
                    help="client certificate (PEM) for a broker that requires one, e.g. "
                         "broker/operator.pem")
    ap.add_argument("--key", default="", help="the client certificate's key (PEM)")
    ap.add_argument("--topic", default="nodes/#", help="topic filter for --broker")
    ap.add_argument("--duration", default="", help="seconds to record (default 60)")
    ap.add_argument("--out", default="", help="output folder (default build/plot)")
    ap.add_argument("--audio", default="", help="simulator: WAV file, sine:<hz>:<dbfs> or silence")
    ap.add_argument("--dht", default="", help="simulator: CSV script of DHT readings")
    ap.add_argument("--work", default="", help="simulator: its work folder (default .sim/plot)")
    ap.add_argument("--verbose", action="store_true", help="simulator: show the log and messages")
    args = ap.parse_args(argv)
    if args.recording and args.broker:
        ap.error("--recording and --broker exclude each other")
    if args.recording and args.duration:
        ap.error("--duration is for a live run, not --recording")
    if (args.recording or args.broker) and (args.audio or args.dht or args.work):
        ap.error("--audio, --dht and --work are for a simulator run, not --recording/--broker")
    if not args.broker and (args.ca or args.server_hostname or args.user or args.password
                            or args.cert or args.key):
        ap.error("--ca, --server-hostname, --user, --password, --cert and --key go with "
                 "--broker")
    try:
        args.duration = float(args.duration) if args.duration else _DEFAULT_DURATION_S
    except ValueError:
        ap.error(f"--duration: expected seconds, got {args.duration!r}")
    if not 0 < args.duration < math.inf:
        ap.error("--duration: expected a positive number of seconds")
    args.out = Path(args.out) if args.out else _DEFAULT_OUT
    return args


def main(argv=None):
    args = parse_args(argv)
    warn = Warnings()
    failed = None
    try:
        if args.recording:
            recording = Path(args.recording)
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            recording = args.out / "recording.jsonl"
            recording.unlink(missing_ok=True)  # a failed run must not plot the previous one
            if args.broker:
                record_broker(args, recording)
            elif record_sim(args, recording) != 0:
                failed = "the simulator failed (its reason is above)"
            if not recording.is_file():  # the simulator stopped before it could record
                raise PlotError(failed or f"nothing recorded at {recording}")
        rows, stats = load(recording, warn)
        warn.finish()
        stats["problems_reported"] = warn.count
        summary = write_outputs(rows, stats, args.out)
    except PlotError as e:
        print(f"plot: FAILED: {e}", flush=True)
        return 1
    except OSError as e:  # the output folder is not writable, the disk is full, ...
        print(f"plot: FAILED: cannot write to {args.out}: {e}", flush=True)
        return 1
    kinds = ", ".join(f"{n} {k}" for k, n in summary["rows_per_kind"].items())
    print(f"plot: {summary['rows']} readings ({kinds}) from {len(summary['nodes'])} node(s); "
          f"{stats['duplicates_removed']} duplicates removed, {warn.count} problems skipped")
    print("plot: points per series: " + (", ".join(
        f"{k} {v}" for k, v in summary["series"].items()) or "none"))
    for name in ("readings.csv", "readings.png", "readings.json"):
        print(f"plot: wrote {args.out / name}")
    if failed:
        print(f"plot: FAILED: {failed}", flush=True)
        return 1
    if not rows:
        print(f"plot: FAILED: no climate or sound readings in {recording}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
