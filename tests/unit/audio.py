"""Signals and the MicroPython runner shared by the sound tests (test_dsp, test_bands,
test_events): integer samples made with numpy, written as raw PCM, fed to a LevelMeter by
dsp_run.py; the same samples give the float references."""

import json
import math

import numpy as np

from tests.conftest import REPO

RUN = REPO / "tests" / "unit" / "dsp_run.py"
SENS = -26.0  # INMP441
SINE_DB = 20 * math.log10(math.sqrt(2))  # datasheet dBFS put a full-scale sine at 0 dBFS
FULL = {16: 32768, 32: 1 << 23}  # full scale in sample units (32-bit slots carry 24 bits)


def tone(freq, rms_dbfs, n, rate, bits, phase=0.3):
    amp = FULL[bits] * math.sqrt(2) * 10 ** (rms_dbfs / 20)
    return np.round(amp * np.sin(2 * np.pi * freq * np.arange(n) / rate + phase)).astype(np.int64)


def noise(rms_dbfs, n, bits, seed=1, pink=False):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n)
    if pink:
        spec = np.fft.rfft(x)
        spec[1:] /= np.sqrt(np.arange(1, len(spec)))
        spec[0] = 0
        x = np.fft.irfft(spec, n)
    x *= FULL[bits] * 10 ** (rms_dbfs / 20) / np.sqrt(np.mean(x**2))
    return np.clip(np.round(x), -FULL[bits], FULL[bits] - 1).astype(np.int64)


def pcm(samples, bits):
    """Raw I2S bytes: int16 LE, or 32-bit LE slots with the 24-bit data left-justified."""
    s = np.asarray(samples, dtype=np.int64)
    assert s.min() >= -FULL[bits] and s.max() < FULL[bits]
    if bits == 16:
        return s.astype("<i2").tobytes()
    return (s << 8).astype("<i4").tobytes()


def rms_ref_dbfs(samples, bits):
    s = np.asarray(samples, dtype=np.float64)
    return 10 * math.log10(np.mean(s * s)) - 20 * math.log10(FULL[bits])


def spl(dbfs, sens=SENS):
    """dB SPL of a level in our dBFS (full-scale square = 0 dBFS) for a datasheet sensitivity."""
    return dbfs + SINE_DB + 94 - sens


def run_all(mpy, tmp_path, data, bits, rate, sens=None, frame=512, every=0, states=False,
            bands=False, events=None):
    """Feed raw PCM bytes to a LevelMeter under MicroPython: (read()s, states, events)."""
    path = tmp_path / f"in{bits}_{rate}.pcm"
    path.write_bytes(data)
    size = frame * bits // 8
    ev = "none" if events is None else ",".join(str(x) for x in events)
    args = [path, bits, rate, "none" if sens is None else sens, size, every, int(states),
            int(bands), ev]
    lines = [json.loads(line) for line in mpy(RUN, *args).stdout.splitlines()]
    kinds = {"states": [], "event": [], "read": []}
    for x in lines:
        kinds["states" if x and "states" in x else "event" if x and "event" in x else "read"] \
            .append(x)
    return kinds["read"], kinds["states"], kinds["event"]


def run(mpy, tmp_path, data, bits, rate, sens=None, frame=512, every=0, states=False):
    """Feed raw PCM bytes to a LevelMeter under MicroPython; its read()s and (opt.) states."""
    results, st, _ = run_all(mpy, tmp_path, data, bits, rate, sens, frame, every, states)
    return results, st
