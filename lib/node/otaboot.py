"""An update over MQTT around a reboot: what boot.py does about it at every boot while ota.json
exists (at_boot: the staged stream taken apart and swapped in, trials counted, rollbacks), and
how the app, once it runs, reports how it ended (report).

The phases are node.otaswap's. A trial's boots are counted here, and each one gets a one-shot
timer that resets the board after `ota_trial_s` unless the app has confirmed the update by
then: so a version that sits at the REPL (main.py raised, safe mode), hangs or never connects
is given `ota_trial_boots` boots and no more, then the old one is put back.
Boot-time code: no node.config, no node.board; boot.py imports it only when ota.json exists.
"""

import json
import os

from micropython import const

from node import bootcount
from node.files import CONFIG_PATH, OTA_DIR, OTA_STATE

GUARD_TIMER_ID = 2  # node.safemode blinks from timer 0, node.wdtfeed feeds from timer 1
_MIN_TRIAL_S = const(10)
_DIR = const(0x4000)


def at_boot(counted, reset):
    """boot.py's part when ota.json exists: take a staged update apart and swap it in, finish a
    swap or an undo a reset cut short, count a trial boot (`counted`: not a soft reset), or roll
    back past the limit; `reset()` after each of those but the count. Returns (what to print,
    the ms boot.py's one-shot timer gives this trial boot before it resets the board, or 0):
    boot.py arms it, so that nothing of these modules stays in the heap for it. They leave the
    heap here, so that boot.py names none of them: the names a source file holds stay in RAM."""
    from node import unload

    try:
        return _at_boot(counted, reset)
    finally:
        unload("otaboot", "otafinish", "otaswap")


def _at_boot(counted, reset):
    state = load()
    if state is None:
        return "ota.json is damaged: ignored", 0
    phase = state["phase"]
    target = state.get("target")
    if phase == "staged" and counted:
        # The stream is in and its SHA-256 checked (node.ota): taken apart and swapped in here,
        # where the heap is empty, then a fresh boot, the new version's first.
        import gc

        from node import otafinish

        why = otafinish.finish(state)
        gc.collect()
        said = "%s: %s" % (state["phase"], why) if why else "taken apart and swapped in"
        print("boot.py: update to %s %s (heap free %d bytes); resetting" % (target, said,
                                                                          gc.mem_free()))
        reset()
        return "update to %s: %s" % (target, state["phase"]), 0
    if phase in ("swap", "undo"):
        from node import otaswap  # a reset cut these short: finished, then a fresh boot

        if phase == "swap":
            otaswap.finish_swap(state)
        else:
            otaswap.roll_back(state, state.get("reason"))
        reset()
        return "update to %s: %s finished" % (target, phase), 0
    if phase != "trial" or not counted:
        return "update to %s: %s" % (target, phase), 0
    boots = state.get("boots", 0) + 1
    limit = bootcount.config_int(CONFIG_PATH, "ota_trial_boots", bootcount.ota_trial_boots_default(
        bootcount.safe_mode_boots(CONFIG_PATH)), 1)
    trial_s = bootcount.config_int(CONFIG_PATH, "ota_trial_s", bootcount.DEFAULT_OTA_TRIAL_S,
                                   _MIN_TRIAL_S)
    if boots > limit:
        print("boot.py: update to %s failed its trial: putting %s back" % (target,
                                                                          state.get("from")))
        from node import otaswap

        otaswap.roll_back(state, "%s did not run stably with a broker connection within %d "
                                 "boots of %d s (ota_trial_boots, ota_trial_s)"
                          % (target, limit, trial_s))
        reset()
        return "update to %s undone" % target, 0
    state["boots"] = boots
    save(state)
    return "update to %s on trial: boot %d of %d, %d s to run stably with a broker connection" \
        % (target, boots, limit, trial_s), trial_s * 1000


async def report(node):
    """The app's part when ota.json exists: once the node can say so, tell the broker how the
    update ended. A version on trial is confirmed once it has run `stable_after_s` with every
    task alive and a broker connection, and the word is out. Unloads itself at the end."""
    import asyncio  # here, not at the top: boot.py imports this module

    from node import board, otastate, unload
    from node.log import log

    state = load()
    phase = state["phase"] if state is not None else None
    if phase == "trial":
        await asyncio.sleep(node.cfg["stable_after_s"])
        while node.supervisor.stale() or not node.publisher.connected:
            await asyncio.sleep(1)
        outcome, reason = "applied", "runs stably with a broker connection"
    elif phase in ("rolled_back", "refused", "failed"):  # undone, or not swapped in at boot
        outcome, reason = phase, state.get("reason")
    else:
        log("ota", "ota.json says %s: left to boot.py" % phase)
        unload("otaboot")
        return
    offer = {"id": state.get("id"), "version": state.get("target")}
    while not otastate.say(node, outcome, offer, reason):
        await asyncio.sleep(1)
    if outcome == "applied":
        board.timer(GUARD_TIMER_ID).deinit()
    done()
    log("ota", "%s: %s (%s)" % (outcome, state.get("target"), reason))
    unload("otaboot", "otastate")  # the caller keeps no reference


# --- ota.json and the flash steps the update's boot-time modules share (node.otaswap,
# node.otafinish); here, so that a trial boot and its report load no other module.
def done():
    """The update is over (confirmed, or its end reported): ota.json goes first, as a trial
    without its backup could not be undone, then ota/ with the backup."""
    os.remove(OTA_STATE)
    rmtree(OTA_DIR)


def load():
    """ota.json as a dict with its "phase", or None when there is none (or it is damaged)."""
    try:
        with open(OTA_STATE) as f:
            state = json.load(f)
    except (OSError, ValueError, UnicodeError):
        return None
    return state if isinstance(state, dict) and isinstance(state.get("phase"), str) else None


def save(state):
    tmp = OTA_STATE + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.rename(tmp, OTA_STATE)  # atomic on littlefs: the old state or the new one, never half


def exists(path):
    try:
        os.stat(path)
    except OSError:
        return False
    return True


def makedirs(path):
    """Create the folders of the file `path` that do not exist yet."""
    cut = path.find("/")
    while cut > 0:
        if not exists(path[:cut]):
            os.mkdir(path[:cut])
        cut = path.find("/", cut + 1)


def rmtree(path):
    if not exists(path):
        return
    for name, kind in [(e[0], e[1]) for e in os.ilistdir(path)]:
        if kind & _DIR:
            rmtree(path + "/" + name)
        else:
            os.remove(path + "/" + name)
    os.rmdir(path)
