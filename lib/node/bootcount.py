"""The boot counter kept in flash, and boot-loop protection.

boot.json holds {"boot": B, "unstable": K}. boot.py numbers every boot in B, and counts in K
each one after a power-on, a watchdog or a machine.reset(); the app clears K once it has run
well for `stable_after_s` (or is stopped at the REPL on purpose). So K is the number of boots in
a row that ended in a crash, a watchdog or any other reset before the app was stable, and past
`safe_mode_boots` boot.py puts the board in safe mode. A soft reset is not counted in K: it is
asked for (Ctrl-D, and mpremote's raw REPL before every command, where main.py does not even
run), and an app that fails after one still ends in a reset that counts (the crash handler's
machine.reset(), the watchdog).
Kept small and free of node.config: boot.py runs it on every boot, before anything else.
"""

import json

DEFAULT_SAFE_MODE_BOOTS = 5
DEFAULT_WATCHDOG_S = 30
# An update over MQTT is undone after this many boots without a stable, connected run, each
# given this long (node.otaswap reads both at boot, as boot.py reads the two above).
DEFAULT_OTA_TRIAL_BOOTS = 3
DEFAULT_OTA_TRIAL_S = 300
# Set by boot.py when the app must not start; main.py reads it (the module stays imported).
safe_mode = None


def _load(path):
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError, UnicodeError):  # missing, or damaged by a reset mid-write
        return 0, 0
    if not isinstance(state, dict):
        return 0, 0
    return _count(state.get("boot")), _count(state.get("unstable"))


def _count(value):
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _save(path, boot, unstable):
    with open(path, "w") as f:
        json.dump({"boot": boot, "unstable": unstable}, f)


def read(path):
    """The current boot number; 0 when the file is missing or damaged."""
    return _load(path)[0]


def increment(path, counts=True):
    """Number this boot and, if it `counts`, count it as unstable until the app says otherwise;
    returns (boot, unstable).

    Every boot gets the next number, soft resets included: payloads carry it, and seq starts
    again at each start of the app. A damaged file restarts both counts.
    """
    boot, unstable_boots = _load(path)
    boot += 1
    if counts:
        unstable_boots += 1
    _save(path, boot, unstable_boots)
    return boot, unstable_boots


def mark_stable(path):
    """The app has run well: the boot-loop count starts again from zero."""
    boot, unstable_boots = _load(path)
    if unstable_boots:
        _save(path, boot, 0)


async def watch_stability(path, stable_after_s, supervisor):
    """The task that clears the count once the app has run `stable_after_s` with every task
    alive (`supervisor.stale()` empty): then this boot was a good one."""
    import asyncio  # here, not at the top: boot.py imports this module on every boot

    from node.log import log

    await asyncio.sleep(stable_after_s)
    while supervisor.stale():
        await asyncio.sleep(1)
    mark_stable(path)
    log("main", "running stably: boot-loop count cleared")


def safe_mode_boots(config_path):
    """`safe_mode_boots` from config.json, or the default when it cannot be read.

    Read directly rather than through node.config: a config that fails validation must not
    switch the protection off, and boot.py has to stay cheap.
    """
    return config_int(config_path, "safe_mode_boots", DEFAULT_SAFE_MODE_BOOTS, 2)


def watchdog_s(config_path):
    """`watchdog_s` from config.json (what the app armed the watchdog with), or its default."""
    return config_int(config_path, "watchdog_s", DEFAULT_WATCHDOG_S, 5)


def ota_trial_boots_default(safe_mode_boots):
    """An update's trial boots unless config.json says: fewer than safe_mode_boots, so that
    the rollback comes before safe mode."""
    return min(DEFAULT_OTA_TRIAL_BOOTS, safe_mode_boots - 1)


def config_int(config_path, key, default, lo):
    """config.json's integer `key` when it is one and at least `lo`, else `default`."""
    try:
        with open(config_path) as f:
            value = json.load(f).get(key)
    except (OSError, ValueError, UnicodeError, AttributeError):
        return default
    if isinstance(value, int) and not isinstance(value, bool) and value >= lo:
        return value
    return default
