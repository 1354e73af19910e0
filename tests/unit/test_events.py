"""node.events under the unix port: noise events of a scripted signal against the scripted bursts
and against the float reference's Fast-level crossings (tests/unit/test_weighting.py's), and the
detector behind node.weighting's gate against its model hearing every sub-block."""

import json
import math

import numpy as np
import pytest

from tests.conftest import REPO
from tests.unit import events_model
from tests.unit.audio import FULL, SENS, noise, pcm, run_all, spl, tone
from tests.unit.test_dsp import a_filter_ref
from tests.unit.test_weighting import fast_levels

GATE_RUN = REPO / "tests" / "unit" / "events_run.py"

FAST_S = 0.125  # one Fast time constant
THRESHOLD, HYSTERESIS, MIN_S = 80.0, 3.0, 0.3


def dbfs_for(spl_db):
    """The rms dBFS of a sine that reads spl_db (our scale: full-scale square = 0 dBFS)."""
    return spl_db - spl(0.0)


def scripted(rate, bits):
    """Background pink noise 20 dB under the threshold; bursts of a 1 kHz tone (start s,
    length s, dB over the threshold): 3 dB over for 0.5 s and 2 s, one too short to count,
    one 15 dB over for 1 s."""
    bursts = [(1.0, 0.5, 3.0), (3.0, 2.0, 3.0), (6.5, 0.15, 3.0), (8.0, 1.0, 15.0)]
    n = 11 * rate
    x = noise(dbfs_for(THRESHOLD - 20), n, bits, seed=31, pink=True).astype(float)
    for start, length, over in bursts:
        a, b = int(start * rate), int((start + length) * rate)
        x[a:b] += tone(1000, dbfs_for(THRESHOLD + over), b - a, rate, bits)
    return np.clip(np.round(x), -FULL[bits], FULL[bits] - 1).astype(np.int64), bursts


def reference_events(x, rate, bits):
    """(start s, duration s, LAFmax, LAeq) from the float reference, by the node's rule."""
    m = (rate + 126) // 252
    levels = fast_levels(x, rate, bits)
    y = a_filter_ref(x.astype(float), rate)
    energy = np.sum(y[: len(y) // m * m].reshape(-1, m) ** 2, axis=1)
    out, i = [], 0
    while i < len(levels):
        if levels[i] < THRESHOLD:
            i += 1
            continue
        start = last = i
        while i < len(levels) and levels[i] >= THRESHOLD - HYSTERESIS:
            if levels[i] >= THRESHOLD:
                last = i
            i += 1
        if i == len(levels):
            break  # not over yet
        if (last - start + 1) * m / rate >= MIN_S:
            e = np.mean(energy[start : last + 1]) / m
            laeq = spl(10 * math.log10(e) - 20 * math.log10(FULL[bits]))
            # the sub-block's level belongs to its end
            out.append(((start + 1) * m / rate, (last - start + 1) * m / rate,
                        float(levels[start : last + 1].max()), laeq))
    return out


@pytest.mark.parametrize(("bits", "rate"), [(16, 16000), (32, 48000)])
def test_events_of_a_scripted_signal(mpy, tmp_path, bits, rate):
    """Three events of the four bursts (one is shorter than the minimum): each starts within one
    Fast time constant of its burst; those 3 dB over the threshold last their burst's length
    within one time constant, the loud one longer by its Fast decay to the threshold (the
    definition: while LAF is at or above it); all match the reference's crossings within a
    sub-block, LAFmax and LAeq within 0.1 and 0.2 dB; the dominant band is 1 kHz."""
    x, bursts = scripted(rate, bits)
    frame = 512
    _, _, events = run_all(mpy, tmp_path, pcm(x, bits), bits, rate, SENS, frame=frame,
                           bands=True, events=(THRESHOLD, HYSTERESIS, MIN_S))
    found = []
    for e in events:
        age_ms, fields = e["event"]
        f = dict(fields)
        start = e["frame"] * frame / rate - age_ms / 1000
        found.append((start, f["duration_s"], f["lafmax_dba"], f["laeq_dba"], f["dominant_band"]))
    ref = reference_events(x, rate, bits)
    print(f"\n{bits}-bit {rate} Hz events (start s, duration s, LAFmax, LAeq, band):")
    for (b0, blen, over), got, want in zip([b for b in bursts if b[1] >= MIN_S], found, ref,
                                           strict=True):
        print(f"  burst {b0:.2f} s + {blen:.2f} s at +{over:.0f} dB: "
              f"found {got[0]:.3f} + {got[1]:.3f} s, {got[2]:.2f}, {got[3]:.2f}, {got[4]}; "
              f"reference {want[0]:.3f} + {want[1]:.3f} s, {want[2]:.2f}, {want[3]:.2f}")
        assert abs(got[0] - b0) <= FAST_S
        if over == 3.0:
            assert abs(got[1] - blen) <= FAST_S
        else:  # the decay: 34.7 dB/s
            assert got[1] - blen == pytest.approx(over / 34.7, abs=FAST_S)
        sub = (rate + 126) // 252 / rate
        assert abs(got[0] - want[0]) <= sub + 1e-9 and abs(got[1] - want[1]) <= sub + 1e-9
        assert got[2] == pytest.approx(want[2], abs=0.1)
        assert got[3] == pytest.approx(want[3], abs=0.2)
        assert got[4] == "1000"


def test_no_events_without_calibration_or_below_the_threshold(mpy, tmp_path):
    rate = 16000
    x, _ = scripted(rate, 16)
    _, _, events = run_all(mpy, tmp_path, pcm(x, 16), 16, rate, None, frame=512,
                           events=(THRESHOLD, HYSTERESIS, MIN_S))
    assert events == []
    _, _, events = run_all(mpy, tmp_path, pcm(x, 16), 16, rate, SENS, frame=512,
                           events=(THRESHOLD + 30, HYSTERESIS, MIN_S))
    assert events == []


def gate_signal(rate, bits):
    """4 s: pink noise 20 dB under the threshold; an event (3 dB over, 0.5 s); one too short
    (0.1 s); one that dips 1.5 dB under the threshold (within the hysteresis) for 0.25 s and
    comes back for 0.3 s."""
    bursts = [(0.5, 0.5, 3.0), (1.5, 0.1, 3.0), (2.0, 0.4, 3.0), (2.4, 0.25, -1.5),
              (2.65, 0.3, 3.0)]
    x = noise(dbfs_for(THRESHOLD - 20), 4 * rate, bits, seed=7, pink=True).astype(float)
    for start, length, over in bursts:
        a, b = int(start * rate), int((start + length) * rate)
        x[a:b] += tone(1000, dbfs_for(THRESHOLD + over), b - a, rate, bits)
    return np.clip(np.round(x), -FULL[bits], FULL[bits] - 1).astype(np.int64)


def gated_run(mpy, path, bits, rate, threshold, hysteresis):
    """events_run.py's lines: ({"init": the detector's words, "sub_db": level units to dB(A)},
    [per frame {"e": its words, "subs": the sub-blocks' (level, energy, k), "taken": event}])."""
    lines = mpy(GATE_RUN, path, bits, rate, SENS, 512 * bits // 8, threshold, hysteresis,
                MIN_S).stdout.splitlines()
    head, frames = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    return head, frames


def check_against_model(head, frames):
    """Every frame: the gated detector's words are the model's that heard every sub-block; the
    events taken, by (start, last) in sub-blocks."""
    ev = list(head["init"])
    ready, done = events_model.K["_E_READY"], events_model.K["_E_DONE"]
    taken = []
    for f in frames:
        for lvl, energy, k in f["subs"]:
            events_model.sub_block(ev, lvl, energy, k)
        assert f["e"] == ev
        assert (f["taken"] is not None) == bool(ev[ready])
        if ev[ready]:
            taken.append((ev[done], ev[done + 1]))
            events_model.take(ev)
    return taken


@pytest.mark.parametrize(("bits", "rate"), [(16, 16000), (32, 48000)])
def test_gate_changes_nothing_but_the_calls(mpy_each, tmp_path, bits, rate):
    """node.weighting calls the detector only while an event is on or the level reaches the
    threshold, and keeps its clock: after every frame of a scripted signal its state words
    (clock, start, last, maximum, energies, the finished event) are those of the model that hears
    every sub-block. Again with the threshold set to one sub-block's level exactly (the event
    starts at that sub-block, where the gate opens) and the hysteresis to put the dip's lowest
    level exactly on the lower threshold (the event goes on through it)."""
    path = tmp_path / "gate.pcm"
    path.write_bytes(pcm(gate_signal(rate, bits), bits))
    head, frames = gated_run(mpy_each, path, bits, rate, THRESHOLD, HYSTERESIS)
    taken = check_against_model(head, frames)
    assert len(taken) == 2  # the short burst is dropped, the dip stays inside the second
    levels = [lvl for f in frames for lvl, _, _ in f["subs"]]
    start = taken[0][0]
    start2, last2 = taken[1]
    # exact thresholds: the first event's first level, and the lowest between the two parts
    # of the second (its level under the threshold, over the lower one)
    on = levels[start - 1]
    assert levels[start - 2] < on
    dip = min(lvl for lvl in levels[start2 - 1 : last2] if lvl < on)
    exact = (on / 160 + head["sub_db"], (on - dip) / 160)
    head, frames = gated_run(mpy_each, path, bits, rate, *exact)
    assert head["init"][events_model.K["_E_ON"]] - events_model.K["_BIAS"] == on
    assert head["init"][events_model.K["_E_OFF"]] - events_model.K["_BIAS"] == dip
    again = check_against_model(head, frames)
    assert again[0][0] == start and len(again) == 2
    assert dip in levels[again[1][0] - 1 : again[1][1]]
