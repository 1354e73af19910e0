"""The sound level meter beyond RMS and peak with octave bands or noise events, for
node.dsp.LevelMeter: the calibrated levels (node.weighting), octave bands (node.bands) and noise
events (node.events) together, each imported only when the config (or a calibration) asks for
it. This module too: a node that measures dBFS only loads none of them, a calibrated one
without bands and events node.weighting alone."""

from node import unload


class SoundMeter:
    """What a LevelMeter adds to its RMS and peak: add() each frame after the meter's own
    kernel, read() into the meter's levels. `bands` on or off; `events` = (threshold dB(A),
    hysteresis dB, minimum s) or None, noise events once the microphone is calibrated."""

    # The sound reading's keys after the contract's two, in this order, when read() gives them.
    KEYS = ("laeq_dba", "lafmax_dba", "lafmin_dba", "la10_dba", "la50_dba", "la90_dba",
            "lceq_dbc", "lcpeak_dbc", "lzeq_dbz", "bands_dbz", "bands_dbfs")

    def __init__(self, wide, rate_hz, floor_dbfs, bands, events):
        self._wide = wide
        self._rate_hz = rate_hz
        self._floor_dbfs = floor_dbfs
        self._events = events
        self._w = None  # node.weighting.Weighting while calibrated
        self._ev = None  # node.events.EventDetector while calibrated and asked for
        self._bands = None
        self.spl_db = None
        self.sensitivity = None  # mic_sensitivity_dbfs in force: calibrate()
        if bands:
            from node.bands import OctaveBank

            self._bands = OctaveBank(rate_hz, wide)

    @property
    def idle(self):
        """Nothing to add: neither calibrated nor bands nor events asked for."""
        return self._w is None and self._bands is None and self._events is None

    def calibrate(self, mic_sensitivity_dbfs):
        """Measure with this sensitivity from now on (None: uncalibrated, dBFS only). Turning
        calibration on takes the weighting's memory (about 4 KB): MemoryError if it is not there."""
        self.sensitivity = mic_sensitivity_dbfs
        if mic_sensitivity_dbfs is None:
            self._w = self._ev = self.spl_db = None
            unload("weighting", "events")  # a calibration undone: their code leaves the heap
            return
        if self._w is None:
            from node.weighting import Weighting

            self._w = Weighting(self._rate_hz, self._wide, mic_sensitivity_dbfs,
                                self._floor_dbfs)
        else:
            self._w.calibrate(mic_sensitivity_dbfs)
        self.spl_db = self._w.spl_db
        if self._events is not None:
            if self._ev is None:
                from node.events import EventDetector

                self._ev = EventDetector(self._w, *self._events)
            else:
                self._ev.calibrate()

    @property
    def events_on(self):
        return self._ev is not None

    def add(self, buf, nbytes):
        """One frame, whole samples and aligned (the meter checked). No allocation."""
        if self._w is not None:
            self._w.add(buf, nbytes)
        if self._bands is not None:
            self._bands.add(buf, nbytes, 0 if self._ev is None else self._ev.active)

    def read(self, lv, samples):
        """Add the interval's levels to the meter's `lv` (bands: a list of (key, level))."""
        spl_db = self.spl_db
        if self._w is not None:
            self._w.read(lv, samples)
        if self._bands is not None:
            offset = 0.0 if spl_db is None else spl_db
            bands = self._bands.read(self._floor_dbfs + offset, offset)
            lv["bands_dbfs" if spl_db is None else "bands_dbz"] = bands

    def event(self):
        """A finished noise event: (age_ms of its start, [(key, value)]), or None."""
        if self._ev is None:
            return None
        taken = self._ev.take()
        if taken is not None and self._bands is not None:
            band = self._bands.event_band()
            if band is not None:
                taken[1].append(("dominant_band", band))
        return taken
