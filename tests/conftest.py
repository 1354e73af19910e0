"""Shared pytest fixtures: where the repo and the MicroPython unix port are, and how to run it."""

import os
import subprocess
from pathlib import Path

import pytest

from sim.net.fakentp import FakeNtp
from tools.hosttools import REPO, find_tool


def pytest_addoption(parser):
    parser.addoption(
        "--shard", default="", metavar="K/N",
        help="run only the test files whose place in the sorted list is K modulo N (0 <= K < N): "
             "`make check` runs N such pytest processes side by side",
    )  # fmt: skip


@pytest.hookimpl(trylast=True)  # after -m has deselected, so the shares are of what runs
def pytest_collection_modifyitems(config, items):
    shard = config.getoption("--shard")
    if not shard:
        return
    try:
        k, n = (int(x) for x in shard.split("/"))
        if not 0 <= k < n:
            raise ValueError
    except ValueError:
        raise pytest.UsageError(f"--shard: expected K/N with 0 <= K < N, got {shard!r}") from None
    # Whole files, so a module's fixtures are set up once and its tests run in their order.
    files = sorted({item.path for item in items})
    mine = set(files[k::n])
    config.hook.pytest_deselected(items=[item for item in items if item.path not in mine])
    items[:] = [item for item in items if item.path in mine]


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
