"""node.bands under the unix port: the design against scipy, the IEC 61260-1 class 1 octave mask
(the bank's exact response, and tones through the meter), tone and pink-noise levels, silence,
the int32 model (tests/unit/bands_model.py) word for word on worst-case inputs, on both binaries.
"""

import json
import math

import numpy as np
import pytest
from scipy import signal

from tests.unit import bands_model as model
from tests.unit.audio import FULL, SENS, noise, pcm, run_all, spl, tone
from tests.unit.dsp_model import Int32

G = 10**0.3
K = model.K
BIAS = K["_BIAS"]
DESIGNS = {48000: ("cheby1", 3, 0.1, 0.725, 8), 16000: ("butter", 4, 0.0, 1.0, 7)}
NOMINAL = ("63", "125", "250", "500", "1000", "2000", "4000", "8000")
# IEC 61260-1:2014 table 1, class 1, octave bands: breakpoints (exponent of G) and the limits of
# the relative attenuation, (least, most) dB; between breakpoints, linear in log frequency.
MASK = [(0, -0.3, 0.3), (1 / 8, -0.3, 0.4), (1 / 4, -0.3, 0.6), (3 / 8, -0.3, 1.3),
        (1 / 2, 2.0, 5.0), (1, 17.5, math.inf), (2, 42.0, math.inf), (3, 61.0, math.inf),
        (4, 70.0, math.inf)]


def mask(x):
    """(least, most) attenuation at |exponent| x: in the passband x < 1/2 the upper limits join
    linearly; beyond the band edge the lower limits, 70 dB from 4 octaves on."""
    xs = [m[0] for m in MASK]
    if x < 0.5:
        return -0.3, float(np.interp(x, xs[:5], [m[2] for m in MASK[:5]]))
    if x == 0.5:
        return 2.0, 5.0
    return float(np.interp(x, xs[4:], [m[1] for m in MASK[4:]])), math.inf


SHOW = """
import json, sys
from node.bands import OctaveBank
b = OctaveBank(int(sys.argv[1]), 0)
print(json.dumps({"state": list(b.state), "scale": b._scale, "keys": list(b.keys)}))
"""


@pytest.fixture(scope="module", params=[16000, 48000])
def bank(request, mpy):
    rate = request.param
    out = json.loads(mpy(SHOW, rate).stdout)
    levels = []
    for lev in range(len(out["keys"])):
        at = K["_K_HEAD"] + K["_LW"] * lev
        s = out["state"][at : at + K["_LW"]]
        c = [v - BIAS for v in s[K["_B_C"] : K["_B_C"] + 8]]
        n = 4 if s[K["_B_FOUR"]] else 3
        levels.append({
            "sections": [(c[2 * k], c[2 * k + 1]) for k in range(n)],
            "shifts": s[K["_B_SH"] : K["_B_SH"] + 3],
            "hb": [v - BIAS for v in s[K["_B_HB"] : K["_B_HB"] + 2]],
            "rate": rate / 2**lev,
            "centre": 1000 * G ** (len(out["keys"]) - 5 - lev),
        })
    return rate, levels, out


def scipy_sections(rate, lev):
    """The reference design of one level: scipy's analog prototype band-pass with prewarped
    edges, its bilinear transform, the pole pairs as (a1, a2) in Q10, ascending a2."""
    kind, order, ripple, octaves, nbands = DESIGNS[rate]
    fs = rate / 2**lev
    fm = 1000 * G ** (nbands - 5 - lev)
    edges = [2 * fs * math.tan(math.pi * fm * G ** (s * octaves / 2) / fs) for s in (-1, 1)]
    if kind == "cheby1":
        z, p, k = signal.cheby1(order, ripple, edges, "bandpass", analog=True, output="zpk")
    else:
        z, p, k = signal.butter(order, edges, "bandpass", analog=True, output="zpk")
    _, pd, _ = signal.bilinear_zpk(z, p, k, fs)
    pd = pd[np.imag(pd) > 0]
    return sorted(((round(-2 * q.real * 1024), round(abs(q) ** 2 * 1024)) for q in pd),
                  key=lambda c: c[1])


def half_band(hb, f, fs):
    w = 2 * np.pi * np.asarray(f) / fs
    z2 = np.exp(-2j * w)
    a = [(c / 4096 + z2) / (1 + c / 4096 * z2) for c in hb]
    return np.abs(a[0] + np.exp(-1j * w) * a[1]) / 2


def band_pass(sections, f, fs):
    z1 = np.exp(-2j * np.pi * np.asarray(f) / fs)
    h = np.ones_like(z1)
    for a1, a2 in sections:
        h = h * (1 - z1**2) / (1 + a1 / 1024 * z1 + a2 / 1024 * z1**2)
    return np.abs(h)


def fold(f, fs):
    f = np.mod(f, fs)
    return np.where(f > fs / 2, fs - f, f)


def response(levels, lev, f):
    """|H| of the band of level `lev` to a tone of f at the input rate: the half-bands of the
    levels above (the tone aliased after each decimation), then the band-pass."""
    f = np.asarray(f, dtype=float)
    g = np.ones_like(f)
    for above in range(lev):
        fs = levels[above]["rate"]
        g = g * half_band(levels[above]["hb"], f, fs)
        f = fold(f, fs / 2)
    return g * band_pass(levels[lev]["sections"], f, levels[lev]["rate"])


def test_design_is_scipys(bank):
    rate, levels, _ = bank
    for lev, level in enumerate(levels):
        ours = level["sections"]
        ref = scipy_sections(rate, lev)
        assert len(ours) == len(ref)
        for a, b in zip(ours, ref, strict=True):
            assert abs(a[0] - b[0]) <= 1 and abs(a[1] - b[1]) <= 1, (lev, ours, ref)


def test_bank_within_the_class_1_mask(bank):
    """The exact response of every band (quantised coefficients, the half-bands' aliasing) on a
    dense grid to Nyquist, against the mask; the breakpoints' attenuations are printed."""
    rate, levels, _ = bank
    f = np.geomspace(10, rate / 2, 20000)
    rows = []
    worst = math.inf
    for lev, level in enumerate(levels):
        fm = level["centre"]
        att = -20 * np.log10(response(levels, lev, f) / response(levels, lev, [fm])[0] + 1e-300)
        x = np.abs(np.log(f / fm) / np.log(G))
        for xi, ai in zip(x, att, strict=True):
            least, most = mask(xi)
            worst = min(worst, ai - least, most - ai)
        marks = {}
        for xb in (-2, -1, -0.5, 0.5, 1, 2):
            fb = fm * G**xb
            if fb < rate / 2:
                marks[xb] = round(float(-20 * np.log10(response(levels, lev, [fb])[0]
                                                       / response(levels, lev, [fm])[0])), 1)
        rows.append((NOMINAL[len(levels) - 1 - lev], marks))
    print(f"\n{rate} Hz: attenuation (dB) at band edges (+-1/2), +-1 and +-2 octaves "
          f"(class 1: 2..5, >= 17.5, >= 42); worst margin to the mask {worst:.2f} dB")
    for key, marks in reversed(rows):
        print(f"  {key:>5} Hz: {marks}")
    assert worst >= 0.2


def tone_ladder(rate):
    """Tones on the half-octave ladder 1000 * G**(k/2) below Nyquist: every band's centre, band
    edges, and the points one and two octaves away."""
    return [1000 * G ** (k / 2) for k in range(-14, 13) if 1000 * G ** (k / 2) < rate * 0.45]


def test_tones_through_the_meter(mpy, tmp_path, bank):
    """Each tone 2 s at -10 dBFS, the second second read. Centres read the tone's level within
    0.5 dB (dB SPL with a sensitivity); edges and one and two octaves away keep the mask."""
    rate, levels, _ = bank
    freqs = tone_ladder(rate)
    x = np.concatenate([tone(f, -10, 2 * rate, rate, 16) for f in freqs])
    results, _, _ = run_all(mpy, tmp_path, pcm(x, 16), 16, rate, SENS, frame=500,
                            every=rate // 500, bands=True)
    reads = [dict(lv["bands_dbz"]) for lv in results[1::2]]
    nb = len(levels)
    errors, table = {}, {}
    for lev in range(nb):
        key = NOMINAL[nb - 1 - lev]
        fm = levels[lev]["centre"]
        centre = min(range(len(freqs)), key=lambda i: abs(freqs[i] - fm))
        level = reads[centre][key]
        errors[key] = round(level - spl(-10), 3)
        marks = {}
        for i, f in enumerate(freqs):
            half_octaves = round(2 * math.log(f / fm) / math.log(G))
            if half_octaves in (-4, -2, -1, 1, 2, 4):
                att = level - reads[i][key]
                least, most = mask(abs(half_octaves) / 2)
                marks[half_octaves / 2] = round(att, 1)
                assert least - 0.1 <= att <= most + 0.1, (key, half_octaves / 2, att)
        table[key] = marks
    print(f"\n{rate} Hz: tones at the centres read (dB, vs the tone's SPL):", errors)
    print("  measured attenuation (dB) at half-octave steps from each centre:")
    for key, marks in table.items():
        print(f"  {key:>5} Hz: {marks}")
    assert all(abs(e) <= 0.5 for e in errors.values()), errors


def exact_band_levels(x, rate, bits, nbands):
    """The ideal octave bands of x: its FFT power between the exact base-10 band edges."""
    spec = np.abs(np.fft.rfft(x.astype(float))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / rate)
    out = {}
    for j in range(nbands):
        fm = 1000 * G ** (j - 4)
        sel = (f >= fm * G**-0.5) & (f < fm * G**0.5)
        power = 2 * spec[sel].sum() / len(x) ** 2  # mean square of that part of x
        out[NOMINAL[j]] = spl(10 * math.log10(power) - 20 * math.log10(FULL[bits]))
    return out


@pytest.mark.parametrize("bits", [16, 32])
def test_pink_noise_bands_within_1_db(mpy, tmp_path, bank, bits):
    """20 s of pink noise: every band within 1 dB of the ideal octave band of the same samples
    (and so of each other: pink noise has equal energy per octave)."""
    rate, levels, _ = bank
    x = noise(-20, 20 * rate, bits, seed=21, pink=True)
    (lv,), _, _ = run_all(mpy, tmp_path, pcm(x, bits), bits, rate, SENS, frame=512, bands=True)
    ours = dict(lv["bands_dbz"])
    ideal = exact_band_levels(x, rate, bits, len(levels))
    err = {k: round(ours[k] - ideal[k], 2) for k in ours}
    print(f"\npink noise {bits}-bit {rate} Hz: bands {({k: round(v, 1) for k, v in ours.items()})}"
          f", minus ideal {err}, spread {max(ours.values()) - min(ours.values()):.2f} dB")
    assert all(abs(e) <= 1.0 for e in err.values()), err
    assert max(ours.values()) - min(ours.values()) <= 2.0


def test_silence_after_sound_reads_the_floor(mpy, tmp_path, bank):
    """Loud tones in every band, then silence: no band keeps ringing (no limit cycle), every band
    reads the format's floor; without a sensitivity the key is bands_dbfs."""
    rate, levels, _ = bank
    loud = np.concatenate([tone(lv["centre"], -6, rate // 4, rate, 16) for lv in levels])
    x = np.concatenate([loud, np.zeros(4 * rate, np.int64)])
    results, _, _ = run_all(mpy, tmp_path, pcm(x, 16), 16, rate, None, frame=500,
                            every=rate // 500, bands=True)
    last = dict(results[-1]["bands_dbfs"])
    assert list(last) == list(NOMINAL[: len(levels)])
    assert all(v == pytest.approx(-20 * math.log10(FULL[16]), abs=1e-9) for v in last.values())


def test_frame_sizes_do_not_change_the_result(mpy, tmp_path, bank):
    """Odd frames (the held-over sample at every level) and frames over the 512-sample chunk
    give the same band energies, to the last bit, as even ones."""
    rate, _, _ = bank
    x = noise(-25, rate, 16, seed=5)
    runs = [run_all(mpy, tmp_path, pcm(x, 16), 16, rate, None, frame=f, bands=True)[0][0]
            for f in (512, 333, 1001, 64)]
    assert all(r["bands_dbfs"] == runs[0]["bands_dbfs"] for r in runs)


def worst_inputs(levels, rate, bits, n):
    """Full-scale inputs for the int32 check: each top-level section driven to its L1 bound
    (signs of its cascade's impulse response, backwards), a full-scale Nyquist square, a
    full-scale square at each band's centre (the deeper levels at their largest), random
    full-scale signs."""
    full = FULL[bits]
    hi, lo = full - 1, -full
    segs = []
    top = levels[0]
    h = np.zeros(n)
    h[0] = 1
    for k, (a1, a2) in enumerate(top["sections"]):
        if k:
            h = h / 2 ** top["shifts"][k - 1]
        h = signal.lfilter([1, 0, -1], [1, a1 / 1024, a2 / 1024], h)
        segs.append(np.where(h[::-1] >= 0, hi, lo))
    segs.append(np.tile([hi, lo], n // 2))
    t = np.arange(n)
    for lv in levels:
        segs.append(np.where(np.sin(2 * np.pi * t * lv["centre"] / rate) >= 0, hi, lo))
    rng = np.random.default_rng(3)
    segs.append(np.where(rng.random(n) < 0.5, hi, lo))
    return segs


@pytest.mark.parametrize("bits", [16, 32])
def test_worst_case_exact_and_int32_safe(mpy_each, tmp_path, bank, bits):
    """The viper state equals the int32 model's after each segment of full-scale worst cases,
    on the 64-bit unix port and on the 32-bit port (int32 as on the ESP32)."""
    rate, levels, _ = bank
    n = 2000
    segs = worst_inputs(levels, rate, bits, n)
    x = np.concatenate(segs)
    data = pcm(x, bits)
    frame = 500
    results, states, _ = run_all(mpy_each, tmp_path, data, bits, rate, None, frame,
                                 every=n // frame, states=True, bands=True)
    st = list(states[0]["b"])
    ck = Int32()
    size = bits // 8
    chunk = K["_CHUNK"]
    for seg in range(len(segs)):
        for f0 in range(seg * n, (seg + 1) * n, frame):
            for c0 in range(f0, f0 + frame, chunk):
                c1 = min(c0 + chunk, f0 + frame)
                st[K["_K_CNT"]] = c1 - c0
                model.bank(st, data[c0 * size : c1 * size], ck)
        st[K["_K_OFF"]] = states[seg + 1]["b"][K["_K_OFF"]]  # the call's own bookkeeping
        assert st == states[seg + 1]["b"], f"state differs after segment {seg}"
        for lev in range(len(levels)):  # read() empties the sums
            at = K["_K_HEAD"] + K["_LW"] * lev
            for k in range(5):
                st[at + K["_B_LO"] + k] = 0
    biggest = {k: v for k, v in ck.peak.items() if k in ("ay", "ay1", "ay2", "hb_mul", "y1")}
    print(f"\n{rate} Hz {bits}-bit worst cases: largest |value| log2",
          {k: round(math.log2(v), 2) for k, v in biggest.items() if v})
    assert ck.peak["ay"] < 2**30.6 and ck.peak["hb_mul"] < 2**30.3
    for lv in results:
        assert all(math.isfinite(v) for _, v in lv["bands_dbfs"])
