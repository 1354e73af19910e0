"""tools/deploy.py and sim/host/fakeboard.py: mpremote against a simulated serial board.

The fakeboard is the unix port behind a pty with a temporary folder as its flash, speaking the
REPL protocol of a board. Against it: mpremote's own commands, the raw-REPL framing byte by
byte, full / unchanged / partial deploys, refusals that roll back, a copy cut short that leaves
the board booting into safe mode, and `make deploy` of the real app, timed (pytest -s prints it).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim.host import fakeboard
from tools import bundle, deploy
from tools.hosttools import REPO

PY = sys.executable
MPREMOTE = str(Path(PY).parent / "mpremote")
# Run from the repo root, as the Makefile runs them.
DEPLOY = [PY, "-m", "tools.deploy"]
FAKEBOARD = [PY, "-m", "sim.host.fakeboard"]
serial = pytest.importorskip("serial")


class Board:
    """A sim/host/fakeboard.py process; .port is its pty, .flash its flash folder."""

    def __init__(self, flash, log, *extra):
        self.flash, self.logfile, self.extra = Path(flash), Path(log), extra
        self.flash.mkdir(parents=True, exist_ok=True)
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [*FAKEBOARD, "--flash", str(self.flash), "--log", str(self.logfile), *self.extra],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.port = self.proc.stdout.readline().strip()
        assert self.port.startswith("/dev/"), self.proc.stderr.read()

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)

    def log(self):
        return self.logfile.read_bytes().decode(errors="replace").replace("\r\n", "\n")

    def wait_for(self, pattern, timeout=10.0, after=0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = re.search(pattern, self.log()[after:])
            if m:
                return m
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} not in the board's output:\n{self.log()[after:]}")


@pytest.fixture
def board_factory(tmp_path):
    boards = []

    def make(flash=None, *extra):
        b = Board(flash or tmp_path / f"flash{len(boards)}", tmp_path / f"serial{len(boards)}.log",
                  *extra)
        boards.append(b)
        return b

    yield make
    for b in boards:
        b.stop()


def mpremote(port, *args, timeout=30):
    proc = subprocess.run([MPREMOTE, "connect", port, *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


# --- a small app that shows what the protocol needs from boot.py -------------------------------
BOOT = """\
import json
import os
try:
    os.stat("deploying")
    SAFE = True
    print("boot.py: safe mode: an unfinished deploy left /deploying")
except OSError:
    SAFE = False
    print("boot.py: normal boot")
"""
MAIN = """\
if SAFE:
    print("main.py: safe mode, app not started")
else:
    import demo.hello
    print("main.py: app started,", demo.hello.greet())
"""
HELLO = """\
import micropython
@micropython.viper
def twice(x: int) -> int:
    return x * 2
def greet():
    return "hello %d" % twice(VALUE)
"""


def make_app(src, value=21, extra=None):
    """A project tree with a viper module; returns (src, x64 bundle dir)."""
    src = Path(src)
    (src / "lib" / "demo").mkdir(parents=True, exist_ok=True)
    (src / "boot.py").write_text(BOOT)
    (src / "main.py").write_text(MAIN)
    (src / "config.json").write_text('{"mqtt": {"ca": "ca.der"}}\n')
    (src / "lib" / "demo" / "__init__.py").write_text("")
    (src / "lib" / "demo" / "hello.py").write_text(f"VALUE = {value}\n" + HELLO)
    for name, text in (extra or {}).items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text)
    (src / "secrets.json").write_text('{"wifi_ssid": "lab", "wifi_password": "hunter2-secret"}')
    (src / "ca.der").write_bytes(bytes(range(256)))
    out = src.parent / (src.name + "-x64")
    bundle.build(src, out, "x64", log=lambda line: None)
    return src, out


def run_deploy(port, bundle_dir, *args):
    return subprocess.run([*DEPLOY, "--port", port, "--bundle", str(bundle_dir), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def flash_files(flash):
    return {p.relative_to(flash).as_posix(): p.read_bytes() for p in Path(flash).rglob("*")
            if p.is_file() and p.name not in ("boot.json", ".sim_reset_cause")}


def expected_files(src, out):
    files = {rel: (out / rel).read_bytes() for rel in bundle.load_manifest(out)["files"]}
    files["secrets.json"] = (src / "secrets.json").read_bytes()
    files["ca.der"] = (src / "ca.der").read_bytes()
    return files


# --- the fakeboard speaks the protocol --------------------------------------------------------
def test_mpremote_commands_against_the_fakeboard(board_factory, tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "boot.py").write_text("print('boot ran')\n")
    (flash / "main.py").write_text(
        "import time\nprint('main running')\nwhile True:\n    time.sleep(0.05)\n")
    b = board_factory(flash)
    b.wait_for("main running")
    listing = mpremote(b.port, "ls")  # Ctrl-C stops the endless main.py first
    assert "boot.py" in listing and "main.py" in listing
    assert mpremote(b.port, "cat", ":boot.py").replace("\r\n", "\n") == "print('boot ran')\n"
    local = tmp_path / "data.txt"
    local.write_text("x" * 3000)
    # an absolute board path lands in the flash folder, not in the host's /lib
    mpremote(b.port, "mkdir", ":/lib", "+", "cp", str(local), ":/lib/data.txt")
    assert (flash / "lib" / "data.txt").read_text() == "x" * 3000
    assert not Path("/lib/data.txt").exists()
    assert mpremote(b.port, "exec", "import os; print(os.listdir('/lib'), os.getcwd())"
                    ).strip() == "['data.txt'] /"
    assert mpremote(b.port, "eval", "6 * 7").strip() == "42"
    mpremote(b.port, "rm", ":/lib/data.txt")
    assert not (flash / "lib" / "data.txt").exists()
    out = subprocess.run([MPREMOTE, "connect", b.port, "exec", "1/0"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode != 0 and "ZeroDivisionError" in out.stdout + out.stderr
    print(f"\nmpremote connect {b.port} ls:\n{listing}")


def test_raw_repl_framing_byte_by_byte(board_factory, tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "boot.py").write_text("print('boot ran')\n")
    (flash / "main.py").write_text("print('main ran')\n")
    b = board_factory(flash)
    b.wait_for(r">>> $")
    s = serial.Serial(b.port, 115200, timeout=5)

    def expect(data, ending=None, count=None):
        s.write(data)
        got = b""
        while not (got.endswith(ending) if ending else len(got) == count):
            c = s.read(1)
            assert c, f"timeout after {got!r}"
            got += c
        return got

    assert expect(b"1+1\r", b">>> ") == b"1+1\r\n2\r\n>>> "  # friendly: echo, result, prompt
    assert expect(b"\x01", b"\r\n>") == b"\r\nraw REPL; CTRL-B to exit\r\n>"
    assert expect(b"print('hi')\x04", b">") == b"OKhi\r\n\x04\x04>"
    got = expect(b"1/0\x04", b"\x04>")
    assert got.startswith(b"OK\x04Traceback")
    assert got.endswith(b"ZeroDivisionError: divide by zero\r\n\x04>")
    assert expect(b"\x05A\x01", count=5) == b"R\x01\x80\x00\x01"  # raw-paste, window 128
    assert expect(b"print(2**10)\x04", b"\x04>") == b"\x041024\r\n\x04\x04>"
    # an empty command soft-resets: raw mode stays raw, so boot.py runs and main.py does not
    got = expect(b"\x04", b"raw REPL; CTRL-B to exit\r\n>")
    assert got == b"OK\r\nMPY: soft reboot\r\nboot ran\r\nraw REPL; CTRL-B to exit\r\n>"
    assert expect(b"\x02", b">>> ").startswith(b"\r\nMicroPython v")
    # friendly Ctrl-D: boot.py, main.py, banner
    got = expect(b"\x04", b">>> ")
    assert got.startswith(b"\r\nMPY: soft reboot\r\nboot ran\r\nmain ran\r\nMicroPython v")
    s.close()


def test_ctrl_c_interrupts_and_typed_input_waits(board_factory, tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text(
        "import asyncio\nasync def run():\n    while True:\n        await asyncio.sleep(0.01)\n"
        "print('main running')\nasyncio.run(run())\n")
    b = board_factory(flash)
    b.wait_for("main running")
    s = serial.Serial(b.port, 115200, timeout=5)
    s.write(b"x = 7\r\x03x\r")  # typed while main.py runs: held until the REPL is back
    got = b""
    while b"7\r\n>>> " not in got:
        c = s.read(1)
        assert c, got
        got += c
    assert b"KeyboardInterrupt" in got and b'File "main.py"' in got
    assert b"in _run" not in got  # the fakeboard's own frames are not shown
    s.close()


def test_machine_reset_is_a_hard_reset(board_factory, tmp_path):
    flash = tmp_path / "flash"
    flash.mkdir()
    (flash / "main.py").write_text(
        "import os\ntry:\n    os.stat('once')\n    print('second life')\nexcept OSError:\n"
        "    open('once', 'w').close()\n    import machine\n    machine.reset()\n")
    b = board_factory(flash)
    b.wait_for("second life")
    assert "hard reset (micropython exited with code 4)" in b.log()


# --- deploy ----------------------------------------------------------------------------------
def test_full_then_unchanged_deploy(board_factory, tmp_path):
    src, out = make_app(tmp_path / "app")
    b = board_factory()
    full = run_deploy(b.port, out)
    assert full.returncode == 0, full.stdout + full.stderr
    assert "7 to update" in full.stdout and "hashes verified" in full.stdout
    assert flash_files(b.flash) == expected_files(src, out)
    b.wait_for(r"main.py: app started, hello 42")
    mark = len(b.log())
    again = run_deploy(b.port, out)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing changed (7 files up to date)" in again.stdout
    assert "copied" not in again.stdout
    b.wait_for(r"main.py: app started, hello 42", after=mark)
    for proc in (full, again):
        assert "hunter2" not in proc.stdout + proc.stderr  # secrets are never shown
    print("\n" + full.stdout + again.stdout)


def test_the_nodes_certificate_and_key_go_with_it(board_factory, tmp_path):
    """mqtt.cert and mqtt.key (make provision puts them there) are copied as mqtt.ca is, by
    name only; a missing one is a warning naming what makes it."""
    key = b"KEY-SECRET-" + bytes(range(40))
    src, out = make_app(tmp_path / "app", extra={
        "config.json": '{"mqtt": {"ca": "ca.der", "cert": "node-cert.der", '
                       '"key": "keys/node-key.der"}}\n'})
    (src / "node-cert.der").write_bytes(b"CERT" * 40)
    (src / "keys" / "node-key.der").parent.mkdir()
    (src / "keys" / "node-key.der").write_bytes(key)
    b = board_factory()
    proc = run_deploy(b.port, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "+ secrets.json + ca.der + node-cert.der + keys/node-key.der" in proc.stdout
    files = flash_files(b.flash)
    assert files["node-cert.der"] == b"CERT" * 40 and files["keys/node-key.der"] == key
    shown = proc.stdout + proc.stderr
    assert "KEY-SECRET" not in shown and key.hex()[:40] not in shown
    (src / "keys" / "node-key.der").unlink()
    (b.flash / "keys" / "node-key.der").unlink()
    proc = run_deploy(b.port, out, "--dry-run")
    assert ("config.json names mqtt.key 'keys/node-key.der', but %s is missing and the board has"
            " none: the node will stop in safe mode until it is there (make provision NODE=<id>"
            " puts it there)" % (src / "keys" / "node-key.der")) in proc.stdout, proc.stdout


def test_dry_run_and_a_leftover_marker(board_factory, tmp_path):
    _src, out = make_app(tmp_path / "app")
    b = board_factory()
    dry = run_deploy(b.port, out, "--dry-run")
    assert dry.returncode == 0 and "7 to update" in dry.stdout and "nothing written" in dry.stdout
    assert flash_files(b.flash) == {}
    assert run_deploy(b.port, out).returncode == 0
    # all files match but the marker is there (e.g. made by hand): the deploy clears it
    (b.flash / "deploying").write_text("x")
    proc = run_deploy(b.port, out)
    assert proc.returncode == 0 and "an earlier deploy was cut short; finishing" in proc.stdout
    assert not (b.flash / "deploying").exists()


def test_partial_deploy_copies_changes_and_removes_stale_files(board_factory, tmp_path):
    src, out = make_app(tmp_path / "app", extra={"lib/demo/old.py": "X = 1\n"})
    b = board_factory()
    assert run_deploy(b.port, out).returncode == 0
    # a source copy of a module would shadow its new .mpy; a file of another library stays
    (b.flash / "lib" / "demo" / "hello.py").write_text("raise ImportError('shadow')\n")
    (b.flash / "lib" / "other.py").write_text("Y = 2\n")
    (b.flash / "notes.txt").write_text("mine")
    (src / "lib" / "demo" / "old.py").unlink()
    src, out = make_app(src, value=50)
    mark = len(b.log())
    proc = run_deploy(b.port, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 to update" in proc.stdout and "lib/demo/hello.mpy" in proc.stdout
    assert "-/lib/demo/old.mpy" in proc.stdout and "-/lib/demo/hello.py" in proc.stdout
    files = flash_files(b.flash)
    assert "lib/demo/old.mpy" not in files and "lib/demo/hello.py" not in files
    assert files["lib/other.py"] == b"Y = 2\n" and files["notes.txt"] == b"mine"
    b.wait_for(r"main.py: app started, hello 100", after=mark)


def test_refusals_before_anything_is_written(board_factory, tmp_path):
    src, out = make_app(tmp_path / "app")
    b = board_factory(None, "--flash-kb", "8")
    # too big for the flash
    proc = run_deploy(b.port, out)
    assert proc.returncode == 1 and "not enough space on the board" in proc.stderr
    assert flash_files(b.flash) == {}
    # machine code for another arch
    xt = tmp_path / "xt"
    bundle.build(src, xt, "xtensawin", log=lambda line: None)
    proc = run_deploy(b.port, xt)
    assert proc.returncode == 1
    assert "the board runs x64 machine code, the bundle holds xtensawin" in proc.stderr
    # sources changed after the bundle was built
    (src / "main.py").write_text(MAIN + "# edited\n")
    proc = run_deploy(b.port, out)
    assert proc.returncode == 1 and "is older than main.py: run make bundle" in proc.stderr
    assert flash_files(b.flash) == {}
    # a refusal after the board was stopped starts it again
    assert b.log().count("MPY: soft reboot") == 4  # 2 x (stop for the query, restart)
    assert mpremote(b.port, "exec", "print('alive')").strip() == "alive"


def test_packages_frozen_in_the_firmware_are_not_copied(board_factory, tmp_path):
    """The unix port freezes asyncio: a bundle that ships lib/asyncio is told it would be
    shadowed, as a board flashed with firmware/manifest.py shadows lib/node and lib/umqtt."""
    _src, out = make_app(tmp_path / "app", extra={"lib/asyncio/__init__.py": "SHADOWED = 1\n"})
    b = board_factory()
    proc = run_deploy(b.port, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "the firmware has asyncio frozen in" in proc.stdout
    assert not (b.flash / "lib" / "asyncio").exists()
    assert (b.flash / "lib" / "demo" / "hello.mpy").is_file()
    b.wait_for(r"main.py: app started, hello 42")


def test_usage_errors(tmp_path):
    proc = subprocess.run([*DEPLOY, "--port", ""], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "no serial port given" in proc.stderr
    proc = run_deploy("/dev/ttyUSB97", tmp_path)
    assert proc.returncode == 2 and "/dev/ttyUSB97 does not exist" in proc.stderr
    proc = run_deploy("/dev/null", tmp_path / "nope")
    assert proc.returncode == 1 and "not a complete bundle" in proc.stderr


def test_board_refusal_mid_copy_rolls_back(board_factory, tmp_path, monkeypatch, capsys):
    src, out = make_app(tmp_path / "app")
    b = board_factory()
    assert run_deploy(b.port, out).returncode == 0
    before = flash_files(b.flash)
    src, out = make_app(src, value=1)
    (src / "main.py").write_text(MAIN + "# v2\n")
    bundle.build(src, out, "x64", log=lambda line: None)
    real_write = deploy.write_file
    calls = []

    def write_then_refuse(board, it):
        calls.append(it.path)
        if len(calls) == 2:  # the flash fills up under the second file
            board.run("raise OSError(28)")
        real_write(board, it)

    monkeypatch.setattr(deploy, "write_file", write_then_refuse)
    mark = len(b.log())
    assert deploy.main(["--port", b.port, "--bundle", str(out)]) == 1
    err = capsys.readouterr().err
    assert "the board refused" in err and "28" in err and "nothing changed" in err
    assert flash_files(b.flash) == before  # no .new files, no /deploying, old app intact
    b.wait_for(r"main.py: app started, hello 42", after=mark)  # and running again


def test_copy_cut_short_boots_safe_mode_then_completes(board_factory, tmp_path, monkeypatch,
                                                       capsys):
    src, out = make_app(tmp_path / "app")
    b = board_factory()
    assert run_deploy(b.port, out).returncode == 0
    src, out = make_app(src, value=5)
    (src / "main.py").write_text(MAIN + "# v2\n")
    bundle.build(src, out, "x64", log=lambda line: None)  # two changed files
    real_write = deploy.write_file

    def write_then_pull_the_cable(board, it):
        real_write(board, it)
        b.stop(signal.SIGKILL)  # the board vanishes after the first file

    monkeypatch.setattr(deploy, "write_file", write_then_pull_the_cable)
    assert deploy.main(["--port", b.port, "--bundle", str(out)]) == 3
    assert "/deploying stays on the board, so it boots in safe mode" in capsys.readouterr().err
    assert (b.flash / "deploying").exists()
    monkeypatch.setattr(deploy, "write_file", real_write)

    mark = len(b.log())
    b.start()  # power on: boot.py sees the marker; the half-copied app does not start
    b.wait_for(r"boot.py: safe mode: an unfinished deploy left /deploying\n"
               r"main.py: safe mode, app not started", after=mark)
    assert "app started" not in b.log()[mark:]
    mark = len(b.log())
    proc = run_deploy(b.port, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "copied 1 files" in proc.stdout  # the .new that arrived intact is reused
    assert not (b.flash / "deploying").exists()
    assert not list(b.flash.rglob("*.new"))
    b.wait_for(r"boot.py: normal boot\nmain.py: app started, hello 10", after=mark)


def test_plan_rules():
    m = {"files": {"boot.py": {}, "main.py": {}, "lib/node/a.mpy": {}, "lib/umqtt/simple.mpy": {}}}
    items = [deploy.Item("/boot.py", Path("b"), "h1", 1, "boot.py"),
             deploy.Item("/main.py", Path("m"), "h2", 1, "main.py"),
             deploy.Item("/lib/node/a.mpy", Path("a"), "h3", 1, "lib/node/a.mpy"),
             deploy.Item("/lib/umqtt/simple.mpy", Path("s"), "h4", 1, "lib/umqtt/simple.mpy")]
    hashes = [("/boot.py", "h1"), ("/main.py", "old"), ("/main.py.new", "h2"),
              ("/lib/node/a.mpy", None), ("/lib/node/a.mpy.new", "junk"),
              ("/lib/umqtt/simple.mpy", "h4")]
    listing = ["/boot.py", "/main.py", "/main.py.new", "/boot.json", "/lib/node/a.py",
               "/lib/node/gone.mpy", "/lib/node/a.mpy.new", "/lib/other.py", "/lib/x.py.new"]
    to_write, to_commit, removes = deploy.plan(m, items, hashes, listing)
    assert [i.path for i in to_write] == ["/lib/node/a.mpy"]  # main.py.new already matches
    assert [i.path for i in to_commit] == ["/main.py", "/lib/node/a.mpy"]
    assert removes == ["/lib/node/a.py", "/lib/node/gone.mpy", "/lib/x.py.new"]
    assert [i.path for i in deploy.commit_order(items)][-2:] == ["/boot.py", "/main.py"]


def test_mpy_compatibility_rules():
    m = {"mpy_version": [6, 3], "native": ["lib/a.mpy"], "arch": "xtensawin", "arch_number": 10}
    esp32 = 6 | 3 << 8 | 10 << 10
    assert "xtensawin" in deploy.check_mpy(m, esp32, "esp32")
    with pytest.raises(deploy.DeployError, match="make bundle ARCH=x64"):
        deploy.check_mpy(m, 6 | 3 << 8 | 2 << 10, "linux")
    with pytest.raises(deploy.DeployError, match=r"loads \.mpy v5"):
        deploy.check_mpy(m, 5 | 10 << 10, "esp32")
    bytecode_only = dict(m, native=[], mpy_version=[6, None])
    assert deploy.check_mpy(bytecode_only, 6 | 3 << 8 | 2 << 10, "linux")


def test_needs_more_follows_micropython():
    assert fakeboard.needs_more("for i in range(2):", False, True)
    assert not fakeboard.needs_more("x = (1,\n 2)", False, True)
    assert fakeboard.needs_more("x = (1,", False, True)
    assert not fakeboard.needs_more("print('a:')", False, True)
    assert fakeboard.needs_more("if x:\n  y", True, True)
    assert not fakeboard.needs_more("if x:\n  y\n", True, False)


# --- make deploy with the real app, timed --------------------------------------------------------
@pytest.mark.e2e  # the app on the fake serial board, in real time: make test only
def test_make_deploy_real_app_full_and_unchanged(board_factory):
    env = dict(os.environ, MAKEFLAGS="")
    build = subprocess.run(["make", "-s", "bundle", "ARCH=x64"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    # paced like the USB-serial link of a dev board, so the times mean something
    b = board_factory(None, "--baud", "115200")
    times = []
    for _ in range(2):
        t0 = time.monotonic()
        proc = subprocess.run(["make", "-s", "deploy", f"PORT={b.port}", "ARCH=x64"], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120)
        times.append(time.monotonic() - t0)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nothing changed" in proc.stdout
    n = len(bundle.load_manifest(REPO / "build" / "x64")["files"])
    for rel in bundle.load_manifest(REPO / "build" / "x64")["files"]:
        assert (b.flash / rel).is_file(), rel
    # the soft reset ran the deployed boot.py, then main.py: their lines reach the serial port
    b.wait_for(r"boot\.py: ", timeout=15)
    b.wait_for(r"\d+\.\d{3} main: ", timeout=15)
    print(f"\nmake deploy ARCH=x64 to the fakeboard at 115200 baud ({n} bundle files): "
          f"full {times[0]:.2f} s, unchanged {times[1]:.2f} s")


# --- the watchdog outlives a soft reset, as on the ESP32 ----------------------------------------
WDT_MAIN = """\
import time
from machine import WDT
wdt = WDT(timeout=5000)  # watchdog_s 5
print("main.py: app started, feeding the watchdog")
while True:
    wdt.feed()
    time.sleep(0.1)
"""


@pytest.mark.e2e  # the app on the fake serial board, in real time: make test only
def test_a_deploy_longer_than_the_watchdog_gets_a_wdt_reset(board_factory, tmp_path):
    # The app feeds a 5 s watchdog until the deploy's Ctrl-C stops it; mpremote's soft reset
    # into the raw REPL does not stop the watchdog (it cannot be stopped on the ESP32), and a
    # copy paced at 9600 baud takes longer than 5 s: the board resets mid-copy.
    big = "".join(f"LINE_{i} = {i * 7919}\n" for i in range(300))
    _, before = make_app(tmp_path / "app1", extra={"main.py": WDT_MAIN})
    flash = tmp_path / "flash"
    shutil.copytree(before, flash, ignore=shutil.ignore_patterns(".bundle.json"))
    b = board_factory(flash, "--baud", "9600")
    b.wait_for("feeding the watchdog")
    _, out = make_app(tmp_path / "app2", 22, extra={"main.py": WDT_MAIN, "lib/demo/big.py": big})
    t0 = time.monotonic()
    proc = run_deploy(b.port, out)
    took = time.monotonic() - t0
    log = b.log()
    assert "sim: WDT fired" in log, proc.stdout + proc.stderr + log
    assert re.search(r"sim: WDT still running after the soft reset: timeout 5000 ms", log)
    b.wait_for(r"fakeboard: hard reset \(micropython exited with code 3\)")
    assert proc.returncode != 0, proc.stdout
    assert (flash / "deploying").exists()  # cut short: the next boot is in safe mode
    assert not (flash / ".sim_wdt").exists()  # the hard reset stopped the watchdog
    print(f"\ndeploy at 9600 baud cut by the watchdog after {took:.1f} s")


def _real_app(src, watchdog_s, extra=None):
    """The repo's boot.py, main.py and lib/ with a config of our own; returns its x64 bundle."""
    from sim.net.pki import make_pki

    src = Path(src)
    shutil.copytree(REPO / "lib", src / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("boot.py", "main.py"):
        shutil.copy(REPO / name, src / name)
    cfg = json.loads((REPO / "config.json").read_text())
    cfg.update(watchdog_s=watchdog_s, node_id="deploy-test")
    # Nothing listens there: the app runs its tasks and retries, as with a broker away.
    cfg["mqtt"].update(host="127.0.0.1", port=1, ca="ca.der")
    cfg["ntp"]["server"] = None
    (src / "config.json").write_text(json.dumps(cfg))
    (src / "secrets.json").write_text('{"wifi_ssid": "lab", "wifi_password": "pw"}')
    shutil.copy(make_pki(src.parent / (src.name + "-pki")).ca_der, src / "ca.der")
    for name, text in (extra or {}).items():
        (src / name).write_text(text)
    out = src.parent / (src.name + "-x64")
    bundle.build(src, out, "x64", log=lambda line: None)
    return out


@pytest.mark.e2e  # the app on the fake serial board, in real time: make test only
def test_a_deploy_longer_than_the_watchdog_completes(board_factory, tmp_path):
    """The real app with watchdog_s 5, then a deploy that takes longer than 5 s: the app's
    Ctrl-C handler and boot.py (after mpremote's soft reset into the raw REPL) feed the
    watchdog from a timer, so the copy completes and the new app starts."""
    before = _real_app(tmp_path / "app1", 5)
    flash = tmp_path / "flash"
    shutil.copytree(before, flash, ignore=shutil.ignore_patterns(".bundle.json"))
    for name in ("secrets.json", "ca.der"):  # deploy.py adds these; a bundle never has them
        shutil.copy(tmp_path / "app1" / name, flash / name)
    b = board_factory(flash, "--baud", "9600")
    b.wait_for(r"\d+\.\d{3} main: node deploy-test", timeout=20)
    big = "".join(f"LINE_{i} = {i * 7919}\n" for i in range(300))
    after = _real_app(tmp_path / "app2", 5, extra={"lib/big.py": big})
    t0 = time.monotonic()
    proc = run_deploy(b.port, after, "--secrets", str(tmp_path / "app2" / "secrets.json"),
                      "--ca", str(tmp_path / "app2" / "ca.der"))
    took = time.monotonic() - t0
    log = b.log()
    assert proc.returncode == 0, proc.stdout + proc.stderr + log
    assert took > 5, took  # longer than the watchdog's timeout
    assert "sim: WDT fired" not in log, log
    assert "main: stopped at the console: the watchdog is fed from a timer" in log
    assert "boot.py: watchdog fed from a timer until the app runs" in log
    assert (flash / "lib" / "big.mpy").is_file() and not (flash / "deploying").exists()
    # The new app starts after the deploy's reset and its supervisor takes the watchdog over.
    first = b.wait_for(r"\d+\.\d{3} main: node deploy-test", timeout=5)
    b.wait_for(r"\d+\.\d{3} main: node deploy-test", timeout=20, after=first.end())
    print(f"\ndeploy at 9600 baud with watchdog_s 5: completed in {took:.1f} s")
