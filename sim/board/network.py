"""network for the simulated board: the ESP32's WLAN interface, backed by the host's own stack.

Sockets are the host's, so "connected" is a state this module keeps: connect() succeeds
_CONNECT_MS later, as association and DHCP would. SIM_RSSI sets the signal (default -55 dBm);
SIM_WIFI=down makes connect() never succeed (status() stays STAT_CONNECTING, as the ESP32
port's endless retries report an absent access point). SIM_WIFI=drop:<after_s>:<for_s>: the
access point vanishes <after_s> seconds after the first association, for <for_s> seconds.
As network_wlan.c does, the driver then reassociates on its own (connect() was requested), and
a connect() while it does raises OSError("Wifi Internal Error") (esp_wifi_connect() returns
ESP_ERR_WIFI_CONN); status('rssi') raises while not connected.
"""

import time

import _simenv
from micropython import const

STA_IF = 0
AP_IF = 1

STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
# ESP-IDF's disconnect reasons, as the ESP32 port reports them
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_ASSOC_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204

AUTH_OPEN = 0
AUTH_WEP = 1
AUTH_WPA_PSK = 2
AUTH_WPA2_PSK = 3
AUTH_WPA_WPA2_PSK = 4

_CONNECT_MS = const(300)
# After the access point is back: the driver's next retry, then association and DHCP.
_RECONNECT_MS = const(1000)
_SCAN_MS = const(1500)  # a scan blocks the board for a second or two: so it does here
_NO_ADDR = ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")
# The node's traffic really leaves through the host's loopback or network, never a radio.
_SIM_ADDR = ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

_hostname = ["mpy-esp32"]
_rssi = []
_wifi = []


def _wifi_mode():
    """SIM_WIFI as ("up"|"down"|"drop", after_ms, for_ms)."""
    if not _wifi:
        text = _simenv.env("SIM_WIFI", "up")
        mode = (text, 0, 0)
        if text.startswith("drop:"):
            try:
                after_s, for_s = (float(x) for x in text[5:].split(":"))
                if after_s < 0 or for_s <= 0:
                    raise ValueError
            except ValueError:
                _simenv.config_error("SIM_WIFI", "%r is not drop:<after_s>:<for_s>, like "
                                     "drop:10:5" % text)
            mode = ("drop", int(after_s * 1000), int(for_s * 1000))
        elif text not in ("up", "down"):
            _simenv.config_error("SIM_WIFI", "%r is neither 'up', 'down' nor "
                                 "'drop:<after_s>:<for_s>'" % text)
        _wifi.append(mode)
    return _wifi[0]


def _wifi_up():
    return _wifi_mode()[0] != "down"


# ticks_ms of the first association: a drop's schedule counts from there.
_first_up = []


def _drop_state(now):
    """None: no drop; "before", "gone" (the AP is away) or "back" (since when, in ticks_ms)."""
    mode, after_ms, for_ms = _wifi_mode()
    if mode != "drop" or not _first_up:
        return None, 0
    gone_at = time.ticks_add(_first_up[0], after_ms)
    back_at = time.ticks_add(gone_at, for_ms)
    if time.ticks_diff(now, gone_at) < 0:
        return "before", 0
    if time.ticks_diff(now, back_at) < 0:
        return "gone", 0
    return "back", back_at


def _announce_drop():
    # The log lines come from a thread at the moments themselves, not when the app next asks.
    _mode, after_ms, for_ms = _wifi_mode()
    gone_at = time.ticks_add(_first_up[0], after_ms)
    for at, msg in (
        (gone_at, "the access point is gone for %d ms (SIM_WIFI); the driver keeps trying to "
                  "reassociate" % for_ms),
        (time.ticks_add(gone_at, for_ms), "the access point is back"),
        (time.ticks_add(gone_at, for_ms + _RECONNECT_MS), "the driver reassociated on its own"),
    ):
        wait_ms = time.ticks_diff(at, time.ticks_ms())
        if wait_ms > 0:
            _simenv.thread_sleep_ms(wait_ms)
        _simenv.say("Wi-Fi: " + msg)


def hostname(name=None):
    if name is None:
        return _hostname[0]
    _hostname[0] = name


def _sim_rssi():
    if not _rssi:
        text = _simenv.env("SIM_RSSI", "-55")
        try:
            _rssi.append(int(text))
        except ValueError:
            _simenv.config_error("SIM_RSSI", "%r is not an integer in dBm, like -55" % text)
    return _rssi[0]


class WLAN:
    IF_STA = STA_IF
    IF_AP = AP_IF
    PM_NONE = 0
    PM_PERFORMANCE = 1
    PM_POWERSAVE = 2

    _ifaces = {}  # one object per interface, as on the board

    def __new__(cls, interface_id=STA_IF):
        if interface_id not in (STA_IF, AP_IF):
            raise ValueError("invalid WLAN interface identifier")
        iface = cls._ifaces.get(interface_id)
        if iface is None:
            iface = object.__new__(cls)
            iface._if = interface_id
            iface._active = False
            iface._requested_at = None  # ticks_ms of connect(); None while not requested
            iface._ssid = "sim-ap" if interface_id == AP_IF else ""
            iface._ifconfig = None
            iface._config = {"channel": 1, "txpower": 20, "pm": WLAN.PM_PERFORMANCE,
                             "reconnects": -1, "security": AUTH_WPA2_PSK, "key": ""}
            cls._ifaces[interface_id] = iface
        return iface

    def __init__(self, interface_id=STA_IF):
        pass

    def _require_sta(self):
        if self._if != STA_IF:
            raise OSError("STA required")

    def active(self, is_active=None):
        if is_active is None:
            return self._active
        self._active = bool(is_active)
        if not self._active:
            self._requested_at = None

    def connect(self, ssid=None, key=None, *, bssid=None):
        self._require_sta()
        if not self._active:
            raise OSError("Wifi Not Started")
        if self._reassociating():
            # The driver is in the middle of its own reconnect: esp_wifi_connect() refuses.
            _simenv.say("Wi-Fi: connect() while the driver reassociates: OSError('Wifi "
                        "Internal Error')")
            raise OSError("Wifi Internal Error")
        if ssid is not None:
            self._ssid = ssid
            self._config["key"] = key or ""
        self._requested_at = time.ticks_ms()

    def disconnect(self):
        self._requested_at = None

    def _reassociating(self):
        if self._if != STA_IF or self._requested_at is None or not self._active:
            return False
        state, back_at = _drop_state(time.ticks_ms())
        if state == "gone":
            return True
        return state == "back" and time.ticks_diff(time.ticks_ms(), back_at) < _RECONNECT_MS \
            and time.ticks_diff(self._requested_at, back_at) < 0

    def isconnected(self):
        if self._if != STA_IF or self._requested_at is None or not self._active:
            return False
        if not _wifi_up():
            return False
        now = time.ticks_ms()
        if time.ticks_diff(now, self._requested_at) < _CONNECT_MS:
            return False
        if not _first_up:
            _first_up.append(time.ticks_add(self._requested_at, _CONNECT_MS))
            if _wifi_mode()[0] == "drop":
                import _thread

                _thread.start_new_thread(_simenv.run_thread, (_announce_drop, ()))
        return not self._reassociating()

    def status(self, param=None):
        if param is None:
            if self._if != STA_IF:
                return None
            if self.isconnected():
                return STAT_GOT_IP
            return STAT_IDLE if self._requested_at is None else STAT_CONNECTING
        if param == "rssi":
            self._require_sta()
            if not self.isconnected():
                raise OSError("Wifi Not Connected")
            return _sim_rssi()
        if param == "stations":
            if self._if != AP_IF:
                raise OSError("AP required")
            return []
        raise ValueError("unknown status param")

    def ifconfig(self, config=None):
        if config is not None:
            if len(config) != 4:
                raise ValueError("ifconfig needs (ip, subnet, gateway, dns)")
            self._ifconfig = tuple(config)
            return None
        if self._ifconfig is not None:
            return self._ifconfig
        return _SIM_ADDR if self.isconnected() or (self._if == AP_IF and self._active) else \
            _NO_ADDR

    def config(self, *args, **kwargs):
        if args and kwargs:
            raise TypeError("either pos or kw args are allowed")
        if kwargs:
            for name, value in kwargs.items():
                if name in ("hostname", "dhcp_hostname"):
                    hostname(value)
                elif name in ("ssid", "essid"):
                    self._ssid = value
                else:
                    self._config[name] = value
            return None
        if len(args) != 1:
            raise TypeError("can query only one param")
        name = args[0]
        if name == "mac" and "mac" not in self._config:
            from machine import unique_id

            mac = bytearray(unique_id()[:6])
            if self._if == AP_IF:
                mac[-1] = (mac[-1] + 1) & 0xFF  # ESP-IDF derives the AP MAC from the base MAC
            return bytes(mac)
        if name in ("hostname", "dhcp_hostname"):
            return hostname()
        if name in ("ssid", "essid"):
            return self._ssid
        if name in self._config and name != "key":
            return self._config[name]
        raise ValueError("unknown config param")

    def scan(self):
        self._require_sta()
        if not self._active:
            raise OSError("STA must be active")
        time.sleep_ms(_SCAN_MS)
        from machine import unique_id

        bssid = bytes(unique_id()[:5]) + b"\xaa"
        ssid = (self._ssid or "sim-ap").encode()
        return [(ssid, bssid, self._config["channel"], _sim_rssi(), AUTH_WPA2_PSK, False)]
