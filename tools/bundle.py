"""Build the tree that goes on the board: boot.py, main.py, config.json, and lib/ as .mpy.

    python -m tools.bundle --arch xtensawin|x64|x86 --out build/<arch> [--src REPO]

lib/**.py is compiled with mpy-cross for the target (`-march`), so @micropython.viper and
@micropython.native functions arrive as machine code and the board compiles nothing at import.
boot.py and main.py stay source (the firmware runs them by name), config.json stays JSON.
secrets.json and the CA certificate are never part of a bundle: tools/deploy.py adds them.

Prints each file's size and the total. Writes <out>/.bundle.json last (arch, .mpy version, the
app's VERSION, the hash of every file and of every source), so tools/deploy.py can refuse a
partial or stale bundle and tools/ota.py can say which version it sends.
"""

import argparse
import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tools.hosttools import REPO, find_tool

MANIFEST = ".bundle.json"
# The targets we build for: the arch name mpy-cross takes and the number the .mpy header and
# sys.implementation._mpy carry for it (py/persistentcode.h, MP_NATIVE_ARCH_*).
ARCHES = {
    "xtensawin": (10, "ESP32 and ESP32-S3"),
    "x64": (2, "the unix port on a 64-bit PC: tests, sim/host/fakeboard.py"),
    "x86": (1, "the unix port built 32-bit: ../shared/mp32/micropython32"),
}
TOP_FILES = ("boot.py", "main.py", "config.json")  # copied as they are, in this order
SKIP_DIRS = {"__pycache__"}
SKIP_SUFFIXES = (".pyc", ".pyo", ".orig", ".rej", ".swp", "~")
NEVER = ("secrets.json",)  # refused anywhere in the tree, whatever the folder


class BundleError(Exception):
    """A problem with the sources or the toolchain; the message is the one line we print."""


def mpy_cross_path():
    found = find_tool("mpy-cross", "MPY_CROSS")
    if not found:
        raise BundleError("mpy-cross not found: run `make hostdeps`")
    return found


def sha256_file(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def lib_sources(src):
    """Every file under src/lib that belongs on the board, as paths relative to src, sorted."""
    lib = src / "lib"
    if not lib.is_dir():
        raise BundleError(f"{lib} is missing: run `make lib`")
    found = []
    for dirpath, dirnames, filenames in os.walk(lib):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith(SKIP_SUFFIXES):
                continue
            rel = (Path(dirpath) / name).relative_to(src)
            if name in NEVER:
                raise BundleError(f"{rel}: secrets do not go into a bundle; remove it from lib/")
            found.append(rel)
    return found


def board_name(rel):
    """The file's name on the board: lib/**.py becomes .mpy, everything else keeps its name."""
    rel = Path(rel)
    if rel.parts[0] == "lib" and rel.suffix == ".py":
        return rel.with_suffix(".mpy")
    return rel


def app_version(src):
    """VERSION from lib/node/__init__.py (where it is defined once), or None."""
    path = Path(src) / "lib" / "node" / "__init__.py"
    if not path.is_file():
        return None
    for stmt in ast.parse(path.read_text()).body:
        if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
                and isinstance(stmt.targets[0], ast.Name) and stmt.targets[0].id == "VERSION"
                and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)):
            return stmt.value.value
    return None


def mpy_header(path):
    """(version, sub-version, arch number) from a .mpy file's 4-byte header."""
    head = Path(path).read_bytes()[:4]
    if len(head) < 4 or head[0] != ord("M"):
        raise BundleError(f"{path}: not a .mpy file")
    return head[1], head[2] & 3, head[2] >> 2


def compile_one(mpy_cross, arch, src, rel, dest):
    dest.parent.mkdir(parents=True, exist_ok=True)
    # -s: the name tracebacks show on the board (its path there), not this machine's path.
    cmd = [mpy_cross, f"-march={arch}", "-s", rel.as_posix(), "-o", str(dest), str(src / rel)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise BundleError(f"{rel} does not compile for {arch}: {detail[-1] if detail else '?'}")


def build(src, out, arch, mpy_cross=None, log=print):
    """Build the bundle for `arch` from `src` into `out`; returns the manifest dict."""
    src, out = Path(src).resolve(), Path(out)
    if arch not in ARCHES:
        raise BundleError(f"unknown arch {arch!r}: use one of {', '.join(ARCHES)}")
    for name in TOP_FILES:
        if not (src / name).is_file():
            raise BundleError(f"{src / name} is missing: a bundle without it cannot boot")
    sources = [Path(n) for n in TOP_FILES] + lib_sources(src)
    mpy_cross = mpy_cross or mpy_cross_path()

    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise BundleError(f"{out} exists and is not a bundle: not deleting it")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build next to the destination and swap at the end: an error leaves the old bundle intact.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    tmp.chmod(0o755)
    try:
        files = {}
        for rel in sources:
            dest_rel = board_name(rel)
            dest = tmp / dest_rel
            if dest_rel != rel:
                compile_one(mpy_cross, arch, src, rel, dest)
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, dest)
            files[dest_rel.as_posix()] = {"size": dest.stat().st_size,
                                          "sha256": sha256_file(dest)}
        # The header names the arch and the sub-version only when the file holds machine code
        # (viper/native); pure bytecode says 0 for both and loads on any arch of that version.
        headers = {f: mpy_header(tmp / f) for f in files if f.endswith(".mpy")}
        native = sorted(f for f, h in headers.items() if h[2])
        versions = {(h[0], h[1]) if h[2] else (h[0],) for h in headers.values()}
        majors = {v[0] for v in versions}
        if len(majors) > 1 or len({v for v in versions if len(v) == 2}) > 1:
            raise BundleError(f"mixed .mpy versions in one bundle: {sorted(versions)}")
        version = None
        if headers:
            version = max(versions, key=len) if native else (majors.pop(), None)
        wrong = [f for f, h in headers.items() if h[2] not in (0, ARCHES[arch][0])]
        if wrong:
            raise BundleError(f"{wrong[0]}: mpy-cross wrote arch {headers[wrong[0]][2]}, "
                              f"expected {arch}")
        manifest = {
            "arch": arch,
            "mpy_version": list(version) if version else None,
            "arch_number": ARCHES[arch][0],
            "native": native,
            "mpy_cross": mpy_cross_version(mpy_cross),
            "version": app_version(src),
            "src": str(src),
            "files": files,
            "sources": {rel.as_posix(): sha256_file(src / rel) for rel in sources},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    report(manifest, out, log)
    return manifest


def mpy_cross_version(mpy_cross):
    proc = subprocess.run([mpy_cross, "--version"], capture_output=True, text=True)
    return proc.stdout.strip()


def report(manifest, out, log=print):
    ver = manifest["mpy_version"]
    what = f"bundle {out} for {manifest['arch']} ({ARCHES[manifest['arch']][1]})"
    if manifest.get("version"):
        what += f"; version {manifest['version']}"
    if ver:
        what += f"; .mpy v{ver[0]}" + (f".{ver[1]}" if ver[1] is not None else "")
    if manifest.get("native"):
        what += f"; machine code in {', '.join(manifest['native'])}"
    log(what)
    total = 0
    for name, info in sorted(manifest["files"].items(), key=lambda kv: (kv[0].count("/"), kv[0])):
        log(f"  {info['size'] / 1024:7.1f} KB  {name}")
        total += info["size"]
    log(f"  {total / 1024:7.1f} KB  total, {len(manifest['files'])} files")


def stale_sources(manifest, src=None):
    """Sources that changed, appeared or disappeared since the bundle was built (sorted)."""
    src = Path(src or manifest["src"])
    now = {Path(n) for n in TOP_FILES}
    try:
        now |= set(lib_sources(src))
    except BundleError:
        pass
    recorded = manifest.get("sources", {})
    changed = set()
    for rel in now:
        key = rel.as_posix()
        path = src / rel
        if key not in recorded or not path.is_file() or sha256_file(path) != recorded[key]:
            changed.add(key)
    changed |= {k for k in recorded if Path(k) not in now}
    return sorted(changed)


def load_manifest(bundle):
    path = Path(bundle) / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle} is not a complete bundle (no {MANIFEST}): run `make bundle`")
    return json.loads(path.read_text())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", required=True, choices=sorted(ARCHES))
    ap.add_argument("--out", help="output folder (default build/<arch>)")
    ap.add_argument("--src", default=str(REPO), help="the project root (default: this repo)")
    args = ap.parse_args(argv)
    out = Path(args.out or REPO / "build" / args.arch)
    try:
        build(args.src, out, args.arch)
    except BundleError as e:
        print(f"bundle: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
