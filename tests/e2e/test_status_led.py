"""The status LED in the running app on the simulated board: the link's state, as the
publisher has it, shown by a WS2812 (the simulated neopixel), in the pin log."""

import time

from sim.host.simnode import read_pin_log
from tests.e2e.infra import (  # noqa: F401  (fixtures are found by pytest in this namespace)
    CONNECT_TIMEOUT_S,
    CONNECTED_RX,
    broker,
    broker_factory,
    certs,
    node_factory,
)

BLACK = (0, 0, 0)


def test_a_ws2812_blinks_blue_while_connecting_then_green_while_running(broker, node_factory):
    node = node_factory(broker, config={"led": {"kind": "ws2812", "pin": 38, "brightness": 64}},
                        env={"SIM_PIN_LOG": "pins.log"})
    node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
    time.sleep(3.5)  # running blips every 3 s
    node.stop()
    shown = [v for _, gpio, v in read_pin_log(node.flash / "pins.log") if gpio == 38]
    lit = [v for v in shown if v != BLACK]
    # Each colour is the table's full scale (or running's half) at brightness 64 of 255.
    blue, green = (0, 0, 64), (0, 33, 0)
    assert shown[0] == BLACK, shown
    assert set(lit) == {blue, green}, shown
    first_green = lit.index(green)
    assert lit[:first_green] == [blue] * first_green and first_green >= 2, shown
    assert lit[first_green:] == [green] * (len(lit) - first_green), shown
