"""Shared pytest fixtures: where the repo and the MicroPython unix port are, and how to run it."""

import os
import subprocess
from pathlib import Path

import pytest

from sim.net.fakentp import FakeNtp
from tools.hosttools import MP32, REPO, find_tool

# The files that keep a worker longest (its seconds in `pytest --junitxml`, 6 workers:
# test_ota 165, test_faults 159, test_journal 116, then 81 down to 48), handed out first by
# `make test` (--dist loadfile --no-loadscope-reorder), longest first: handed out last, as
# xdist's order by number of tests did, test_ota and test_faults alone were the suite's last
# minute. Every other file keeps its place after these.
_LONGEST_FIRST = (
    "tests/e2e/test_ota.py", "tests/e2e/test_faults.py", "tests/e2e/test_journal.py",
    "tests/tools/test_deploy.py", "tests/e2e/test_e2e.py", "tests/e2e/test_fakebroker_faults.py",
    "tests/e2e/test_soundmeter.py", "tests/tools/test_flash.py", "tests/e2e/test_ha.py",
)


def pytest_collection_modifyitems(items):
    rank = {path: i for i, path in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable


def micropython_path():
    found = find_tool("micropython", "MICROPYTHON")
    if not found:
        raise RuntimeError("no micropython unix port: run `make deps` first")
    return found


def run_mpy(script, *args, heap=None, cwd=None, path=(), timeout=120, check=True, env=None):
    """Run a MicroPython script (a path, or source text) with lib/ and `path` on sys.path.

    Returns the CompletedProcess; with check=True a non-zero exit fails with both streams shown.
    """
    cmd = [micropython_path()]
    if heap:
        cmd += ["-X", f"heapsize={heap}"]
    if isinstance(script, Path) or (isinstance(script, str) and script.endswith(".py")):
        cmd.append(str(script))
    else:
        cmd += ["-c", script]
    cmd += [str(a) for a in args]
    full_env = dict(os.environ)
    full_env["MICROPYPATH"] = ":".join([*map(str, path), str(REPO / "lib"), ".frozen"])
    if env:
        full_env.update(env)
    proc = subprocess.run(
        cmd, cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"micropython exited {proc.returncode}\n--- stdout\n{proc.stdout}\n"
            f"--- stderr\n{proc.stderr}"
        )
    return proc


@pytest.fixture(scope="session")
def mpy():
    """The run_mpy function, for tests that drive MicroPython scripts."""
    return run_mpy


def _micropythons():
    """The unix port, and the 32-bit 1.27 port (the board's word size) where it is installed."""
    found = [find_tool("micropython", "MICROPYTHON")]
    if MP32.is_file() and str(MP32) not in found:
        found.append(str(MP32))
    return found


_BINARIES = _micropythons()
# A test's own inputs only: SIM_* variables from the environment would change what it sees.
CLEAN_ENV = dict.fromkeys(("SIM_AUDIO", "SIM_DHT", "SIM_UID", "SIM_RSSI", "SIM_WIFI"), "")


@pytest.fixture(params=_BINARIES, ids=[Path(b).name for b in _BINARIES])
def mpy_each(mpy, monkeypatch, request):
    """run_mpy on each MicroPython in turn: the unix port, then the 32-bit 1.27 port where it is
    installed (int32 overflow and heap figures as on the board)."""
    monkeypatch.setenv("MICROPYTHON", request.param)

    def run(*args, env=None, **kwargs):
        return mpy(*args, env={**CLEAN_ENV, **(env or {})}, **kwargs)

    return run


@pytest.fixture
def ntp_server():
    """ntp_server(answer): a started sim/net/fakentp.FakeNtp; closed at teardown."""
    servers = []

    def make(answer):
        s = FakeNtp(answer)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()
