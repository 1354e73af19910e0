"""The simulated board's firmware, after start.py has set the module path: import the simulated
hardware modules, set the qstr pools as the board's, check every SIM_* input, then run boot.py
and main.py; main() returns the exit code (start.py's docstring lists them).
"""

import gc
import sys
import time

import _simenv

_ballast = None  # what the host added to HEAP beyond what _pools gives back


def _import_board(heap_at_start):
    """Import the simulated hardware modules; return the heap they take (with this module's and
    _simenv's) since `heap_at_start`, in bytes.

    On the board these are built in or frozen and cost no heap; here they are ordinary
    modules, and the banner says how much HEAP to add to leave the app the same room.
    """
    import socket  # noqa: F401
    import ssl  # noqa: F401

    import _audio  # noqa: F401
    import dht  # noqa: F401
    import machine  # noqa: F401
    import network  # noqa: F401

    gc.collect()
    return gc.mem_alloc() - heap_at_start


def _board_heap(heap_at_start, allowance):
    """Import the simulated modules and set the qstr pools as the board's (sim/board/_pools.py),
    giving their heap back (of `allowance`, what the host added to HEAP); return the banner's
    words on the heap."""
    global _ballast
    modules = _import_board(heap_at_start)
    gc.collect()
    before = gc.mem_alloc()
    import _pools

    words, given = _pools.pad(modules, allowance)
    del sys.modules["_pools"], _pools  # its code is native, outside the heap; its names stay
    gc.collect()
    keep = allowance - given - (gc.mem_alloc() - before)
    _ballast = bytearray(keep) if keep > 0 else None  # one block, made now and kept
    if keep < 0 and allowance:
        words += ": %d bytes more than the %d added to HEAP for them" % (-keep, allowance)
    return words


def _check_config():
    """Read every SIM_* input now, so a wrong one stops the run before the app starts."""
    import socket
    import ssl

    import _audio
    import dht
    import machine
    import network

    _audio.spec()
    dht.check()
    machine.unique_id()
    network._sim_rssi()
    network._wifi_mode()
    socket._dns_mode()
    ssl._check_env()


def _clock_line():
    if _simenv.clock_mode() == "board":
        what = "the board's RTC (2000-01-01 at power-on, kept across resets)"
    else:
        what = "the host's clock" + (" (%s)" % _simenv.env("SIM_CLOCK_NOTE")
                                     if _simenv.env("SIM_CLOCK_NOTE") else "")
    _simenv.say("clock: %s, now %s" % (what, _simenv.iso_now()))


def _run(name, namespace):
    try:
        with open(name) as f:
            source = f.read()
    except OSError:
        return False
    namespace["__file__"] = name
    exec(compile(source, name, "exec"), namespace)
    return True


def _watchdog_armed():
    import machine

    return machine._wdt[1] > 0


def _exit_code(exc):
    code = exc.args[0] if exc.args else None
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    _simenv.say(str(code))
    return 1


def main(heap_at_start, allowance):
    """Boot the board; the exit code. `heap_at_start`: gc.mem_alloc() as start.py began."""
    _simenv.defer[0] = True
    ver = ".".join(str(v) for v in sys.implementation.version[:3])
    cause = _simenv.reset_cause()
    _simenv.say("MicroPython %s simulated ESP32, flash=%s, reset cause %s; %s"
                % (ver, _simenv.FLASH, _simenv.cause_name(cause),
                   _board_heap(heap_at_start, allowance)))
    _simenv.flush_notes()
    _clock_line()
    namespace = {"__name__": "__main__"}
    try:
        _check_config()
        try:
            _run("boot.py", namespace)
        except Exception as e:  # noqa: BLE001
            # The board prints boot.py's error and still runs main.py.
            sys.print_exception(e, sys.stderr)
        if not _run("main.py", namespace):
            _simenv.say("no main.py in %s: the board would sit at the REPL" % _simenv.FLASH)
            return _simenv.EXIT_EXCEPTION
    except KeyboardInterrupt:
        # The watchdog's interrupt, or Ctrl-C (quietly, as a shell user expects).
        return _simenv.interrupted_code()
    except SystemExit as e:
        return _simenv.EXIT_WDT if _simenv.wdt_fired[0] else _exit_code(e)
    except Exception as e:  # noqa: BLE001 - whatever main.py raised is reported below
        if _simenv.wdt_fired[0]:
            return _simenv.EXIT_WDT
        sys.print_exception(e, sys.stderr)
        import machine  # a one-shot Timer (boot.py's update trial) fires at the REPL too

        code = machine.wait_for_one_shot()
        if code is not None:
            return code
        if _watchdog_armed():
            # At the REPL nothing feeds it: the board's next boot follows a watchdog reset.
            _simenv.record_cause(_simenv.WDT_RESET)
            _simenv.say("the armed watchdog would then reset the board: next reset cause "
                        "WDT_RESET")
        _simenv.say("main.py stopped: %s: %s" % (type(e).__name__, e))
        return _simenv.EXIT_EXCEPTION
    if _simenv.wdt_fired[0]:
        return _simenv.EXIT_WDT
    import machine  # a one-shot Timer (boot.py's update trial) fires at the REPL too

    code = machine.wait_for_one_shot()
    if code is not None:
        return code
    if _watchdog_armed():
        _simenv.say("main.py returned with the watchdog running: waiting for it, as the board "
                    "would at the REPL")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            return _simenv.interrupted_code()
    _simenv.say("main.py returned: the board would now sit at the REPL")
    return 0

