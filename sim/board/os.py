"""os for the simulated board: the unix port's own os, with statvfs() of the board's flash.

On the board os.statvfs("/") describes the littlefs partition: 4 KB blocks, 2 MB of them on a
4 MB ESP32 (the "vfs" partition of MicroPython's image). Here the flash is a folder on the host,
whose own statvfs would say how full the host's disk is. So statvfs(), whatever the path, is a
littlefs of SIM_FLASH_KB (default 2048) holding what the flash folder holds: each file takes
its size rounded up to whole blocks, each folder one block, the filesystem itself two. Writing
more than fits is not refused (a limit of the model): the app is expected to check first.
Everything else is the real module.
"""

import sys

_path = sys.path
sys.path = ()  # the built-in os, not this file
try:
    from os import *  # noqa: F403
    from os import getcwd, ilistdir, stat
finally:
    sys.path = _path
del _path

_BLOCK = 4096
_DEFAULT_KB = 2048
_DIR = 0x4000
_FLASH = getcwd()  # start.py runs in the flash folder; the app never changes directory


def _blocks(folder):
    used = 1
    for entry in ilistdir(folder):
        name = entry[0]
        if name.startswith(".sim"):
            continue  # the simulator's own state (clock, watchdog, reset cause)
        if entry[1] & _DIR:
            used += _blocks(folder + "/" + name)
        else:
            used += (stat(folder + "/" + name)[6] + _BLOCK - 1) // _BLOCK
    return used


def flash_kb():
    """SIM_FLASH_KB: the flash partition's size."""
    import _simenv  # here: _simenv imports os

    text = _simenv.env("SIM_FLASH_KB", str(_DEFAULT_KB))
    if not text.isdigit() or int(text) < 64:
        _simenv.config_error("SIM_FLASH_KB", "%r is not a size in KB (64 or more)" % text)
    return int(text)


def statvfs(path):
    total = flash_kb() * 1024 // _BLOCK
    free = max(0, total - 2 - _blocks(_FLASH))
    # (bsize, frsize, blocks, bfree, bavail, files, ffree, favail, flag, namemax), as littlefs
    return (_BLOCK, _BLOCK, total, free, free, 0, 0, 0, 0, 255)
