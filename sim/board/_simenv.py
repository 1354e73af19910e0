"""Shared state of the simulated board: its environment, its exits and its reset cause.

Private to sim/board/: the fake hardware modules (machine, dht, network) and start.py meet here, so
that a configuration error or a reset looks the same whichever module notices it.
"""

import os
import sys

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

# Set (once, never cleared) by the watchdog thread; start.py reads it to turn the interrupt
# it delivers into exit code 3.
wdt_fired = [False]

_cause = None


def say(msg):
    """One line on stderr, prefixed so it never mixes with the node's own log on stdout."""
    sys.stderr.write("sim: " + msg + "\n")


def die(code, msg):
    """End the simulated board now: a message on stderr, then SystemExit(code).

    SystemExit is a BaseException, so the app's `except Exception` handlers let it through and
    start.py turns it into the process exit code.
    """
    say(msg)
    raise SystemExit(code)


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
    """Leave the cause of this exit for the next start's machine.reset_cause()."""
    try:
        with open(_CAUSE_FILE, "w") as f:
            f.write("%d %s\n" % (cause, cause_name(cause)))
    except OSError as e:
        say("cannot record the reset cause in %s: %s" % (_CAUSE_FILE, e))
