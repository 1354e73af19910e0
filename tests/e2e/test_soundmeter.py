"""The sound level meter end to end: the real node on the simulated board against Mosquitto.

A scripted WAV played by the simulated microphone (SIM_AUDIO) makes noise events, which arrive on
`<prefix>/<node>/event` in the readings' seq with the levels and bands; the calibrate command
measures a simulated calibrator's tone and puts the sensitivity it finds in force and in
settings.json, and reset_settings undoes it. Figures are printed (run with -s).
"""

import json
import math
import re
import wave

import numpy as np
import pytest

from tests.e2e.infra import (  # noqa: F401  (fixtures are found by pytest in this namespace)
    CONNECT_TIMEOUT_S,
    CONNECTED_RX,
    HEAP_32_BIT,
    REPO,
    assert_no_seq_gap,
    broker,
    broker_factory,
    certs,
    data_payloads,
    make_node,
    node_factory,
    start_broker,
    subscribe,
    subscriber_factory,
)
from tools.hosttools import MP32

RATE = 16000
SENS = -26.0
THRESHOLD = 80.0
LOOP_S, BURST_AT_S, BURST_S = 6.0, 2.0, 1.0
FAST_S = 0.125
SPL_OF_0_DBFS = 94 + 20 * math.log10(math.sqrt(2)) - SENS  # our dBFS to dB SPL at SENS
SUBSCRIBED_RX = r"\bmqtt: subscribed to "


def _rx(topic):
    return "^" + re.escape(topic) + "$"


def scripted_wav(path):
    """LOOP_S of pink noise 20 dB under the threshold, a 1 kHz tone 3 dB over it for BURST_S
    from BURST_AT_S (the simulator loops it: one event every LOOP_S)."""
    rng = np.random.default_rng(41)
    n = int(LOOP_S * RATE)
    spec = np.fft.rfft(rng.standard_normal(n))
    spec[1:] /= np.sqrt(np.arange(1, len(spec)))
    spec[0] = 0
    x = np.fft.irfft(spec, n)
    x *= 32768 * 10 ** ((THRESHOLD - 20 - SPL_OF_0_DBFS) / 20) / np.sqrt(np.mean(x**2))
    a, b = int(BURST_AT_S * RATE), int((BURST_AT_S + BURST_S) * RATE)
    amp = 32768 * math.sqrt(2) * 10 ** ((THRESHOLD + 3 - SPL_OF_0_DBFS) / 20)
    x[a:b] += amp * np.sin(2 * np.pi * 1000 * np.arange(b - a) / RATE)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.clip(np.round(x), -32768, 32767).astype("<i2").tobytes())


def test_noise_events_arrive_with_levels_and_bands(broker, subscriber_factory, node_factory,
                                                   tmp_path):
    wav = tmp_path / "bursts.wav"
    scripted_wav(wav)
    sub = subscriber_factory(broker)
    node = node_factory(broker, audio=str(wav), config={"audio": {
        "publish_interval_s": 2, "mic_sensitivity_dbfs": SENS, "bands": True,
        "event_threshold_dba": THRESHOLD, "event_hysteresis_db": 3, "event_min_s": 0.3}})
    node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
    events = sub.wait_for(_rx(node.topics.event), timeout=3 * LOOP_S + 5, count=3)
    events = sub.select(_rx(node.topics.event))
    bodies = [m.json() for m in events]
    print(f"\nevents of the scripted WAV ({BURST_S} s bursts every {LOOP_S} s, +3 dB over "
          f"{THRESHOLD} dB(A)):")
    for m, e in zip(events, bodies, strict=True):
        print(f"  {e}, {m.wall - e['ts']:.1f} s before it arrived")
        assert set(e) == {"boot", "seq", "ts", "duration_s", "lafmax_dba", "laeq_dba",
                          "dominant_band"}, e
        assert not m.retain and m.qos == 1
        assert abs(e["duration_s"] - BURST_S) <= FAST_S, e
        assert abs(e["lafmax_dba"] - (THRESHOLD + 3)) <= 0.5, e
        assert abs(e["laeq_dba"] - (THRESHOLD + 3)) <= 0.5, e
        assert e["dominant_band"] == "1000"
        # dated by its start: the end came a second and a Fast decay later, the message after
        assert m.wall - BURST_S - 3 <= e["ts"] <= m.wall - BURST_S + 1, (e, m.wall)
    starts = [e["ts"] for e in bodies]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    print(f"  starts {LOOP_S} s apart, as the WAV loops: {gaps}")
    assert all(abs(g - LOOP_S) <= 1 for g in gaps), gaps
    # events share seq with climate and sound: no gap across the three
    assert_no_seq_gap(data_payloads(sub, node.topics))
    sound = sub.select(_rx(node.topics.sound))[-1].json()
    assert list(sound["bands_dbz"]) == ["63", "125", "250", "500", "1000", "2000", "4000"]
    for key in ("laeq_dba", "la10_dba", "la50_dba", "la90_dba", "lceq_dbc", "lcpeak_dbc",
                "lzeq_dbz"):
        assert isinstance(sound[key], float), (key, sound)
    print(f"  a sound reading: {sound}")


def test_calibrate_finds_the_sensitivity_and_reset_undoes_it(broker, subscriber_factory,
                                                             node_factory):
    """A 94 dB calibrator on a -26 dBFS microphone is a 1 kHz sine at -29.01 dBFS (our scale);
    the node starts uncalibrated (dBFS only), finds the sensitivity, reads dB(A) from then on,
    keeps it in settings.json; reset_settings goes back to dBFS only."""
    level_dbfs = 94 - SPL_OF_0_DBFS
    sub = subscriber_factory(broker)
    node = node_factory(broker, audio=f"sine:1000:{level_dbfs:.3f}",
                        config={"audio": {"publish_interval_s": 1}})
    node.wait_for_line(SUBSCRIBED_RX, CONNECT_TIMEOUT_S)
    first = sub.wait_for(_rx(node.topics.sound), timeout=10).json()
    assert "laeq_dba" not in first
    mark = sub.mark()
    sub.publish(node.topics.cmd, json.dumps({"cmd": "calibrate", "id": "cal", "seconds": 3}),
                qos=1)
    reply = sub.wait_for(_rx(node.topics.reply), timeout=10, since=mark).json()
    print(f"\ncalibrate reply: {reply}")
    assert reply["ok"] and reply["id"] == "cal", reply
    assert abs(reply["mic_sensitivity_dbfs"] - SENS) <= 0.05, reply
    assert reply["level_db"] == 94 and reply["previous_db"] is None
    saved = json.loads((node.flash / "settings.json").read_text())
    assert saved == {"audio.mic_sensitivity_dbfs": reply["mic_sensitivity_dbfs"]}
    after = sub.wait_for(_rx(node.topics.sound), timeout=10, since=sub.mark(), count=2)
    levels = after.json()
    print(f"  a reading after it: {levels}")
    assert abs(levels["laeq_dba"] - 94.0) <= 0.1 and abs(levels["lzeq_dbz"] - 94.0) <= 0.1
    mark = sub.mark()
    sub.publish(node.topics.cmd, json.dumps({"cmd": "reset_settings", "id": "r"}), qos=1)
    reset = sub.wait_for(_rx(node.topics.reply), timeout=10, since=mark).json()
    assert reset == {"ok": True, "id": "r", "cmd": "reset_settings", "settings": {}}
    back = sub.wait_for(_rx(node.topics.sound), timeout=10, since=sub.mark(), count=2).json()
    assert "laeq_dba" not in back and not (node.flash / "settings.json").exists()
    assert "MemoryError" not in node.text()


# The heap a calibrated meter, and one with every sound feature, needs on the 32-bit 1.27 port
# from the x86 bundle (as test_e2e.py's HEAP_32_BIT for the default config, 128k), and what a
# heap too small for them gives: node.measure turns off what does not leave the node its room,
# with a log line naming it, rather than letting the node run out at its first connect.
FEATURES = {
    "calibrated": ("128k", {"mic_sensitivity_dbfs": SENS}, None),
    "everything at 48 kHz, 32-bit": ("148k", {
        "rate_hz": 48000, "bits": 32, "mic_sensitivity_dbfs": SENS, "bands": True,
        "event_threshold_dba": 70}, None),
    "calibrated, in a heap 4 KB short": ("124k", {"mic_sensitivity_dbfs": SENS},
                                         "the calibrated levels"),
    "everything, in the default config's heap": ("128k", {
        "mic_sensitivity_dbfs": SENS, "bands": True, "event_threshold_dba": 70},
        "the octave bands"),
}


@pytest.mark.skipif(not MP32.is_file(), reason="no 32-bit MicroPython (../shared/mp32) here")
@pytest.mark.parametrize("name", list(FEATURES))
def test_x86_bundle_with_the_meter_in_its_heap(certs, tmp_path, name):
    from tools import bundle

    heap, audio, turned_off = FEATURES[name]
    app = tmp_path / "build" / "x86"
    bundle.build(REPO, app, "x86", log=lambda line: None)
    brk = start_broker(certs, tmp_path / "broker")
    sub = subscribe(certs, brk)
    node = make_node(certs, brk, tmp_path / "node", app_root=app, heap=heap,
                     micropython=str(MP32), config={"audio": {"publish_interval_s": 2, **audio}})
    try:
        node.wait_for_line(CONNECTED_RX, CONNECT_TIMEOUT_S)
        tele = sub.wait_for(_rx(node.topics.telemetry), timeout=15).json()
        sound = sub.wait_for(_rx(node.topics.sound), timeout=15, count=2).json()
        assert "MemoryError" not in node.text()
        off = [m.group(1) for m in node.find(r"sound: not enough memory for (.+?) \(")]
        if turned_off is None:
            assert not off
            assert "la90_dba" in sound and ("bands_dbz" in sound) == audio.get("bands", False)
        else:
            assert off[:1] == [turned_off], off
            assert ("la90_dba" in sound) == (turned_off != "the calibrated levels")
            assert "bands_dbz" not in sound
        print(f"\n{name}: x86 bundle on micropython32 at HEAP={heap}: heap_free "
              f"{tele['heap_free']}, heap_min_free {tele['heap_min_free']} bytes"
              + (f"; turned off for lack of RAM: {', '.join(off)}" if off else ""))
    finally:
        node.stop()
        sub.close()
        brk.stop()


@pytest.mark.skipif(not MP32.is_file(), reason="no 32-bit MicroPython (../shared/mp32) here")
def test_a_setting_the_heap_has_no_room_to_check_is_refused_and_the_node_runs_on(certs,
                                                                                 tmp_path):
    """At 128k the commands' code leaves 10.5 KB free, under what checking a setting against
    config.json takes (node.config, 10.5 KB at its peak): a `set` is answered that there is no
    room and changes nothing, and the node keeps its heap: telemetry and the readings go on (an
    import that failed part way kept 8 KB of it for good, and telemetry was skipped for want of
    room from then on)."""
    from tools import bundle

    app = tmp_path / "build" / "x86"
    bundle.build(REPO, app, "x86", log=lambda line: None)
    brk = start_broker(certs, tmp_path / "broker")
    sub = subscribe(certs, brk)
    node = make_node(certs, brk, tmp_path / "node", app_root=app, heap=HEAP_32_BIT,
                     micropython=str(MP32), config={"audio": {"publish_interval_s": 2},
                                                    "telemetry_interval_s": 5})
    try:
        node.wait_for_line(SUBSCRIBED_RX, CONNECT_TIMEOUT_S)
        mark = sub.mark()
        sub.publish(node.topics.cmd, json.dumps({"cmd": "set", "id": "s",
                                                 "audio.mic_sensitivity_dbfs": SENS}), qos=1)
        reply = sub.wait_for(_rx(node.topics.reply), timeout=10, since=mark).json()
        print(f"\nset at HEAP={HEAP_32_BIT}: {reply}")
        assert not reply["ok"] and "no room in RAM now" in reply["error"], reply
        assert not (node.flash / "settings.json").exists()
        tele = sub.wait_for(_rx(node.topics.telemetry), timeout=10, since=sub.mark()).json()
        print(f"  telemetry after it: heap_free {tele['heap_free']} (the commands' code stays)")
        assert "no room in RAM for the message" not in node.text()
        sound = sub.wait_for(_rx(node.topics.sound), timeout=10, since=sub.mark()).json()
        assert "laeq_dba" not in sound and "rms_dbfs" in sound, sound
        assert "MemoryError" not in node.text()
    finally:
        node.stop()
        sub.close()
        brk.stop()
