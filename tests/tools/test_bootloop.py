"""boot.py's boot-loop count on the fake serial board: mpremote's soft resets are not failed
boots, real crash loops still end in safe mode.

The fakeboard runs boot.py on every soft reset, as the ESP32 port does (ports/esp32/main.c:
boot.py always, main.py only in the friendly REPL), and mpremote soft-resets into the raw REPL
before its first command. The repo's boot.py and node.bootcount run here; main.py stands in for
the app: it says whether boot.py chose safe mode, then runs (or crashes, as the app's crash
handler does, with machine.reset()).
"""

import json
import shutil

from tests.conftest import REPO
from tests.tools.test_deploy import board_factory, mpremote  # noqa: F401  (a fixture)

RUNNING = """\
import time
from node import bootcount
if bootcount.safe_mode:
    print("main.py: safe mode:", bootcount.safe_mode)
else:
    print("main.py: app started")
    while True:
        time.sleep(0.05)
"""
CRASHING = """\
import machine
from node import bootcount
if bootcount.safe_mode:
    print("main.py: safe mode:", bootcount.safe_mode)
else:
    print("main.py: app started, crashing")
    machine.reset()
"""


def flash_with(tmp_path, main):
    flash = tmp_path / "flash"
    (flash / "lib" / "node").mkdir(parents=True)
    shutil.copy(REPO / "boot.py", flash / "boot.py")
    for name in ("__init__.py", "bootcount.py", "wdtfeed.py"):  # all that boot.py imports
        shutil.copy(REPO / "lib" / "node" / name, flash / "lib" / "node" / name)
    (flash / "config.json").write_text(json.dumps({"watchdog_s": 30}))  # safe_mode_boots: 5
    (flash / "main.py").write_text(main)
    return flash


def boot_state(flash):
    return json.loads((flash / "boot.json").read_text())


def test_ten_mpremote_commands_then_a_reset_start_the_app(board_factory, tmp_path):
    flash = flash_with(tmp_path, RUNNING)
    b = board_factory(flash)
    b.wait_for(r"boot\.py: boot 1 \(1 in a row without a stable run\)\nmain\.py: app started")
    for _ in range(10):  # each: Ctrl-C stops the app, then a soft reset into the raw REPL
        assert "main.py" in mpremote(b.port, "ls")
    log = b.log()
    assert log.count("MPY: soft reboot") == 10
    assert log.count("a soft reset, not counted") == 10
    assert "boot.py: boot 11 (1 in a row without a stable run; a soft reset, not counted)" in log
    assert log.count("main.py: app started") == 1  # the raw REPL runs boot.py only
    mark = len(log)
    # mpremote soft-resets once more (boot 12), then machine.reset(): a hard reset, counted.
    mpremote(b.port, "reset")
    b.wait_for(r"boot\.py: boot 13 \(2 in a row without a stable run\)\n"
               r"main\.py: app started", after=mark)
    assert "safe mode" not in b.log()
    assert boot_state(flash) == {"boot": 13, "unstable": 2}


def test_a_crash_loop_still_ends_in_safe_mode_and_soft_resets_keep_it(board_factory,
                                                                      tmp_path):
    flash = flash_with(tmp_path, CRASHING)
    b = board_factory(flash)
    b.wait_for(r"boot\.py: boot 6 \(6 in a row without a stable run\)\n"
               r"boot\.py: safe mode: 5 boots in a row ended before the app ran stably\n"
               r"main\.py: safe mode: 5 boots", timeout=30)
    assert b.log().count("main.py: app started, crashing") == 5
    # The user looks around with mpremote: the loop is neither forgotten nor made longer.
    for _ in range(3):
        mpremote(b.port, "ls")
    assert boot_state(flash) == {"boot": 9, "unstable": 6}
    assert b.log().count("boot.py: safe mode: 5 boots in a row") == 4
    mark = len(b.log())
    mpremote(b.port, "reset")  # a soft reset (boot 10), then a hard one: counted
    b.wait_for(r"boot\.py: boot 11 \(7 in a row without a stable run\)\n"
               r"boot\.py: safe mode: 6 boots in a row", after=mark)
    assert b.log().count("main.py: app started, crashing") == 5
