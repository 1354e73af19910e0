"""node.weighting's C and Z levels and the LA10/LA50/LA90 percentiles, under the unix port, against
the IEC 61672-1 analytic C curve, scipy's bilinear C filter and numpy's percentile of a float
reference Fast-level series (the A-weighting and the int32 model are in test_dsp.py)."""

import math

import numpy as np
import pytest
from scipy import signal

from tests.unit import dsp_model as model
from tests.unit.audio import FULL, SENS, noise, pcm, run, spl, tone
from tests.unit.test_dsp import F1, F4, a_filter_ref

# IEC 61672-1:2002 table 2, class 1 tolerance limits (+, -) at octave centres
CLASS1 = {
    31.5: (2.0, 2.0), 63: (1.5, 1.5), 125: (1.5, 1.5), 250: (1.4, 1.4), 500: (1.4, 1.4),
    1000: (1.1, 1.1), 2000: (1.6, 1.6), 4000: (1.6, 1.6), 8000: (2.1, 3.1), 16000: (3.5, 17.0),
}
SUB_PER_S = 252  # node.weighting's sub-blocks of rate/252 samples, one Fast update each


def c_curve_db(f):
    """The analytic C-weighting of IEC 61672-1, 0 dB at 1 kHz."""
    def rc(f):
        f2 = np.asarray(f, dtype=float) ** 2
        return F4**2 * f2 / ((f2 + F1**2) * (f2 + F4**2))
    return 20 * np.log10(rc(f) / rc(1000.0))


def c_filter_ref(x, rate):
    """Float64 C-weighting: the analog C curve by scipy's bilinear transform, 0 dB at 1 kHz."""
    poles = -2 * np.pi * np.array([F1, F1, F4, F4])
    z, p, k = signal.bilinear_zpk(np.zeros(2), poles, 1.0, rate)
    sos = signal.zpk2sos(z, p, k)
    _, h = signal.sosfreqz(sos, worN=[1000.0], fs=rate)
    return signal.sosfilt(sos, x) / abs(h[0])


def to_spl(mean_square, bits):
    return spl(10 * np.log10(mean_square) - 20 * math.log10(FULL[bits]))


@pytest.mark.parametrize("rate", [16000, 48000])
def test_c_weighting_at_octave_centres_within_class_1(mpy, tmp_path, rate):
    """Tones at the octave centres the rate allows (2 s each, the second second read): LCeq
    minus the tone's level against the analytic C curve. The top octave deviates by the
    bilinear transform's warping near Nyquist, as A does (within class 1 but 16 kHz at 48 kHz)."""
    freqs = [31.5, 63, 125, 250, 500, 1000, 2000, 4000] + ([8000, 16000] if rate == 48000 else [])
    x = np.concatenate([tone(f, -20, 2 * rate, rate, 16) for f in freqs])
    results, _ = run(mpy, tmp_path, pcm(x, 16), 16, rate, SENS, frame=500, every=rate // 500)
    measured = np.array([lv["lceq_dbc"] - spl(lv["rms_dbfs"]) for lv in results[1::2]])
    err = measured - c_curve_db(freqs)
    err_db = {f: round(float(e), 2) for f, e in zip(freqs, err, strict=True)}
    print(f"C-weighting error at {rate // 1000} kHz (dB):", err_db)
    for f, e in err_db.items():
        high, low = CLASS1[f]
        assert -low <= e <= high, (f, e)
    assert abs(err_db[1000]) < 0.02
    assert np.all(np.abs(err[freqs.index(31.5):freqs.index(4000)]) < 0.1)


@pytest.mark.parametrize("bits", [16, 32])
@pytest.mark.parametrize("rate", [16000, 48000])
def test_lceq_lcpeak_lzeq_against_references(mpy, tmp_path, bits, rate):
    """Noise with low and high tones: LCeq and LCpeak against scipy's C filter, LZeq the
    unweighted level on the SPL scale."""
    n = 3 * rate
    x = (tone(40, -15, n, rate, bits) + tone(3000, -22, n, rate, bits)
         + noise(-30, n, bits, seed=8, pink=True))
    results, _ = run(mpy, tmp_path, pcm(x, bits), bits, rate, SENS, frame=500, every=rate // 500)
    y = c_filter_ref(x.astype(float), rate)
    m = (rate + 126) // 252
    for second in (1, 2):  # the first holds the filters' start
        a, b = second * rate // m * m, (second + 1) * rate // m * m
        lv = results[second]
        eq = to_spl(np.mean(y[a:b] ** 2), bits)
        peak = to_spl(np.max(np.abs(y[a:b])) ** 2, bits)
        print(f"{bits}-bit {rate} Hz s{second}: LCeq {lv['lceq_dbc']:.3f} ref {eq:.3f}, "
              f"LCpeak {lv['lcpeak_dbc']:.3f} ref {peak:.3f}")
        assert lv["lceq_dbc"] == pytest.approx(eq, abs=0.1)
        assert lv["lcpeak_dbc"] == pytest.approx(peak, abs=0.1)
        assert lv["lzeq_dbz"] == pytest.approx(spl(lv["rms_dbfs"]), abs=1e-9)
        assert lv["lcpeak_dbc"] > lv["lceq_dbc"]


def fast_levels(x, rate, bits):
    """The reference Fast-level series: float A-weighting, energy per sub-block (aligned at the
    first sample, as the meter's), F = E at the first, then F += (E - F) / 32; dB(A) SPL."""
    y = a_filter_ref(x.astype(float), rate)
    m = (rate + SUB_PER_S // 2) // SUB_PER_S
    e = np.sum(y[: len(y) // m * m].reshape(-1, m) ** 2, axis=1)
    f = np.empty_like(e)
    f[0] = e[0]
    for i in range(1, len(e)):
        f[i] = f[i - 1] + (e[i] - f[i - 1]) / 32
    return to_spl(f / m, bits)


def varying(rate, seconds, bits, seed, seg_s=0.5, lo=-65, hi=-10):
    """Pink noise whose level jumps every seg_s to a random level in [lo, hi] dBFS."""
    rng = np.random.default_rng(seed)
    seg = int(seg_s * rate)
    levels = rng.uniform(lo, hi, int(seconds / seg_s))
    base = noise(0, seg * len(levels), bits, seed=seed, pink=True).astype(float)
    gain = np.repeat(10 ** (levels / 20), seg)
    return np.clip(np.round(base * gain), -FULL[bits], FULL[bits] - 1).astype(np.int64)


@pytest.mark.parametrize(("bits", "rate"), [(16, 16000), (32, 48000)])
def test_percentiles_within_0_1_db_of_numpy(mpy, tmp_path, bits, rate):
    """LA10, LA50 and LA90 of a 20 s interval against numpy.percentile of the float reference's
    Fast-level series (LA10: exceeded 10 % of the time, the 90th percentile)."""
    x = varying(rate, 20, bits, seed=11)
    (lv,), _ = run(mpy, tmp_path, pcm(x, bits), bits, rate, SENS, frame=512)
    ref = fast_levels(x, rate, bits)
    want = dict(zip(("la90_dba", "la50_dba", "la10_dba"), np.percentile(ref, [10, 50, 90]),
                    strict=True))
    err = {k: round(lv[k] - v, 3) for k, v in want.items()}
    print(f"{bits}-bit {rate} Hz, {len(ref)} Fast levels: ours",
          {k: round(lv[k], 2) for k in want}, "numpy", {k: round(v, 2) for k, v in want.items()},
          "error (dB)", err)
    assert all(abs(e) <= 0.1 for e in err.values()), err
    assert lv["lafmin_dba"] <= lv["la90_dba"] <= lv["la50_dba"] <= lv["la10_dba"] \
        <= lv["lafmax_dba"]


def test_percentiles_of_a_long_interval_keep_to_0_1_db(mpy, tmp_path):
    """360 s at 16 kHz, 290 of them a steady tone of 4 cycles per sub-block (so its Fast level
    stays in one bin): that bin passes 65535 counts, the histogram halves and counts every
    second sub-block after that; still within 0.1 dB of numpy on the full series, in the same
    memory."""
    rate = 16000
    x = np.concatenate([varying(rate, 60, 16, seed=12, seg_s=2.0),
                        tone(4 * rate / 63, -35, 290 * rate, rate, 16),
                        varying(rate, 10, 16, seed=13, seg_s=2.0)])
    (lv,), states = run(mpy, tmp_path, pcm(x, 16), 16, rate, SENS, frame=1024, states=True)
    assert states[-1]["a"][model.K["_A_HSHIFT"]] == 1  # it halved once
    ref = fast_levels(x, rate, 16)
    want = dict(zip(("la90_dba", "la50_dba", "la10_dba"), np.percentile(ref, [10, 50, 90]),
                    strict=True))
    err = {k: round(lv[k] - v, 3) for k, v in want.items()}
    print(f"360 s interval, {len(ref)} Fast levels, halved once: error (dB)", err)
    assert all(abs(e) <= 0.1 for e in err.values()), err


def test_percentiles_of_a_steady_tone_and_of_silence(mpy, tmp_path):
    """A steady tone puts every count in one bin (all three read its level, the bin's centre);
    silence reads the floor."""
    rate = 16000
    x = tone(1000, -30, 4 * rate, rate, 16)
    results, _ = run(mpy, tmp_path, pcm(x, 16), 16, rate, SENS, frame=500, every=2 * rate // 500)
    lv = results[1]
    for key in ("la10_dba", "la50_dba", "la90_dba"):
        assert lv[key] == pytest.approx(lv["laeq_dba"], abs=0.06), (key, lv)
    (quiet,), _ = run(mpy, tmp_path, bytes(2 * rate), 16, rate, SENS)
    floor = spl(-20 * math.log10(FULL[16]))
    for key in ("la10_dba", "la50_dba", "la90_dba", "lceq_dbc", "lcpeak_dbc", "lzeq_dbz"):
        assert quiet[key] == pytest.approx(floor, abs=1e-9), key
