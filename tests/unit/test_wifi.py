"""node.board.Wifi against a scripted WLAN, as the ESP32's driver behaves (network_wlan.c).

After a drop the driver reconnects by itself; a connect() meanwhile raises
OSError("Wifi Internal Error"). The node waits for the driver instead of failing.
"""

import json

from tools.hosttools import REPO

_WIFI = """
import asyncio, json, network
from node import board

class Wlan:
    # status() as the driver reports it; connect() refused while it reconnects by itself.
    def __init__(self, script):
        self.script = script  # (isconnected, status) per poll
        self.calls = []
    def active(self, flag=None):
        return True
    def _now(self):
        return self.script[0] if len(self.script) == 1 else self.script.pop(0)
    def isconnected(self):
        return self._now()[0]
    def status(self, param=None):
        if param == "rssi":
            raise OSError("Wifi Not Connected")
        return self.script[0][1]
    def connect(self, ssid, key):
        self.calls.append("connect")
        if self.script[0][1] == network.STAT_CONNECTING:
            raise OSError("Wifi Internal Error")
    def disconnect(self):
        self.calls.append("disconnect")
    def ifconfig(self):
        return ("10.0.0.7",)

C, I, G = network.STAT_CONNECTING, network.STAT_IDLE, network.STAT_GOT_IP
wifi = board.Wifi("lab", "pw")
wifi._was_up = True  # connected before: this is the reconnect after a drop
wifi._wlan = Wlan([(False, C)] * 6 + [(True, G)])
asyncio.run(wifi.up(lambda: None))
print("RESULT " + json.dumps({"calls": wifi._wlan.calls, "reconnects": wifi.reconnects}))
"""


def test_a_drop_waits_for_the_drivers_own_reconnect(mpy):
    out = mpy(_WIFI, path=(REPO / "sim" / "board",)).stdout
    result = json.loads([x for x in out.splitlines() if x.startswith("RESULT ")][-1][7:])
    assert result == {"calls": [], "reconnects": 1}, out  # no connect() into the driver's own
    assert "waiting for the driver's own reconnect" in out
    assert "wifi: connected, 10.0.0.7" in out
