"""sim/host: the board's clock (libfaketime environment, power-on) and make sim's options."""

import os
import sys
import time

import pytest

from sim.host import run, simnode
from tools.hosttools import MP32


def test_the_word_size_of_a_binary_or_of_a_scripts_interpreter(tmp_path):
    assert simnode._elf_class(sys.executable) == 2
    script = tmp_path / "entry"
    script.write_text(f"#!{sys.executable}\nprint(1)\n")
    assert simnode._elf_class(script) == 2  # the PyPI unix port runs inside its Python
    assert simnode._elf_class(tmp_path / "missing") is None
    if MP32.is_file():
        assert simnode._elf_class(MP32) == 1


def test_board_clock_env_preloads_libfaketime(tmp_path):
    lib = simnode.libfaketime_for(sys.executable)
    if lib is None:
        pytest.skip("libfaketime is not installed (make deps installs faketime)")
    env = simnode.clock_env(tmp_path, "board", sys.executable)
    assert env["SIM_CLOCK"] == "board" and env["LD_PRELOAD"].startswith(lib)
    assert env["FAKETIME_TIMESTAMP_FILE"] == str(tmp_path.resolve() / ".sim_clock")
    assert env["FAKETIME_NO_CACHE"] == "1" and env["DONT_FAKE_MONOTONIC"] == "1"


def test_host_clock_and_a_binary_without_libfaketime(tmp_path, monkeypatch):
    assert simnode.clock_env(tmp_path, "host", sys.executable)["SIM_CLOCK"] == "host"
    monkeypatch.setattr(simnode, "_FAKETIME_DIRS", {1: str(tmp_path), 2: str(tmp_path)})
    env = simnode.clock_env(tmp_path, "board", sys.executable)
    assert env["SIM_CLOCK"] == "host" and "no 64-bit libfaketime" in env["SIM_CLOCK_NOTE"]
    with pytest.raises(ValueError, match="clock"):
        simnode.clock_env(tmp_path, "moon", sys.executable)


def test_power_on_starts_the_rtc_in_2000_and_stops_the_watchdog(tmp_path):
    (tmp_path / ".sim_wdt").write_text("5000 123\n")
    simnode.power_on_flash(tmp_path, "board")
    offset = float((tmp_path / ".sim_clock").read_text())
    assert abs(time.time() + offset - simnode.POWER_ON_UNIX_S) < 2
    assert not (tmp_path / ".sim_wdt").exists()


def test_make_sim_options_clock_and_micropython(tmp_path, monkeypatch):
    monkeypatch.delenv("MICROPYTHON", raising=False)
    args = run.parse_args([])
    assert args.clock == "board" and os.path.isabs(args.micropython)
    assert run.parse_args(["--clock", "host"]).clock == "host"
    with pytest.raises(SystemExit):
        run.parse_args(["--clock", "moon"])
    with pytest.raises(SystemExit):
        run.parse_args(["--micropython", str(tmp_path / "nothing")])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mp").write_text("#!/bin/sh\n")
    assert run.parse_args(["--micropython", "mp"]).micropython == str(tmp_path / "mp")
