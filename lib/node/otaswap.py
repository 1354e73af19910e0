"""An update over MQTT on flash: the staged files swapped in (main.py last, the old ones kept
aside), undone, and confirmed; and what boot.py does about an update at every boot.

node.ota stages every file under ota/new/ and writes ota/journal: one line per file in the order
of the swap, "M <path>" a file the new version no longer has (moved aside), "R <path>" one it
replaces (the old copy moved aside), "A <path>" one it adds. ota.json says how far it got:
- "swap": the files are being swapped in. Every step is a rename (atomic on littlefs) that is
  skipped when it is done already, so a reset in the middle is finished by the next boot;
- "trial": the new version runs. boot.py counts its boots, and on each arms a one-shot timer
  that resets the board after `ota_trial_s` unless the app has confirmed the update by then
  (report(): a run of `stable_after_s` with every task alive and a broker connection). A version
  that sits at the REPL (main.py raised, safe mode) or never connects is thus given its boots
  and no more: past `ota_trial_boots`,
- "undo": the files moved aside go back and the added ones go, again step by step, then
- "rolled_back": the old version runs and reports it once it is connected.
Boot-time code: no node.config, no node.board. boot.py imports it only when ota.json exists.
"""

import json
import os

from node import bootcount
from node.files import BOOT_PATH, CONFIG_PATH, OTA_DIR, OTA_STATE

STAGE = OTA_DIR + "/new/"
BACKUP = OTA_DIR + "/old/"
JOURNAL = OTA_DIR + "/journal"
GUARD_TIMER_ID = 2  # node.safemode blinks from timer 0, node.wdtfeed feeds from timer 1
_DIR = 0x4000
_MIN_TRIAL_S = 10


def exists(path):
    try:
        os.stat(path)
    except OSError:
        return False
    return True


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


def _journal():
    """(op, path) for each line of the journal, in the order of the swap."""
    with open(JOURNAL) as f:
        for line in f:
            if len(line) > 2:
                yield line[0], line[2:].rstrip("\n")


def _put_aside(path):
    if exists(path) and not exists(BACKUP + path):
        makedirs(BACKUP + path)
        os.rename(path, BACKUP + path)


def install():
    """Swap the staged files in, in the journal's order (main.py last); safe to run again."""
    for op, path in _journal():
        if op == "M":
            _put_aside(path)
        elif exists(STAGE + path):  # not swapped in yet
            if op == "R":
                _put_aside(path)
            makedirs(path)
            os.rename(STAGE + path, path)


def undo():
    """Put back what install() moved aside and remove what it added; safe to run again."""
    for op, path in reversed(list(_journal())):
        if op == "A":
            if exists(path):
                os.remove(path)
        elif exists(BACKUP + path):  # not put back yet
            os.rename(BACKUP + path, path)


def swap(state):
    """The receiver's last step, the journal written: from here a reset finishes the swap."""
    state["phase"] = "swap"
    save(state)
    install()
    _start_trial(state)


def _start_trial(state):
    rmtree(STAGE[:-1])  # only empty folders are left in it
    state["phase"] = "trial"
    state["boots"] = 0
    save(state)
    bootcount.mark_stable(BOOT_PATH)  # the new version gets its own full count of tries


def roll_back(state, reason):
    state["phase"] = "undo"
    state["reason"] = reason
    save(state)
    undo()
    state["phase"] = "rolled_back"
    save(state)
    rmtree(OTA_DIR)
    bootcount.mark_stable(BOOT_PATH)  # the old version starts afresh too


def at_boot(counted, timer, reset):
    """boot.py's part when ota.json exists: finish a swap or an undo a reset cut short, count a
    trial boot (`counted`: not a soft reset) and arm its timer, or roll back past the limit and
    reset. Returns what to print."""
    state = load()
    if state is None:
        return "ota.json is damaged: ignored"
    phase = state["phase"]
    target = state.get("target")
    if phase == "swap":
        install()
        _start_trial(state)
        phase = "trial"
    if phase == "undo":
        roll_back(state, state.get("reason"))
        reset()
        return "update to %s undone" % target
    if phase != "trial" or not counted:
        return "update to %s: %s" % (target, phase)
    boots = state.get("boots", 0) + 1
    limit = bootcount.config_int(CONFIG_PATH, "ota_trial_boots",
                                 bootcount.DEFAULT_OTA_TRIAL_BOOTS, 1)
    trial_s = bootcount.config_int(CONFIG_PATH, "ota_trial_s", bootcount.DEFAULT_OTA_TRIAL_S,
                                   _MIN_TRIAL_S)
    if boots > limit:
        print("boot.py: update to %s failed its trial: putting %s back" % (target,
                                                                          state.get("from")))
        roll_back(state, "%s did not run stably with a broker connection within %d boots of "
                         "%d s (ota_trial_boots, ota_trial_s)" % (target, limit, trial_s))
        reset()
        return "update to %s undone" % target
    state["boots"] = boots
    save(state)
    timer.init(mode=timer.ONE_SHOT, period=trial_s * 1000, callback=lambda t: reset())
    return "update to %s on trial: boot %d of %d, %d s to run stably with a broker connection" \
        % (target, boots, limit, trial_s)


def confirm():
    """The new version has run well: the update is done, its backup goes."""
    os.remove(OTA_STATE)  # first: a trial without its backup could not be undone
    rmtree(OTA_DIR)


def clear():
    """The rollback has been reported."""
    os.remove(OTA_STATE)
    rmtree(OTA_DIR)


async def report(node):
    """The app's part when ota.json exists: once the node can say so, tell the broker how the
    update ended. A version on trial is confirmed once it has run `stable_after_s` with every
    task alive and a broker connection, and the word is out."""
    import asyncio  # here, not at the top: boot.py imports this module

    from node import VERSION, board
    from node.log import log
    from node.payload import ota_state

    state = load()
    if state is None:
        return
    phase = state["phase"]
    if phase == "trial":
        await asyncio.sleep(node.cfg["stable_after_s"])
        while node.supervisor.stale() or not node.publisher.connected:
            await asyncio.sleep(1)
        outcome, reason = "applied", "runs stably with a broker connection"
    elif phase == "rolled_back":
        outcome, reason = "rolled_back", state.get("reason")
    else:
        log("ota", "ota.json says %s, which boot.py finishes: left alone" % phase)
        return
    body = ota_state(outcome, state.get("id"), VERSION, state.get("target"), reason)
    while not node.publisher.publish_now(node.topics.ota.encode(), body, retain=True):
        await asyncio.sleep(1)
    if outcome == "applied":
        board.timer(GUARD_TIMER_ID).deinit()
        confirm()
    else:
        clear()
    log("ota", "%s: %s (%s)" % (outcome, state.get("target"), reason))
