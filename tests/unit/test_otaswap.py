"""node.otaswap and node.otaboot under the unix port: the swap and its undo survive a reset at
every step (the next boot finishes what was cut short), trial boots are counted and given
their time (boot.py's timer: tests/e2e/test_ota.py), and past the limit the old version is
put back by itself.

A reset is played by an `os` whose k-th change of the flash (rename, remove, mkdir, rmdir)
raises instead: what was done before it stays, as on littlefs, where each is atomic.
"""

import json

import pytest

from tests.conftest import REPO

OLD = {"boot.py": "old boot", "main.py": "old main", "lib/node/a.py": "old a",
       "lib/node/gone.mpy": "old gone", "config.json": '{"ota_trial_boots": 2, '
                                                      '"ota_trial_s": 30}'}
NEW = {"boot.py": "new boot", "main.py": "new main", "lib/node/a.mpy": "new a",
       "lib/pkg/b.mpy": "new b"}
# The list's order numbers the staged files (ota/new/<n>), as node.otacheck writes it.
LIST = sorted(NEW)
JOURNAL = ["M lib/node/a.py", "M lib/node/gone.mpy"] + [
    f"{'R' if p in OLD else 'A'} {n} {p}" for n, p in enumerate(LIST) if p != "main.py"] + [
    f"R {LIST.index('main.py')} main.py"]
STATE = {"id": "u1", "target": "2.0", "from": "1.0"}

_PRELUDE = """
import json, os, sys
import node
from node import otaboot, otaswap

node.unload = lambda *names: None  # the modules stay, with the os a test gives them


def swap(state):
    # node.otafinish's last steps once the files are staged and the journal written
    state["phase"] = "swap"
    otaboot.save(state)
    otaswap.finish_swap(state)

class PowerCut(Exception):
    pass

class CutOs:
    # os, but the k-th change of the flash raises (None: never)
    def __init__(self, k):
        self.k = k
        self.n = 0

    def _change(self):
        self.n += 1
        if self.k is not None and self.n > self.k:
            raise PowerCut()

    def rename(self, a, b):
        self._change(); os.rename(a, b)

    def remove(self, p):
        self._change(); os.remove(p)

    def mkdir(self, p):
        self._change(); os.mkdir(p)

    def rmdir(self, p):
        self._change(); os.rmdir(p)

    def stat(self, p):
        return os.stat(p)

    def ilistdir(self, p):
        return os.ilistdir(p)

def show(said):
    # boot.py arms its one-shot timer when at_boot gives it a period
    if said[1]:
        print("TIMER", said[1])
    return said[0]

RESETS = []
def reset():
    print("RESET")
    RESETS.append(1)

def cut(k, fn, *args):
    cutter = CutOs(k)
    otaswap.os = otaboot.os = cutter
    try:
        fn(*args)
        print("DONE", cutter.n)
    except PowerCut:
        print("CUT", k)
    finally:
        otaswap.os = otaboot.os = os
"""


def write(root, files):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def tree(root, under=""):
    base = root / under
    if not base.exists():
        return {}
    return {str(p.relative_to(base)): p.read_text() for p in sorted(base.rglob("*"))
            if p.is_file()}


def app(root):
    return {k: v for k, v in tree(root).items()
            if not k.startswith(("ota", "boot.json", "config.json"))}


def staged(tmp_path, name="flash"):
    """A flash folder as node.ota leaves it: the old app, the new one staged, the journal."""
    root = tmp_path / name
    write(root, OLD)
    write(root / "ota" / "new", {str(n): NEW[p] for n, p in enumerate(LIST)})
    (root / "ota" / "journal").write_text("\n".join(JOURNAL) + "\n")
    return root


NEW_APP = dict(NEW)
OLD_APP = {k: v for k, v in OLD.items() if k != "config.json"}


def test_a_swap_cut_at_any_step_is_finished_by_the_next_boot(mpy, tmp_path):
    total = None
    k = 0
    while total is None or k <= total:
        root = staged(tmp_path, f"flash{k}")
        out = mpy(_PRELUDE + f"""
cut({k}, swap, {STATE!r})
for _ in range(2):
    if not otaboot.exists("ota.json"):  # boot.py's test
        break
    said = show(otaboot.at_boot(True, reset))  # a swap finished, then a reset
    print(said)
    if "on trial" in said:
        break
""", cwd=root).stdout
        if "DONE" in out:
            total = int(out.split("DONE ")[1].split()[0])
        if k == 0:  # cut before the swap was recorded: the old version runs on, untouched
            assert app(root) == OLD_APP and not (root / "ota.json").exists(), out
            k += 1
            continue
        assert app(root) == NEW_APP, (k, out)
        assert tree(root, "ota/old") == OLD_APP, (k, out)
        state = json.loads((root / "ota.json").read_text())
        assert state == {**STATE, "phase": "trial", "boots": 1}, (k, out)
        assert "TIMER 30000" in out, out
        assert "update to 2.0 on trial: boot 1 of 2, 30 s to run stably" in out
        assert not (root / "ota" / "new").exists()
        k += 1
    assert total > len(JOURNAL), "each file is at least one change"


def _swapped(tmp_path, name):
    root = staged(tmp_path, name)
    (root / "boot.json").write_text('{"boot": 7, "unstable": 3}')
    return root


def test_a_rollback_cut_at_any_step_is_finished_by_the_next_boot(mpy, tmp_path):
    total = None
    k = 0
    while total is None or k <= total:
        root = _swapped(tmp_path, f"flash{k}")
        out = mpy(_PRELUDE + f"""
swap({STATE!r})
for _ in range(2):
    show(otaboot.at_boot(True, reset))
cut({k}, otaboot.at_boot, True, reset)
RESETS.clear()
print(show(otaboot.at_boot(True, reset)))
""", cwd=root).stdout
        if "DONE" in out:
            total = int(out.split("DONE ")[1].split()[0])
        assert app(root) == OLD_APP, (k, out)
        # What a cut leaves of ota/ (the journal) goes when the rollback is reported.
        assert tree(root, "ota/old") == {} and tree(root, "ota/new") == {}, (k, out)
        state = json.loads((root / "ota.json").read_text())
        assert state["phase"] == "rolled_back", (k, out)
        assert state["reason"] == ("2.0 did not run stably with a broker connection within 2 "
                                   "boots of 30 s (ota_trial_boots, ota_trial_s)")
        assert "putting 1.0 back" in out
        assert json.loads((root / "boot.json").read_text())["unstable"] == 0
        k += 1
    assert total > len(JOURNAL)


def test_trial_boots_are_counted_timed_and_soft_resets_are_not(mpy, tmp_path):
    root = _swapped(tmp_path, "flash")
    out = mpy(_PRELUDE + f"""
swap({STATE!r})
print(show(otaboot.at_boot(True, reset)))
print(show(otaboot.at_boot(False, reset)))
print(json.load(open("ota.json"))["boots"])
print(show(otaboot.at_boot(True, reset)))
print(len(RESETS))
print(show(otaboot.at_boot(True, reset)))
print(len(RESETS))
print(show(otaboot.at_boot(True, reset)))
""", cwd=root).stdout.splitlines()
    assert out == [
        "TIMER 30000",
        "update to 2.0 on trial: boot 1 of 2, 30 s to run stably with a broker connection",
        "update to 2.0: trial",  # a soft reset: not counted, no timer
        "1",
        "TIMER 30000",
        "update to 2.0 on trial: boot 2 of 2, 30 s to run stably with a broker connection",
        "0",
        "boot.py: update to 2.0 failed its trial: putting 1.0 back",
        "RESET",
        "update to 2.0 undone",
        "1",
        "update to 2.0: rolled_back",  # the old version reports it (report())
    ]
    assert app(root) == OLD_APP


def test_confirm_drops_the_state_then_the_backup(mpy, tmp_path):
    root = _swapped(tmp_path, "flash")
    out = mpy(_PRELUDE + f"""
swap({STATE!r})
cut(1, otaboot.done)
print(otaboot.load())
otaboot.rmtree("ota")
""", cwd=root).stdout
    # Cut after the state went: the next boot sees no update (never a trial without backup).
    assert out.split() == ["CUT", "1", "None"]
    assert app(root) == NEW_APP


@pytest.mark.parametrize("text", ["", "{", "[]", '{"phase": 3}'])
def test_a_damaged_state_is_ignored(mpy, tmp_path, text):
    root = staged(tmp_path)
    (root / "ota.json").write_text(text)
    out = mpy(_PRELUDE + "print(show(otaboot.at_boot(True, reset)))", cwd=root).stdout
    assert out.strip() == "ota.json is damaged: ignored"
    assert app(root) == OLD_APP


def test_trial_limits_fall_back_to_their_defaults(mpy, tmp_path):
    root = _swapped(tmp_path, "flash")
    (root / "config.json").write_text('{"ota_trial_boots": "x", "ota_trial_s": 3}')
    out = mpy(_PRELUDE + f"""
swap({STATE!r})
print(show(otaboot.at_boot(True, reset)))
""", cwd=root).stdout
    assert "boot 1 of 3, 300 s" in out and "TIMER 300000" in out


def _stream_staged(tmp_path, name):
    """A flash folder as node.ota leaves it when the stream is in: ota/stream.bin (the list,
    then the files) and ota.json "staged"."""
    from tools import ota

    root = tmp_path / name
    write(root, OLD)
    u = ota.make_update({"version": "2.0", "arch": "test"}, [(p, NEW[p].encode()) for p in LIST])
    (root / "ota").mkdir()
    (root / "ota" / "stream.bin").write_bytes(u.stream)
    (root / "ota.json").write_text(json.dumps({
        **STATE, "phase": "staged", "files": len(LIST), "bytes": u.size,
        "list_bytes": len(u.listing)}))
    return root


def test_a_staged_update_cut_at_any_step_at_boot_is_taken_apart_again(mpy, tmp_path):
    total = None
    k = 0
    while total is None or k <= total:
        root = _stream_staged(tmp_path, f"flash{k}")
        out = mpy(_PRELUDE + f"""
from node import otafinish
cutter_os = CutOs({k})
otafinish.os = otaswap.os = otaboot.os = cutter_os
state = otaboot.load()
try:
    otafinish.finish(state)
    print("DONE", cutter_os.n)
except PowerCut:
    print("CUT", {k})
otafinish.os = otaswap.os = otaboot.os = os
for _ in range(3):  # the boots after the cut: finished, reset, then the trial's first
    said = show(otaboot.at_boot(True, reset))
    print(said)
    if "on trial" in said:
        break
""", cwd=root).stdout
        if "DONE" in out:
            total = int(out.split("DONE ")[1].split()[0])
        assert app(root) == NEW_APP, (k, out)
        assert tree(root, "ota/old") == OLD_APP, (k, out)
        assert not (root / "ota" / "stream.bin").exists() and not (root / "ota" / "new").exists()
        assert json.loads((root / "ota.json").read_text())["phase"] == "trial", (k, out)
        assert "on trial: boot 1 of 2" in out, (k, out)
        k += 1
    assert total > 2 * len(LIST), "each file is a change when taken out and when swapped in"


def test_how_an_update_ended_at_boot_is_reported_once_connected(mpy, tmp_path):
    root = tmp_path / "flash"
    write(root, OLD)
    (root / "ota").mkdir()
    (root / "ota.json").write_text(json.dumps({**STATE, "phase": "refused",
                                               "reason": "x.txt: not a plain path"}))
    out = mpy("""
import asyncio
from node import otaboot
from node.payload import Topics

class Publisher:
    connected = True
    def publish_now(self, topic, body, retain=False):
        print("PUB", topic.decode(), body.decode(), retain)
        return True

class Node:
    topics = Topics("nodes", "n1")
    publisher = Publisher()
    cfg = {"stable_after_s": 5}

asyncio.run(otaboot.report(Node()))
""", cwd=root, path=[REPO / "sim" / "board"]).stdout
    pub = [line for line in out.splitlines() if line.startswith("PUB ")]
    assert len(pub) == 1 and pub[0].startswith("PUB nodes/n1/ota {") and pub[0].endswith(" True")
    said = json.loads(pub[0].split(" ", 2)[2].rsplit(" ", 1)[0])
    assert said == {"state": "refused", "id": "u1", "version": "0.1.0", "target": "2.0",
                    "reason": "x.txt: not a plain path"}, out
    assert not (root / "ota.json").exists() and not (root / "ota").exists()
