"""The meter's dBFS and dB SPL: how a microphone's sensitivity relates them (pure; the meter and
the calibrate command both use it)."""

REF_SPL_DB = 94.0  # the SPL at which a microphone reads its sensitivity in dBFS ...
SINE_DB = 3.010299956639812  # ... on datasheets' scale, where a full-scale sine is 0 dBFS


def offset_db(mic_sensitivity_dbfs):
    """What turns the meter's dBFS (full-scale square = 0, sine -3.01) into dB SPL for a
    datasheet sensitivity (dBFS at 94 dB SPL on the datasheets' scale, sine = 0 dBFS)."""
    return REF_SPL_DB + SINE_DB - mic_sensitivity_dbfs


def sensitivity_dbfs(rms_dbfs, spl_db):
    """The sensitivity that makes a level of rms_dbfs read spl_db (a calibrator's level)."""
    return rms_dbfs + SINE_DB + REF_SPL_DB - spl_db
