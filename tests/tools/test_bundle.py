"""tools/bundle.py: the tree that goes on the board, compiled with mpy-cross.

The module list is derived from lib/ itself, so modules added later are covered without editing
this file. Figures printed (pytest -s): bundle size per file and total for xtensawin, and the
heap the app's modules take on the unix port imported from the x64 bundle vs the .py sources.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import micropython_path, run_mpy
from tools import bundle
from tools.hosttools import MP32, REPO

NATIVE_MARKS = ("@micropython.viper", "@micropython.native", "@micropython.asm_xtensa")


def lib_modules():
    """Every .py under lib/, as paths relative to the repo (what the bundle must hold)."""
    return sorted(p.relative_to(REPO) for p in (REPO / "lib").rglob("*.py")
                  if "__pycache__" not in p.parts)


def dotted(rel):
    """lib/node/config.py -> node.config; lib/umqtt/__init__.py -> umqtt."""
    parts = list(Path(rel).with_suffix("").parts[1:])
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def copy_src(dest):
    """The bundle's inputs, copied: tests may then change them without touching the repo."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in bundle.TOP_FILES:
        shutil.copy(REPO / name, dest / name)
    shutil.copytree(REPO / "lib", dest / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.fixture(scope="module")
def xtensawin(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "xtensawin"
    lines = []
    manifest = bundle.build(REPO, out, "xtensawin", log=lines.append)
    print("\n" + "\n".join(lines))
    return out, manifest


@pytest.fixture(scope="module")
def x64(tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "x64"
    return out, bundle.build(REPO, out, "x64", log=lambda line: None)


def test_every_module_of_lib_is_in_the_xtensawin_bundle(xtensawin):
    out, manifest = xtensawin
    modules = lib_modules()
    assert modules, "lib/ holds no modules"
    for rel in modules:
        mpy = rel.with_suffix(".mpy").as_posix()
        assert mpy in manifest["files"], f"{rel} is missing from the bundle"
        assert (out / mpy).is_file()
        assert not (out / rel).exists(), f"{rel} shipped as source"
    assert any(m.parts[1] == "umqtt" for m in modules), "umqtt not installed: make lib"


def test_app_scripts_and_config_stay_source(xtensawin):
    out, manifest = xtensawin
    for name in ("boot.py", "main.py", "config.json"):
        assert (out / name).read_bytes() == (REPO / name).read_bytes()
    expected = {"boot.py", "main.py", "config.json"} | {
        m.with_suffix(".mpy").as_posix() for m in lib_modules()}
    # exactly the tree that goes on the board: nothing else (the manifest is a dotfile)
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk - {bundle.MANIFEST} == expected == set(manifest["files"])


def test_native_code_is_compiled_for_the_target(xtensawin):
    """viper/native functions arrive as Xtensa machine code; nothing is compiled at import."""
    out, manifest = xtensawin
    native_sources = [m for m in lib_modules()
                      if any(mark in (REPO / m).read_text() for mark in NATIVE_MARKS)]
    for rel in native_sources:
        head = (out / rel.with_suffix(".mpy")).read_bytes()[:4]
        assert head[0] == ord("M") and head[1] == 6
        assert head[2] >> 2 == bundle.ARCHES["xtensawin"][0], f"{rel}: arch {head[2] >> 2}"
    assert sorted(manifest["native"]) == sorted(m.with_suffix(".mpy").as_posix()
                                                for m in native_sources)


def test_mpy_version_loads_in_this_micropython(xtensawin):
    """mpy-cross and the unix port agree on the .mpy version (the firmware must too)."""
    _, manifest = xtensawin
    proc = run_mpy("import sys; print(sys.implementation._mpy)")
    mpy = int(proc.stdout)
    assert manifest["mpy_version"][0] == mpy & 0xFF
    if manifest["native"]:
        assert manifest["mpy_version"][1] == (mpy >> 8) & 3


def test_no_secrets_in_the_bundle(tmp_path):
    src = copy_src(tmp_path / "src")
    (src / "secrets.json").write_text('{"wifi_password": "hunter2"}')
    out = tmp_path / "out"
    bundle.build(src, out, "x64", log=lambda line: None)
    assert not list(out.rglob("secrets*"))
    assert all(b"hunter2" not in p.read_bytes() for p in out.rglob("*") if p.is_file())
    (src / "lib" / "secrets.json").write_text("{}")
    with pytest.raises(bundle.BundleError, match="secrets do not go into a bundle"):
        bundle.build(src, tmp_path / "out2", "x64", log=lambda line: None)


def test_x64_bundle_imports_on_the_unix_port(x64, tmp_path):
    """Each module that imports from source imports from the bundle too, on the board's path.

    Prints the heap the app's modules take once imported, from .mpy vs from .py.
    """
    out, _manifest = x64
    names = [dotted(m) for m in lib_modules()]
    script = tmp_path / "imports.py"
    script.write_text(
        "import gc, sys, micropython\n"
        "sys.path[:] = [sys.argv[1] + '/sim/board', '.frozen', sys.argv[2]]\n"
        "gc.collect(); free0 = gc.mem_free(); cur0 = micropython.mem_current()\n"
        "ok = []\n"
        f"for name in {names!r}:\n"
        "    try:\n"
        "        __import__(name)\n"
        "        ok.append(name)\n"
        "    except Exception as e:\n"
        "        print('FAIL', name, type(e).__name__, e)\n"
        "gc.collect()\n"
        "print('OK', ' '.join(ok))\n"
        "print('HEAP', free0 - gc.mem_free(), gc.mem_free(), micropython.mem_peak() - cur0)\n")
    heap = "512k"
    results = {}
    for kind, lib in (("py", REPO / "lib"), ("mpy", out / "lib")):
        proc = subprocess.run([micropython_path(), "-X", f"heapsize={heap}", str(script),
                               str(REPO), str(lib)], capture_output=True, text=True, timeout=60,
                              cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = proc.stdout.splitlines()
        ok = set(next(ln for ln in lines if ln.startswith("OK")).split()[1:])
        used, free, peak = map(int, next(ln for ln in lines if ln.startswith("HEAP")).split()[1:])
        results[kind] = (ok, used, free, peak, [ln for ln in lines if ln.startswith("FAIL")])
    py_ok, mpy_ok = results["py"][0], results["mpy"][0]
    assert py_ok, results["py"][4]
    assert py_ok <= mpy_ok, f"import from the bundle fails: {results['mpy'][4]}"
    print(f"\nheap after importing {len(mpy_ok)} of {len(names)} modules (unix port x64, "
          f"-X heapsize={heap}; peak = most allocated at once while importing):")
    for kind in ("py", "mpy"):
        _, used, free, peak, _ = results[kind]
        print(f"  from .{kind:<3}: {free / 1024:6.1f} KB free after gc, "
              f"{used / 1024:5.1f} KB kept, peak {peak / 1024:5.1f} KB")


def test_stale_sources_are_detected(tmp_path):
    src = copy_src(tmp_path / "src")
    out = tmp_path / "out"
    manifest = bundle.build(src, out, "x64", log=lambda line: None)
    assert bundle.stale_sources(manifest) == []
    with open(src / "main.py", "a") as f:
        f.write("# edited\n")
    (src / "lib" / "node" / "extra.py").write_text("X = 1\n")
    first = sorted((src / "lib").rglob("*.py"))[0]
    first.unlink()
    assert bundle.stale_sources(manifest) == sorted([
        "main.py", "lib/node/extra.py", first.relative_to(src).as_posix()])


def test_compile_error_names_the_file_and_keeps_the_old_bundle(tmp_path):
    src = copy_src(tmp_path / "src")
    out = tmp_path / "out"
    bundle.build(src, out, "x64", log=lambda line: None)
    before = (out / bundle.MANIFEST).read_text()
    (src / "lib" / "node" / "broken.py").write_text("def f(:\n")
    with pytest.raises(bundle.BundleError, match=r"lib/node/broken.py does not compile for x64"):
        bundle.build(src, out, "x64", log=lambda line: None)
    assert (out / bundle.MANIFEST).read_text() == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".out-")]


def test_refuses_to_wipe_a_folder_that_is_not_a_bundle(tmp_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(bundle.BundleError, match="is not a bundle"):
        bundle.build(REPO, out, "x64", log=lambda line: None)
    assert (out / "notes.txt").read_text() == "keep me"


def test_missing_main_py_is_an_error(tmp_path):
    src = copy_src(tmp_path / "src")
    (src / "main.py").unlink()
    with pytest.raises(bundle.BundleError, match=r"main\.py is missing"):
        bundle.build(src, tmp_path / "out", "x64", log=lambda line: None)


def test_make_bundle_xtensawin():
    """The Makefile entry point, as CI runs it: sizes per file and the total."""
    env = dict(os.environ, MAKEFLAGS="")
    proc = subprocess.run(["make", "-s", "bundle", "ARCH=xtensawin"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "KB  total" in proc.stdout
    manifest = json.loads((REPO / "build" / "xtensawin" / bundle.MANIFEST).read_text())
    assert manifest["arch"] == "xtensawin"
    print("\n" + proc.stdout)


def test_frozen_manifest_covers_every_package_of_lib():
    """firmware/manifest.py, run the way MicroPython's build runs it (cwd = its folder)."""
    calls = []
    api = {
        "include": lambda path, **kw: calls.append(("include", path)),
        "package": lambda name, files=None, base_path=".", opt=None:
            calls.append(("package", name, base_path)),
        "module": lambda name, base_path=".", opt=None: calls.append(("module", name, base_path)),
    }
    manifest = REPO / "firmware" / "manifest.py"
    cwd = os.getcwd()
    os.chdir(manifest.parent)
    try:
        exec(compile(manifest.read_text(), str(manifest), "exec"), api)
        frozen = {}
        for call in calls:
            if call[0] == "package":
                frozen[call[1]] = Path(os.path.abspath(call[2])) / call[1]
    finally:
        os.chdir(cwd)
    assert ("include", "$(PORT_DIR)/boards/manifest.py") in calls
    packages = {p.name for p in (REPO / "lib").iterdir() if (p / "__init__.py").is_file()}
    assert set(frozen) == packages
    for name, path in frozen.items():
        assert path == REPO / "lib" / name and path.is_dir()




@pytest.mark.skipif(not MP32.is_file(), reason="no 32-bit MicroPython (../shared/mp32) here")
def test_x86_bundle_imports_on_the_32_bit_unix_port(tmp_path):
    # The 32-bit build is MicroPython 1.27, as the firmware: its .mpy version and arch (x86)
    # must be what `make bundle ARCH=x86` writes, viper code included.
    out = tmp_path / "x86"
    manifest = bundle.build(REPO, out, "x86", log=lambda line: None)
    names = [dotted(m) for m in lib_modules()]
    script = tmp_path / "imports.py"
    script.write_text(
        "import sys\n"
        "sys.path[:] = [sys.argv[1] + '/sim/board', '.frozen', sys.argv[2]]\n"
        f"for name in {names!r}:\n"
        "    __import__(name)\n"
        "print('OK', sys.implementation._mpy)\n")
    proc = subprocess.run([str(MP32), str(script), str(REPO), str(out / "lib")],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split()[:2] == ["OK", "1798"], proc.stdout
    assert manifest["arch"] == "x86"
