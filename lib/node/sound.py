"""The I2S task: read frames without blocking the loop, measure them, queue a level per interval."""

import asyncio
import time

from node.log import log

_WEIGHTED = ("laeq_dba", "lafmax_dba", "lafmin_dba")


class Sound:
    """Owns the I2S microphone; frames go through the viper level meter, levels to the outbox."""

    def __init__(self, i2s, meter, bits, rate_hz, frame_samples, publish_interval_s, outbox,
                 topic, beat, clock, ring_ms):
        self._i2s = i2s
        self._meter = meter
        self._sample_bytes = bits // 8
        self._rate_hz = rate_hz
        self._frame_samples = frame_samples
        # Samples short of the expected count by less than what the I2S DMA ring holds
        # (ring_ms, as board.microphone sizes it) may still be on their way.
        self._slack_samples = rate_hz * ring_ms // 1000
        # Allocated once: the frame path runs hundreds of times a second and must not feed the GC.
        self._buf = bytearray(frame_samples * self._sample_bytes)
        self._interval_ms = publish_interval_s * 1000
        self._outbox = outbox
        self._topic = topic
        self._beat = beat
        self._clock = clock
        self.frames = 0
        # Samples the microphone produced but we never got (the DMA ring overflowed while the
        # loop was late), less what may still sit in the ring: small ints, kept per interval.
        self._interval_samples = 0
        self._deficit = 0

    def set_interval(self, publish_interval_s):
        """Takes effect from the next level on (a command changed it)."""
        self._interval_ms = publish_interval_s * 1000

    @property
    def frames_missed(self):
        """Whole frames lost to overruns so far (what the DMA ring can still hold is not lost)."""
        return max(0, self._deficit - self._slack_samples) // self._frame_samples

    async def run(self):
        reader = asyncio.StreamReader(self._i2s)
        buf = self._buf
        meter = self._meter
        sample_bytes = self._sample_bytes
        started_ms = time.ticks_ms()
        due_ms = time.ticks_add(started_ms, self._interval_ms)
        while True:
            n = await reader.readinto(buf)
            # The I2S driver hands over whole samples; a ragged tail would shift every later one.
            n -= n % sample_bytes
            if n:
                meter.add(buf, n)
                self.frames += 1
                self._interval_samples += n // sample_bytes
            self._beat()
            now = time.ticks_ms()
            if time.ticks_diff(now, due_ms) >= 0:
                due_ms = time.ticks_add(due_ms, self._interval_ms)
                expected = time.ticks_diff(now, started_ms) * self._rate_hz // 1000
                self._deficit += expected - self._interval_samples
                self._interval_samples = 0
                started_ms = now
                self._publish()

    def _publish(self):
        levels = self._meter.read()
        if levels is None:
            log("sound", "no audio frames this interval")
            return
        # The contract's two levels first, then the dB(A) ones when the mic is calibrated.
        fields = [("rms_dbfs", levels["rms_dbfs"]), ("peak_dbfs", levels["peak_dbfs"])]
        for key in _WEIGHTED:
            if key in levels:
                fields.append((key, levels[key]))
        seq = self._outbox.add(self._topic, self._clock(), fields)
        log("sound", "reading %d: %.2f dBFS rms, %.2f dBFS peak, %d frames"
            % (seq, levels["rms_dbfs"], levels["peak_dbfs"], levels["frames"]))
