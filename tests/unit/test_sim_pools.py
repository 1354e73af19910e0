"""The simulated board's qstr pools are the board's (sim/board/_pools.py): the app's names start
a pool of their own and reach the next one after about as many names as on the board, and the
heap the padding takes is given back.

On the board the app's names fill pools 1-6 (1260 names) before the 9 KB seventh; in the
simulator its own ~420 names came first, and the app's reached the 9 KB pool some 400 names
early: a node loading its journal during an outage found the heap 9 KB short at HEAP=128k.
"""

import subprocess

import pytest

from sim.host.simnode import QSTR_PAD_ALLOWANCE_BYTES, heap_bytes, node_command
from tests.conftest import _BINARIES, CLEAN_ENV

# The app: names interned one at a time until one takes a new pool (a jump of the heap).
_MAIN = """
import gc
import sys
gc.collect()
print("FREE", gc.mem_free())
print("WORD", 8 if sys.maxsize > 1 << 32 else 4)
class P:
    pass
prev = gc.mem_alloc()
gc.disable()
for i in range(3000):
    getattr(P, "#%x" % i, None)
    now = gc.mem_alloc()
    if now - prev > 1024:
        print("POOL", i, now - prev)
        break
    prev = now
"""
BOARD_NAMES_BEFORE_THE_9_KB_POOL = 1260  # pools of 20, 40, ... 640


def _run(micropython, flash, heap):
    flash.mkdir(exist_ok=True)
    (flash / "main.py").write_text(_MAIN)
    proc = subprocess.run(node_command(flash, heap, micropython), cwd=flash, env=CLEAN_ENV,
                          capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    fields = {line.split()[0]: line.split()[1:] for line in out.splitlines()
              if line.startswith(("FREE", "POOL", "WORD"))}
    return out, fields


@pytest.mark.parametrize("micropython", _BINARIES, ids=[b.rsplit("/", 1)[-1] for b in _BINARIES])
def test_the_apps_names_start_a_pool_as_on_the_board(micropython, tmp_path):
    out, fields = _run(micropython, tmp_path / "flash", "256k")
    assert "made-up names" in out and "past the pool" not in out, out
    assert "more than the" not in out, out  # the allowance covered the padding
    names, nbytes = map(int, fields["POOL"])
    # main.py's own dozen names came first; then the next pool after about the board's 1260.
    assert BOARD_NAMES_BEFORE_THE_9_KB_POOL - 60 <= names <= 1280, out
    word = int(fields["WORD"][0])
    assert nbytes >= 2560 * (word + 3), out  # the eighth pool: the app's had the seventh
    print(f"\n{micropython}: the app's names took a new pool after {names} of them "
          f"({nbytes} bytes)")


@pytest.mark.parametrize("micropython", _BINARIES, ids=[b.rsplit("/", 1)[-1] for b in _BINARIES])
def test_what_is_added_to_the_heap_for_the_padding_is_given_back(micropython, tmp_path):
    """HEAP is the app's heap and the simulator's modules: 32 KB more HEAP is 32 KB more free
    at main.py (less the GC's tables for them), the padding's allowance none of it."""
    runs = {heap: _run(micropython, tmp_path / heap, heap)[1] for heap in ("256k", "288k")}
    free = {heap: int(fields["FREE"][0]) for heap, fields in runs.items()}
    block = 4 * int(runs["256k"]["WORD"][0])
    tables = 32 * 1024 * 3 // (8 * block)  # 3 bits of GC tables per block of heap
    assert abs(free["288k"] - free["256k"] - (32 * 1024 - tables)) <= 64, free
    assert heap_bytes("128k") == 131072 and QSTR_PAD_ALLOWANCE_BYTES > 12 * 1024
