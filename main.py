"""The sensor-to-MQTT node: validate the configuration, then run the tasks under asyncio."""

import asyncio
import gc
import os
import ssl

from node import VERSION, board, bootcount, config
from node.climate import Climate
from node.dsp import LevelMeter
from node.lagprobe import LagProbe
from node.log import log, uptime_ms
from node.mqtt import Client
from node.outbox import Outbox
from node.payload import Topics, dumps
from node.publisher import Publisher
from node.sound import Sound
from node.supervisor import Supervisor

CONFIG_PATH = "config.json"
SECRETS_PATH = "secrets.json"
BOOT_PATH = "boot.json"
# tools/deploy.py creates this before copying and removes it when every file is in place.
DEPLOY_MARKER = "deploying"
IO_TIMEOUT_MS = 500
# Longest silence before a task counts as hung. The publisher's includes a TLS handshake,
# about 1 s of CPU on an ESP32, and its 10 s connect timeout.
CLIMATE_SILENCE_MS = 10000
SOUND_SILENCE_MS = 5000
PUBLISHER_SILENCE_MS = 15000


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


async def telemetry(interval_s, topic, publisher, outbox, climate, sound, wifi, lag, boot, cause):
    heap_min = gc.mem_free()
    while True:
        await asyncio.sleep(interval_s)
        gc.collect()
        heap = gc.mem_free()
        heap_min = min(heap_min, heap)
        body = {
            "boot": boot,
            "ts": board.unix_time(),
            "uptime_s": uptime_ms() // 1000,
            "version": VERSION,
            "heap_free": heap,
            "heap_min_free": heap_min,
            "rssi": wifi.rssi(),
            "reset_cause": cause,
            "wifi_reconnects": wifi.reconnects,
            "mqtt_reconnects": publisher.reconnects,
            "readings_taken": outbox.taken,
            "readings_delivered": outbox.delivered,
            "readings_queued": len(outbox),
            "dropped": outbox.dropped,
            "sensor_errors": climate.errors,
            "audio_frames": sound.frames,
            "loop_lag": lag.summary(),
        }
        log("telemetry", "taken %d delivered %d queued %d dropped %d heap %d lag %s"
            % (outbox.taken, outbox.delivered, len(outbox), outbox.dropped, heap,
               body["loop_lag"]))
        publisher.publish_now(topic, dumps(body))


async def main(cfg, secrets, ctx):
    asyncio.get_event_loop().set_exception_handler(task_died)
    boot = bootcount.read(BOOT_PATH)
    cause = board.reset_cause()
    node_id = cfg["node_id"] or board.unique_id_hex()
    log("main", "node %s version %s boot %d reset cause %s" % (node_id, VERSION, boot, cause))
    topics = Topics(cfg["topic_prefix"], node_id)
    outbox = Outbox(cfg["outbox_size"], boot)
    supervisor = Supervisor(board.watchdog(cfg["watchdog_s"]))

    dht_cfg = cfg["dht"]
    climate = Climate(
        board.dht_sensor(dht_cfg["model"], dht_cfg["pin"]), dht_cfg["model"],
        dht_cfg["interval_s"], dht_cfg["window"], outbox, topics.climate.encode(),
        supervisor.register("climate", CLIMATE_SILENCE_MS), board.unix_time,
    )
    audio = cfg["audio"]
    sound = Sound(
        board.microphone(audio),
        LevelMeter(audio["bits"], audio["rate_hz"], audio["mic_sensitivity_dbfs"]),
        audio["bits"], audio["frame_samples"], audio["publish_interval_s"], outbox,
        topics.sound.encode(), supervisor.register("sound", SOUND_SILENCE_MS), board.unix_time,
    )
    mqtt = cfg["mqtt"]
    user, password = secrets["mqtt_user"], secrets["mqtt_password"]
    client = Client(
        node_id.encode(), mqtt["host"], mqtt["port"], ctx, mqtt["server_hostname"],
        user.encode() if user is not None else None,
        password.encode() if password is not None else None,
        mqtt["keepalive_s"], IO_TIMEOUT_MS,
    )
    wifi = board.Wifi(secrets["wifi_ssid"], secrets["wifi_password"])
    publisher = Publisher(client, outbox, topics, mqtt["keepalive_s"],
                          supervisor.register("publisher", PUBLISHER_SILENCE_MS), wifi.up)

    lag = LagProbe()
    for coro in (climate.run(), sound.run(), publisher.run(), lag.run(),
                 telemetry(cfg["telemetry_interval_s"], topics.telemetry.encode(), publisher,
                           outbox, climate, sound, wifi, lag, boot, cause)):
        asyncio.create_task(coro)
    await supervisor.run()


def deploy_unfinished():
    try:
        os.stat(DEPLOY_MARKER)
    except OSError:
        return False
    return True


def start():
    if deploy_unfinished():
        log("main", "safe mode: a deploy did not finish (%s); run make deploy again"
            % DEPLOY_MARKER)
        return
    try:
        cfg, secrets = config.load(CONFIG_PATH, SECRETS_PATH)
        ctx = tls_context(config.load_ca(cfg["mqtt"]["ca_path"]))
    except config.ConfigError as e:
        # Safe mode: no tasks, no watchdog, the REPL stays free for mpremote to repair the files.
        log("main", "safe mode: %s" % e)
        return
    asyncio.run(main(cfg, secrets, ctx))


start()
