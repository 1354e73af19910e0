"""Benchmark of the sound-level kernels (`make bench`): one frame, every variant, one run.

On the unix port, the same 512-sample 16-bit frame goes through the naive `ustruct.unpack`
loop, the same loop under @micropython.native, a loop with `unpack_from`, the viper RMS kernel,
the viper A-weighting kernel and LevelMeter.add(); the C reference (tools/bench/bench_rms.c)
is built with gcc twice, scalar (-O2 -fno-tree-vectorize) and vectorised (-O3). Figures are ns
per sample, the best of several rounds, and ratios; they are printed, never asserted (tests
assert correctness only).

Then the ESP32 load is estimated from the code itself: mpy-cross compiles lib/node/dsp.py for
xtensawin, the viper functions are cut out of the .mpy and disassembled (binutils-xtensa-lx106),
and each hot loop's instructions are counted, with a cycle model stated in the output.
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
DSP = REPO / "lib" / "node" / "dsp.py"
FRAME_SAMPLES = 512
ESP32_HZ = 240e6
OBJDUMP = "xtensa-lx106-elf-objdump"  # Debian: binutils-xtensa-lx106; same base ISA as LX6
# cycle model for the ESP32's LX6 core, per instruction executed: 1 cycle; +1 when a load's or
# a multiply's result is used by the very next instruction; +2 per taken branch
LOADS = ("l32i", "l32i.n", "l16ui", "l16si", "l8ui", "l32r")
CALL_CYCLES = 600  # allowance for one Python-level call of a viper function on the board
ADD_GLUE_CYCLES = 5000  # allowance for LevelMeter.add()'s own bytecode, once per frame


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


def print_timings(mp, c):
    scalar = next(iter(c.values()))[0] if c else None
    naive = mp["naive"]["ns"]
    rows = [
        ("naive loop: ustruct.unpack of each 2 bytes", mp["naive"]["ns"]),
        ("same loop, @micropython.native", mp["native"]["ns"]),
        ("loop with ustruct.unpack_from (no slice)", mp["unpack_from"]["ns"]),
        ("viper RMS kernel (_frame16)", mp["viper_rms"]["ns"]),
        ("viper A-weighting kernel, 16 kHz", mp["viper_a_16000"]["ns"]),
        ("viper A-weighting kernel, 48 kHz", mp["viper_a_48000"]["ns"]),
        ("LevelMeter.add: RMS + A, 16 kHz", mp["add_16000"]["ns"]),
        ("LevelMeter.add: RMS + A, 48 kHz", mp["add_48000"]["ns"]),
    ] + [(label, v[0]) for label, v in c.items()]
    print(
        f"Sound-level kernels, one {mp['samples']}-sample 16-bit frame (-10 dBFS noise), "
        "unix port, best of 3 x 9 rounds"
    )
    print(f"{'variant':44} {'ns/sample':>10} {'naive/x':>8} {'x/C -O2':>8}")
    for label, ns in rows:
        vs_c = f"{ns / scalar:8.2f}" if scalar else f"{'-':>8}"
        print(f"{label:44} {ns:10.2f} {naive / ns:8.1f} {vs_c}")
    sums = {(mp[k]["sum"], mp[k]["peak"]) for k in ("naive", "native", "unpack_from", "viper_rms")}
    sums |= {(v[1], v[2]) for v in c.values()}
    same = "yes" if len(sums) == 1 else f"NO: {sums}"
    print(f"all compute the same sum of squares and peak: {same}")
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


def walk(ins, start, end, take_first=False):
    """One pass through the loop [start, end] along the path where every `if` is false (no
    conditional branch taken, every jump taken), or with the first conditional branch taken
    (the loop's first `if` true): its cycles by the model."""
    at = {addr: k for k, (addr, _, _) in enumerate(ins)}
    k, run, taken = at[start], [], 0
    while True:
        addr, op, ops = ins[k]
        run.append(ins[k])
        if addr == end:
            return cycles(run, taken + 1)
        if op == "j" or (_is_branch(op) and take_first):
            take_first = False
            taken += 1
            k = at[int(ops[-1], 16)]
        else:
            k += 1


def kernel_costs(code, tmp, take_first=False):
    """Costs of one viper function: (instructions in its hot loop, cycles of one pass through
    it every branch counted as taken, cycles of the typical pass, cycles per call outside it).
    The hot loop is the one with a multiply (else the only one); the rest of the function runs
    once per call, its other loops 11 times, the bound on their iterations in dsp.py."""
    ins = disassemble(code, tmp)
    spans = loops(ins)
    body = {s: [x for x in ins if s[0] <= x[0] <= s[1]] for s in spans}
    hot = ([s for s in spans if any(op == "mull" for _, op, _ in body[s])] or spans)[0]

    def bound(run):
        return cycles(run, sum(_is_branch(op) for _, op, _ in run))

    inner = {x[0] for x in body[hot]}
    rest = [x for x in ins if x[0] not in inner]
    per_call = bound(rest) + sum(10 * bound(body[s]) for s in spans if s != hot)
    typical = walk(ins, hot[0], hot[1], take_first)
    return len(body[hot]), bound(body[hot]), typical, per_call


def print_xtensa(tmp):
    cross, objdump = tool("mpy-cross"), shutil.which(OBJDUMP)
    if not (cross and objdump):
        print(
            "\nXtensa estimate skipped: needs mpy-cross and "
            + OBJDUMP
            + " (apt-get install binutils-xtensa-lx106)"
        )
        return
    mpy = tmp / "dsp.mpy"
    subprocess.run([cross, "-march=xtensawin", "-o", str(mpy), str(DSP)], check=True)
    tree = ast.parse(DSP.read_text())
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    code = viper_functions(mpy, names)
    cost = {name: kernel_costs(code[name], tmp) for name in code}
    wide_filter = kernel_costs(code["_a_filter"], tmp, take_first=True)
    sub_block = (48000 + 126) // 252
    per_frame = FRAME_SAMPLES
    chunks = per_frame / sub_block + 1  # a frame meets about one sub-block boundary more
    subs = per_frame / sub_block
    print(
        f"\nESP32 estimate at 48 kHz ({per_frame}-sample frames, A sub-blocks of "
        f"{sub_block}): xtensawin code from mpy-cross, disassembled with {OBJDUMP}"
    )
    print(
        "cycle model: 1 per instruction, +1 when the next instruction uses a load's or a "
        "multiply's result, +2 per taken branch; 'typical' is the pass where every `if` is "
        "false (16-bit samples), 'bound' runs every instruction of the loop and takes every "
        f"branch; {CALL_CYCLES} cycles per viper call, {ADD_GLUE_CYCLES} per add() for the "
        "bytecode around the kernels"
    )
    print(f"{'loop':44} {'instr':>6} {'typical':>8} {'bound':>6}  per")
    parts = [
        ("_frame16 (RMS, 2 samples per pass)", "_frame16", 0.5),
        ("_peak24 (32-bit RMS pass 1: peak)", "_peak24", 1),
        ("_frame32 (32-bit RMS pass 2: squares)", "_frame32", 1),
        ("_a_filter (6 A-weighting sections)", "_a_filter", 1),
        ("_a_filter, 32-bit samples", "_a_filter32", 1),
        ("_a_sub_block (block-FP squares)", "_a_sub_block", 1),
    ]
    cost["_a_filter32"] = wide_filter
    for label, name, scale in parts:
        n_ins, n_bound, n_typ, _ = cost[name]
        per = "2 samples" if scale < 1 else "sample"
        print(f"{label:44} {n_ins:6} {n_typ:8} {n_bound:6}  {per}")
    calls = {"_a_filter": chunks, "_a_sub_block": subs, "_a_frame": 1}
    for fmt, rms, a_filter in (
        (16, ["_frame16"], "_a_filter"),
        (32, ["_peak24", "_frame32"], "_a_filter32"),
    ):
        call_list = dict(calls, **dict.fromkeys(rms, 1))
        once = sum(n * (cost[k][3] + CALL_CYCLES) for k, n in call_list.items())
        once += chunks * cost["_a_frame"][1]  # _a_frame's own loop runs once per chunk
        glue = (once + ADD_GLUE_CYCLES) / per_frame
        per_sample = []
        for col in (2, 1):  # typical, bound
            scale = {"_frame16": 0.5}
            loop = sum(cost[k][col] * scale.get(k, 1) for k in [*rms, a_filter, "_a_sub_block"])
            per_sample.append(loop + glue)
        typ, bound = (100 * c * 48000 / ESP32_HZ for c in per_sample)
        print(
            f"{fmt}-bit, RMS + A-weighting: {per_sample[0]:.0f} (typical) to {per_sample[1]:.0f}"
            f" (bound) cycles/sample, of which {glue:.0f} per-call code and calls -> "
            f"{typ:.1f} % to {bound:.1f} % of a 240 MHz core at 48 kHz"
        )


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
        print_timings(mp, c)
        print_xtensa(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
