"""The simulated board's flash as os.statvfs() reports it (sim/board/os.py).

A littlefs partition of SIM_FLASH_KB (default 2048: the "vfs" partition of MicroPython's image
for a 4 MB ESP32) in 4 KB blocks, holding what the flash folder holds: each file its size
rounded up to whole blocks, each folder one block, the filesystem itself two. Writing more than
fits is not refused (a limit of the model): the app is expected to look first, as node.ota does.
"""

import os

import _simenv

_BLOCK = 4096
_DEFAULT_KB = 2048
_DIR = 0x4000


def flash_kb():
    text = _simenv.env("SIM_FLASH_KB", str(_DEFAULT_KB))
    if not text.isdigit() or int(text) < 64:
        _simenv.config_error("SIM_FLASH_KB", "%r is not a size in KB (64 or more)" % text)
    return int(text)


def _blocks(folder):
    used = 1
    for entry in os.ilistdir(folder):
        name = entry[0]
        if name.startswith(".sim"):
            continue  # the simulator's own state (clock, watchdog, reset cause)
        if entry[1] & _DIR:
            used += _blocks(folder + "/" + name)
        else:
            used += (os.stat(folder + "/" + name)[6] + _BLOCK - 1) // _BLOCK
    return used


def statvfs():
    total = flash_kb() * 1024 // _BLOCK
    free = max(0, total - 2 - _blocks(_simenv.FLASH))
    # (bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax), as littlefs
    return (_BLOCK, _BLOCK, total, free, free, 0, 0, 0, 0, 255)
