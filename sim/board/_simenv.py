"""Shared state of the simulated board: its environment, its exits, its reset cause, its clock
and the watchdog state that outlives a soft reset.

Private to sim/board/: the fake hardware modules (machine, dht, network, socket, ssl) and _firmware
meet here, so that a configuration error or a reset looks the same whichever module notices it.
"""

import os
import sys
import time

# Exit codes of the simulated board (docs/ARCHITECTURE.md lists them for the tools).
EXIT_EXCEPTION = 1  # main.py raised: the board would drop to the REPL
EXIT_CONFIG = 2  # a SIM_* variable is wrong: the simulator's problem, not the app's
EXIT_WDT = 3
EXIT_RESET = 4  # machine.reset()
EXIT_SOFT_RESET = 5  # machine.soft_reset()
EXIT_INTERRUPT = 130  # Ctrl-C, as a shell reports SIGINT

# machine.reset_cause() values, as on the ESP32 port.
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
_CAUSE_NAMES = {1: "PWRON_RESET", 2: "HARD_RESET", 3: "WDT_RESET", 4: "DEEPSLEEP_RESET",
                5: "SOFT_RESET"}

# The flash folder is the working directory at start; kept absolute so a reset still records
# its cause there if the app changes directory.
FLASH = os.getcwd()
_CAUSE_FILE = FLASH + "/.sim_reset_cause"
# The armed watchdog, "<timeout ms> <last feed ticks_ms>": the task watchdog of the ESP32 cannot
# be stopped and runs on across a soft reset; only a hard reset or a power-on clears it (they
# delete this file: machine.reset(), the watchdog firing, the host powering the board on).
WDT_FILE = FLASH + "/.sim_wdt"

# Set (once, never cleared) by the watchdog thread; _firmware reads it to turn the interrupt
# it delivers into exit code 3.
wdt_fired = [False]

_cause = None

# The SystemExit of a Timer callback that ended the run (machine.reset() in it), once the main
# thread has been interrupted to carry it out; _firmware exits with its code.
callback_exit = [None]

# _firmware holds back notes made while the board's modules load, so that its banner stays the
# first line; flush_notes() prints them after it.
defer = [False]
_notes = []


def say(msg):
    """One line on stderr, prefixed so it never mixes with the node's own log on stdout."""
    sys.stderr.write("sim: " + msg + "\n")


def note(msg):
    if defer[0]:
        _notes.append(msg)
    else:
        say(msg)


def flush_notes():
    defer[0] = False
    for msg in _notes:
        say(msg)
    _notes.clear()


def die(code, msg):
    """End the simulated board now: a message on stderr, then SystemExit(code).

    SystemExit is a BaseException, so the app's `except Exception` handlers let it through and
    _firmware turns it into the process exit code.
    """
    say(msg)
    raise SystemExit(code)


def exit_from_callback(exc):
    """A scheduled callback ended the run. The scheduler prints and drops what a callback
    raises, SystemExit too, where the board's machine.reset() would restart the chip there and
    then: so the main thread is interrupted (SIGINT, as the watchdog does it) and _firmware
    exits with the callback's code. The app sees a KeyboardInterrupt on its way out."""
    callback_exit[0] = exc
    interrupt_main()


def interrupt_main():
    """SIGINT to this process, 50 ms from now, from a background job: system() ignores SIGINT
    in its caller while the shell runs, so it comes after system() has returned."""
    os.system("(sleep 0.05; kill -INT $PPID) >/dev/null 2>&1 &")


def run_thread(fn, args):
    """The body of each of the simulator's own threads (the watchdog, Timer alarms, Wi-Fi
    events): `_thread.start_new_thread(_simenv.run_thread, (fn, args))`. The unix port has no
    GIL and raises a SIGINT's KeyboardInterrupt in whichever thread the kernel gives the
    signal to, any that does not block it (the port cannot block one). On the board Ctrl-C,
    the watchdog and a reset in a Timer callback all stop the app; here that SIGINT must reach
    the main thread (a test run once lost a reset this way: the node ran on past its update's
    trial). So these threads sleep in thread_sleep_ms, which sends such an interrupt on, and
    one that lands anywhere else in them is sent on as the thread ends."""
    try:
        fn(*args)
    except KeyboardInterrupt:
        interrupt_main()


def thread_sleep_ms(ms):
    """time.sleep_ms in a thread of run_thread: a SIGINT that lands here is sent on to the
    process (for the main thread) and the sleep goes on to its end."""
    due = time.ticks_add(time.ticks_ms(), ms)
    while True:
        left = time.ticks_diff(due, time.ticks_ms())
        if left <= 0:
            return
        try:
            time.sleep_ms(left)
        except KeyboardInterrupt:
            interrupt_main()


def interrupted_code():
    """The exit code for a KeyboardInterrupt: the watchdog's, a callback's exit, or Ctrl-C."""
    if wdt_fired[0]:
        return EXIT_WDT
    if callback_exit[0] is not None:
        code = callback_exit[0].args[0] if callback_exit[0].args else 0
        return code if isinstance(code, int) else EXIT_EXCEPTION
    return EXIT_INTERRUPT


def config_error(var, msg):
    die(EXIT_CONFIG, "%s: %s" % (var, msg))


def env(name, default=None):
    value = os.getenv(name)
    return default if value is None or value == "" else value


def cause_name(cause):
    return _CAUSE_NAMES.get(cause, str(cause))


def reset_cause():
    """The cause of the previous exit, read from the flash folder once and then forgotten.

    The file is deleted on first use so that a later start that ends without a reset (a crash,
    Ctrl-C: a power cycle, as far as the board can tell) does not repeat an old cause.
    """
    global _cause
    if _cause is None:
        _cause = PWRON_RESET
        try:
            with open(_CAUSE_FILE) as f:
                _cause = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
        try:
            os.remove(_CAUSE_FILE)
        except OSError:
            pass
    return _cause


def record_cause(cause):
    """Leave the cause of this exit for the next start's machine.reset_cause().

    Every reset but a soft one restarts the chip, and with it the watchdog.
    """
    if cause != SOFT_RESET:
        clear_wdt()
    try:
        with open(_CAUSE_FILE, "w") as f:
            f.write("%d %s\n" % (cause, cause_name(cause)))
    except OSError as e:
        say("cannot record the reset cause in %s: %s" % (_CAUSE_FILE, e))


# ---- the watchdog across soft resets ------------------------------------------------------


def save_wdt(timeout_ms, last_feed_ms):
    # Written on every feed: a soft reset can end the process at any moment (the fake serial
    # board kills it), and the next run must find the last feed. ticks_ms is the host's
    # CLOCK_MONOTONIC, shared by every process of one binary.
    try:
        with open(WDT_FILE, "w") as f:
            f.write("%d %d\n" % (timeout_ms, last_feed_ms))
    except OSError as e:
        say("cannot record the watchdog in %s: %s" % (WDT_FILE, e))


def load_wdt():
    """(timeout ms, last feed ticks_ms) of a watchdog armed before a soft reset, or None."""
    try:
        with open(WDT_FILE) as f:
            timeout_ms, last_ms = (int(x) for x in f.read().split()[:2])
    except (OSError, ValueError):
        return None
    return (timeout_ms, last_ms) if timeout_ms > 0 else None


def clear_wdt():
    try:
        os.remove(WDT_FILE)
    except OSError:
        pass


# ---- the clock ----------------------------------------------------------------------------
# SIM_CLOCK=board: the host runs the board under libfaketime, its offset from the host's clock
# in FAKETIME_TIMESTAMP_FILE (re-read on every call: FAKETIME_NO_CACHE=1). The host writes
# "2000-01-01 now" there at power-on; RTC().datetime(...) rewrites it. SIM_CLOCK=host (or
# unset): the host's own clock, and setting the RTC is only noted.

def clock_mode():
    return "board" if env("SIM_CLOCK") == "board" and env("FAKETIME_TIMESTAMP_FILE") else "host"


def _clock_offset():
    try:
        with open(env("FAKETIME_TIMESTAMP_FILE")) as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def set_clock(unix_s):
    """Move the board's clock to unix_s (libfaketime sees the new offset at its next call)."""
    path = env("FAKETIME_TIMESTAMP_FILE")
    offset = _clock_offset() + unix_s - time.time()
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("%+.3f\n" % offset)
    os.rename(tmp, path)  # atomic: libfaketime never reads half a line


def epoch_s(year, month, day, hours=0, minutes=0, seconds=0):
    """Unix seconds of a UTC date (time.mktime would apply the host's time zone)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    days = era * 146097 + doe - 719468
    return days * 86400 + hours * 3600 + minutes * 60 + seconds


def iso_now():
    t = time.gmtime()
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % t[:6]
