"""An update over MQTT on flash: the staged files swapped in (main.py last, the old ones kept
aside), undone, and confirmed (node.otaboot decides when, node.otafinish stages).

node.otafinish takes the files out of the stream as ota/new/<n>, n their place in the update's
list, and writes ota/journal: one line per file in the order of the swap, "M <path>" a file the
new version no longer has (moved aside), "R <n> <path>" one it replaces (the old copy moved
aside), "A <n> <path>" one it adds. ota.json says how far the update got:
- "staged": the stream is in and checked (node.ota); the next boot takes it apart
  (node.otafinish), or says why not ("failed", with the reason, for the app to report);
- "swap": the files are being swapped in. Every step is a rename (atomic on littlefs) that is
  skipped when it is done already, so a reset in the middle is finished by the next boot;
- "trial": the new version runs (node.otaboot counts its boots and times them), until it is
  confirmed and the backup goes, or until it has had its boots:
- "undo": the files moved aside go back and the added ones go, again step by step, then
- "rolled_back": the old version runs and reports it once it is connected.
Boot-time code: no node.config, no node.board.
"""

import os

from node import bootcount
from node.files import BOOT_PATH, OTA_DIR, OTA_STREAM
from node.otaboot import exists, makedirs, rmtree, save

JOURNAL = OTA_DIR + "/journal"
STAGE = OTA_DIR + "/new/"  # the files taken out of the stream, by their number in the list
BACKUP = OTA_DIR + "/old/"  # the files they replace, under their own paths


def _journal():
    """(op, staged file or None, path) for each line of the journal, in the swap's order."""
    with open(JOURNAL) as f:
        for line in f:
            parts = line.rstrip("\n").split(" ")
            if len(parts) == 3:
                yield parts[0], STAGE + parts[1], parts[2]
            elif len(parts) == 2:
                yield parts[0], None, parts[1]


def _put_aside(path):
    if exists(path) and not exists(BACKUP + path):
        makedirs(BACKUP + path)
        os.rename(path, BACKUP + path)


def install():
    """Swap the staged files in, in the journal's order (main.py last); safe to run again."""
    for op, staged, path in _journal():
        if op == "M":
            _put_aside(path)
        elif exists(staged):  # not swapped in yet
            if op == "R":
                _put_aside(path)
            makedirs(path)
            os.rename(staged, path)


def undo():
    """Put back what install() moved aside and remove what it added; safe to run again."""
    for op, _staged, path in reversed(list(_journal())):
        if op == "A":
            if exists(path):
                os.remove(path)
        elif exists(BACKUP + path):  # not put back yet
            os.rename(BACKUP + path, path)


def finish_swap(state):
    """The swap ota.json records ("swap"), done or finished after a reset cut it short: the
    trial starts (node.otafinish, then node.otaboot after a reset)."""
    install()
    _start_trial(state)


def _start_trial(state):
    rmtree(STAGE[:-1])  # empty by now
    if exists(OTA_STREAM):  # a reset came between the swap recorded and the stream's removal
        os.remove(OTA_STREAM)
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
