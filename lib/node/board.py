"""The one module that knows the hardware: machine, dht, network, neopixel and the chip's clock.

Everything else gets its sensor, bus or watchdog from here, so tests and the simulated board
(sim/) can stand in for the real ESP32 without the app noticing.
"""

import asyncio
import time

import dht
import machine
import network
from micropython import const

from node import dhtwire
from node.log import log

_WIFI_POLL_MS = const(250)
_WIFI_RETRY_MS = const(20000)  # a connect that has not succeeded by then is started again
_I2S_ID = const(0)
# The ESP32 driver sizes `ibuf` in 8-byte DMA frames (one per sample whatever the slot width),
# so 8 bytes per sample buy time: 250 ms at 16 kHz for the loop to be late without losing audio,
# capped because DMA memory is scarce (about 104 ms at 48 kHz).
_I2S_DMA_BYTES_PER_SAMPLE = const(8)
_MIC_BUFFER_MS = const(250)
_I2S_IBUF_MAX = const(40000)
# MicroPython's epoch is 2000-01-01 on the ESP32 and 1970 on the unix port; payloads want Unix.
_EPOCH_OFFSET_S = 946684800 if time.gmtime(0)[0] == 2000 else 0
_RESET_CAUSES = {
    getattr(machine, name): name
    for name in ("PWRON_RESET", "HARD_RESET", "WDT_RESET", "DEEPSLEEP_RESET", "SOFT_RESET")
    if hasattr(machine, name)
}


def unique_id_hex():
    return "".join("%02x" % b for b in machine.unique_id())


def reset_cause():
    cause = machine.reset_cause()
    return _RESET_CAUSES.get(cause, str(cause))


def dht_sensor(model, pin):
    """The DHT on `pin`, with both drivers (node.dhtwire.Sensor): `await read()`, the fast path,
    and the firmware's blocking `measure()`; the climate task uses the one dht.driver names."""
    sensor_class = dht.DHT22 if model == "DHT22" else dht.DHT11
    return dhtwire.Sensor(sensor_class(machine.Pin(pin)), model)


def mic_ring_samples(rate_hz):
    """Samples the I2S DMA ring holds: how late the sound task may be without losing audio."""
    ibuf = rate_hz * _I2S_DMA_BYTES_PER_SAMPLE * _MIC_BUFFER_MS // 1000
    return min(ibuf, _I2S_IBUF_MAX) // _I2S_DMA_BYTES_PER_SAMPLE


def microphone(audio):
    return machine.I2S(
        _I2S_ID,
        sck=machine.Pin(audio["sck"]),
        ws=machine.Pin(audio["ws"]),
        sd=machine.Pin(audio["sd"]),
        mode=machine.I2S.RX,
        bits=audio["bits"],
        format=machine.I2S.MONO,
        rate=audio["rate_hz"],
        ibuf=mic_ring_samples(audio["rate_hz"]) * _I2S_DMA_BYTES_PER_SAMPLE,
    )


def watchdog(timeout_s):
    return machine.WDT(timeout=timeout_s * 1000)


def reset():
    machine.reset()


def timer(timer_id):
    """A hardware timer for work that must go on without asyncio (the safe-mode blink, feeding
    the watchdog at the REPL)."""
    return machine.Timer(timer_id)


def rtc_time():
    """Unix seconds as the RTC has them: 2000-01-01 after a power-on (node.sntp.Clock judges)."""
    return int(time.time()) + _EPOCH_OFFSET_S


def set_time(unix_s):
    """Set the RTC (and so time.time()) from NTP's Unix seconds."""
    t = time.gmtime(unix_s - _EPOCH_OFFSET_S)  # 8 fields on the ESP32, 9 on the unix port
    machine.RTC().datetime((t[0], t[1], t[2], t[6], t[3], t[4], t[5], 0))


def status_led(led):
    """The status LED config's `led` describes, for node.led.StatusLed; None when not fitted."""
    pin = led["pin"]
    if pin is None:
        return None
    if led["kind"] == "ws2812":
        # Imported here, not above: a board with a plain LED spends no RAM on either.
        import neopixel

        from node.ws2812 import Ws2812Led

        return Ws2812Led(neopixel.NeoPixel(machine.Pin(pin), 1), led["brightness"])
    # A Signal: on = lit, whichever way the LED is wired.
    return machine.Signal(machine.Pin(pin, machine.Pin.OUT), invert=led["inverted"])


class Wifi:
    """Station-mode Wi-Fi, (re)connected from asyncio without blocking the loop."""

    def __init__(self, ssid, password):
        self._ssid = ssid
        self._password = password
        self._wlan = network.WLAN(network.STA_IF)
        self.reconnects = 0
        self._was_up = False

    def isconnected(self):
        return self._wlan.isconnected()

    def rssi(self):
        try:
            return self._wlan.status("rssi")
        except (OSError, ValueError):  # not connected
            return None

    async def up(self, beat):
        """Return once the station is connected, (re)connecting as needed."""
        wlan = self._wlan
        if wlan.isconnected():
            return
        if self._was_up:
            self.reconnects += 1
        wlan.active(True)
        while not wlan.isconnected():
            if wlan.status() == network.STAT_CONNECTING:
                # After a drop the driver reconnects by itself, and a connect() meanwhile
                # raises OSError("Wifi Internal Error"): wait for it instead.
                log("wifi", "link lost: waiting for the driver's own reconnect")
            else:
                log("wifi", "connecting to %s" % self._ssid)
                try:
                    wlan.connect(self._ssid, self._password)
                except OSError as e:  # the driver is busy: the wait below, then again
                    log("wifi", "connect() refused: %s" % e)
            start = time.ticks_ms()
            while not wlan.isconnected():
                if time.ticks_diff(time.ticks_ms(), start) > _WIFI_RETRY_MS:
                    log("wifi", "not connected after %d s (status %s)"
                        % (_WIFI_RETRY_MS // 1000, wlan.status()))
                    wlan.disconnect()
                    break
                beat()
                await asyncio.sleep_ms(_WIFI_POLL_MS)
        self._was_up = True
        log("wifi", "connected, %s, rssi %s" % (wlan.ifconfig()[0], self.rssi()))
