"""ntptime for the simulated board: the host's clock is already right, so nothing is set.

The API of micropython-lib's ntptime: `host`, `timeout`, time() and settime(). time() is the
host's clock in this port's epoch (1970 on unix, 2000 on the ESP32: the app's conversion to
Unix time must use time.gmtime(0) to tell). SIM_NTP=timeout makes both fail as an unreachable
server does, with OSError(ETIMEDOUT) after `timeout` seconds.
"""

import time as _time

import _simenv

host = "pool.ntp.org"
timeout = 1


def time():
    mode = _simenv.env("SIM_NTP", "ok")
    if mode not in ("ok", "timeout"):
        _simenv.config_error("SIM_NTP", "%r is neither 'ok' nor 'timeout'" % mode)
    if mode == "timeout":
        _time.sleep(timeout)
        raise OSError(110)
    return int(_time.time())


def settime():
    time()
