"""The level meter's setup and calibration, kept out of node.sound and node.wiring because they
run now and then: the meter for the audio config (at boot), a measurement beside the running
intervals (RMS and peak for some seconds, for the calibrate command), and putting a new
sensitivity in force. Imported when one of them is needed, unloaded when it is done."""

import gc
import time

from micropython import const

from node import unload
from node.dsp import LevelMeter
from node.log import log

# What the node must still have free once the meter's parts are made (at the end of its setup),
# by the reckoning below and in fact, so that its connects (the TLS handshake, Home Assistant
# discovery) and its tasks have their room: measured on the 32-bit port with the x86 bundle
# (README "The sound level meter"). The check after the parts are made also sees what the
# reckoning cannot: their names (qstrs) may fill MicroPython's last qstr pool, and the next is
# twice as large (1280 entries, 9 KB).
HEADROOM_BYTES = const(8192)
# The heap each part takes, modules and state (tests/unit/test_heap_costs.py measures them, and
# fails when these fall short): the calibrated levels (node.weighting, with the 32-bit data's
# histogram), node.soundmeter (with bands or events), the octave bands at 48 kHz (node.bands),
# the noise events (node.events).
CALIBRATED_BYTES = const(7100)
PARTS_BYTES = const(1800)
BANDS_BYTES = const(7100)
EVENTS_BYTES = const(1600)


def follow(meter, audio):
    """Put the audio config in force in the meter (node.dsp.LevelMeter): at boot what it asks
    for, later a new sensitivity (None: none). node.soundmeter's levels, bands and events are
    loaded only when asked for; events need a calibrated microphone, and wait for one. Where the
    heap cannot hold what was asked for and still leave HEADROOM_BYTES free, the octave bands go
    first (about 7 KB), then the noise events (1.5 KB), then the calibrated levels (6 KB), each
    with a log line naming it: a node that measures less beats one in a boot loop.
    Returns what was asked for and is off for want of memory, in words, or None."""
    sensitivity = audio["mic_sensitivity_dbfs"]
    slm = meter.slm
    off = None
    if slm is None:
        if sensitivity is not None or audio["bands"] or audio["event_threshold_dba"] is not None:
            off = _equip(meter, sensitivity, audio)
    elif sensitivity != slm.sensitivity:
        try:
            slm.calibrate(sensitivity)
        except MemoryError:
            # The weighting's ~4 KB are not there in one piece now; at boot they are.
            slm.calibrate(None)
            off = "the calibrated levels (no memory for them now: they start at the next boot)"
            log("sound", "no memory for the calibrated levels now: they start at the next boot")
        else:
            log("sound", "sensitivity %s dBFS: %s" % (
                sensitivity, "dBFS only" if sensitivity is None else "dB SPL levels"))
    slm = meter.slm
    if slm is not None and slm.idle:
        meter.slm = None  # nothing left to add: its code leaves the heap
        unload("soundmeter", "weighting", "events", "bands")
    return off


def equip(meter, mic_sensitivity_dbfs, bands=False, events=None):
    """Add the calibrated levels (node.weighting) to the meter (node.dsp.LevelMeter), and the
    octave bands and noise events (node.soundmeter) when asked for. MemoryError if the heap
    cannot hold them (no part is added then)."""
    meter.slm = None
    if bands or events is not None:
        from node.soundmeter import SoundMeter

        slm = SoundMeter(meter.wide, meter.rate_hz, meter.floor_dbfs, bands, events)
        slm.calibrate(mic_sensitivity_dbfs)
    else:
        from node.weighting import Weighting

        slm = Weighting(meter.rate_hz, meter.wide, mic_sensitivity_dbfs, meter.floor_dbfs)
    meter.slm = slm


def _need(sensitivity, bands, events):
    """The heap the meter's parts take (BYTES), for the parts given."""
    need = 0 if sensitivity is None else CALIBRATED_BYTES
    if bands or events is not None:
        need += PARTS_BYTES + (BANDS_BYTES if bands else 0)
        if events is not None and sensitivity is not None:
            need += EVENTS_BYTES
    return need


def _equip(meter, sensitivity, audio):
    """follow()'s parts made: what is off for want of memory, in words, or None."""
    bands = audio["bands"]
    events = None
    if audio["event_threshold_dba"] is not None:
        events = (audio["event_threshold_dba"], audio["event_hysteresis_db"],
                  audio["event_min_s"])
        if sensitivity is None:
            log("sound", "noise events wait for a calibrated microphone (mic_sensitivity_dbfs"
                " or the calibrate command)")
    gc.collect()
    free = gc.mem_free()
    off = []  # what is turned off, and why the first of them was
    reason = None
    while True:
        need = _need(sensitivity, bands, events)
        why = "%d bytes free, %d needed, %d kept for the rest" % (free, need, HEADROOM_BYTES)
        if free - need >= HEADROOM_BYTES:
            try:
                equip(meter, sensitivity, bands, events)
                gc.collect()
                left = gc.mem_free()
                if left >= HEADROOM_BYTES:
                    log("sound", "the meter's parts: %d bytes free before, %d after"
                        % (free, left))
                    return _off_words(off, reason)
                why = "%d bytes left with them, under %d" % (left, HEADROOM_BYTES)
            except MemoryError:
                why = "the heap has the bytes, not in the pieces they need"
            meter.slm = None
            unload("soundmeter", "weighting", "events", "bands", "bandpass", "spl")
            gc.collect()
            free = gc.mem_free()
        if bands:
            bands, what = False, "the octave bands"
        elif events is not None and sensitivity is not None:
            events, what = None, "noise events"
        else:
            log("sound", "not enough memory for the calibrated levels (%s): dBFS only" % why)
            off.append("the calibrated levels")
            return _off_words(off, reason or why)
        log("sound", "not enough memory for %s (%s): measuring without" % (what, why))
        off.append(what)
        reason = reason or why
        if sensitivity is None and events is None:
            return _off_words(off, reason)


def _off_words(off, why):
    """What _equip turned off and why, for a command's reply; None when nothing is off."""
    return "%s (not enough memory: %s)" % (", ".join(off), why) if off else None


def start(sound, seconds, done):
    """Measure sound's microphone for `seconds` beside its intervals, then done(...) as
    Measurement.finish() says; sound feeds and ends it (node.sound.Sound.run)."""
    settings = sound.settings
    sound.measurement = Measurement(settings["bits"], settings["rate_hz"], seconds, done)


class Measurement:
    """Frames from add() until `seconds` have passed (due()); then finish() tells done()
    ((rms_dbfs, peak_dbfs, measured_pct), or None when no audio came)."""

    def __init__(self, bits, rate_hz, seconds, done):
        self._meter = LevelMeter(bits)
        self._rate_hz = rate_hz
        self._done = done
        self._samples = 0
        self._sample_bytes = bits // 8
        self._started_ms = time.ticks_ms()
        self._ms = seconds * 1000

    def add(self, buf, nbytes):
        self._meter.add(buf, nbytes)
        self._samples += nbytes // self._sample_bytes

    def due(self, now_ms):
        return time.ticks_diff(now_ms, self._started_ms) >= self._ms

    def finish(self, now_ms):
        levels = self._meter.read()
        if levels is None:
            self._done(None)
            return
        # what the microphone gave over what it should have: under 100 when the DMA ring
        # overflowed while the loop was late
        expected = time.ticks_diff(now_ms, self._started_ms) * self._rate_hz // 1000
        self._done((levels["rms_dbfs"], levels["peak_dbfs"],
                    min(100, 100 * self._samples // max(1, expected))))
