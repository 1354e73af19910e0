"""The simulated board's firmware: boot the flash folder (the working directory) like an ESP32.

Usage: cd FLASH && micropython -X heapsize=HEAP+ALLOWANCE <repo>/sim/board/start.py ALLOWANCE

ALLOWANCE (bytes; sim/host/simnode.py passes QSTR_PAD_ALLOWANCE_BYTES) is what the qstr padding
(sim/board/_pools.py) gives back; without it the padding's ~13 KB come out of HEAP.

Runs boot.py then main.py as the ESP32 port does: in one `__main__` namespace, boot.py's errors
printed and passed over, main.py's ending the run. Exit codes (from _simenv): 0 main.py
returned, 1 main.py raised (traceback, then the reason as the last line), 2 a SIM_* variable is
wrong, 3 the watchdog fired, 4 machine.reset(), 5 machine.soft_reset(), 130 Ctrl-C.

The port runs this script from source, so its bytecode is in the GC heap, where the board's
firmware has none: it only sets the module path and hands over to _firmware, compiled to native
code with the other simulated modules (3.2 KB of heap on the 32-bit port while all of it was
here).
"""

import gc
import sys

gc.collect()
_heap_at_start = gc.mem_alloc()

# The board's module search path, with the simulated hardware modules in front of the unix
# port's own machine module.
sys.path[:] = [__file__.rsplit("/", 1)[0] if "/" in __file__ else ".", "", ".frozen", "lib"]
# The host's argument: the bytes added to HEAP for the qstr padding (sim/host/simnode.py).
_pad_allowance = int(sys.argv[1]) if len(sys.argv) > 1 else 0
sys.argv[:] = []

import _firmware  # noqa: E402  (needs the path above)

sys.exit(_firmware.main(_heap_at_start, _pad_allowance))
