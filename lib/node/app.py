"""The app: load the configuration, wire the parts together, run them; or safe mode.

main.py only calls start(). Each policy lives with what it governs (telemetry in
node.telemetry, the clock in node.sntp, boot-loop stability in node.bootcount, the link's LED
pattern in node.led, the commands in node.commands); this module builds them and connects them.
"""

import asyncio
import os
import ssl
import sys
import time

from node import VERSION, board, bootcount, config, discovery, settings, wdtfeed
from node.climate import Climate
from node.commands import Commands, RateLimit
from node.dsp import LevelMeter
from node.lagprobe import LagProbe
from node.led import StatusLed
from node.log import log, uptime_ms
from node.mqtt import LINK_ERRORS, Client
from node.outbox import Outbox
from node.payload import Topics, dumps
from node.publisher import Publisher, connect
from node.sntp import Clock
from node.sound import Sound
from node.spill import Spill
from node.supervisor import Supervisor
from node.telemetry import Telemetry

CONFIG_PATH = "config.json"
SECRETS_PATH = "secrets.json"
SETTINGS_PATH = "settings.json"
BOOT_PATH = "boot.json"
CLOCK_PATH = "clock.json"  # the last time seen: the clock's floor after a power-on
# tools/deploy.py creates this before copying and removes it when every file is in place.
DEPLOY_MARKER = "deploying"
# Longest a read or write may block once a session is up (the rest of a packet, a full socket
# buffer): short enough that even a broker sending half a packet costs the loop < 250 ms.
IO_TIMEOUT_MS = 200
# Longest silence before a task counts as hung. The publisher's includes a TLS handshake,
# about 1 s of CPU on an ESP32, and its 10 s connect timeout.
CLIMATE_SILENCE_MS = 10000
SOUND_SILENCE_MS = 5000
PUBLISHER_SILENCE_MS = 15000
# After an unexpected error, the time to read it on the console before the board resets.
CRASH_RESET_DELAY_MS = 3000
# Safe mode tells the broker it is there, within this time, then leaves the REPL alone.
SAFE_MODE_ANNOUNCE_MS = 30000
REBOOT_DELAY_MS = 1000  # lets the command's reply reach the broker first
# Discovery is announced again at most this often however many "online" arrive.
ANNOUNCE_QUIET_MS = 1000
LED_TIMER_ID = 0  # node.wdtfeed has timer 1
MODEL = "ESP32 sensor node"
MANUFACTURER = "sensor-node project"


def tls_context(ca_der):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_verify_locations(cadata=ca_der)
    except ValueError as e:
        raise config.ConfigError("mqtt.ca: not a usable CA certificate (%s)" % e)
    return ctx


def task_died(loop, context):
    # The supervisor stops feeding the watchdog for the dead task; say why before the reset.
    log("main", "task died: %r" % context.get("exception"))


def make_client(cfg, secrets, ctx, node_id):
    mqtt = cfg["mqtt"]
    user, password = secrets["mqtt_user"], secrets["mqtt_password"]
    return Client(
        node_id.encode(), mqtt["host"], mqtt["port"], ctx, mqtt["server_hostname"],
        user.encode() if user is not None else None,
        password.encode() if password is not None else None,
        mqtt["keepalive_s"], IO_TIMEOUT_MS,
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

    def __init__(self, cfg, raw_cfg, saved, secrets, ctx):
        self.cfg = cfg
        self.boot = bootcount.read(BOOT_PATH)
        self.cause = board.reset_cause()
        self.node_id = node_id_of(cfg)
        log("main", "node %s version %s boot %d reset cause %s"
            % (self.node_id, VERSION, self.boot, self.cause))
        self.topics = topics = Topics(cfg["topic_prefix"], self.node_id)
        self.wifi = board.Wifi(secrets["wifi_ssid"], secrets["wifi_password"])
        self.clock = make_clock(cfg, self.wifi)
        self.led = StatusLed(board.status_led(cfg["led"]["pin"], cfg["led"]["inverted"]))
        self.outbox = Outbox(cfg["outbox_size"], self.boot, self.clock.now, uptime_ms,
                             cfg["outbox_bytes"])
        # The app's supervisor feeds the watchdog from here on, only while every task is alive.
        wdtfeed.stop()
        self.watchdog = board.watchdog(cfg["watchdog_s"])
        self.supervisor = supervisor = Supervisor(self.watchdog)
        self.lag = LagProbe()
        self.climate = Climate(
            board.dht_sensor(cfg["dht"]["model"], cfg["dht"]["pin"]), cfg["dht"], self.outbox,
            topics.climate.encode(), supervisor.register("climate", CLIMATE_SILENCE_MS),
        )
        audio = cfg["audio"]
        self.sound = Sound(
            board.microphone(audio),
            LevelMeter(audio["bits"], audio["rate_hz"], audio["mic_sensitivity_dbfs"]),
            audio, self.outbox, topics.sound.encode(),
            supervisor.register("sound", SOUND_SILENCE_MS),
            board.mic_ring_samples(audio["rate_hz"]),
        )
        self.publisher = Publisher(
            make_client(cfg, secrets, ctx, self.node_id), self.outbox, topics,
            cfg["mqtt"]["keepalive_s"], supervisor.register("publisher", PUBLISHER_SILENCE_MS),
            self.wifi.up, self.clock.can_verify,
        )
        # A journal left on flash holds this boot's readings back until it is loaded: it goes first.
        self.spill = Spill(cfg["journal"], self.outbox, self.publisher, self.clock.now)
        self.telemetry = Telemetry(self)
        self.commands = Commands(raw_cfg, saved, SETTINGS_PATH, cfg, self._reboot,
                                 self.led.identify, self._settings_changed)
        self.command_rate = RateLimit(cfg["commands_per_s"], time.ticks_ms)
        self._retained_told = False  # the retained-command reply goes out once per boot
        self._clear_echoes = 0  # empty messages on cmd that are our own clearing, coming back
        self._announce_due = False  # Home Assistant asked (again): announce at the next second
        self.publisher.subscribe(topics.cmd, self._on_command)
        if cfg["discovery"]["enabled"]:
            self.publisher.subscribe(cfg["discovery"]["prefix"] + "/status", self._on_ha_status)
            self.publisher.on_connect = self._announce

    async def run(self):
        asyncio.get_event_loop().set_exception_handler(task_died)
        for coro in (self.climate.run(), self.sound.run(), self.publisher.run(), self.lag.run(),
                     self.led.run(), self.led.follow(self.publisher), self.telemetry.run(),
                     self.clock.run(), self._announcer(), self.spill.run(),
                     bootcount.watch_stability(BOOT_PATH, self.cfg["stable_after_s"],
                                               self.supervisor)):
            asyncio.create_task(coro)
        await self.supervisor.run()

    def _announce(self):
        cfg = self.cfg
        sent = 0
        # Three missed intervals make Home Assistant show a sensor as unavailable.
        for topic, body in discovery.messages(
            cfg["discovery"]["prefix"], self.node_id, self.topics, VERSION, MODEL, MANUFACTURER,
            cfg["audio"]["mic_sensitivity_dbfs"] is not None, 3 * cfg["dht"]["interval_s"],
            3 * cfg["audio"]["publish_interval_s"], 3 * cfg["telemetry_interval_s"],
        ):
            # An empty body removes a sensor that is no longer there (discovery.messages).
            if self.publisher.publish_now(topic.encode(), body, retain=True) and body:
                sent += 1
        log("discovery", "announced %d sensors to Home Assistant" % sent)

    def _on_ha_status(self, msg, retained):
        # Home Assistant restarted and forgot non-retained state: tell it again, once for a
        # burst of "online" (anyone may publish there).
        if msg == b"online":
            self._announce_due = True

    async def _announcer(self):
        while True:
            await asyncio.sleep_ms(ANNOUNCE_QUIET_MS)
            if self._announce_due and self.publisher.connected:
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
        reply = self.commands.handle(msg)
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

    def _settings_changed(self):
        if self.cfg["discovery"]["enabled"] and self.publisher.connected:
            self._announce()  # expire_after follows the intervals

    def _reboot(self):
        async def later():
            await asyncio.sleep_ms(REBOOT_DELAY_MS)
            log("main", "rebooting by command")
            bootcount.mark_stable(BOOT_PATH)  # asked for: not a crash
            board.reset()

        asyncio.create_task(later())


async def announce_safe_mode(cfg, secrets, ctx, reason):
    """Best effort: say `safe-mode` (retained) on the status topic, then disconnect cleanly."""
    topics = Topics(cfg["topic_prefix"], node_id_of(cfg))
    wifi = board.Wifi(secrets["wifi_ssid"], secrets["wifi_password"])
    clock = make_clock(cfg, wifi)
    await wifi.up(_nothing)
    # TLS checks certificate dates: not with a clock that reads 2000.
    if not clock.can_verify() and cfg["ntp"]["server"] is not None:
        await clock.sync()
    if not clock.can_verify():
        raise OSError("the clock is not set: the broker's certificate cannot be verified")
    client = make_client(cfg, secrets, ctx, node_id_of(cfg))
    await connect(client, _nothing)
    client.publish(topics.status.encode(), b"safe-mode", retain=True)
    client.publish(topics.telemetry.encode(), dumps({"safe_mode": reason, "version": VERSION}))
    client.disconnect()  # a clean DISCONNECT: the last will must not overwrite "safe-mode"
    log("main", "safe mode announced on %s" % topics.status)


def _nothing():
    pass


def safe_mode(reason, cfg=None, secrets=None, ctx=None):
    """No app, no watchdog: the REPL stays free for mpremote to repair the board."""
    log("main", "safe mode: %s" % reason)
    led_cfg = cfg["led"] if cfg else None
    if led_cfg:
        StatusLed(board.status_led(led_cfg["pin"], led_cfg["inverted"])).safe_mode(
            board.timer(LED_TIMER_ID))
    if cfg is None:
        return
    try:
        asyncio.run(asyncio.wait_for_ms(announce_safe_mode(cfg, secrets, ctx, reason),
                                        SAFE_MODE_ANNOUNCE_MS))
    except LINK_ERRORS + (asyncio.TimeoutError,) as e:  # the broker is not reachable
        log("main", "safe mode not announced: %r" % (e,))


def deploy_unfinished():
    try:
        os.stat(DEPLOY_MARKER)
    except OSError:
        return False
    return True


def load():
    """(config with persisted settings applied, config.json as parsed, settings, secrets)."""
    raw = config.read_json(CONFIG_PATH)
    # accepted() checks config.json itself first (its errors mean safe mode). A saved setting
    # that no longer fits it (say, the DHT model changed) is logged and dropped: the user's file
    # wins, and the board does not go into safe mode over it.
    saved = settings.accepted(raw, settings.load(SETTINGS_PATH))
    cfg = config.validate(settings.overlay(raw, saved), CONFIG_PATH)
    secrets = config.validate_secrets(config.read_json(SECRETS_PATH), SECRETS_PATH)
    return config.resolve_paths(cfg, CONFIG_PATH), raw, saved, secrets


def start():
    if deploy_unfinished():
        safe_mode("a deploy did not finish (%s); run make deploy again" % DEPLOY_MARKER)
        return
    try:
        cfg, raw, saved, secrets = load()
        ctx = tls_context(config.load_ca(cfg["mqtt"]["ca_path"]))
    except config.ConfigError as e:
        safe_mode(e)
        return
    if bootcount.safe_mode:
        safe_mode(bootcount.safe_mode, cfg, secrets, ctx)
        return
    node = None
    try:
        node = Node(cfg, raw, saved, secrets, ctx)
        asyncio.run(node.run())
    except KeyboardInterrupt:
        # Stopped at the console (mpremote, Ctrl-C) while every task was alive: not a crash.
        if node is not None:
            if not node.supervisor.stale():
                bootcount.mark_stable(BOOT_PATH)
            # The watchdog cannot be stopped: fed from a timer, the REPL is free for as long as
            # it takes (boot.py takes over after the soft reset mpremote makes).
            wdtfeed.start(node.watchdog, board.timer(wdtfeed.TIMER_ID), cfg["watchdog_s"] * 250)
            log("main", "stopped at the console: the watchdog is fed from a timer")
        raise
    except Exception as e:  # noqa: BLE001 - anything at all: a node must not sit at the REPL
        sys.print_exception(e)
        log("main", "crashed: %r; resetting in %d s" % (e, CRASH_RESET_DELAY_MS // 1000))
        time.sleep_ms(CRASH_RESET_DELAY_MS)
        board.reset()
