"""Benchmark of the sound-level kernels (`make bench`): one frame, every variant, one run.

On the unix port, the same 512-sample 16-bit frame goes through the naive `ustruct.unpack`
loop, the same loop under @micropython.native, a loop with `unpack_from`, the viper RMS kernel,
the A/C weighting kernels, the octave bank, LevelMeter.add() calibrated and the whole chain
(RMS + A + C + percentiles + bands, with events, and during an event). Two C references are
built with gcc: the RMS kernel (tools/bench/bench_rms.c, scalar -O2 -fno-tree-vectorize and
vectorised -O3) and the whole chain in the same int32 arithmetic (tools/bench/bench_chain.c,
scalar), started from the meter's own state so that its end state can be checked against
MicroPython's. Figures are ns per sample, the best of several rounds, and ratios; they are
printed, never asserted (tests assert correctness only).

Then the ESP32 load is estimated from the code itself: mpy-cross compiles the modules for
xtensawin, the viper functions are cut out of the .mpy and disassembled (binutils-xtensa-lx106),
and each loop's instructions are counted, with a cycle model stated in the output.
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
NODE = REPO / "lib" / "node"
DSP = NODE / "dsp.py"
FRAME_SAMPLES = 512
ESP32_HZ = 240e6
OBJDUMP = "xtensa-lx106-elf-objdump"  # Debian: binutils-xtensa-lx106; same base ISA as LX6
# cycle model for the ESP32's LX6 core, per instruction executed: 1 cycle; +1 when a load's or
# a multiply's result is used by the very next instruction; +2 per taken branch
LOADS = ("l32i", "l32i.n", "l16ui", "l16si", "l8ui", "l32r")
CALL_CYCLES = 600  # allowance for one Python-level call of a viper function on the board
ADD_GLUE_CYCLES = 5000  # allowance for LevelMeter.add()'s own bytecode, once per frame
CHAIN_GLUE_CYCLES = 3000  # and for what the chain adds: Weighting.add, the bank's chunk loop
CHUNK_GLUE_CYCLES = 1500  # the bytecode of one pass of OctaveBank.add()'s chunk loop


def tool(name):
    """A tool from the venv if it is there, else from PATH."""
    venv = VENV_BIN / name
    return str(venv) if venv.exists() else shutil.which(name)


def make_frame(path):
    """Gaussian noise at -10 dBFS RMS, fixed seed: peaks and carries happen, as in real sound."""
    rng = np.random.default_rng(2024)
    x = rng.standard_normal(FRAME_SAMPLES) * 32768 * 10 ** (-10 / 20)
    np.clip(np.round(x), -32768, 32767).astype("<i2").tofile(path)


def run_micropython(frame):
    env = dict(os.environ, MICROPYPATH=str(REPO / "lib"))
    cmd = [tool("micropython"), str(REPO / "tools" / "bench" / "bench_mpy.py"), str(frame), "9"]
    return json.loads(
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    )


def build_c(tmp):
    """The C reference built both ways: [(label, executable)]; [] without gcc."""
    gcc = shutil.which("gcc")
    if not gcc:
        return []
    built = []
    for label, flags in (
        ("C gcc -O2 -fno-tree-vectorize (scalar)", ["-O2", "-fno-tree-vectorize"]),
        ("C gcc -O3 (vectorised)", ["-O3"]),
    ):
        exe = tmp / ("bench_rms" + flags[0])
        src = REPO / "tools" / "bench" / "bench_rms.c"
        subprocess.run([gcc, *flags, "-o", str(exe), str(src)], check=True)
        built.append((label, exe))
    return built


def build_chain(tmp):
    gcc = shutil.which("gcc")
    if not gcc:
        return None
    exe = tmp / "bench_chain"
    src = REPO / "tools" / "bench" / "bench_chain.c"
    subprocess.run([gcc, "-O2", "-fno-tree-vectorize", "-o", str(exe), str(src)], check=True)
    return exe


def consts(*names):
    """The `_NAME = const(...)` integers of lib/node modules (the state layouts)."""
    out = {}
    for name in names:
        text = (NODE / f"{name}.py").read_text()
        for key, value in re.findall(r"^(_\w+) = const\(([^)]+)\)", text, re.M):
            out[key] = int(value, 0)
    return out


def chain_check(frame, exe, tmp, rate=48000, frames=50):
    """(ns per sample of the C chain, whether its state after `frames` frames is MicroPython's)."""
    env = dict(os.environ, MICROPYPATH=str(REPO / "lib"))
    cmd = [tool("micropython"), str(REPO / "tools" / "bench" / "bench_mpy.py"), str(frame),
           "state", str(rate), str(frames)]
    mp = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True,
                                   text=True).stdout)
    state = tmp / "state.txt"
    lines = [" ".join(str(v) for v in words) for words in mp["before"]]
    lines += [f"{k} {v}" for k, v in consts("weighting", "bands").items()]
    state.write_text("\n".join(lines) + "\n")
    same = subprocess.run([str(exe), str(state), str(frame), str(frames)], check=True,
                          capture_output=True, text=True).stdout.splitlines()
    after = [[int(v) for v in line.split()] for line in same[1:4]]
    total, peak = (int(v) for v in same[4].split())
    # The words that only pass a call's arguments (which samples) are the Python side's.
    k = consts("weighting", "bands")
    for words, at in ((0, ("_A_SRC", "_A_CHUNK")), (2, ("_K_OFF", "_K_CNT"))):
        for name in at:
            after[words][k[name]] = mp["after"][words][k[name]]
    r = mp["r"]
    agree = after == mp["after"] and total == r[1] * (1 << 30) + r[0] and peak == r[2]
    best = min(float(subprocess.run([str(exe), str(state), str(frame), "4000"], check=True,
                                    capture_output=True, text=True).stdout.split()[0])
               for _ in range(3))
    return best, agree


def run_c(frame, built):
    """{label: (ns, sum, peak)} from one run of each C build."""
    out = {}
    for label, exe in built:
        ns, total, peak = subprocess.run(
            [str(exe), str(frame), "200000"], check=True, capture_output=True, text=True
        ).stdout.split()
        out[label] = (float(ns), int(total), int(peak))
    return out


def best_of(runs):
    """Merge repeated measurements, keeping each variant's fastest."""
    mp, c = runs[0]
    for mp2, c2 in runs[1:]:
        for key, value in mp2.items():
            if isinstance(value, dict) and value["ns"] < mp[key]["ns"]:
                mp[key] = value
        for label, value in c2.items():
            c[label] = min(c[label], value)
    return mp, c


def print_timings(mp, c, chain_c):
    scalar = next(iter(c.values()))[0] if c else None
    naive = mp["naive"]["ns"]
    rows = [
        ("naive loop: ustruct.unpack of each 2 bytes", mp["naive"]["ns"]),
        ("same loop, @micropython.native", mp["native"]["ns"]),
        ("loop with ustruct.unpack_from (no slice)", mp["unpack_from"]["ns"]),
        ("viper RMS kernel (_frame16)", mp["viper_rms"]["ns"]),
    ]
    for rate in (16000, 48000):
        k = rate // 1000
        rows += [
            (f"viper A+C weighting (Weighting.add), {k} kHz", mp[f"viper_ac_{rate}"]["ns"]),
            (f"viper octave bank (OctaveBank.add), {k} kHz", mp[f"viper_bands_{rate}"]["ns"]),
            (f"LevelMeter.add: RMS + A + C, {k} kHz", mp[f"add_{rate}"]["ns"]),
            (f"LevelMeter.add: RMS + A + C + bands, {k} kHz", mp[f"chain_{rate}"]["ns"]),
            (f"  the same with events on, {k} kHz", mp[f"chain_events_{rate}"]["ns"]),
            (f"  the same during an event, {k} kHz", mp[f"chain_event_on_{rate}"]["ns"]),
        ]
    rows += [(label, v[0]) for label, v in c.items()]
    if chain_c:
        rows.append(("C chain RMS + A + C + bands, 48 kHz (-O2 scalar)", chain_c[0]))
    print(
        f"Sound-level kernels, one {mp['samples']}-sample 16-bit frame (-10 dBFS noise), "
        "unix port, best of 3 x 9 rounds"
    )
    print(f"{'variant':50} {'ns/sample':>10} {'naive/x':>8} {'x/C -O2':>8}")
    for label, ns in rows:
        vs_c = f"{ns / scalar:8.2f}" if scalar else f"{'-':>8}"
        print(f"{label:50} {ns:10.2f} {naive / ns:8.1f} {vs_c}")
    sums = {(mp[k]["sum"], mp[k]["peak"]) for k in ("naive", "native", "unpack_from", "viper_rms")}
    sums |= {(v[1], v[2]) for v in c.values()}
    same = "yes" if len(sums) == 1 else f"NO: {sums}"
    print(f"all compute the same sum of squares and peak: {same}")
    if chain_c:
        print("the C chain ends in the same state words as the viper one (weighting, histogram, "
              f"bank, RMS) after 50 frames: {'yes' if chain_c[1] else 'NO'}; viper chain / C "
              f"chain at 48 kHz: {mp['chain_48000']['ns'] / chain_c[0]:.1f}x")
    viper = mp["viper_rms"]["ns"]
    print(
        f"targets: viper RMS >= 100x the ustruct.unpack loop: {naive / viper:.0f}x "
        f"({mp['unpack_from']['ns'] / viper:.0f}x the unpack_from one); within 5x of scalar C: "
        + (f"{viper / scalar:.2f}x" if scalar else "no gcc")
    )


# ---- the Xtensa estimate ---------------------------------------------------------------------


def _vuint(data, i):
    value = 0
    while True:
        byte = data[i]
        i += 1
        value = value << 7 | byte & 0x7F
        if not byte & 0x80:
            return value, i


def _skip_obj(data, i):
    kind = data[i]
    i += 1
    if kind <= 4:  # fun table, None, False, True, Ellipsis
        return i
    n, i = _vuint(data, i)
    if kind == 10:  # tuple
        for _ in range(n):
            i = _skip_obj(data, i)
        return i
    return i + n + (kind in (5, 6))  # str and bytes keep a terminating NUL


def viper_functions(mpy, names):
    """{name: machine code} of the module-level viper functions of a .mpy (format version 6).

    The module's children come in source order, so `names` (the module's top-level defs and
    classes, in order) name them.
    """
    data = Path(mpy).read_bytes()
    if data[:2] != b"M\x06":
        raise SystemExit("unexpected .mpy format")
    nqstr, i = _vuint(data, 4)
    nobj, i = _vuint(data, i)
    for _ in range(nqstr):
        n, i = _vuint(data, i)
        if not n & 1:
            i += (n >> 1) + 1
    for _ in range(nobj):
        i = _skip_obj(data, i)

    def raw_code(i):
        kind_len, i = _vuint(data, i)
        kind, size = kind_len & 3, kind_len >> 3
        code = data[i : i + size]
        i += size
        if kind == 1:  # native: prelude offset
            _, i = _vuint(data, i)
        elif kind >= 2:
            flags, i = _vuint(data, i)
            if flags & 0x70:
                raise SystemExit("viper code with relocations or data: not handled")
            if kind == 3:
                i = _vuint(data, _vuint(data, i)[1])[1]
        children = []
        if kind_len & 4:
            count, i = _vuint(data, i)
            for _ in range(count):
                child, i = raw_code(i)
                children.append(child)
        return (kind, code, children), i

    (_, _, children), _ = raw_code(i)
    if len(children) != len(names):
        raise SystemExit(f"{len(children)} children for {len(names)} definitions")
    return {name: code for name, (kind, code, _) in zip(names, children, strict=True) if kind == 2}


def disassemble(code, tmp):
    path = tmp / "code.bin"
    path.write_bytes(code)
    out = subprocess.run(
        [OBJDUMP, "-D", "-b", "binary", "-m", "xtensa", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    ins = []
    for line in out.splitlines():
        m = re.match(r"\s+([0-9a-f]+):\s+[0-9a-f]+\s+(\S+)\s*(.*)", line)
        if m:
            ins.append(
                (int(m.group(1), 16), m.group(2), [o.strip() for o in m.group(3).split(",") if o])
            )
    return ins


def _reads(op, ops):
    """The registers an instruction reads: stores and branches read all their operands."""
    return ops if op.startswith(("s8i", "s16i", "s32i", "b")) else ops[1:]


def _is_branch(op):
    return op.startswith("b") or op == "j"


def cycles(run, taken):
    """Cycles of the instruction sequence `run` by the cycle model; `taken` branches pay +2."""
    total = len(run) + 2 * taken
    for (_, op, ops), (_, nxt_op, nxt_ops) in zip(run, run[1:] + run[:1], strict=True):
        if (op in LOADS or op == "mull") and ops and ops[0] in _reads(nxt_op, nxt_ops):
            total += 1
    return total


def loops(ins):
    """(start, end) address of each loop: a branch back to an earlier address."""
    found = []
    for addr, op, ops in ins:
        if _is_branch(op) and ops and ops[-1].startswith("0x"):
            target = int(ops[-1], 16)
            if target < addr:
                found.append((target, addr))
    return found


def path(ins, start, end, taken=()):
    """Cycles of one pass through the loop [start, end] along the path where every `if` is
    false (viper jumps to an `if`'s body with a conditional branch, past it with a `j`), but
    for the conditional branches whose ordinals along the path are in `taken`."""
    at = {addr: k for k, (addr, _, _) in enumerate(ins)}
    k, run, jumps, seen = at[start], [], 0, 0
    for _ in range(10 * len(ins)):
        addr, op, ops = ins[k]
        run.append(ins[k])
        if addr == end:
            return cycles(run, jumps + 1)
        target = int(ops[-1], 16) if _is_branch(op) else None
        if op == "j" or (_is_branch(op) and seen in taken):
            jumps += 1
            k = at[target]
        else:
            k += 1
        if _is_branch(op) and op != "j":
            seen += 1
    raise SystemExit("no path through the loop at %#x" % start)


def analyse(module, tmp):
    """{function: (instructions, [(start, end) of each loop, in order])} of a lib/node module's
    viper functions, compiled for xtensawin."""
    src = NODE / f"{module}.py"
    mpy = tmp / f"{module}.mpy"
    subprocess.run([tool("mpy-cross"), "-march=xtensawin", "-o", str(mpy), str(src)], check=True)
    tree = ast.parse(src.read_text())
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    out = {}
    for name, code in viper_functions(mpy, names).items():
        ins = disassemble(code, tmp)
        out[name] = (ins, loops(ins))
    return out


def body(ins, span):
    return [x for x in ins if span[0] <= x[0] <= span[1]]


def bound(run):
    """Cycles of running every instruction of `run` once, every branch taken."""
    return cycles(run, sum(_is_branch(op) for _, op, _ in run))


def outside(ins, spans):
    inner = {x[0] for s in spans for x in body(ins, s)}
    return bound([x for x in ins if x[0] not in inner])


def hot(ins, spans, n=0):
    """The n-th loop with a multiply."""
    return [s for s in spans if any(op == "mull" for _, op, _ in body(ins, s))][n]


def print_xtensa(tmp):
    cross, objdump = tool("mpy-cross"), shutil.which(OBJDUMP)
    if not (cross and objdump):
        print(
            "\nXtensa estimate skipped: needs mpy-cross and "
            + OBJDUMP
            + " (apt-get install binutils-xtensa-lx106)"
        )
        return
    dsp = analyse("dsp", tmp)
    w = analyse("weighting", tmp)
    bk = analyse("bands", tmp)
    ev = analyse("events", tmp)
    print(
        f"\nESP32 estimate, {FRAME_SAMPLES}-sample 16-bit frames: xtensawin code from mpy-cross,"
        f" disassembled with {OBJDUMP}"
    )
    print(
        "cycle model: 1 per instruction, +1 when the next instruction uses a load's or a "
        "multiply's result, +2 per taken branch; 'typical' is the pass where every `if` is "
        "false (16-bit samples, no carry, no clamp, signals under -12 dBFS per band), 'bound' "
        "runs every instruction of the loop and takes every branch; outside the loops every "
        "instruction counts, small loops at their bound times their iteration limit; "
        f"{CALL_CYCLES} cycles per viper call, {ADD_GLUE_CYCLES} per add() and "
        f"{CHAIN_GLUE_CYCLES} more for the chain, {CHUNK_GLUE_CYCLES} per bank chunk, for the "
        "bytecode around the kernels; noise events: 'typical' is no event on and the level under "
        "the threshold (the gate calls no hook), 'bound' an event on (the hook every sub-block)"
    )
    ins, spans = dsp["_frame16"]
    rms = [path(ins, *spans[0]) / 2, bound(body(ins, spans[0])) / 2]  # 2 samples per pass
    ins, spans = w["_a_filter"]
    a_filter = [path(ins, *spans[0]), bound(body(ins, spans[0]))]
    a_call = outside(ins, spans)
    ins, spans = w["_a_sub_block"]
    # its loops in order: the energy's exponent, Fast renormalising, the level's bit length,
    # the histogram's halving (once per 65535 sub-blocks at most: left out); typical and most
    # passes of the others
    if len(spans) != 4:
        raise SystemExit("_a_sub_block's loops changed: update the model in tools/bench.py")
    small = [(spans[0], 0, 3), (spans[1], 1, 11), (spans[2], 2, 31)]
    sub = [outside(ins, spans) + sum(n * bound(body(ins, sp)) for sp, n, _ in small),
           outside(ins, spans) + sum(n * bound(body(ins, sp)) for sp, _, n in small)]
    ins, spans = w["_a_frame"]
    frame_call = outside(ins, spans)
    frame_pass = bound(body(ins, spans[0]))  # once per chunk of a sub-block
    ins, spans = bk["_bank"]
    # its loops: 24-bit decoding, 16-bit decoding (two samples a pass), the pair loop, the
    # fold (once, twice while an event is on), the level loop around the last two
    if len(spans) != 5:
        raise SystemExit("_bank's loops changed: update the model in tools/bench.py")
    pair = spans[2]
    pair_cycles = {48000: path(ins, *pair), 16000: path(ins, *pair, taken=(0, 1))}
    pair_bound = bound(body(ins, pair))
    decode = bound(body(ins, spans[1])) / 2
    fold = bound(body(ins, spans[3]))
    level = bound(body(ins, spans[4])) - pair_bound - fold + fold  # setup, store, one fold
    bank_call = outside(ins, spans)
    ins, spans = ev["_sub_block"]
    event_sub = outside(ins, spans)  # its loops run at an event's start, merge and end only
    print(f"{'loop':52} {'typical':>8} {'bound':>6}  per")
    for label, v, per in (
        ("_frame16 (RMS)", rms, "sample"),
        ("_a_filter (6 sections; A and C energies, C peak)", a_filter, "sample"),
        ("_a_sub_block (energy, Fast, level, histogram)", sub, "sub-block"),
        ("_bank pair loop, 48 kHz (3 sections each, half-band)", (pair_cycles[48000], pair_bound),
         "pair"),
        ("_bank pair loop, 16 kHz (4 sections each, half-band)", (pair_cycles[16000], pair_bound),
         "pair"),
        ("_bank 16-bit decoding", (decode, decode), "sample"),
        ("_bank per level (state in and out, the fold)", (level, level), "level, call"),
        ("events' _sub_block, no event beginning or ending", (event_sub, event_sub), "sub-block"),
    ):
        print(f"{label:52} {v[0]:8.0f} {v[1]:6.0f}  {per}")
    for rate in (48000, 16000):
        m = (rate + 126) // 252
        n = FRAME_SAMPLES
        chunks = -(-n // 512)
        levels = 8 if rate == 48000 else 7
        subs = n / m
        calls = (ADD_GLUE_CYCLES + CALL_CYCLES  # add() and _frame16
                 + CHAIN_GLUE_CYCLES + CALL_CYCLES + frame_call  # Weighting.add, _a_frame
                 + (subs + 1) * (CALL_CYCLES + a_call + frame_pass)  # _a_filter per chunk
                 + subs * CALL_CYCLES)  # _a_sub_block
        bank_calls = chunks * (CHUNK_GLUE_CYCLES + CALL_CYCLES + bank_call + levels * level)
        base = [rms[i] + a_filter[i] + sub[i] / m + calls / n for i in (0, 1)]
        band = [pair_cycles[rate] * (1 - 0.5**levels) + decode + bank_calls / n,
                pair_bound * (1 - 0.5**levels) + decode + bank_calls / n]
        # Noise events: the gate in _a_frame's loop is in frame_pass (for every chain); the
        # hook's call from there, its own and its body only for the sub-blocks the gate lets
        # through: none while no event is on and the level is under the threshold (typical),
        # every one during an event (bound).
        events = (0, (event_sub + 2 * CALL_CYCLES) / m)
        print(f"{rate // 1000} kHz, 16-bit, per sample: RMS + A + C + percentiles "
              f"{base[0]:.0f} to {base[1]:.0f} cycles (of which per-frame code and calls "
              f"{calls / n:.0f}), octave bands {band[0]:.0f} to {band[1]:.0f} "
              f"(per chunk and level {bank_calls / n:.0f}), noise events {events[0]:.0f} "
              f"(no event on: the gate only) to {events[1]:.0f} (an event on)")
        for what, extra in (("RMS + A + C + percentiles", (0, 0)), ("+ octave bands", band),
                            ("+ bands + noise events", (band[0] + events[0],
                                                        band[1] + events[1]))):
            cyc = [base[i] + extra[i] for i in (0, 1)]
            pct = [100 * c * rate / ESP32_HZ for c in cyc]
            print(f"  {what}: {cyc[0]:.0f} (typical) to {cyc[1]:.0f} (bound) cycles/sample -> "
                  f"{pct[0]:.1f} % to {pct[1]:.1f} % of a 240 MHz core at {rate // 1000} kHz")


def main():
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        frame = tmp / "frame.raw"
        make_frame(frame)
        built = build_c(tmp)
        if not built:
            print("gcc not found: no C reference")
        # MicroPython and C alternate three times, so that both see the machine's quiet moments
        mp, c = best_of([(run_micropython(frame), run_c(frame, built)) for _ in range(3)])
        exe = build_chain(tmp)
        print_timings(mp, c, chain_check(frame, exe, tmp) if exe else None)
        print_xtensa(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
