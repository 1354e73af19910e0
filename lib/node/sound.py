"""The I2S task: read frames without blocking the loop, measure them, queue a level per interval,
a reading per noise event, and measure for the calibrate command."""

import asyncio
import time

from node import unload
from node.log import log


class Sound:
    """Owns the I2S microphone; frames go through the viper level meter, levels to the outbox."""

    """`settings` is the config's "audio" section as in force: `publish_interval_s` is read at
    every level, so a `set` command takes effect from the next one on. `ring_samples` is what
    the I2S DMA ring holds (board.mic_ring_samples(), the size board.microphone() gives it).
    Noise events go to `event_topic`.
    """

    def __init__(self, i2s, meter, settings, outbox, topic, event_topic, beat, ring_samples):
        self._i2s = i2s
        self.meter = meter
        self.settings = settings
        self._sample_bytes = settings["bits"] // 8
        self._rate_hz = settings["rate_hz"]
        self._frame_samples = settings["frame_samples"]
        # Samples short of the expected count by less than the ring holds may still be on
        # their way.
        self._slack_samples = ring_samples
        # Allocated once: the frame path runs hundreds of times a second and must not feed the GC.
        self._buf = bytearray(self._frame_samples * self._sample_bytes)
        self._outbox = outbox
        self._topic = topic
        self._event_topic = event_topic
        self._beat = beat
        self.frames = 0
        # Samples the microphone produced but we never got (the DMA ring overflowed while the
        # loop was late), less what may still sit in the ring: small ints, kept per interval.
        self._interval_samples = 0
        self._deficit = 0
        self.measurement = None  # a node.measure.Measurement while calibrate measures

    def _lost_samples(self):
        # What the DMA ring can still hold is not lost.
        return max(0, self._deficit - self._slack_samples)

    @property
    def frames_missed(self):
        """Whole frames lost to overruns so far."""
        return self._lost_samples() // self._frame_samples

    def measure(self, seconds, done):
        """Measure the microphone's RMS and peak for `seconds` beside the running intervals
        (node.measure), then done((rms_dbfs, peak_dbfs, measured_pct)), or done(None)."""
        from node import measure

        measure.start(self, seconds, done)

    async def run(self):
        reader = asyncio.StreamReader(self._i2s)
        buf = self._buf
        meter = self.meter
        sample_bytes = self._sample_bytes
        started_ms = time.ticks_ms()
        due_ms = time.ticks_add(started_ms, self._interval_ms())
        while True:
            n = await reader.readinto(buf)
            # The I2S driver hands over whole samples; a ragged tail would shift every later one.
            n -= n % sample_bytes
            if n:
                meter.add(buf, n)
                self.frames += 1
                self._interval_samples += n // sample_bytes
                if self.measurement is not None:
                    self.measurement.add(buf, n)
                slm = meter.slm
                if slm is not None and slm.events_on:
                    event = slm.event()
                    if event is not None:
                        self._publish_event(event)
            self._beat()
            now = time.ticks_ms()
            m = self.measurement
            if m is not None and m.due(now):
                self.measurement = None
                m.finish(now)
                m = None
                unload("measure")
            if time.ticks_diff(now, due_ms) >= 0:
                due_ms = time.ticks_add(due_ms, self._interval_ms())
                expected = time.ticks_diff(now, started_ms) * self._rate_hz // 1000
                lost_before = self._lost_samples()
                self._deficit += expected - self._interval_samples
                self._interval_samples = 0
                started_ms = now
                lost = self._lost_samples() - lost_before
                self._publish(100 - 100 * max(0, lost) / expected if expected > 0 else 0.0)

    def _interval_ms(self):
        return self.settings["publish_interval_s"] * 1000

    def _publish(self, measured_pct):
        """Queue the interval's levels; `measured_pct` is the share of its samples measured
        (less than 100 when the loop was so late that the DMA ring overflowed)."""
        levels = self.meter.read()
        if levels is None:
            log("sound", "no audio frames this interval")
            return
        # The contract's two levels first, then the calibrated ones and the bands it has.
        fields = [("rms_dbfs", levels["rms_dbfs"]), ("peak_dbfs", levels["peak_dbfs"])]
        slm = self.meter.slm
        if slm is not None:
            for key in slm.KEYS:
                if key in levels:
                    fields.append((key, levels[key]))
        fields.append(("measured_pct", measured_pct))
        seq = self._outbox.add(self._topic, fields)
        log("sound", "reading %d: %.2f dBFS rms, %.2f dBFS peak, %d frames"
            % (seq, levels["rms_dbfs"], levels["peak_dbfs"], levels["frames"]))

    def _publish_event(self, event):
        """Queue a noise event, dated by its start."""
        age_ms, fields = event
        seq = self._outbox.add(self._event_topic, fields, age_ms)
        log("sound", "event %d: %.2f s, LAFmax %.2f dB(A)" % (seq, fields[0][1], fields[1][1]))
