"""Run the node on the simulated board: make a flash folder, start MicroPython in it, read its log.

A flash folder holds what `mpremote cp` would put on a board (docs/ARCHITECTURE.md):
boot.py, main.py, lib/ (node + umqtt, .py or .mpy), config.json, secrets.json and the CA file
named by config["mqtt"]["ca"]. The node then runs as `cd FLASH && micropython [-X heapsize=H]
<repo>/sim/board/start.py`, its inputs coming from SIM_AUDIO / SIM_DHT / SIM_UID / SIM_RSSI.

The board's clock (clock="board", the default) is the ESP32's RTC: 2000-01-01 at power-on,
running on across resets, moved by RTC().datetime(...). The process runs under libfaketime, its
offset from the host's clock in FLASH/.sim_clock; Node.start() is a power-on (clock back to
2000, watchdog cleared), a reboot after a reset keeps both. clock="host": the host's clock.

    flash = make_flash(tmp / "flash", config_path=cfg, secrets_path=sec)
    with Node(flash, audio="sine:1000:-20") as node:
        node.wait_for_line(r"publisher: connected", timeout=20)
"""

import atexit
import copy
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import weakref
from collections import Counter
from pathlib import Path

from tools.hosttools import REPO, find_tool

START_PY = REPO / "sim" / "board" / "start.py"
_NATIVE_LOCK = threading.Lock()
_LIB_SUFFIXES = (".py", ".mpy")
_STOP_TIMEOUT_S = 5.0
# sim/board/start.py's exit codes for the watchdog, machine.reset() and machine.soft_reset().
RESET_EXIT_CODES = (3, 4, 5)
CLOCKS = ("board", "host")
CLOCK_FILE = ".sim_clock"  # the board's clock: its offset from the host's, in seconds
WDT_FILE = ".sim_wdt"  # a watchdog armed before a soft reset (sim/board/_simenv.py)
POWER_ON_UNIX_S = 946684800  # 2000-01-01T00:00:00Z: where the ESP32's RTC starts
_FAKETIME_DIRS = {1: "/usr/lib/i386-linux-gnu/faketime", 2: "/usr/lib/x86_64-linux-gnu/faketime"}

_live = weakref.WeakSet()


def micropython_path():
    found = find_tool("micropython", "MICROPYTHON")
    if not found:
        raise RuntimeError("no micropython unix port: run `make deps` first")
    return found


# --- configuration ---------------------------------------------------------------------------
def load_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, obj):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
    return path


def merge(base, over):
    """Merge dict `over` into `base` recursively (nested objects key by key); returns base."""
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def sim_config(port, ca="ca.der", base=None, **overrides):
    """The repo's config.json pointed at a loopback broker, with short intervals for a demo.

    `overrides` are merged section by section: sim_config(p, dht={"interval_s": 1}) keeps the
    other dht keys. base defaults to the repo's config.json.
    """
    cfg = copy.deepcopy(base if base is not None else load_json(REPO / "config.json"))
    merge(cfg, {
        "node_id": "sim-node",
        "mqtt": {"host": "127.0.0.1", "port": port, "ca": ca, "server_hostname": "localhost"},
        "dht": {"interval_s": 2},
        "audio": {"publish_interval_s": 5},
        "telemetry_interval_s": 10,
        # The simulator runs on the host's clock; NTP would also leave this machine.
        "ntp": {"server": None},
    })  # fmt: skip
    return merge(cfg, overrides)


def sim_secrets(mqtt_user=None, mqtt_password=None):
    """Secrets for the simulated Wi-Fi (any SSID joins); MQTT credentials only when given."""
    secrets = {"wifi_ssid": "sim-wifi", "wifi_password": "sim-password"}
    if mqtt_user is not None:
        secrets.update(mqtt_user=mqtt_user, mqtt_password=mqtt_password)
    return secrets


# --- flash folder ----------------------------------------------------------------------------
def make_flash(dest, app_root=REPO, config_path=None, secrets_path=None, clean=False):
    """Copy the app, config.json, secrets.json and the files config.json names (mqtt.ca, and
    mqtt.cert and mqtt.key when set) into dest; returns dest as a Path.

    Files already in dest that the copy does not replace (boot.json, .sim_reset_cause) stay, as
    they would on a board flashed again, except that boot.json's boot-loop count is cleared as
    tools/deploy.py clears it: a new copy of the app gets its full number of tries before safe
    mode. clean=True starts from an empty folder.
    """
    dest, app_root = Path(dest).resolve(), Path(app_root).resolve()
    config_path = Path(config_path) if config_path else app_root / "config.json"
    if clean and dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("boot.py", "main.py"):  # the firmware runs these two as source, never .mpy
        src = app_root / name
        if not src.is_file():
            raise FileNotFoundError(f"make_flash: {src} missing")
        shutil.copy2(src, dest / name)
    lib = app_root / "lib"
    for src in sorted(lib.rglob("*")) if lib.is_dir() else ():
        if src.is_file() and src.suffix in _LIB_SUFFIXES and "__pycache__" not in src.parts:
            target = dest / "lib" / src.relative_to(lib)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    shutil.copy2(config_path, dest / "config.json")
    if secrets_path:
        shutil.copy2(secrets_path, dest / "secrets.json")
    mqtt = load_json(config_path).get("mqtt") or {}
    for key in ("ca", "cert", "key"):
        name = mqtt.get(key)
        if not name or os.path.isabs(name):
            continue
        target = (dest / name).resolve()
        if dest not in target.parents:
            raise ValueError(f"make_flash: mqtt.{key} {name!r} points outside the flash folder")
        src = config_path.resolve().parent / name
        if not src.is_file():
            raise FileNotFoundError(f"mqtt.{key}: {src} not found (named by {config_path})")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    _clear_boot_loop(dest / "boot.json")
    return dest


def _clear_boot_loop(path):
    try:
        state = load_json(path)
    except (OSError, ValueError):
        return  # none yet, or damaged: boot.py starts the count afresh either way
    if isinstance(state, dict) and state.get("unstable"):
        write_json(path, {**state, "unstable": 0})


# What start.py gives back of the heap: the qstr pools the simulator's names fill, and the
# made-up names that fill them up to where the app's begin as on the board (9 KB and 3 KB on
# the 32-bit port, 14 KB and 4 KB on the 64-bit one). It is added to HEAP, so that HEAP stays
# the app's heap plus the simulator modules' code and names.
QSTR_PAD_ALLOWANCE_BYTES = 24 * 1024
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}


def heap_bytes(heap):
    """A heap size as -X heapsize takes it ("128k", "2m", "65536") in bytes."""
    m = re.fullmatch(r"(\d+)([kKmM]?)", str(heap))
    if not m:
        raise ValueError(f"heap: expected a size like 64k or 2m, got {heap!r}")
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def node_command(flash, heap=None, micropython=None):
    """argv to run the node; run it with cwd=flash (Node does)."""
    cmd = [micropython or micropython_path()]
    if heap:
        cmd += ["-X", f"heapsize={heap_bytes(heap) + QSTR_PAD_ALLOWANCE_BYTES}"]
    cmd.append(str(native_board(cmd[0]) / START_PY.name))
    return [*cmd, str(QSTR_PAD_ALLOWANCE_BYTES)] if heap else cmd


# The simulated hardware modules are built into the board's firmware, in flash: here they are
# compiled to machine code (mpy-cross -X emit=native), which the unix port keeps outside its GC
# heap as the board does, so that HEAP is close to what the app has on the board (the native
# emitter takes no bare `raise` in a handler: they name what they re-raise). start.py is the
# script the port runs.
_BOARD_SOURCES = REPO / "sim" / "board"
_BOARD_AS_SOURCE = ("start.py",)
_NATIVE_DIR = REPO / ".sim" / "board-native"
_ARCH_OF_ELF_CLASS = {1: "x86", 2: "x64"}


def native_board(micropython):
    """The folder start.py runs from: the simulated modules compiled for the binary's word size
    (built when a source is newer), or sim/board itself where that cannot be done."""
    from tools.bundle import BundleError, mpy_cross_path

    arch = _ARCH_OF_ELF_CLASS.get(_elf_class(micropython))
    try:
        mpy_cross = mpy_cross_path()
    except BundleError:
        return _BOARD_SOURCES
    if arch is None:
        return _BOARD_SOURCES
    out = _NATIVE_DIR / arch
    with _NATIVE_LOCK:
        out.mkdir(parents=True, exist_ok=True)
        # A module whose source is gone would still be imported from here, and take its heap.
        wanted = {src.stem for src in _BOARD_SOURCES.glob("*.py")}
        for old in [*out.glob("*.mpy"), *out.glob("*.py")]:
            if old.stem not in wanted:
                old.unlink(missing_ok=True)
        for src in sorted(_BOARD_SOURCES.glob("*.py")):
            as_source = src.name in _BOARD_AS_SOURCE
            dest = out / (src.name if as_source else src.stem + ".mpy")
            # The other form, left from an older build, would be imported first (.py wins).
            dest.with_suffix(".mpy" if as_source else ".py").unlink(missing_ok=True)
            if dest.is_file() and dest.stat().st_mtime >= src.stat().st_mtime:
                continue
            tmp = dest.with_name(dest.name + f".{os.getpid()}.tmp")
            if as_source:
                shutil.copyfile(src, tmp)
            else:
                subprocess.run([mpy_cross, f"-march={arch}", "-X", "emit=native", "-s",
                                src.name, "-o", str(tmp), str(src)], check=True,
                               capture_output=True)
            tmp.replace(dest)  # atomic: test workers may build the same folder at once
    return out


def _elf_class(binary, depth=0):
    """1 for a 32-bit ELF program, 2 for a 64-bit one, None if it is neither. A script (the
    PyPI unix port is a Python entry point running MicroPython in-process) is its
    interpreter's."""
    try:
        with open(binary, "rb") as f:
            head = f.readline(256)
    except OSError:
        return None
    if head[:4] == b"\x7fELF" and len(head) > 4:
        return head[4]
    if head.startswith(b"#!") and depth < 2:
        interpreter = head[2:].split()
        return _elf_class(interpreter[0].decode(), depth + 1) if interpreter else None
    return None


def libfaketime_for(binary):
    """Debian's libfaketime (the multithreaded one) matching the binary's word size, or None."""
    d = _FAKETIME_DIRS.get(_elf_class(binary))
    lib = Path(d) / "libfaketimeMT.so.1" if d else None
    return str(lib) if lib and lib.is_file() else None


def clock_env(flash, clock, micropython):
    """The environment that gives the board process its clock (see the module docstring)."""
    if clock not in CLOCKS:
        raise ValueError(f"clock: {clock!r} is not one of {', '.join(CLOCKS)}")
    if clock == "host":
        return {"SIM_CLOCK": "host", "SIM_CLOCK_NOTE": "clock=host"}
    lib = libfaketime_for(micropython)
    if lib is None:
        bits = {1: "32", 2: "64"}.get(_elf_class(micropython), "?")
        fix = "libfaketime:i386, a foreign architecture" if bits == "32" else \
            "apt-get install faketime"
        return {"SIM_CLOCK": "host",
                "SIM_CLOCK_NOTE": f"no {bits}-bit libfaketime for {micropython}: the board's "
                                  f"RTC is not simulated ({fix})"}
    preload = os.environ.get("LD_PRELOAD")
    return {
        "SIM_CLOCK": "board",
        "LD_PRELOAD": f"{lib} {preload}" if preload else lib,
        "FAKETIME_TIMESTAMP_FILE": str(Path(flash).resolve() / CLOCK_FILE),
        "FAKETIME_NO_CACHE": "1",  # an RTC set rewrites the file: seen at the next call
        "DONT_FAKE_MONOTONIC": "1",  # ticks_ms runs on as on the board
    }


def power_on_flash(flash, clock="board"):
    """What a power-on does to the board's state in its flash folder: the RTC starts again at
    2000-01-01 and no watchdog runs. (The reset cause reads PWRON_RESET without a cause file,
    which a killed process never writes.)"""
    flash = Path(flash)
    (flash / WDT_FILE).unlink(missing_ok=True)
    if clock == "board":
        offset = POWER_ON_UNIX_S - time.time()
        tmp = flash / (CLOCK_FILE + ".tmp")
        tmp.write_text(f"{offset:+.3f}\n")
        tmp.replace(flash / CLOCK_FILE)


def node_env(audio=None, dht=None, uid=None, rssi=None, extra=None):
    """The caller's environment with the simulated board's inputs set (None: left as it is)."""
    env = dict(os.environ)
    env.pop("MICROPYPATH", None)  # start.py sets sys.path as the firmware would
    for key, value in (("SIM_AUDIO", audio), ("SIM_DHT", dht), ("SIM_UID", uid),
                       ("SIM_RSSI", rssi)):
        if value is not None:
            env[key] = str(value)
    env.update(extra or {})
    return env


# --- the running node ------------------------------------------------------------------------
def read_pin_log(path):
    """SIM_PIN_LOG's lines as (ticks_ms, gpio, shown): shown is a pin's level (0 or 1), or what
    a WS2812 on it shows, (r, g, b) (several LEDs: their colours in one tuple, r, g, b, r, ...)."""
    out = []
    for line in Path(path).read_text().splitlines():
        ticks, gpio, shown = line.split()
        if shown.startswith("#"):
            value = tuple(bytes.fromhex(shown[1:].replace(",#", "")))
        else:
            value = int(shown)
        out.append((int(ticks), int(gpio), value))
    return out


class Line(str):
    """One log line (a str) that also knows when it came (monotonic s) and from which stream."""

    def __new__(cls, text, t, stream):
        self = super().__new__(cls, text)
        self.t, self.stream = t, stream
        return self


class Node:
    """The node process. Log lines of stdout and stderr are collected by two reader threads.

    on_line(line) is called from a reader thread for every line (sim/host/run.py prints with it).
    reboot=True makes it behave like a board: when the process ends in a reset (the watchdog,
    machine.reset(), machine.soft_reset()) it starts again; `boots` counts the starts.
    clock: "board" (the ESP32's RTC, 2000-01-01 at power-on) or "host" (the host's clock).
    start() powers the board on (power_on=False: a reset, the clock and watchdog kept).
    """

    def __init__(self, flash, heap=None, audio=None, dht=None, uid=None, rssi=None, env=None,
                 on_line=None, micropython=None, reboot=False, clock="board"):
        self.flash = Path(flash)
        self.reboot = reboot
        self.boots = 0
        self._stopping = False
        self._monitor = None
        self.argv = node_command(self.flash, heap, micropython)
        self.clock = clock
        self.env = node_env(audio, dht, uid, rssi, {**clock_env(self.flash, clock, self.argv[0]),
                                                     **(env or {})})
        self.on_line = on_line
        self.proc = None
        self.lines = []
        self._cond = threading.Condition()
        self._readers = []
        self.started_at = None

    def start(self, power_on=True):
        if self.running():
            raise RuntimeError("node already running")
        self._stopping = False
        if power_on:
            power_on_flash(self.flash, self.env.get("SIM_CLOCK"))
        self._spawn()
        if self.reboot:
            self._monitor = threading.Thread(target=self._reboot_on_reset, daemon=True)
            self._monitor.start()
        return self

    def _reboot_on_reset(self):
        while True:
            proc = self.proc
            code = proc.wait()
            self._join_readers()
            with self._cond:
                if self._stopping or code not in RESET_EXIT_CODES:
                    self._cond.notify_all()
                    return
                self._spawn()

    def _rebooting(self):
        """True while a reset is being turned into the next boot (caller holds _cond)."""
        return (self.reboot and not self._stopping and self.proc.poll() in RESET_EXIT_CODES
                and self._monitor is not None and self._monitor.is_alive())

    def _spawn(self):
        self.boots += 1
        self.proc = subprocess.Popen(
            self.argv, cwd=self.flash, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C in a terminal reaches the runner, which stops us
        )  # fmt: skip
        self.started_at = time.monotonic()
        _live.add(self)
        readers = [
            threading.Thread(target=self._read, args=(getattr(self.proc, name), name),
                             daemon=True)
            for name in ("stdout", "stderr")
        ]
        for r in readers:
            r.start()
        # Shown only once started: on a reboot this runs in the monitor thread, and a wait()
        # in the test's thread that joined them a moment earlier raised "cannot join thread
        # before it is started" (test_simtruth, under load).
        self._readers = readers

    def _read(self, stream, name):
        for raw in iter(stream.readline, b""):
            line = Line(raw.decode(errors="replace").rstrip("\r\n"), time.monotonic(), name)
            with self._cond:
                self.lines.append(line)
                self._cond.notify_all()
            if self.on_line:
                self.on_line(line)
        stream.close()
        with self._cond:
            self._cond.notify_all()

    # --- state ---
    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self):
        return self.proc.poll() if self.proc else None

    def text(self, since=0):
        with self._cond:
            return "\n".join(self.lines[since:])

    def tail(self, n=20):
        with self._cond:
            return "\n".join(self.lines[-n:])

    def mark(self):
        """Index of the next line: pass as `since` to look only at what comes after now."""
        with self._cond:
            return len(self.lines)

    def find(self, regex, since=0):
        """All re.Match objects of regex (searched in each line) from line `since` on."""
        rx = re.compile(regex)
        with self._cond:
            return [m for m in map(rx.search, self.lines[since:]) if m]

    def wait_for_line(self, regex, timeout=10.0, since=0, count=1):
        """Wait until `count` lines from `since` on match; returns the last re.Match.

        Raises TimeoutError (with the log's end) on timeout, or at once if the node exited
        without the line.
        """
        rx = re.compile(regex)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [m for m in map(rx.search, self.lines[since:]) if m]
                if len(found) >= count:
                    return found[count - 1]
                exited = self.proc is not None and self.proc.poll() is not None
                if exited and not self._rebooting() and not any(r.is_alive()
                                                                for r in self._readers):
                    why = f"the node exited with code {self.proc.returncode}"
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    why = f"{timeout:.1f} s passed"
                    break
                self._cond.wait(min(left, 0.2))
        raise TimeoutError(
            f"no line matching {regex!r} (x{count}): {why}\n--- node log (end)\n{self.tail(30)}"
        )

    # --- stopping ---
    def _join_readers(self, timeout=2.0):
        for r in self._readers:
            r.join(timeout)

    def wait(self, timeout=None):
        """Wait for the process to exit; returns its exit code."""
        code = self.proc.wait(timeout)
        self._join_readers()
        return code

    def stop(self, timeout=_STOP_TIMEOUT_S):
        """SIGINT (KeyboardInterrupt in the app), SIGKILL if it is still there after timeout."""
        if self.proc is None:
            return None
        with self._cond:
            self._stopping = True
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGCONT)  # in case it was paused
                self.proc.send_signal(signal.SIGINT)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._join_readers()
        if self._monitor is not None:
            self._monitor.join(timeout)
        return self.proc.returncode

    def pause(self):
        """SIGSTOP: the board hangs with its TCP connection open (only keepalive can tell)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def kill(self):
        """SIGKILL: the process vanishes. Its socket is closed by the kernel, so the broker
        learns at once (a board losing power is closer to pause(): only keepalive tells)."""
        with self._cond:
            self._stopping = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._join_readers()
        return self.proc.returncode if self.proc else None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@atexit.register
def _kill_all():
    for node in list(_live):
        if node.running():
            node.proc.kill()


# --- what the node published -----------------------------------------------------------------
DATA_KINDS = ("climate", "sound")


def seq_report(payloads):
    """Per boot, whether `seq` ran without a gap over the data messages (climate + sound).

    payloads: parsed JSON dicts with "boot" and "seq", in arrival order. Returns
    {boot: {"count", "first", "last", "missing": [...], "duplicates": [...], "copies",
    "out_of_order"}}: `duplicates` are the seqs that arrived more than once, `copies` how many
    messages were such extra copies (one reading resent 43 times is 1 seq, 43 copies).
    A gap before the first seq seen is not counted (the subscriber may have joined late).
    """
    report = {}
    for p in payloads:
        r = report.setdefault(p["boot"], {"seqs": [], "out_of_order": 0})
        if r["seqs"] and p["seq"] < r["seqs"][-1]:
            r["out_of_order"] += 1
        r["seqs"].append(p["seq"])
    for r in report.values():
        seqs = r.pop("seqs")
        uniq = sorted(set(seqs))
        r.update(
            count=len(seqs), first=uniq[0], last=uniq[-1],
            missing=sorted(set(range(uniq[0], uniq[-1] + 1)) - set(uniq)),
            duplicates=sorted(s for s, n in Counter(seqs).items() if n > 1),
            copies=len(seqs) - len(uniq),
        )  # fmt: skip
    return report


def format_seq_report(report):
    lines = []
    for boot, r in sorted(report.items()):
        state = "no gap" if not r["missing"] else f"MISSING {_ranges(r['missing'])}"
        extra = (f", {r['copies']} duplicate copies (of seq {_ranges(r['duplicates'])})"
                 if r["duplicates"] else "")
        extra += f", {r['out_of_order']} out of order" if r["out_of_order"] else ""
        lines.append(f"boot {boot}: {r['count']} data messages, seq {r['first']}..{r['last']}, "
                     f"{state}{extra}")
    return lines


def _ranges(nums):
    out, start, prev = [], None, None
    for n in nums + [None]:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(str(start) if start == prev else f"{start}-{prev}")
            start = prev = n
    return ",".join(out)
