"""The running node: every part built from the config and connected; node.app runs it.

Each policy lives with what it governs (telemetry in
node.telemetry, the clock in node.sntp, boot-loop stability in node.bootcount, the link's LED
pattern in node.led, the commands in node.commands); this module builds them and connects them.
"""

import asyncio
import os
import sys
import time

from micropython import const

from node import VERSION, board, bootcount, unload, wdtfeed
from node.climate import Climate
from node.dsp import LevelMeter
from node.files import BOOT_PATH, CLOCK_PATH, CONFIG_PATH, OTA_STATE, SETTINGS_PATH
from node.lagprobe import LagProbe
from node.led import StatusLed
from node.log import log, uptime_ms
from node.mqtt import Client
from node.outbox import Outbox
from node.payload import Topics, dumps
from node.publisher import Publisher
from node.ratelimit import RateLimit
from node.sntp import Clock
from node.sound import Sound
from node.spill import Spill
from node.supervisor import Supervisor
from node.telemetry import Telemetry

# Longest a read or write may block once a session is up (the rest of a packet, a full socket
# buffer): short enough that even a broker sending half a packet costs the loop < 250 ms.
_IO_TIMEOUT_MS = const(200)
# Longest silence before a task counts as hung. The publisher's includes a TLS handshake,
# about 1 s of CPU on an ESP32, and its 10 s connect timeout.
_CLIMATE_SILENCE_MS = const(10000)
_SOUND_SILENCE_MS = const(5000)
_PUBLISHER_SILENCE_MS = const(15000)
_REBOOT_DELAY_MS = const(1000)  # lets the command's reply reach the broker first
# Discovery is announced again at most this often however many "online" arrive.
_ANNOUNCE_QUIET_MS = const(1000)
MODEL = "ESP32 sensor node"
MANUFACTURER = "sensor-node project"


def task_died(loop, context):
    # The supervisor stops feeding the watchdog for the dead task; say why before the reset.
    e = context.get("exception")
    log("main", "task died: %r" % e)
    if e is not None:
        sys.print_exception(e)  # where: the console is all there is to read on the board


def make_client(cfg, secrets, ctx, node_id):
    mqtt = cfg["mqtt"]
    user, password = secrets["mqtt_user"], secrets["mqtt_password"]
    return Client(
        node_id.encode(), mqtt["host"], mqtt["port"], ctx, mqtt["server_hostname"],
        user.encode() if user is not None else None,
        password.encode() if password is not None else None,
        mqtt["keepalive_s"], _IO_TIMEOUT_MS, mqtt["cert_path"],
    )


def make_clock(cfg, wifi):
    clock = Clock(cfg["ntp"], wifi.isconnected, board.rtc_time, board.set_time, CLOCK_PATH)
    clock.start()
    return clock


def node_id_of(cfg):
    return cfg["node_id"] or board.unique_id_hex()


class Node:
    """The running app: builds every part from the config and connects them.

    `cfg` is the config in force: the tasks read their intervals from it and the `set`
    command changes them there (node.commands), so it is the one place they live.
    """

    def __init__(self, cfg, saved, secrets, ctx):
        self.cfg = cfg
        self.boot = bootcount.read(BOOT_PATH)
        self.cause = board.reset_cause()
        self.node_id = node_id_of(cfg)
        log("main", "node %s version %s boot %d reset cause %s"
            % (self.node_id, VERSION, self.boot, self.cause))
        self.topics = topics = Topics(cfg["topic_prefix"], self.node_id)
        self.wifi = board.Wifi(secrets["wifi_ssid"], secrets["wifi_password"])
        self.clock = make_clock(cfg, self.wifi)
        self.led = StatusLed(board.status_led(cfg["led"]))
        self.outbox = Outbox(cfg["outbox_size"], self.boot, self.clock.now, uptime_ms,
                             cfg["outbox_bytes"])
        # The app's supervisor feeds the watchdog from here on, only while every task is alive.
        wdtfeed.stop()
        self.watchdog = board.watchdog(cfg["watchdog_s"])
        self.supervisor = supervisor = Supervisor(self.watchdog)
        self.lag = LagProbe()
        self.climate = Climate(
            board.dht_sensor(cfg["dht"]["model"], cfg["dht"]["pin"]), cfg["dht"], self.outbox,
            topics.climate.encode(), supervisor.register("climate", _CLIMATE_SILENCE_MS),
        )
        audio = cfg["audio"]
        self.sound = Sound(
            board.microphone(audio), LevelMeter(audio["bits"], audio["rate_hz"]), audio,
            self.outbox, topics.sound.encode(), topics.event.encode(),
            supervisor.register("sound", _SOUND_SILENCE_MS),
            board.mic_ring_samples(audio["rate_hz"]),
        )
        self.publisher = Publisher(
            make_client(cfg, secrets, ctx, self.node_id), self.outbox, topics,
            cfg["mqtt"]["keepalive_s"], supervisor.register("publisher", _PUBLISHER_SILENCE_MS),
            self.wifi.up, self.clock.can_verify,
        )
        # A journal left on flash holds this boot's readings back until it is loaded: it goes first.
        self.spill = Spill(cfg["journal"], self.outbox, self.publisher, self.clock.now)
        self.telemetry = Telemetry(self)
        self._saved = saved
        self.commands = None  # node.commands, made when the first command arrives
        self.command_rate = RateLimit(cfg["commands_per_s"], time.ticks_ms)
        self._retained_told = False  # the retained-command reply goes out once per boot
        self._clear_echoes = 0  # empty messages on cmd that are our own clearing, coming back
        self._announce_due = False  # Home Assistant asked (again): announce at the next second
        self.publisher.subscribe(topics.cmd, self._on_command)
        if cfg["discovery"]["enabled"]:
            self.publisher.subscribe(cfg["discovery"]["prefix"] + "/status", self._on_ha_status)
            self.publisher.on_connect = self._on_session
        self.ota = None  # node.ota's Receiver while an update over MQTT is under way
        if secrets["ota_key"] is not None:
            # Updates over MQTT, only for a node given a key to check them with: a node
            # without one keeps none of their code.
            from node import otalink

            otalink.attach(self, secrets["ota_key"])
            del otalink
        # Last: what the meter adds, if it leaves the rest of the node its room (node.measure).
        self._audio_changed()

    async def run(self):
        asyncio.get_event_loop().set_exception_handler(task_died)
        for coro in (self.climate.run(), self.sound.run(), self.publisher.run(), self.lag.run(),
                     self.led.run(), self.led.follow(self.publisher), self.telemetry.run(),
                     self.clock.run(), self._announcer(), self.spill.run(),
                     bootcount.watch_stability(BOOT_PATH, self.cfg["stable_after_s"],
                                               self.supervisor)):
            asyncio.create_task(coro)
        try:
            os.stat(OTA_STATE)
        except OSError:
            pass  # no update to confirm or to report: the usual boot
        else:
            # This boot follows an update swapped in (on trial) or undone: say how it ended.
            from node import otaboot

            asyncio.create_task(otaboot.report(self))  # which unloads it when done
            del otaboot
        await self.supervisor.run()

    def _on_session(self):
        if self.outbox.journal is None:
            self._announce()
            return
        # The journal (11 KB) and an announcement (3 KB, with the new session's TLS) do not fit
        # the board's heap at once: the announcement waits until the journal is drained and
        # let go. Home Assistant keeps the sensors announced before (retained) meanwhile.
        self._announce_due = True
        log("discovery", "announcing once the journal is drained")

    def _announce(self):
        # Needed once a session: its 2.5 KB leave the heap again after.
        from node import discovery

        cfg = self.cfg
        slm = self.sound.meter.slm
        sent = 0
        # Three missed intervals make Home Assistant show a sensor as unavailable.
        for topic, body in discovery.messages(
            cfg["discovery"]["prefix"], self.node_id, self.topics, VERSION, MODEL, MANUFACTURER,
            slm is not None and slm.spl_db is not None, 3 * cfg["dht"]["interval_s"],
            3 * cfg["audio"]["publish_interval_s"], 3 * cfg["telemetry_interval_s"],
            slm is not None and slm.events_on,
        ):
            # An empty body removes a sensor that is no longer there (discovery.messages).
            if self.publisher.publish_now(topic.encode(), body, retain=True) and body:
                sent += 1
        del discovery
        unload("discovery")
        log("discovery", "announced %d sensors to Home Assistant" % sent)

    def _on_ha_status(self, msg, retained):
        # Home Assistant restarted and forgot non-retained state: tell it again, once for a
        # burst of "online" (anyone may publish there).
        if msg == b"online":
            self._announce_due = True

    async def _announcer(self):
        while True:
            await asyncio.sleep_ms(_ANNOUNCE_QUIET_MS)
            if (self._announce_due and self.publisher.connected
                    and self.outbox.journal is None):
                self._announce_due = False
                self._announce()

    def _on_command(self, msg, retained):
        if not msg and self._clear_echoes:
            # Our own clearing of a retained command, delivered back to us (we subscribe).
            self._clear_echoes -= 1
            return
        if retained:
            self._refuse_retained()
            return
        if not self.command_rate.allow():
            if self.command_rate.dropped == 1 or not self.command_rate.dropped % 100:
                log("commands", "more than %d commands a second: dropped %d so far"
                    % (self.cfg["commands_per_s"], self.command_rate.dropped))
            return
        if self.commands is None:
            # Many nodes never get a command: their 5 KB of code are not loaded until one does.
            from node.commands import Commands

            self.commands = Commands(CONFIG_PATH, self._saved, SETTINGS_PATH, self.cfg,
                                     self._reboot, self.led.identify, self._settings_changed,
                                     self.sound.measure, self._reply)
            self._saved = None  # the commands own them from here on
        reply = self.commands.handle(msg)
        if reply is not None:  # None: it comes later (calibrate)
            self._reply(reply)

    def _reply(self, reply):
        # Best effort: a command's sender listens while it waits.
        self.publisher.publish_now(self.topics.reply.encode(), reply)

    def _refuse_retained(self):
        """A retained command would be obeyed again at every connect (a retained reboot is a
        boot loop): it is not carried out, and cleared where the broker lets us."""
        if self.publisher.publish_now(self.topics.cmd.encode(), b"", retain=True):
            self._clear_echoes += 1
        if self._retained_told:
            return
        self._retained_told = True
        log("commands", "ignored a retained command on %s; cleared it" % self.topics.cmd)
        self.publisher.publish_now(self.topics.reply.encode(), dumps({
            "ok": False,
            "error": "ignored a retained command: commands are carried out only when sent live"
                     " (a retained one would run again at every connect); it was cleared",
        }))

    def _audio_changed(self):
        # The meter as the audio config asks (node.measure), unless it asks for dBFS alone, as
        # the default does: such a node never loads that code. Returns what is off for want
        # of memory, in words, or None.
        audio = self.cfg["audio"]
        if (self.sound.meter.slm is not None or audio["mic_sensitivity_dbfs"] is not None
                or audio["bands"] or audio["event_threshold_dba"] is not None):
            if self.cfg["discovery"]["enabled"]:
                # Its first import interns names that stay for good: made before the parts',
                # so that a new qstr pool the two may need (9 KB in one piece) is taken now,
                # while the heap has such a block and node.measure sees what is left, and not
                # at the first connect.
                from node import discovery

                del discovery
                unload("discovery")
            from node import measure

            off = measure.follow(self.sound.meter, audio)
            del measure
            unload("measure")
            return off
        return None

    def _settings_changed(self):
        """Commands changed settings: put them in force; what stays off, for the reply."""
        off = self._audio_changed()  # a new sensitivity
        if self.cfg["discovery"]["enabled"] and self.publisher.connected:
            self._announce()  # expire_after follows the intervals; dB(A) sensors the calibration
        return off

    def _reboot(self):
        async def later():
            await asyncio.sleep_ms(_REBOOT_DELAY_MS)
            log("main", "rebooting by command")
            bootcount.mark_stable(BOOT_PATH)  # asked for: not a crash
            board.reset()

        asyncio.create_task(later())
