"""The simulated board's qstr pools, set as the board's before the app runs (by _firmware).

Every name a module interns stays in RAM, in pools that double: the first holds 20 names (twice
the 10 that the frozen modules' pool declares, as on the firmware), the sixth 640, the seventh
1280, one 9 KB block on a 32-bit board. On the board the simulated modules' names are the
firmware's, in flash: the app's names fill pools 1-6 (9,008 bytes of them on a 32-bit board)
and need the seventh at their 1260th name. Here the simulator's ~420 names come first, and the
app's would need the 9 KB pool that many names early.

So the simulator fills the first six pools itself, with its names and made-up ones: the app's
names start the seventh, about as large as the board's first six (8,992 bytes against 9,008),
and need the eighth at their 1280th. What the six pools, this module and its made-up names
take, and the GC's tables for that, the host added to HEAP (sim/host/simnode.py's
QSTR_PAD_ALLOWANCE_BYTES) and _firmware gives back: what stays the simulator's is its modules'
code and their names' strings.
"""

import gc
import sys

_FIRST_POOL_NAMES = 20
_PADDED_POOLS = 6
_LAST_PADDED_POOL_NAMES = _FIRST_POOL_NAMES << (_PADDED_POOLS - 1)
_POOL_JUMP_BYTES = 1024  # a new pool of 160 names or more; a string chunk grows by 128 bytes
_WORD_BYTES = 8 if sys.maxsize > 1 << 32 else 4
_ENTRY_BYTES = _WORD_BYTES + 3  # a pointer, a 2-byte hash and a 1-byte length
_BLOCK_BYTES = 4 * _WORD_BYTES  # the GC's allocation unit
# Per block of heap the GC keeps 3 bits outside it (allocation table 2, finaliser table 1).
_TABLE_BITS_PER_BLOCK = 3
_BYTEARRAY_OVERHEAD_BYTES = 2 * _BLOCK_BYTES  # the ballast's object, beside its data


def _pool_bytes(names):
    """The heap a pool of `names` entries takes: a six-word header and the entries."""
    n = 6 * _WORD_BYTES + names * _ENTRY_BYTES
    return (n + _BLOCK_BYTES - 1) // _BLOCK_BYTES * _BLOCK_BYTES


def _pool_names(nbytes):
    """How many names a pool that took `nbytes` holds (a power-of-two multiple of 20)."""
    names = _FIRST_POOL_NAMES
    while _pool_bytes(names) * 3 // 2 < nbytes:
        names *= 2
    return names


_PADDED_POOLS_BYTES = sum(_pool_bytes(_FIRST_POOL_NAMES << k) for k in range(_PADDED_POOLS))


def _fill():
    """Intern made-up names until the sixth pool is full; return (names, the heap of the pools
    they made), or None if the simulator's own names are past it."""

    class _Probe:
        pass

    gc.collect()
    prev = gc.mem_alloc()
    pools = 0
    gc.disable()  # a collection in the loop would hide the jump of a new pool
    n = 0
    left = -1  # names until the sixth pool is full, once it is made
    try:
        while left:
            getattr(_Probe, "~%x" % n, None)  # interns the name
            n += 1
            left -= 1
            now = gc.mem_alloc()
            if now - prev > _POOL_JUMP_BYTES:
                made = _pool_names(now - prev)
                if made > _LAST_PADDED_POOL_NAMES:
                    return None
                pools += _pool_bytes(made)
                if made == _LAST_PADDED_POOL_NAMES:
                    left = made - 1  # this name was its first
            prev = now
    finally:
        gc.enable()
    return n, pools


def pad(modules_bytes, allowance):
    """Fill the pools; return (the banner's words on the heap, what to give back of
    `allowance` (what the host added to HEAP) beside what this module and its padding take:
    the pools the simulator's own names made, the GC's tables for the allowance, the ballast's
    object). `modules_bytes`: what the simulated modules took, their names' pools included."""
    filled = _fill()
    if filled is None:
        return ("simulator modules use %d KB of the heap; their names are past the pool of %d: "
                "the app's need the next earlier than on the board"
                % (modules_bytes // 1024, _LAST_PADDED_POOL_NAMES), allowance)
    names, pools = filled
    own = _PADDED_POOLS_BYTES - pools
    tables = allowance * _TABLE_BITS_PER_BLOCK // (8 * _BLOCK_BYTES)
    return ("simulator modules use %d KB of the heap (and the qstr pools their names fill, "
            "with %d made-up names, so that the app's start the 7th as on the board)"
            % ((modules_bytes - own + 1023) // 1024, names),
            own + tables + _BYTEARRAY_OVERHEAD_BYTES)
