"""`make sim`: run the node on the simulated board and show its log and what reaches the broker.

    python -m sim.host.run [--duration S] [--config FILE] [--secrets FILE] [--audio WAV|sine:F:DB]
                           [--dht CSV] [--heap 64k] [--app DIR] [--record FILE]
                           [--micropython BINARY] [--clock board|host]

Without --config a local Mosquitto is started on loopback with freshly generated certificates
(everything under .sim/), on port 8883 unless that is taken, and the node gets a config derived
from config.json that points at it; the host, port and CA file to watch it with (MQTT Explorer,
mosquitto_sub) are printed first.
With --config the node uses exactly that file (its broker, CA and credentials) and no broker is
started; the subscriber then tries the same broker and is skipped if it cannot connect.
Runs until Ctrl-C or --duration seconds, then stops everything and prints a summary. Exits
non-zero on a fatal error (the node crashed, the broker did not start, a file is missing), the
reason being the last line printed. Empty option values mean "not set" (the Makefile passes all).
--record FILE also writes every message the subscriber sees to FILE as JSON lines,
{"t": <unix receive time>, "topic": ..., "payload": <parsed JSON, or the text>, "retain": ...},
for `make plot RECORDING=FILE`. tools/plot.py runs the simulator through simulate().

The board's clock (--clock board, the default) starts at 2000-01-01 at power-on, as an ESP32's
RTC does; without --config an SNTP server on loopback (sim/net/fakentp.py, the host's time) is
started and the node's config points ntp.server/ntp.port at it. --clock host: the host's clock,
no SNTP server. A node process killed with SIGKILL is a power cut: the board is powered on again
1 s later (flash kept, clock back to 2000, watchdog cleared, reset cause PWRON_RESET) and the run
goes on. SIM_PIDFILE (environment): a file that gets the running node's pid at each start.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from sim.host.simnode import (
    CLOCKS,
    DATA_KINDS,
    REPO,
    Node,
    format_seq_report,
    heap_bytes,
    load_json,
    make_flash,
    micropython_path,
    seq_report,
    sim_config,
    sim_secrets,
    write_json,
)
from sim.net.broker import HOST, BrokerError, Mosquitto, Subscriber
from sim.net.fakentp import FakeNtp, server_answer
from sim.net.pki import PkiError, make_pki

WORK = REPO / ".sim"
# The local broker's port when it is free: MQTT over TLS's own, so a client's default works and a
# person can keep one connection set up in MQTT Explorer across runs.
SIM_PORT = 8883
# Exit codes of the simulated board that stand for a reboot (docs/ARCHITECTURE.md): the runner
# starts the node again, as the chip would, unless it keeps doing so.
REBOOT_CODES = {3: "the watchdog fired", 4: "machine.reset()", 5: "machine.soft_reset()"}
_MAX_QUICK_REBOOTS = 5
_POWER_CUT_OFF_S = 1.0  # a killed node (a power cut) is powered on again after this
_QUICK_REBOOT_S = 10.0
_PAYLOAD_SHOW = 600
# A run at least this long must have got the node's status through to the local broker.
_MIN_CHECKED_RUN_S = 10
# Log lines the summary counts: one per reading taken (lib/node logs them).
_TAKEN_RX = {kind: re.compile(rf"\b{kind}: reading (\d+)") for kind in DATA_KINDS}


class Fatal(Exception):
    """Ends the run; str() is the reason printed last."""


class Console:
    """Serialises the prefixed lines of the node's log and the messages from several threads."""

    def __init__(self, out=sys.stdout):
        self.out = out
        self.lock = threading.Lock()

    def line(self, prefix, text):
        with self.lock:
            self.out.write(f"{prefix} | {text}\n")
            self.out.flush()

    def node(self, line):
        self.line("node" if line.stream == "stdout" else "node!", line)

    def mqtt(self, msg):
        text = msg.text
        if len(text) > _PAYLOAD_SHOW:
            text = text[:_PAYLOAD_SHOW] + f"... ({len(msg.payload)} bytes)"
        self.line("mqtt", f"{msg.topic}{' (retained)' if msg.retain else ''} {text}")

    def note(self, text):
        self.line(" sim", text)


class Recorder:
    """Appends each message to a JSON-lines file, one flushed line per message: a run stopped
    at any moment leaves whole lines. write() is called from the subscriber's thread."""

    def __init__(self, path):
        self.path = Path(path)
        self.count = 0
        self.lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "w", encoding="utf-8")

    @staticmethod
    def record(msg):
        try:
            payload = msg.json()
        except ValueError:  # not JSON (status "online"), or not UTF-8
            payload = msg.text
        return {"t": round(msg.wall, 3), "topic": msg.topic, "payload": payload,
                "retain": msg.retain}

    def write(self, msg):
        line = json.dumps(self.record(msg), ensure_ascii=False) + "\n"
        with self.lock:
            if self.file.closed:
                return
            self.file.write(line)
            self.file.flush()
            self.count += 1

    def close(self):
        with self.lock:
            self.file.close()


def _input(value, what):
    """An AUDIO/DHT value as the node needs it: files absolute (the node runs in the flash)."""
    if not value:
        return None
    if what == "audio" and (value == "silence" or value.startswith("sine:")):
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise Fatal(f"{what.upper()} file not found: {value}")
    return str(path.resolve())


def _ca_file(cfg, config_path):
    ca = (cfg.get("mqtt") or {}).get("ca")
    if not ca:
        return None
    return Path(ca) if os.path.isabs(ca) else Path(config_path).resolve().parent / ca


class Run:
    def __init__(self, args, console, work=WORK):
        self.args = args
        self.console = console
        self.work = Path(work)
        self.broker = None
        self.sub = None
        self.recorder = None
        self.node = None
        self.ntp = None
        self.power_cuts = 0
        self.nodes = []  # every run of the node (a reboot starts a new process)
        self.node_runs = []  # (exit code, last line) per finished run
        self.started = time.monotonic()

    # --- setup ---
    def setup(self):
        a = self.args
        self.work.mkdir(parents=True, exist_ok=True)
        self.audio, self.dht = _input(a.audio, "audio"), _input(a.dht, "dht")
        if a.config:
            self.config_path = Path(a.config).resolve()
            if not self.config_path.is_file():
                raise Fatal(f"CONFIG file not found: {a.config}")
            self.secrets_path = self._secrets_for(self.config_path)
        else:
            self.config_path, self.secrets_path = self._local_broker()
        try:
            self.cfg = load_json(self.config_path)
        except ValueError as e:
            raise Fatal(f"{self.config_path}: not valid JSON ({e})") from None
        if not isinstance(self.cfg, dict):
            raise Fatal(f"{self.config_path}: expected an object {{...}} at the top level")
        try:
            self.secrets = load_json(self.secrets_path)
        except ValueError:
            self.secrets = None  # the node names the problem itself (safe mode)
        if not isinstance(self.secrets, dict):
            self.secrets = {}
        self.prefix = self.cfg.get("topic_prefix") or "nodes"
        if a.record:
            try:
                self.recorder = Recorder(a.record)
            except OSError as e:
                raise Fatal(f"RECORD: cannot write {a.record}: {e}") from None
        self._subscribe()
        if self.recorder and self.sub is None:
            self.console.note(f"no subscriber: nothing will be recorded to {a.record}")
        flash = self.work / "flash"
        # Code is replaced; boot.json and the reset cause stay, as on a board flashed again.
        shutil.rmtree(flash / "lib", ignore_errors=True)
        try:
            self.flash = make_flash(flash, a.app or REPO, self.config_path, self.secrets_path)
        except (OSError, ValueError) as e:
            raise Fatal(f"cannot prepare the flash folder: {e}") from None

    def _secrets_for(self, config_path):
        if self.args.secrets:
            path = Path(self.args.secrets).resolve()
            if not path.is_file():
                raise Fatal(f"SECRETS file not found: {self.args.secrets}")
            return path
        for candidate in (config_path.parent / "secrets.json", REPO / "secrets.json"):
            if candidate.is_file():
                self.console.note(f"secrets: {candidate}")
                return candidate
        raise Fatal("CONFIG given without SECRETS, and no secrets.json next to it or in the repo")

    def _local_broker(self):
        try:
            pki = make_pki(self.work / "pki")
        except PkiError as e:
            raise Fatal(f"cannot make certificates: {e}") from None
        self.broker = self._start_broker(pki)
        cfg_dir = self.work / "config"
        cfg_dir.mkdir(exist_ok=True)
        shutil.copy2(pki.ca_der, cfg_dir / "ca.der")
        ntp = {"server": None}
        if self.args.clock == "board":
            # The board starts in 2000, as after a power-on: it must ask for the time.
            self.ntp = FakeNtp(lambda request: server_answer(int(time.time())))
            ntp = {"server": HOST, "port": self.ntp.port}
            self.console.note(f"SNTP server on {HOST}:{self.ntp.port} (the host's time)")
        cfg = sim_config(self.broker.port, "ca.der", ntp=ntp)
        config_path = write_json(cfg_dir / "config.json", cfg)
        self._how_to_watch(pki.ca_pem, f"{cfg.get('topic_prefix') or 'nodes'}/#")
        if self.args.secrets:
            secrets_path = Path(self.args.secrets).resolve()
            if not secrets_path.is_file():
                raise Fatal(f"SECRETS file not found: {self.args.secrets}")
        else:
            secrets_path = write_json(cfg_dir / "secrets.json", sim_secrets())
        return config_path, secrets_path

    def _start_broker(self, pki):
        """Mosquitto on SIM_PORT if that is free, else on a random free port (and says so)."""
        port = SIM_PORT if _port_free(HOST, SIM_PORT) else None
        for attempt in (port, None) if port else (None,):
            broker = Mosquitto(self.work / "broker", certfile=pki.server.cert,
                               keyfile=pki.server.key, cafile=pki.ca_pem, port=attempt)
            try:
                broker.start()
                break
            except BrokerError as e:
                if attempt is None:
                    raise Fatal(str(e)) from None
        if broker.port != SIM_PORT:
            self.console.note(f"port {SIM_PORT} is taken: the broker listens on {broker.port} "
                              "instead (this run only)")
        self.console.note(f"mosquitto with TLS on {broker.host}:{broker.port} "
                          f"(log: {_shown(broker.log_path)})")
        return broker

    def _how_to_watch(self, ca_pem, topic):
        """Tell the person at the console how to connect their own MQTT client to the broker."""
        b = self.broker
        ca = Path(ca_pem).resolve()
        note = self.console.note
        note("to watch with MQTT Explorer or mosquitto_sub, connect to:")
        note(f"  host {b.host}  port {b.port}  TLS with CA file {ca}")
        note("  (no user name or password; the certificates, for localhost and 127.0.0.1, are new "
             "every run)")
        note(f"  mosquitto_sub -h {b.host} -p {b.port} --cafile {shlex.quote(str(ca))} "
             f"-t {shlex.quote(topic)} -v")

    def _subscribe(self):
        mqtt = self.cfg.get("mqtt")
        mqtt = mqtt if isinstance(mqtt, dict) else {}
        host, port = mqtt.get("host"), mqtt.get("port") or 8883
        try:
            if not isinstance(host, str) or not isinstance(port, int):
                raise ValueError(f"mqtt.host {host!r} / mqtt.port {port!r} unusable")
            sub = Subscriber(
                host, port, f"{self.prefix}/#", ca=_ca_file(self.cfg, self.config_path),
                server_hostname=mqtt.get("server_hostname"),
                username=self.secrets.get("mqtt_user"),
                password=self.secrets.get("mqtt_password"), on_message=self._on_message,
            )  # fmt: skip
            self.sub = sub.connect(timeout=5)
            self.console.note(f"subscribed to {self.prefix}/# on {host}:{port}")
        except (ConnectionError, OSError, ValueError) as e:
            if self.broker:
                raise Fatal(f"cannot watch the local broker: {e}") from None
            self.console.note(f"no subscriber (messages not shown): {e}")

    def _on_message(self, msg):
        self.console.mqtt(msg)
        if self.recorder:
            self.recorder.write(msg)

    # --- running ---
    def run(self, duration):
        deadline = self.started + duration if duration else None
        quick_reboots = 0
        power_on = True
        while True:
            self.node = Node(self.flash, heap=self.args.heap or None, audio=self.audio,
                             dht=self.dht, on_line=self.console.node,
                             micropython=self.args.micropython, clock=self.args.clock)
            self.nodes.append(self.node)
            self.console.note(f"node: {' '.join(self.node.argv)} (in {self._rel(self.flash)})"
                              + (", power-on" if power_on else ""))
            self.node.start(power_on=power_on)
            self._write_pidfile(self.node.pid)
            while self.node.running():
                if deadline and time.monotonic() >= deadline:
                    return
                time.sleep(0.1)
            code = self.node.wait()
            last = self._last_line(self.node, code)
            self.node_runs.append((code, last))
            if code == -signal.SIGKILL:
                self.power_cuts += 1
                self.console.note(f"power cut (the node was killed): powering the board on "
                                  f"again in {_POWER_CUT_OFF_S:g} s (flash kept, clock reset, "
                                  "watchdog cleared)")
                (self.flash / ".sim_reset_cause").unlink(missing_ok=True)  # PWRON_RESET
                off_until = time.monotonic() + _POWER_CUT_OFF_S
                while time.monotonic() < off_until:
                    if deadline and time.monotonic() >= deadline:
                        return
                    time.sleep(0.05)
                power_on = True
                continue
            if code in REBOOT_CODES:
                ran = time.monotonic() - self.node.started_at
                quick_reboots = quick_reboots + 1 if ran < _QUICK_REBOOT_S else 0
                if quick_reboots >= _MAX_QUICK_REBOOTS:
                    raise Fatal(f"reboot loop: {quick_reboots} reboots, each within "
                                f"{_QUICK_REBOOT_S:.0f} s; last: {REBOOT_CODES[code]}: {last}")
                self.console.note(f"node exited with code {code} ({REBOOT_CODES[code]}): "
                                  "rebooting it, as the board would")
                power_on = False  # a reset keeps the clock (and a soft one the watchdog)
                continue
            raise Fatal(f"the node exited with code {code}: {last}")

    def _write_pidfile(self, pid):
        path = os.environ.get("SIM_PIDFILE")
        if not path:
            return
        tmp = Path(path + ".tmp")
        tmp.write_text(f"{pid}\n")
        tmp.replace(path)  # a reader never sees half a pid

    @staticmethod
    def _last_line(node, code):
        """The line that says why the node ended: the simulator reports crashes on stderr last;
        when main.py simply returned (safe mode), the app's own last record says why."""
        last = {"stdout": None, "stderr": None}
        for ln in node.lines:
            if ln.strip():
                last[ln.stream] = ln
        first, second = ("stdout", "stderr") if code == 0 else ("stderr", "stdout")
        return last[first] or last[second] or "(no output)"

    @staticmethod
    def _rel(path):
        try:
            return Path(path).relative_to(Path.cwd())
        except ValueError:
            return path

    def stop(self):
        if self.node is not None and self.node.running():
            code = self.node.stop()
            self.node_runs.append((code, self._last_line(self.node, code)))
            self.console.note(f"node stopped (exit code {code})")
        if self.sub is not None:
            time.sleep(0.5)  # the last acknowledged messages and the will may still be on the way
            self.sub.close()
        if self.ntp is not None:
            self.ntp.close()
        if self.recorder is not None:
            self.recorder.close()
        if self.broker is not None:
            self.broker.stop()
            self.console.note("mosquitto stopped")

    def check(self, duration):
        """With the local broker a run long enough to connect must have published something."""
        if self.broker is None or self.sub is None or not duration:
            return
        if duration >= _MIN_CHECKED_RUN_S and not self.sub.messages:
            lines = [ln for n in self.nodes for ln in n.lines if ln.strip()]
            net = [ln for ln in lines if re.search(r"\b(mqtt|wifi): ", ln)]
            last = (net or lines or ["(no output)"])[-1]
            raise Fatal(f"nothing reached the local broker in {duration:g} s; the node's last "
                        f"network record: {last}")

    # --- summary ---
    def summary(self):
        out = [f"ran {time.monotonic() - self.started:.1f} s"]
        taken = self._taken()
        if self.sub is None:
            out.append("messages: not watched (no subscriber)")
            out += [f"{kind}: {taken[kind]} taken (node log)" for kind in DATA_KINDS]
        else:
            msgs = self.sub.messages
            per_topic = Counter(m.topic for m in msgs)
            out.append(f"messages: {len(msgs)}")
            for topic, n in sorted(per_topic.items()):
                out.append(f"  {topic}: {n}")
            data, bad = defaultdict(list), []
            for m in msgs:
                kind = m.topic.rsplit("/", 1)[-1]
                if kind in DATA_KINDS:
                    try:
                        data[kind].append(m.json())
                    except ValueError:
                        bad.append(m)
            for m in bad:
                out.append(f"  NOT JSON on {m.topic}: {m.text[:80]}")
            for kind in DATA_KINDS:
                out.append(f"{kind}: {len(data[kind])} published, {taken[kind]} taken (node log)")
            levels = [p for p in data["sound"] if "rms_dbfs" in p]
            if levels:
                rms = [p["rms_dbfs"] for p in levels]
                peak = [p.get("peak_dbfs") for p in levels if p.get("peak_dbfs") is not None]
                out.append(f"sound: rms_dbfs {min(rms):.2f}..{max(rms):.2f}" +
                           (f", peak_dbfs {min(peak):.2f}..{max(peak):.2f}" if peak else ""))
            ordered = [p for m in msgs for p in [self._data(m)] if p is not None]
            if ordered:
                out += ["seq: " + line for line in format_seq_report(seq_report(ordered))]
            tele = self.sub.select(r"/telemetry$")
            if tele:
                out.append(f"telemetry (last): {tele[-1].text[:_PAYLOAD_SHOW]}")
            status = self.sub.select(r"/status$")
            if status:
                out.append(f"status (last): {status[-1].text}")
        for code, _last in self.node_runs:
            if code in REBOOT_CODES:
                out.append(f"node reboot: code {code} ({REBOOT_CODES[code]})")
        if self.power_cuts:
            out.append(f"power cuts: {self.power_cuts} (the node was killed, then powered on)")
        if self.recorder is not None:
            out.append(f"recorded {self.recorder.count} messages to {self.recorder.path}")
        return out

    @staticmethod
    def _data(m):
        if m.topic.rsplit("/", 1)[-1] not in DATA_KINDS:
            return None
        try:
            p = m.json()
        except ValueError:
            return None
        ok = isinstance(p, dict) and isinstance(p.get("boot"), int) and isinstance(
            p.get("seq"), int)
        return p if ok else None

    def _taken(self):
        taken = Counter()
        for node in self.nodes:
            for line in node.lines:
                for kind, rx in _TAKEN_RX.items():
                    if rx.search(line):
                        taken[kind] += 1
        return taken


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", default="", help="seconds (default: until Ctrl-C)")
    ap.add_argument("--config", default="", help="the node's config.json (no local broker)")
    ap.add_argument("--secrets", default="", help="the node's secrets.json")
    ap.add_argument("--audio", default="", help="WAV file, sine:<hz>:<dbfs> or silence")
    ap.add_argument("--dht", default="", help="CSV script of DHT readings")
    ap.add_argument("--heap", default="", help="MicroPython heap size, e.g. 64k")
    ap.add_argument("--app", default="", help="run this bundle (e.g. build/x64), not the sources")
    ap.add_argument("--record", default="", help="write every message to this JSON-lines file")
    ap.add_argument("--micropython", default="",
                    help="the MicroPython binary (default: $MICROPYTHON, then .venv)")
    ap.add_argument("--clock", default="", help="board (default: 2000-01-01 at power-on, "
                    "SNTP on loopback) or host (the host's clock)")
    args = ap.parse_args(argv)
    args.clock = args.clock or "board"
    if args.clock not in CLOCKS:
        ap.error(f"--clock: expected one of {', '.join(CLOCKS)}, got {args.clock!r}")
    # The node runs in its flash folder: a relative path must be made absolute here.
    binary = args.micropython or os.environ.get("MICROPYTHON") or ""
    if binary:
        found = Path(binary) if Path(binary).is_file() else shutil.which(binary)
        if not found:
            ap.error(f"--micropython: {binary} not found")
        args.micropython = str(Path(found).resolve())
    else:
        try:
            args.micropython = str(Path(micropython_path()).resolve())
        except RuntimeError as e:
            ap.error(str(e))
    if args.app and not (Path(args.app) / "main.py").is_file():
        ap.error(f"--app: {args.app} holds no main.py (make bundle ARCH=x64 first?)")
    if args.duration:
        try:
            args.duration = float(args.duration)
        except ValueError:
            ap.error(f"--duration: expected seconds, got {args.duration!r}")
        if args.duration <= 0:
            ap.error("--duration: expected a positive number of seconds")
    else:
        args.duration = None
    if args.heap:
        try:
            heap_bytes(args.heap)  # the size rule simnode passes on to -X heapsize
        except ValueError as e:
            ap.error(f"--{e}")
    return args


def _port_free(host, port):
    """Whether nothing listens on port (SO_REUSEADDR as Mosquitto: old connections don't count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _shown(path):
    """A path as the user would type it: relative to the repo when inside it."""
    try:
        return Path(path).relative_to(REPO)
    except ValueError:
        return path


def main(argv=None):
    return simulate(parse_args(argv), Console())


def simulate(args, console, work=WORK):
    """One `make sim` run with parsed `args`, printing through `console`; returns the exit code.

    work: the folder for certificates, broker and flash (`make sim` uses .sim/).
    """
    run = Run(args, console, work)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    fatal = None
    try:
        run.setup()
        console.note("running " + (f"for {args.duration:g} s" if args.duration else
                                   "until Ctrl-C"))
        run.run(args.duration)
        run.check(args.duration)
    except KeyboardInterrupt:
        console.note("interrupted")
    except Fatal as e:
        fatal = str(e)
    finally:
        try:
            run.stop()
        except KeyboardInterrupt:  # a second Ctrl-C: stop harder, still without orphans
            if run.node:
                run.node.kill()
            if run.broker:
                run.broker.kill()
    if run.nodes:  # nothing to sum up when the run failed before the node started
        for line in run.summary():
            console.line("summary", line)
    if fatal:
        print(f"sim: FAILED: {fatal}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
