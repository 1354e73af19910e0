"""The simulated board tells the truth: where an ESP32 is harsher than the host, so is the sim.

Each truth on by default and named on stderr: the RTC at 2000-01-01 after a power-on (TLS date
checks fail until it is set), a watchdog that outlives a soft reset, Wi-Fi that drops and comes
back by itself, DNS lookups that take time (or fail, or hang), a TLS handshake that blocks for
SIM_TLS_MS, and `make sim` powering the board on again after a power cut (SIGKILL).
Small MicroPython scripts in a flash folder, no node, except for the power cut.
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from sim.host.simnode import Node, power_on_flash
from tests.conftest import REPO
from tests.e2e.infra import broker, broker_factory, certs  # noqa: F401  (fixtures)

START = REPO / "sim" / "board" / "start.py"
TLS_MS = 400


def flash_with(tmp_path, main, name="flash"):
    flash = tmp_path / name
    flash.mkdir(exist_ok=True)
    (flash / "main.py").write_text(main)
    return flash


def run_board(flash, timeout=30, env=None, clock="board", reboot=False):
    """Power the board on, run until main.py ends (with reboot: across its resets); the Node."""
    node = Node(flash, env=env, clock=clock, reboot=reboot, audio="silence")
    node.start()
    node.wait(timeout)
    if reboot:
        node._monitor.join(timeout)
        node.wait(timeout)
    return node


HANDSHAKES = """
import socket, ssl, time, machine
PORT = {port}
def connect():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile="ca.der")
    s = socket.socket()
    s.connect(socket.getaddrinfo("127.0.0.1", PORT)[0][-1])
    return ctx, s
def blocking():
    ctx, s = connect()
    t0 = time.ticks_ms()
    try:
        ctx.wrap_socket(s, server_hostname="localhost").close()
        print("blocking: ok in", time.ticks_diff(time.ticks_ms(), t0), "ms")
    except ValueError as e:
        print("blocking: failed:", str(e).strip())
        s.close()
def nonblocking():
    # as lib/node/mqtt.py does: write CONNECT non-blocking, None while the handshake waits
    ctx, s = connect()
    s.setblocking(False)
    tls = ctx.wrap_socket(s, server_hostname="localhost", do_handshake_on_connect=False)
    calls, longest = 0, 0
    while True:
        t0 = time.ticks_ms()
        n = tls.write(b"\\x10\\x00")
        longest = max(longest, time.ticks_diff(time.ticks_ms(), t0))
        calls += 1
        if n is not None:
            break
        time.sleep_ms(5)
    tls.close()
    print("nonblocking: calls", calls, "longest", longest, "ms")
print("year", time.gmtime()[0])
blocking()
machine.RTC().datetime(NOW)
print("year", time.gmtime()[0])
blocking()
nonblocking()
"""


def test_the_clock_starts_in_2000_and_tls_fails_until_the_rtc_is_set(broker, certs, tmp_path):
    g = time.gmtime()
    now = (g.tm_year, g.tm_mon, g.tm_mday, 0, g.tm_hour, g.tm_min, g.tm_sec, 0)
    flash = flash_with(tmp_path, f"NOW = {now!r}\n" + HANDSHAKES.format(port=broker.port))
    (flash / "ca.der").write_bytes(certs.ca_der.read_bytes())
    node = run_board(flash, env={"SIM_TLS_MS": str(TLS_MS)})
    out = node.text()
    assert node.returncode == 0, out
    assert re.search(r"sim: clock: the board's RTC .*, now 2000-01-01T00:00:0\dZ", out), out
    stdout = [ln for ln in node.lines if ln.stream == "stdout"]
    assert stdout[:2] == ["year 2000", "blocking: failed: The certificate validity starts in "
                          "the future"], out
    assert stdout[2] == f"year {g.tm_year}"
    ok_ms = int(re.match(r"blocking: ok in (\d+) ms", stdout[3]).group(1))
    assert ok_ms >= TLS_MS  # the handshake cost, inside wrap_socket
    calls, longest = map(int, re.match(r"nonblocking: calls (\d+) longest (\d+)", stdout[4])
                         .groups())
    assert calls >= 2 and longest >= TLS_MS  # one write() waits for the peer, one blocks
    assert len(node.find(r"sim: TLS handshake done: \d+ ms of blocking CPU")) == 2
    assert len(node.find(r"sim: TLS handshake failed")) == 1
    assert node.find(r"sim: RTC set to \d{4}-")


CLOCK_ACROSS_RESETS = """
import machine, os, time
print("boot", time.time())
try:
    os.stat("step")
    step = open("step").read()
except OSError:
    step = ""
if step == "":
    open("step", "w").write("1")
    machine.RTC().datetime((2030, 1, 1, 1, 0, 0, 0, 0))
    machine.soft_reset()
elif step == "1":
    open("step", "w").write("2")
    machine.reset()
"""


def test_the_clock_survives_resets_but_not_a_power_on(tmp_path):
    flash = flash_with(tmp_path, CLOCK_ACROSS_RESETS)
    node = run_board(flash, reboot=True)
    boots = [float(m.group(1)) for m in node.find(r"^boot (\d+(\.\d+)?)")]
    assert len(boots) == 3, node.text()
    assert 946684800 <= boots[0] < 946684800 + 10  # power-on: 2000-01-01
    jan_2030 = 1893456000
    assert jan_2030 <= boots[1] <= boots[2] < jan_2030 + 10, boots  # set, then kept running
    again = run_board(flash)  # power-on: back to 2000 (the script's last step just prints)
    t = float(again.find(r"^boot (\d+(\.\d+)?)")[0].group(1))
    assert 946684800 <= t < 946684800 + 10, again.text()


def test_clock_host_keeps_the_hosts_clock(tmp_path):
    flash = flash_with(tmp_path, "import time, machine\nprint('now', time.time())\n"
                                 "machine.RTC().datetime((2030, 1, 1, 1, 0, 0, 0, 0))\n"
                                 "print('now', time.time())\n")
    node = run_board(flash, clock="host")
    times = [float(m.group(1)) for m in node.find(r"^now (\S+)")]
    assert all(abs(t - time.time()) < 10 for t in times), node.text()
    assert node.find(r"sim: clock: the host's clock")
    assert node.find(r"RTC set to 2030-01-01T00:00:00Z: ignored")


WDT_ACROSS_SOFT_RESET = """
import machine, time
cause = machine.reset_cause()
if cause == machine.PWRON_RESET:
    w = machine.WDT(timeout=1500)
    w.feed()
    machine.soft_reset()
elif cause == machine.SOFT_RESET:
    print("after the soft reset: not feeding")
    time.sleep(10)
    print("still alive")
else:
    print("after the WDT reset, cause", cause)
"""


def test_the_watchdog_survives_a_soft_reset_but_not_a_power_on(tmp_path):
    flash = flash_with(tmp_path, WDT_ACROSS_SOFT_RESET)
    t0 = time.monotonic()
    node = run_board(flash, reboot=True)
    out = node.text()
    assert "after the soft reset: not feeding" in out and "still alive" not in out, out
    assert node.find(r"sim: WDT still running after the soft reset: timeout 1500 ms")
    assert node.find(r"sim: WDT fired: not fed for 1\d\d\d ms \(timeout 1500 ms\)"), out
    assert "after the WDT reset, cause 3" in out
    assert node.boots == 3 and time.monotonic() - t0 < 10  # soft reset, then WDT reset
    assert not (flash / ".sim_wdt").exists()
    # a WDT armed before a power cut does not outlive the power-on
    (flash / ".sim_wdt").write_text("1500 0\n")
    power_on_flash(flash)
    assert not (flash / ".sim_wdt").exists()


WIFI = """
import network, time
w = network.WLAN(network.STA_IF)
w.active(True)
w.connect("sim-wifi", "pw")
while not w.isconnected():
    time.sleep_ms(20)
t0 = time.ticks_ms()
print("up rssi", w.status("rssi"))
time.sleep_ms(1300)  # the access point goes 1 s after the first association, for 1.5 s
print("during isconnected", w.isconnected(), "status", w.status())
try:
    w.status("rssi")
except OSError as e:
    print("during rssi", e)
try:
    w.connect("sim-wifi", "pw")
except OSError as e:
    print("during connect", e)
while not w.isconnected():  # the driver reassociates on its own: no connect() here
    time.sleep_ms(20)
print("back after", time.ticks_diff(time.ticks_ms(), t0), "ms rssi", w.status("rssi"))
# The simulator notes the reassociation from a thread at the same instant: let it print before
# the process ends.
time.sleep_ms(200)
"""


def test_wifi_drops_and_the_driver_reconnects_on_its_own(tmp_path):
    flash = flash_with(tmp_path, WIFI)
    node = run_board(flash, env={"SIM_WIFI": "drop:1:1.5"}, clock="host")
    out = node.text()
    assert node.returncode == 0, out
    assert "during isconnected False status 1001" in out  # STAT_CONNECTING
    assert "during rssi Wifi Not Connected" in out
    assert "during connect Wifi Internal Error" in out
    back = int(re.search(r"back after (\d+) ms", out).group(1))
    assert 3300 <= back <= 4500, out  # 1 s + 1.5 s gone + 1 s to reassociate
    for line in ("the access point is gone", "the access point is back",
                 "the driver reassociated on its own"):
        assert node.find(r"sim: Wi-Fi: " + line), out


DNS = """
import socket, time
for host in ("127.0.0.1", "localhost"):
    t0 = time.ticks_ms()
    try:
        socket.getaddrinfo(host, 1883)
        print(host, "ok", time.ticks_diff(time.ticks_ms(), t0))
    except OSError as e:
        print(host, "error", e.args[0], time.ticks_diff(time.ticks_ms(), t0))
"""


@pytest.mark.parametrize("spec, outcome, low, high", [
    ("", "ok", 20, 500),  # default: a nearby resolver
    ("delay:300", "ok", 300, 800),
    ("fail", "error -202", 0, 100),
    ("hang:700", "error -202", 700, 1200),
])
def test_dns_lookups_take_time_fail_or_hang(tmp_path, spec, outcome, low, high):
    flash = flash_with(tmp_path, DNS)
    node = run_board(flash, env={"SIM_DNS": spec} if spec else None, clock="host")
    out = node.text()
    literal = re.search(r"^127\.0\.0\.1 ok (\d+)", out, re.M)
    assert literal and int(literal.group(1)) < 20, out  # an IP is parsed, never looked up
    m = re.search(rf"^localhost {outcome} (\d+)", out, re.M)
    assert m and low <= int(m.group(1)) <= high, out
    assert node.find(r"sim: DNS: getaddrinfo\('localhost'\)"), out


def test_a_killed_node_is_a_power_cut_and_make_sim_powers_it_on(tmp_path):
    pidfile = tmp_path / "node.pid"
    env = {**os.environ, "SIM_PIDFILE": str(pidfile), "MAKEFLAGS": ""}
    env.pop("MICROPYPATH", None)
    # make sim's runner, in its own work folder (not the repo's .sim/ of a `make sim` nearby)
    run = ("import sys; from pathlib import Path; from sim.host import run; "
           "sys.exit(run.simulate(run.parse_args(['--duration', '9']), run.Console(), "
           f"work=Path({str(tmp_path / 'sim')!r})))")
    proc = subprocess.Popen([sys.executable, "-c", run], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        first = int(pidfile.read_text())
        time.sleep(3)
        os.kill(first, signal.SIGKILL)
        while int(pidfile.read_text()) == first and time.monotonic() < deadline:
            time.sleep(0.1)
        second = int(pidfile.read_text())
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert second != first, out
    assert "power cut (the node was killed): powering the board on again in 1 s" in out
    assert len(re.findall(r"reset cause PWRON_RESET", out)) >= 4, out  # banner + app, twice
    assert len(re.findall(r"clock: the board's RTC .*now 2000-01-01T00:00:0\dZ", out)) == 2
    assert "summary | power cuts: 1" in out
    assert proc.returncode == 0, out
