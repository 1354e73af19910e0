"""Boot loops, hung tasks and bad configuration end in a known state, never a reset loop.

The real boot.py and main.py on the simulated board, which (reboot=True) starts again after a
watchdog or machine.reset() as a board does. Faults come from the simulated hardware:
SIM_I2S=fail makes the I2S driver refuse to start (as ESP_ERR_NO_MEM does when DMA memory is
short), SIM_I2S=stall gives a microphone that never delivers a sample (a broken clock line).
"""

import json
import re

from tests.e2e.infra import (  # noqa: F401  (fixtures are found by pytest in this namespace)
    CONNECT_TIMEOUT_S,
    CONNECTED_RX,
    broker,
    broker_factory,
    certs,
    node_factory,
    subscribe,
    subscriber_factory,
)


def _rx(topic):
    return "^" + re.escape(topic) + "$"


def _boot_state(node):
    return json.loads((node.flash / "boot.json").read_text())


def test_boot_loop_ends_in_safe_mode_and_says_so(broker, certs, subscriber_factory,
                                                 node_factory):
    sub = subscriber_factory(broker, "#")
    node = node_factory(broker, reboot=True, safe_mode_boots=3, env={"SIM_I2S": "fail"})
    # Three boots crash and reset; the fourth starts in safe mode and stays there.
    node.wait_for_line(r"boot\.py: safe mode: 3 boots in a row", 60)
    assert node.wait(20) == 0, node.tail()  # main.py returned: the REPL is free
    assert node.boots == 4
    crashes = node.find(r"main: crashed: OSError\(12")
    assert len(crashes) == 3, node.text()
    sub.wait_for(_rx(node.topics.status), timeout=10, where=lambda m: m.text == "safe-mode")
    with subscribe(certs, broker, node.topics.status) as late:  # retained: HA sees it later
        assert late.wait_for(_rx(node.topics.status), timeout=5).text == "safe-mode"
    assert "microphone" in node.text()  # the traceback says where it crashed
    assert _boot_state(node)["unstable"] == 4
    print(f"\nboot loop: {node.boots} boots, safe mode after {len(crashes)} crashes")

    # The user repairs the board (here: the fault goes) and deploys, which clears the count.
    node.env.pop("SIM_I2S")
    (node.flash / "boot.json").write_text(json.dumps({**_boot_state(node), "unstable": 0}))
    node.start()
    node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S, since=len(node.lines) - 1)
    sub.wait_for(_rx(node.topics.status), timeout=10, where=lambda m: m.text == "online")


def test_a_stable_run_clears_the_boot_loop_count(broker, node_factory):
    node = node_factory(broker, stable_after_s=5)
    node.wait_for_line(r"running stably: boot-loop count cleared", 20)
    assert _boot_state(node)["unstable"] == 0
    # A stop at the console while every task is alive is not a crash either.
    node.stop()
    assert _boot_state(node)["unstable"] == 0


def test_bad_config_is_safe_mode_with_the_reason_not_a_reset_loop(broker, node_factory):
    node = node_factory(broker, reboot=True, config={"dht": {"model": "DHT33"}})
    node.wait_for_line(r"main: safe mode: .*dht\.model.*DHT33", 20)
    assert node.wait(10) == 0
    assert node.boots == 1
    assert "crashed" not in node.text()


def test_a_hung_task_lets_the_watchdog_reset_the_board(broker, subscriber_factory,
                                                       node_factory):
    """The microphone stops: the sound task hangs, the WDT fires, the next boot says why."""
    sub = subscriber_factory(broker, "#")
    node = node_factory(broker, reboot=True, watchdog_s=5, env={"SIM_I2S": "stall"})
    stale = node.wait_for_line(r"supervisor: no heartbeat from sound: watchdog not fed", 30)
    fired = node.wait_for_line(r"WDT fired", 30)
    t_stale = next(line.t for line in node.lines if stale.re.search(line))
    t_fired = next(line.t for line in node.lines if fired.re.search(line))
    hung_s = t_fired - t_stale
    print(f"\nhung sound task: watchdog reset {hung_s:.1f} s after the supervisor stopped "
          f"feeding it (watchdog_s 5)")
    # Not a timing test: the bound only says the reset came from this hang, not a later one.
    assert hung_s < 5 + 5
    # The next boot reports the watchdog as its reset cause.
    node.wait_for_line(r"reset cause WDT_RESET", 20)
    tele = sub.wait_for(_rx(node.topics.telemetry), timeout=20,
                        where=lambda m: m.json().get("reset_cause") == "WDT_RESET")
    assert tele.json()["boot"] >= 2
