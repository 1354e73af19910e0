"""os for the simulated board: the unix port's own os, with statvfs() of the board's flash.

On the board os.statvfs("/") describes the littlefs partition; here the flash is a folder on
the host, whose own statvfs would say how full the host's disk is. So statvfs() is the flash's,
whatever the path (sim/board/_simflash.py, loaded for the call only: this module stays as small
as the firmware's own os costs the board, nothing). Everything else is the real module.
"""

import sys

_path = sys.path
sys.path = ()  # the built-in os, not this file
try:
    import os as _os
finally:
    sys.path = _path
del _path


def __getattr__(name):
    # Everything but statvfs is the built-in's, looked up when asked for: names copied into
    # this module would cost heap that the board's firmware does not.
    return getattr(_os, name)


def statvfs(path):
    import _simflash

    try:
        return _simflash.statvfs()
    finally:
        del sys.modules["_simflash"]
