"""A simulated serial board: the MicroPython unix port behind a pseudo-terminal.

    python -m sim.host.fakeboard [--flash DIR] [--heap SIZE] [--log FILE] [--flash-kb N] [--baud N]

Prints the pty path (one line on stdout), then serves until killed. `mpremote connect <pty> ...`
and `make deploy PORT=<pty> ARCH=x64` talk to it as to an ESP32 on a USB serial port:

- the REPL speaks MicroPython's protocol as shared/runtime/pyexec.c does on a board: friendly
  REPL with echo (Ctrl-A raw REPL, Ctrl-B banner, Ctrl-C, Ctrl-D soft reset, Ctrl-E paste mode),
  raw REPL (Ctrl-D executes, "OK", output, 0x04, exception, 0x04, ">"; Ctrl-D on an empty
  command soft-resets) and raw-paste mode (Ctrl-E 'A' Ctrl-A, "R\\x01", window of 128 bytes with
  0x01 flow control), as mpremote's transport_serial.py uses them;
- output is "cooked" like a board's UART (\\n sent as \\r\\n); input typed while code runs waits
  in a buffer, except Ctrl-C, which interrupts the running code (SIGINT -> KeyboardInterrupt);
- the flash is a folder (a temporary one unless --flash): the micropython process runs in it,
  with sys.path [<repo>/sim/board, '', '.frozen', 'lib'] as sim/board/start.py sets it, so the
  simulated machine/dht/network modules stand in for the hardware;
- power-on and soft reset run boot.py, then main.py in friendly-REPL mode (raw-REPL mode skips
  main.py, as the ESP32 port does), both in the REPL's `__main__` namespace; boot.py's errors are
  printed and passed over, as in sim/board/_firmware.py;
- sys.exit() / machine.soft_reset() soft-reset; machine.reset(), the watchdog and any exit of the
  process are a hard reset: a new process, friendly mode, boot.py and main.py again;
- as on the ESP32, a watchdog armed before a soft reset (Ctrl-D, mpremote entering the raw REPL)
  keeps running after it, from its last feed (FLASH/.sim_wdt): a REPL session longer than its
  timeout ends in a WDT reset. Only a hard reset or the fakeboard's start clears it;
- while REPL commands run (not boot.py/main.py), absolute paths such as "/lib" mean the flash
  folder, as on the board, and os.statvfs reports the --flash-kb size when one is given.

Not emulated: mpremote's `mount` (it needs binary stdin/stdout), the ESP32's ROM boot messages.
"""

import argparse
import collections
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tty
from pathlib import Path

from tools.hosttools import REPO, find_tool

RAW_PASTE_WINDOW = 128  # the ESP32 port's stdin buffer is 256 bytes; the window is half of it
OUT_CAP = 256 * 1024  # bytes kept for a host that does not read: a UART drops the rest
HARD_RESET_DELAY_S = 0.3  # a crash loop must not spin a CPU
CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E = 1, 2, 3, 4, 5
WDT_FILE = ".sim_wdt"  # sim/board/_simenv.py: a watchdog that outlives a soft reset
CAUSE_FILE = ".sim_reset_cause"  # sim/board/_simenv.py: the cause of the last reset

# The "firmware" running inside the micropython process: executes what the REPL hands it, in
# one __main__ namespace, and reports each end on the status pipe. Configuration is prepended.
CHILD_SRC = r'''
import sys, builtins, io
import os as _os
import select as _select

_on = [False]  # map board paths to the flash folder (only while REPL commands run)
_open = builtins.open


def _map(p):
    if not _on[0] or not isinstance(p, str):
        return p
    if p == _ROOT or p.startswith(_ROOT + "/"):
        return p
    if not p.startswith("/"):
        cwd = _os.getcwd()
        if not (cwd == _ROOT or cwd.startswith(_ROOT + "/")):
            return p
        p = cwd[len(_ROOT):] + "/" + p
    parts = []
    for s in p.split("/"):
        if s == "..":
            if parts:
                parts.pop()
        elif s and s != ".":
            parts.append(s)
    return _ROOT + "/" + "/".join(parts) if parts else _ROOT


def _used_bytes(d):
    n = 0
    for e in _os.ilistdir(d):
        p = d + "/" + e[0]
        if e[1] & 0x4000:
            n += 4096 + _used_bytes(p)
        else:
            n += (_os.stat(p)[6] + 4095) // 4096 * 4096
    return n


class _OsShim:
    def __getattr__(self, name):
        return getattr(_os, name)

    def stat(self, p):
        return _os.stat(_map(p))

    def ilistdir(self, p=""):
        # littlefs on a board gives (name, type, inode, size): so does the fakeboard
        d = _map(p)
        for e in _os.ilistdir(d):
            size = 0
            if not e[1] & 0x4000:
                try:
                    size = _os.stat((d or ".") + "/" + e[0])[6]
                except OSError:
                    pass
            yield (e[0], e[1], e[2], size)

    def listdir(self, p=""):
        return _os.listdir(_map(p))

    def mkdir(self, p, *a):
        return _os.mkdir(_map(p), *a)

    def rmdir(self, p):
        return _os.rmdir(_map(p))

    def remove(self, p):
        return _os.remove(_map(p))

    def unlink(self, p):
        return _os.remove(_map(p))

    def rename(self, a, b):
        return _os.rename(_map(a), _map(b))

    def chdir(self, p):
        return _os.chdir(_map(p))

    def getcwd(self):
        cwd = _os.getcwd()
        if _on[0] and (cwd == _ROOT or cwd.startswith(_ROOT + "/")):
            return cwd[len(_ROOT):] or "/"
        return cwd

    def statvfs(self, p):
        if not (_on[0] and _FLASH_BYTES):
            return _os.statvfs(_map(p))
        free = max(0, _FLASH_BYTES - _used_bytes(_ROOT)) // 4096
        total = _FLASH_BYTES // 4096
        return (4096, 4096, total, free, free, 0, 0, 0, 0, 255)


def _board_open(p, *a, **k):
    return _open(_map(p), *a, **k)


sys.modules["os"] = _OsShim()
builtins.open = _board_open
sys.path[:] = _SYSPATH
try:
    _os.stat(".sim_wdt")
    import machine  # resumes the watchdog that was running before the soft reset
except OSError:
    pass


def _wdt_fired():
    sim = sys.modules.get("_simenv")
    return sim is not None and sim.wdt_fired[0]

_g = {"__name__": "__main__"}
_inp = sys.stdin.buffer
_st = _open("/dev/fd/%d" % _STATUS_FD, "wb")


def _report(cid, flag, text):
    data = text.encode()[:3000]
    frame = ("D %d %s %d\n" % (cid, flag, len(data))).encode() + data
    while True:
        # A Ctrl-C that arrives as the command ends lands here: write again, the parent
        # ignores a second frame with the same id.
        try:
            _st.write(frame)
            return
        except KeyboardInterrupt:
            pass


def _run(kind, src):
    _on[0] = kind != "f"
    try:
        if kind == "f":
            try:
                f = _open(src)
            except OSError:
                return "n", ""
            with f:
                code = compile(f.read(), src, "exec")
            _g["__file__"] = src
        else:
            code = compile(src, "<stdin>", "single" if kind == "s" else "exec")
        exec(code, _g)
        return "o", ""
    except BaseException as e:  # everything the board would report, SystemExit included
        if _wdt_fired():
            return "!", "3"
        if isinstance(e, SystemExit):
            code = e.args[0] if e.args else None
            if code in (2, 3, 4):  # sim: bad SIM_* input, watchdog, machine.reset()
                return "!", str(code)
            return "x", ""  # sys.exit(), machine.soft_reset(): a soft reset
        buf = io.StringIO()
        sys.print_exception(e, buf)
        # drop this loop's own frame: a board's traceback starts at the user's code
        lines = [ln for ln in buf.getvalue().split("\n") if not ln.endswith(", in _run")]
        return "e", "\n".join(lines)
    finally:
        _on[0] = False


# The ESP32's REPL runs scheduled callbacks (a machine.Timer's) while it waits for input: so
# does this one, polling stdin instead of blocking in a read between bytecodes.
_waiter = _select.poll()
_waiter.register(0, _select.POLLIN)


def _wait_input():
    while not _waiter.poll(10):
        pass


while True:
    try:
        _wait_input()
        hdr = _inp.readline()
    except KeyboardInterrupt:
        if _wdt_fired():  # the watchdog fired while the REPL waited for input
            sys.exit(3)
        continue
    if not hdr:
        break
    _, cid, kind, n = hdr.decode().split()
    cid, n = int(cid), int(n)
    payload = b""
    while len(payload) < n:
        try:
            _wait_input()
            chunk = _inp.read(n - len(payload))
        except KeyboardInterrupt:
            if _wdt_fired():
                sys.exit(3)
            continue
        if not chunk:
            sys.exit(0)
        payload += chunk
    flag, text = _run(kind, payload.decode())
    if flag == "!":
        sys.exit(int(text))
    _report(cid, flag, text)
'''


def micropython_path():
    found = find_tool("micropython", "MICROPYTHON")
    if not found:
        raise SystemExit("fakeboard: no micropython unix port: run `make deps`")
    return found


def cook(data):
    """A board's UART sends text output with \\n as \\r\\n."""
    if isinstance(data, str):
        data = data.encode()
    return bytes(data).replace(b"\n", b"\r\n")


class Child:
    """One run of the interpreter: from a (soft or hard) reset to the next."""

    def __init__(self, micropython, flash, heap, sim_dir, flash_bytes):
        st_r, st_w = os.pipe()
        out_r, out_w = os.pipe()
        cmd_r, cmd_w = os.pipe()
        cfg = (f"_ROOT = {str(flash)!r}\n_SYSPATH = {[str(sim_dir), '', '.frozen', 'lib']!r}\n"
               f"_STATUS_FD = {st_w}\n_FLASH_BYTES = {flash_bytes or 0}\n")
        cmd = [micropython]
        if heap:
            cmd += ["-X", f"heapsize={heap}"]
        cmd += ["-c", cfg + CHILD_SRC]
        self.proc = subprocess.Popen(cmd, cwd=flash, stdin=cmd_r, stdout=out_w, stderr=out_w,
                                     pass_fds=(st_w,), start_new_session=True)
        for fd in (st_w, out_w, cmd_r):
            os.close(fd)
        self.out, self.status, self.cmd = out_r, st_r, cmd_w
        os.set_blocking(self.out, False)
        os.set_blocking(self.status, False)
        self.status_buf = b""
        self.last_sigint = 0.0

    def send(self, cid, kind, payload):
        data = payload.encode() if isinstance(payload, str) else payload
        frame = f"C {cid} {kind} {len(data)}\n".encode() + data
        try:
            os.write(self.cmd, frame)  # blocking: a REPL command is small next to a pipe
        except BrokenPipeError:
            pass  # the process is gone; its exit is noticed in the loop

    def interrupt(self):
        # Two SIGINTs before the first is handled make the unix port exit(1): pace them.
        now = time.monotonic()
        if now - self.last_sigint >= 0.25:
            self.last_sigint = now
            try:
                os.kill(self.proc.pid, signal.SIGINT)
            except ProcessLookupError:
                pass

    def frames(self):
        """Complete status frames read so far: (cid, flag, text)."""
        try:
            while True:
                chunk = os.read(self.status, 65536)
                if not chunk:
                    break
                self.status_buf += chunk
        except BlockingIOError:
            pass
        result = []
        while b"\n" in self.status_buf:
            head, rest = self.status_buf.split(b"\n", 1)
            _, cid, flag, n = head.decode().split()
            n = int(n)
            if len(rest) < n:
                break
            result.append((int(cid), flag, rest[:n].decode(errors="replace")))
            self.status_buf = rest[n:]
        return result

    def read_output(self):
        """Whatever the program printed so far; b"" if nothing; None once the process ended."""
        data = b""
        try:
            while True:
                chunk = os.read(self.out, 65536)
                if not chunk:
                    return data or None
                data += chunk
        except BlockingIOError:
            return data

    def kill(self):
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.close()

    def close(self):
        for fd in (self.out, self.status, self.cmd):
            try:
                os.close(fd)
            except OSError:
                pass


class FakeBoard:
    def __init__(self, flash, micropython=None, heap=None, log=None, flash_kb=None,
                 sim_dir=REPO / "sim" / "board", baud=0):
        self.flash = Path(flash).resolve()
        self.micropython = micropython or micropython_path()
        self.heap, self.sim_dir = heap, Path(sim_dir)
        self.flash_bytes = flash_kb * 1024 if flash_kb else 0
        self.line_bps = baud / 10 if baud else 0  # bytes per second of an 8N1 UART
        self.credit = {"in": 0.0, "out": 0.0}
        self.credit_t = time.monotonic()
        self.log = open(log, "ab", buffering=0) if log else None
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # 8-bit clean both ways; pyserial sets the same on open
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.out = bytearray()
        self.inq = collections.deque()
        self.mode = "friendly"  # or "raw"; survives a soft reset, as pyexec_mode_kind does
        self.state = "idle"  # idle | busy | paste (friendly Ctrl-E) | rawpaste
        self.line = bytearray()  # friendly: the line being edited; raw: the command
        self.cont = bytearray()  # friendly: previous lines of a compound statement
        self.esc = 0  # friendly: bytes of an escape sequence still to swallow
        self.window = 0
        self.child = None
        self.cid = 0
        self.on_done = None
        self.reboot_at = None
        self.running = True
        ask = "import sys; print('%d.%d.%d' % sys.implementation.version[:3])"
        self.version = subprocess.run([self.micropython, "-c", ask], capture_output=True,
                                      text=True).stdout.strip()
        self.power_on()

    # --- output to the host ------------------------------------------------------------------
    def send(self, data):
        if not data:
            return
        if self.log:
            self.log.write(data)
        self.out += data
        if len(self.out) > OUT_CAP:
            del self.out[:len(self.out) - OUT_CAP]
        self.flush()

    def flush(self):
        while self.out:
            n = min(len(self.out), 4096)
            if self.line_bps:
                n = min(n, int(self.credit["out"]))
                if n <= 0:
                    return
            try:
                n = os.write(self.master, self.out[:n])
            except (BlockingIOError, OSError):
                return
            del self.out[:n]
            if self.line_bps:
                self.credit["out"] -= n

    def refill(self):
        """--baud: each direction may move baud/10 bytes a second (8N1), in UART-sized bursts."""
        now = time.monotonic()
        dt, self.credit_t = now - self.credit_t, now
        burst = max(128.0, self.line_bps * 0.005)
        for k in self.credit:
            self.credit[k] = min(burst, self.credit[k] + dt * self.line_bps)

    def banner(self):
        self.send(f"MicroPython v{self.version} on fakeboard (unix port behind a pty); flash "
                  f"{self.flash}\r\nType \"help()\" for more information.\r\n".encode())

    def prompt(self):
        self.state = "idle"
        self.line.clear()
        self.cont.clear()
        if self.mode == "raw":
            self.send(b">")
        else:
            self.send(b">>> ")

    # --- resets --------------------------------------------------------------------------------
    def power_on(self):
        """A power-on or hard reset: the chip, its watchdog with it, starts afresh."""
        (self.flash / WDT_FILE).unlink(missing_ok=True)
        self.mode = "friendly"
        self.boot()

    def boot(self):
        self.child = Child(self.micropython, self.flash, self.heap, self.sim_dir,
                           self.flash_bytes)
        self.run("f", "boot.py", self.after_boot)

    def after_boot(self, flag, text):
        self.send(cook(text))  # boot.py's error, printed and passed over
        if flag == "x":
            return self.soft_reset()
        if self.mode == "friendly":
            self.run("f", "main.py", self.after_main)
        else:
            self.send(b"raw REPL; CTRL-B to exit\r\n")
            self.prompt()

    def after_main(self, flag, text):
        self.send(cook(text))
        if flag == "x":
            return self.soft_reset()
        if self.mode == "friendly":
            self.banner()
        else:
            self.send(b"raw REPL; CTRL-B to exit\r\n")
        self.prompt()

    def soft_reset(self):
        self.child.kill()
        self.child = None
        # What the next start's machine.reset_cause() reports (sim/board/_simenv.py), as on the
        # ESP32: boot.py tells a soft reset (a watchdog may be running) from a power-on by it.
        (self.flash / CAUSE_FILE).write_text("5 SOFT_RESET\n")
        self.send(b"MPY: soft reboot\r\n")
        self.boot()

    def child_died(self):
        code = self.child.proc.wait()
        self.child.close()
        self.child = None
        self.on_done = None
        self.state = "reset"
        self.send(f"\r\nfakeboard: hard reset (micropython exited with code {code})\r\n"
                  .encode())
        self.reboot_at = time.monotonic() + HARD_RESET_DELAY_S

    # --- running code ------------------------------------------------------------------------
    def run(self, kind, payload, on_done):
        self.cid += 1
        self.state = "busy"
        self.on_done = on_done
        self.child.send(self.cid, kind, payload)

    def child_events(self):
        ended = self.relay_output()
        for cid, flag, text in self.child.frames():
            if cid != self.cid or self.on_done is None:
                continue  # a repeated frame (see _report in the child)
            # Output written before the frame must reach the host before the frame's effects.
            ended = self.relay_output() or ended
            done, self.on_done = self.on_done, None
            done(flag, text)
            if self.child is None:
                return  # a soft reset replaced the process
        if ended:
            self.child_died()

    def relay_output(self):
        """Send what the program printed; True once its process has ended."""
        out = self.child.read_output()
        if out:
            self.send(cook(out))
        return out is None

    def raw_done(self, flag, text):
        self.send(b"\x04" + cook(text) + b"\x04")
        if flag == "x":
            return self.soft_reset()
        self.prompt()

    def friendly_done(self, flag, text):
        self.send(cook(text))
        if flag == "x":
            return self.soft_reset()
        self.prompt()

    # --- input from the host -------------------------------------------------------------------
    def feed(self, data):
        for b in data:
            if self.state in ("busy", "reset"):
                if b == CTRL_C and self.state == "busy":
                    self.child.interrupt()
                else:
                    self.inq.append(b)
            else:
                self.inq.append(b)
                self.pump()

    def pump(self):
        while self.inq and self.state not in ("busy", "reset"):
            b = self.inq.popleft()
            if self.state == "rawpaste":
                self.rawpaste_byte(b)
            elif self.state == "paste":
                self.paste_byte(b)
            elif self.mode == "raw":
                self.raw_byte(b)
            else:
                self.friendly_byte(b)

    def raw_byte(self, b):
        if b == CTRL_A:
            if len(self.line) == 2 and self.line[0] == CTRL_E:
                if self.line[1] == ord("A"):
                    w = RAW_PASTE_WINDOW
                    # the window size, then one more window's worth of credit (0x01)
                    self.send(b"R\x01" + bytes([w & 0xFF, w >> 8]) + b"\x01")
                    self.state, self.window = "rawpaste", w
                    self.line.clear()
                else:
                    self.send(b"R\x00")
                    self.line.clear()
                return
            self.send(b"raw REPL; CTRL-B to exit\r\n")
            self.prompt()
        elif b == CTRL_B:
            self.send(b"\r\n")
            self.mode = "friendly"
            self.banner()
            self.prompt()
        elif b == CTRL_C:
            self.line.clear()
        elif b == CTRL_D:
            self.send(b"OK")
            if not self.line:
                self.send(b"\r\n")
                return self.soft_reset()
            self.run("e", bytes(self.line), self.raw_done)
        else:
            self.line.append(b)

    def rawpaste_byte(self, b):
        if b == CTRL_D:
            self.send(b"\x04")  # end of data acknowledged; now compile and run
            self.run("e", bytes(self.line), self.raw_done)
        elif b == CTRL_C:
            self.send(b"\x04\x04KeyboardInterrupt: \r\n\x04")
            self.prompt()
        else:
            self.line.append(b)
            self.window -= 1
            if self.window == 0:
                self.send(b"\x01")
                self.window = RAW_PASTE_WINDOW

    def paste_byte(self, b):
        if b == CTRL_C:
            self.send(b"\r\n")
            self.prompt()
        elif b == CTRL_D:
            self.send(b"\r\n")
            self.run("e", bytes(self.line), self.friendly_done)
        else:
            self.line.append(b)
            self.send(b"\r\n=== " if b == ord("\r") else bytes([b]))

    def friendly_byte(self, b):
        if self.esc:
            # ESC [ ... final byte: arrow keys and the like, ignored
            self.esc = 0 if (self.esc > 1 and 0x40 <= b <= 0x7E) else self.esc + 1
            return
        empty = not self.line
        if CTRL_A <= b <= CTRL_E and (empty or b == CTRL_C):
            if b == CTRL_C:
                self.send(b"\r\n")
                return self.prompt()
            if self.cont:
                if b == CTRL_D:  # stop entering the compound statement: run it
                    return self.execute_friendly()
                return
            if b == CTRL_A:
                self.send(b"\r\n")
                self.mode = "raw"
                self.send(b"raw REPL; CTRL-B to exit\r\n")
                return self.prompt()
            if b == CTRL_B:
                self.send(b"\r\n")
                self.banner()
                return self.prompt()
            if b == CTRL_D:
                self.send(b"\r\n")
                return self.soft_reset()
            if b == CTRL_E:
                self.send(b"\r\npaste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== ")
                self.state = "paste"
                self.line.clear()
            return
        if b == ord("\r"):
            self.send(b"\r\n")
            if not self.cont and not self.line:
                return self.prompt()
            text = bytes(self.cont + self.line)
            if needs_more(text.decode(errors="replace"), bool(self.cont), bool(self.line)):
                self.cont += self.line + b"\n"
                self.line.clear()
                self.send(b"... ")
                return
            return self.execute_friendly()
        if b in (8, 127):
            if self.line:
                self.line.pop()
                self.send(b"\x08 \x08")
        elif b == 27:
            self.esc = 1
        elif 32 <= b <= 126 or b >= 128:
            self.line.append(b)
            self.send(bytes([b]))

    def execute_friendly(self):
        text = bytes(self.cont + self.line)
        self.run("s", text, self.friendly_done)

    # --- the loop --------------------------------------------------------------------------------
    def serve(self):
        while self.running:
            if self.reboot_at is not None and time.monotonic() >= self.reboot_at:
                self.reboot_at = None
                self.inq.clear()
                self.power_on()
            timeout, take = 0.1, 4096
            if self.line_bps:
                self.refill()
                take = int(self.credit["in"])
                timeout = 0.002
            rl = [self.master] if take > 0 else []
            if self.child:
                rl += [self.child.out, self.child.status]
            can_send = self.out and (not self.line_bps or self.credit["out"] >= 1)
            wl = [self.master] if can_send else []
            try:
                r, w, _ = select.select(rl, wl, [], timeout)
            except InterruptedError:
                continue
            if self.master in r:
                try:
                    data = os.read(self.master, take)
                except (BlockingIOError, OSError):
                    data = b""
                if data:
                    if self.line_bps:
                        self.credit["in"] -= len(data)
                    self.feed(data)
            if self.child and (self.child.out in r or self.child.status in r):
                self.child_events()
            # Input that waited while code ran is handled once the REPL is back.
            self.pump()
            if w:
                self.flush()

    def close(self):
        self.running = False
        if self.child:
            self.child.kill()
            self.child = None
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
        if self.log:
            self.log.close()


_COMPOUND = ("if", "while", "for", "try", "with", "def", "class", "async", "@")


def needs_more(text, in_block, last_line_nonempty):
    """Does the friendly REPL want another line? (MicroPython's mp_repl_continue_with_input)"""
    depth, quote, i = 0, None, 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif text.startswith(quote, i):
                i += len(quote) - 1
                quote = None
        elif c == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
        elif text.startswith('"""', i) or text.startswith("'''", i):
            quote = text[i:i + 3]
            i += 2
        elif c in "\"'":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        i += 1
    if depth > 0 or (quote and len(quote) == 3) or text.rstrip("\n").endswith("\\"):
        return True
    first = text.lstrip().split(None, 1)[0].rstrip(":") if text.strip() else ""
    if in_block or first in _COMPOUND or first.startswith("@"):
        return last_line_nonempty
    return False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flash", help="the board's flash folder (default: a new temporary one, "
                    "deleted at exit)")
    ap.add_argument("--heap", help="the unix port's GC heap, e.g. 128k (-X heapsize)")
    ap.add_argument("--log", help="append everything the board sends to this file")
    ap.add_argument("--flash-kb", type=int, help="flash size os.statvfs reports to REPL code")
    ap.add_argument("--baud", type=int, default=0,
                    help="pace the link like a UART at this rate (default: as fast as a pty)")
    args = ap.parse_args(argv)

    tmp = None
    flash = args.flash
    if not flash:
        tmp = flash = tempfile.mkdtemp(prefix="fakeboard-flash-")
    Path(flash).mkdir(parents=True, exist_ok=True)

    board = FakeBoard(flash, heap=args.heap, log=args.log, flash_kb=args.flash_kb,
                      baud=args.baud)

    def stop(signum, frame):
        board.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(board.path, flush=True)
    print(f"fakeboard: {board.path} is a MicroPython board; flash {board.flash}; Ctrl-C stops",
          file=sys.stderr, flush=True)
    try:
        board.serve()
    finally:
        board.close()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
