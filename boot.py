# boot.py: runs first on every boot, soft resets included. Count the boot, see an update over
# MQTT through (swap a staged one in, count its trial, roll it back) and decide on safe mode,
# nothing more: an error here must never keep main.py or the REPL from running. Every name in
# this file stays in RAM (the firmware compiles it): what an update needs is in node.otaboot.
try:
    import os

    import machine
    from node import bootcount

    # mpremote soft-resets into the raw REPL for every command (ls, cat, cp, make deploy), and
    # boot.py runs each time while main.py does not: such a boot is not a failed one.
    _soft = machine.reset_cause() == machine.SOFT_RESET
    _boot, _unstable = bootcount.increment("boot.json", not _soft)
    _limit = bootcount.safe_mode_boots("config.json")
    print("boot.py: boot %d (%d in a row without a stable run%s)"
          % (_boot, _unstable, "; a soft reset, not counted" if _soft else ""))
    try:
        os.stat("ota.json")  # only while an update is staged, swapped in, on trial, or undone
    except OSError:
        pass  # the usual boot: nothing of an update is loaded
    else:
        try:
            from node import otaboot  # which unloads itself and what it used

            # (what to say, the ms this trial boot gets before the board resets, or 0)
            _ota = otaboot.at_boot(not _soft, machine.reset)
            print("boot.py: %s" % _ota[0])
            if _ota[1]:
                # The trial's deadline: the board resets unless the app confirms it first.
                machine.Timer(otaboot.GUARD_TIMER_ID).init(
                    mode=machine.Timer.ONE_SHOT, period=_ota[1],
                    callback=lambda t: machine.reset())
            del otaboot, _ota
        except Exception as e:  # noqa: BLE001 - whatever it is, the app must still start
            print("boot.py: update: %r" % (e,))
    if _unstable > _limit:
        # The app crashed or reset the board before running stably, _limit times in a row.
        bootcount.safe_mode = "%d boots in a row ended before the app ran stably" % (_unstable - 1)
        print("boot.py: safe mode: " + bootcount.safe_mode)
except (ImportError, OSError) as e:  # lib/ missing mid-deploy, or flash full: main.py decides
    print("boot.py: cannot count boots:", e)
try:
    import machine

    if machine.reset_cause() == machine.SOFT_RESET:
        # A watchdog the app armed survives a soft reset (mpremote, make deploy, Ctrl-D):
        # fed from a timer here until the app's supervisor takes over, or for as long as the
        # REPL is in use.
        from node import bootcount, wdtfeed

        _wdt_s = bootcount.watchdog_s("config.json")
        wdtfeed.start(machine.WDT(timeout=_wdt_s * 1000), machine.Timer(wdtfeed.TIMER_ID),
                      _wdt_s * 250)
        print("boot.py: watchdog fed from a timer until the app runs")
except (ImportError, OSError) as e:
    print("boot.py: cannot feed the watchdog:", e)
