"""The level meter's setup and calibration, kept out of node.sound and node.wiring because they
run now and then: the meter for the audio config (at boot), a measurement beside the running
intervals (RMS and peak for some seconds, for the calibrate command), and putting a new
sensitivity in force. Imported when one of them is needed, unloaded when it is done."""

import gc
import time

from node.dsp import LevelMeter
from node.log import log


def meter_for(audio):
    """The level meter for the audio config: bands and events only when asked for (their code and
    memory are spent only then); events need a calibrated microphone, and wait for one. Where
    the heap cannot hold what was asked for, the octave bands go first (about 7 KB), then the
    events (2 KB), each with a log line: a node that measures less beats one in a boot loop."""
    bands = audio["bands"]
    events = None
    if audio["event_threshold_dba"] is not None:
        events = (audio["event_threshold_dba"], audio["event_hysteresis_db"],
                  audio["event_min_s"])
        if audio["mic_sensitivity_dbfs"] is None:
            log("sound", "noise events wait for a calibrated microphone (mic_sensitivity_dbfs"
                " or the calibrate command)")
    while True:
        try:
            return LevelMeter(audio["bits"], audio["rate_hz"], audio["mic_sensitivity_dbfs"],
                              bands, events)
        except MemoryError:
            if not bands and events is None:
                raise
            log("sound", "not enough memory for %s: measuring without"
                % ("the octave bands" if bands else "noise events"))
            if bands:
                bands = False
            else:
                events = None
            gc.collect()


def start(sound, seconds, done):
    """Measure sound's microphone for `seconds` beside its intervals, then done(...) as
    Measurement.finish() says; sound feeds and ends it (node.sound.Sound.run)."""
    settings = sound.settings
    sound.measurement = Measurement(settings["bits"], settings["rate_hz"], seconds, done)


def recalibrate(meter, sensitivity):
    """Put a new sensitivity (None: none) in force in the meter, or say why not."""
    try:
        meter.calibrate(sensitivity)
    except MemoryError:
        # The weighting's ~4 KB are not there in one piece now; at boot they are.
        meter.calibrate(None)
        log("sound", "no memory for the calibrated levels now: they start at the next boot")
        return
    log("sound", "sensitivity %s dBFS: %s" % (
        sensitivity, "dBFS only" if sensitivity is None else "dB SPL levels"))


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
