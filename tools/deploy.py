"""Copy a bundle onto a board over its serial port: changed files only, atomically, then reset.

    python -m tools.deploy --port PORT [--bundle build/xtensawin] [--secrets FILE] [--ca FILE]
                           [--dry-run] [--follow SECONDS] [--no-reset]

What goes on the board: the bundle (tools/bundle.py), secrets.json from the project root if it
exists, and the files config.json names (at the same relative path): the CA certificate of
mqtt.ca and, for a broker that wants a certificate per node, the node's own of mqtt.cert and
its key of mqtt.key (`make provision NODE=<id>` puts them there). Only their names are printed.
The serial side is mpremote's transport (raw REPL, raw-paste), one connection for everything:

1. soft reset into the raw REPL: the app stops and the heap is fresh;
2. one round trip: the SHA-256 of every target file and of a <file>.new left by an earlier try,
   the files under /lib, the free space, the board's .mpy version and arch;
3. refuse before writing anything if the bundle's .mpy files cannot load there or do not fit;
4. write /deploying, then each changed file as <file>.new (base64 chunks), then check the
   hashes of the .new files on the board (one round trip);
5. commit with one command: rename each .new over its file, boot.py and main.py last; remove
   what the bundle no longer has in its own folders (and a .py that would shadow a new .mpy);
   remove /deploying last;
6. clear boot.py's boot-loop count (a new app gets its full number of tries before safe mode);
7. leave the raw REPL and press Ctrl-D: a soft reset runs boot.py, then main.py.

If the board refuses a write (an OSError there, a hash mismatch) the .new files and /deploying
are removed and the old app restarted: nothing changed. If the copy is cut short (cable, reset,
Ctrl-C here) /deploying stays on the board and boot.py must start in safe mode (no app, REPL
free) until a deploy completes; the next deploy reuses .new files that already match.
"""

import argparse
import ast
import base64
import contextlib
import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mpremote.transport import TransportError, TransportExecError
from mpremote.transport_serial import SerialTransport
from serial import SerialException

from tools import bundle as bundles
from tools.hosttools import REPO

MARKER = "/deploying"  # boot.py: present -> safe mode (see docs/HARDWARE.md)
LAST = ("/boot.py", "/main.py")  # committed last, main.py the very last
CLEAR_BOOT_LOOP = """
try:
    from node import bootcount
    bootcount.mark_stable('/boot.json')
except ImportError:
    pass
"""
RAW_CHUNK = 2049  # bytes per exec: a multiple of 3, so every chunk is whole base64
BLOCK = 4096  # littlefs block: a file takes at least one
SERIAL_TIMEOUT_S = 5


class DeployError(Exception):
    """Refused before anything changed on the board, or after a clean roll-back."""


class BoardLost(Exception):
    """The serial link failed or the board reset while files were being changed."""


class DeployRefused(Exception):
    """The board took the data but it is not what was sent."""


@dataclass
class Item:
    path: str  # on the board, absolute
    local: Path
    sha256: str
    size: int
    label: str  # what we print: never the content


def sha256_file(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def board_path(rel):
    return "/" + str(rel).lstrip("/")


def gather(bundle_dir, secrets=None, ca=None, root=None):
    """(manifest, the files to put on the board, named): the bundle, then secrets and the files
    config.json's mqtt.ca, mqtt.cert and mqtt.key name; named holds (key, Item) for each of
    those, also when the file is missing here (then it is not in the list)."""
    bundle_dir = Path(bundle_dir)
    try:
        manifest = bundles.load_manifest(bundle_dir)
    except bundles.BundleError as e:
        raise DeployError(str(e)) from None
    root = Path(root or manifest.get("src") or REPO)
    items = []
    for rel, info in sorted(manifest["files"].items()):
        local = bundle_dir / rel
        if not local.is_file() or sha256_file(local) != info["sha256"]:
            raise DeployError(f"{local} differs from its bundle manifest: run `make bundle`")
        items.append(Item(board_path(rel), local, info["sha256"], info["size"], rel))
    secrets = Path(secrets) if secrets else root / "secrets.json"
    if secrets.is_file():
        items.append(Item("/secrets.json", secrets, sha256_file(secrets), secrets.stat().st_size,
                          "secrets.json"))
    mqtt = json.loads((bundle_dir / "config.json").read_text()).get("mqtt") or {}
    named = []
    for key in ("ca", "cert", "key"):
        name = mqtt.get(key)
        if not isinstance(name, str) or not name:
            continue
        local = Path(ca) if key == "ca" and ca else root / name.lstrip("/")
        item = Item(board_path(name), local, "", 0, name.lstrip("/"))
        if local.is_file():
            item.sha256, item.size = sha256_file(local), local.stat().st_size
            items.append(item)
        named.append((key, item))
    return manifest, items, named


# --- code that runs on the board ------------------------------------------------------------
# Names start with _d so they cannot clash with the REPL's; each command deletes what it made.
HASH_FN = """\
import os, sys, binascii, hashlib
def _dh(p):
    try:
        h = hashlib.sha256()
        b = bytearray(1024)
        with open(p, 'rb') as f:
            while True:
                n = f.readinto(b)
                if not n:
                    break
                h.update(b if n == 1024 else b[:n])
        return binascii.hexlify(h.digest()).decode()
    except OSError:
        return None
"""

QUERY = HASH_FN + """\
def _dw(d, deep, out):
    try:
        es = list(os.ilistdir(d))
    except OSError:
        return
    for e in es:
        p = d.rstrip('/') + '/' + e[0]
        if e[1] & 0x4000:
            if deep:
                _dw(p, deep, out)
        else:
            out.append(p)
_dl = []
_dw('/', False, _dl)
_dw('/lib', True, _dl)
# packages the firmware has frozen in: they win over /lib, so copying them would change nothing
_dz = []
_dsp = sys.path[:]
for _dn in {packages!r}:
    sys.path[:] = ['.frozen']
    try:
        __import__(_dn)
        _dz.append(_dn)
    except ImportError:
        pass
    finally:
        sys.path[:] = _dsp
        sys.modules.pop(_dn, None)
try:
    _ds = os.statvfs('/')
    _df = _ds[0] * _ds[4]
except Exception:
    _df = None
print(repr(([(p, _dh(p)) for p in {paths!r}], _dl, _df,
            getattr(sys.implementation, '_mpy', None), sys.platform, _dz)))
del _dh, _dw, _dl, _df, _dz, _dsp
"""

VERIFY = HASH_FN + """\
print(repr([_dh(p) for p in {paths!r}]))
del _dh
"""

PREPARE = """\
import os
_dp = None
for _dp in {dirs!r}:
    try:
        os.mkdir(_dp)
    except OSError as e:
        if e.errno != 17:  # EEXIST
            raise
with open({marker!r}, 'w') as _dfile:
    _dfile.write({note!r})
del _dp, _dfile
"""

COMMIT = """\
import os
for _ds, _dd in {renames!r}:
    os.rename(_ds, _dd)
for _dp in {removes!r}:
    try:
        os.remove(_dp)
    except OSError:
        pass
os.remove({marker!r})
"""

ROLLBACK = """\
import os
try:
    _f.close()
except Exception:
    pass
for _dp in {removes!r}:
    try:
        os.remove(_dp)
    except OSError:
        pass
"""


class Board:
    """The serial link, through mpremote's transport."""

    link_errors = (TransportError, SerialException, OSError)

    def __init__(self, port):
        try:
            self.t = SerialTransport(port, baudrate=115200)
        except self.link_errors as e:
            raise DeployError(f"cannot open {port}: {e} (is another program, e.g. "
                              f"`make monitor`, using it?)") from None
        # mpremote reads a pty without a timeout; a board that stops answering must not hang us
        self.t.serial.timeout = SERIAL_TIMEOUT_S
        self.port = port

    def enter(self):
        """Stop the app (Ctrl-C), then soft-reset into the raw REPL: a fresh heap, no app."""
        error = None
        # A Ctrl-C that lands while boot.py runs stops boot.py, and main.py starts anyway:
        # the second try interrupts main.py.
        for timeout_s in (3, 10):
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # mpremote prints raw bytes
                    self.t.enter_raw_repl(soft_reset=True, timeout_overall=timeout_s)
                return
            except self.link_errors as e:
                error = e
        raise DeployError(f"no MicroPython REPL answers on {self.port} ({error}): is MicroPython "
                          f"flashed (make flash)? does the app swallow Ctrl-C?")

    def run(self, code):
        """Run code on the board; its printed output. Board errors raise TransportExecError."""
        try:
            return self.t.exec(code)
        except TransportExecError:
            raise
        except self.link_errors as e:
            raise BoardLost(str(e) or type(e).__name__) from None

    def value(self, code):
        return ast.literal_eval(self.run(code).decode().strip())

    def restart_app(self, follow_s=0, out=sys.stdout):
        """Friendly REPL, then Ctrl-D: the board runs boot.py and main.py. True if confirmed."""
        try:
            self.t.exit_raw_repl()
            self.t.read_until(1, b">>> ", timeout=SERIAL_TIMEOUT_S)
            self.t.serial.write(b"\x04")
            data = self.t.read_until(1, b"soft reboot\r\n", timeout=SERIAL_TIMEOUT_S)
            if follow_s:
                end = time.monotonic() + follow_s
                self.t.serial.timeout = 0.1
                while time.monotonic() < end:
                    chunk = self.t.serial.read(4096)
                    if chunk:
                        out.write(chunk.decode(errors="replace").replace("\r\n", "\n"))
                        out.flush()
            return data.endswith(b"soft reboot\r\n")
        except self.link_errors:
            return False

    def close(self):
        try:
            self.t.close()
        except Exception:  # noqa: BLE001, S110 - closing a port that vanished: nothing to do
            pass


def check_mpy(manifest, board_mpy, platform):
    """Refuse a bundle whose .mpy files the board's firmware cannot import."""
    if board_mpy is None:
        return f"{platform}, .mpy version unknown"
    ver, sub, arch = board_mpy & 0xFF, (board_mpy >> 8) & 3, board_mpy >> 10
    arch_name = {v[0]: k for k, v in bundles.ARCHES.items()}.get(arch, f"arch {arch}")
    desc = f"{platform}, .mpy v{ver}.{sub} {arch_name}"
    want = manifest.get("mpy_version")
    if not want:
        return desc
    if want[0] != ver:
        raise DeployError(f"the board's firmware loads .mpy v{ver}, the bundle holds "
                          f"v{want[0]}: flash a matching MicroPython, or use its mpy-cross")
    if manifest.get("native"):
        if arch != manifest["arch_number"]:
            raise DeployError(f"the board runs {arch_name} machine code, the bundle holds "
                              f"{manifest['arch']}: make bundle ARCH={arch_name}")
        if want[1] is not None and want[1] != sub:
            raise DeployError(f"the board's firmware loads native .mpy v{ver}.{sub}, the bundle "
                              f"holds v{want[0]}.{want[1]}: use a matching mpy-cross")
    return desc


def plan(manifest, items, hashes, listing):
    """(to_write, to_commit, removes): what differs, what to rename, what to delete."""
    by_path = dict(hashes)
    to_write, to_commit = [], []
    for it in items:
        if by_path.get(it.path) == it.sha256:
            continue
        to_commit.append(it)
        if by_path.get(it.path + ".new") != it.sha256:
            to_write.append(it)
    targets = {it.path for it in items}
    bundle_paths = {board_path(rel) for rel in manifest["files"]}
    owned_dirs = {p.rsplit("/", 1)[0] for p in bundle_paths if p.startswith("/lib/")}
    owned_dirs.discard("/lib")
    shadows = {p[:-4] + ".py" for p in bundle_paths if p.endswith(".mpy")}
    committed_new = {it.path + ".new" for it in to_commit}
    removes = []
    for p in listing:
        if p in targets or p in committed_new:
            continue
        if (p.rsplit("/", 1)[0] in owned_dirs or p in shadows or p.endswith(".new")):
            removes.append(p)
    return to_write, to_commit, sorted(removes)


def commit_order(items):
    def key(it):
        return (LAST.index(it.path) + 1 if it.path in LAST else 0, it.path)
    return sorted(items, key=key)


def kb(n):
    return f"{n / 1024:.1f} KB"


def deploy(port, bundle_dir, secrets=None, ca=None, root=None, dry_run=False, follow_s=0,
           reset=True, log=print, board_factory=Board):
    t0 = time.monotonic()
    manifest, items, named = gather(bundle_dir, secrets, ca, root)
    missing = [(key, it) for key, it in named if it not in items]
    stale = bundles.stale_sources(manifest)
    if stale:
        more = f" and {len(stale) - 3} more" if len(stale) > 3 else ""
        raise DeployError(f"{bundle_dir} is older than {', '.join(stale[:3])}{more}: run "
                          f"make bundle ARCH={manifest['arch']}")

    board = board_factory(port)
    phase = "connect"
    try:
        board.enter()
        phase = "query"  # the app is stopped from here on: a refusal restarts it
        paths = [it.path for it in items] + [it.path + ".new" for it in items]
        paths += [it.path for _, it in missing]
        packages = sorted({rel.split("/")[1].split(".")[0] for rel in manifest["files"]
                           if rel.startswith("lib/")})
        hashes, listing, free, board_mpy, platform, frozen = board.value(
            QUERY.format(paths=paths, packages=packages))
        desc = check_mpy(manifest, board_mpy, platform)
        if frozen:
            prefixes = tuple(f"/lib/{p}/" for p in frozen) + tuple(f"/lib/{p}." for p in frozen)
            skipped = [it for it in items if it.path.startswith(prefixes)]
            items = [it for it in items if it not in skipped]
            manifest = dict(manifest, files={rel: v for rel, v in manifest["files"].items()
                                             if not board_path(rel).startswith(prefixes)})
            log(f"deploy: the firmware has {', '.join(frozen)} frozen in (it wins over /lib): "
                f"not copying those {len(skipped)} files; reflash to change them")
        extras = [it.label for it in items if it.path == "/secrets.json"
                  or any(it is n for _, n in named)]
        log(f"deploy: {port}: {desc}; bundle {bundle_dir} ({manifest['arch']}, "
            f"{len(manifest['files'])} files){''.join(' + ' + e for e in extras)}")
        have = dict(hashes)
        for key, it in missing:
            if have.get(it.path) is None:
                how = ("put it next to config.json or pass --ca" if key == "ca" else
                       "make provision NODE=<id> puts it there")
                log(f"deploy: warning: config.json names mqtt.{key} {it.label!r}, but "
                    f"{it.local} is missing and the board has none: the node will stop in "
                    f"safe mode until it is there ({how})")
            else:
                log(f"deploy: warning: {it.local} is missing; the board keeps its {it.path}")
        if not any(it.path == "/secrets.json" for it in items) and not have.get("/secrets.json"):
            log("deploy: warning: no secrets.json here or on the board: the node will stop in "
                "safe mode (copy secrets.example.json to secrets.json)")

        to_write, to_commit, removes = plan(manifest, items, hashes, listing)
        need = sum(-(-it.size // BLOCK) * BLOCK for it in to_write) + BLOCK
        unchanged = len(items) - len(to_commit)
        unfinished = MARKER in listing
        if unfinished:
            log(f"deploy: {MARKER} is on the board: an earlier deploy was cut short; finishing")
        if not to_commit and not removes and not unfinished:
            log(f"deploy: nothing changed ({unchanged} files up to date)")
        else:
            names = [it.label for it in to_commit]
            log(f"deploy: {len(to_commit)} to update ({kb(sum(it.size for it in to_write))} to "
                f"copy), {unchanged} unchanged, {len(removes)} to remove: "
                + " ".join(names + [f"-{p}" for p in removes]))
            if free is not None and need > free:
                raise DeployError(f"not enough space on the board: the copy needs {kb(need)}, "
                                  f"{kb(free)} are free")
        if dry_run:
            log("deploy: dry run: nothing written")
        elif to_commit or removes or unfinished:
            phase = "copy"
            write_and_commit(board, to_write, to_commit, removes, log, keep_marker=unfinished)
        phase = "reset"
        if not dry_run:
            # A new app gets the full count of tries before boot.py's boot-loop safe mode.
            board.run(CLEAR_BOOT_LOOP)
        if reset or dry_run:
            if board.restart_app(follow_s):
                log("deploy: soft reset: boot.py, then main.py")
            else:
                log("deploy: warning: the board did not confirm the soft reset: press RESET")
        log(f"deploy: done in {time.monotonic() - t0:.2f} s")
    except TransportExecError as e:  # the query itself failed on the board
        board.restart_app()
        raise DeployError(f"the board could not answer: {last_line(e.error_output)}") from None
    except DeployError:
        if phase == "query":
            board.restart_app()  # nothing was written: the old app runs again
        raise
    except (BoardLost, KeyboardInterrupt) as e:
        if phase in ("connect", "query"):
            why = str(e) if isinstance(e, BoardLost) else "interrupted"
            raise DeployError(f"{why} before anything changed on the board") from None
        raise
    finally:
        board.close()


def write_and_commit(board, to_write, to_commit, removes, log, keep_marker=False):
    """Steps 4 and 5. keep_marker: /deploying was there before, so a roll-back keeps it."""
    t0 = time.monotonic()
    dirs = sorted({"/".join(it.path.split("/")[:i]) for it in to_commit
                   for i in range(2, it.path.count("/") + 1)}, key=lambda d: (d.count("/"), d))
    note = f"deploy started {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, " \
           f"{len(to_commit)} files\n"
    current = None
    try:
        board.run(PREPARE.format(dirs=dirs, marker=MARKER, note=note))
        for it in to_write:
            current = it
            write_file(board, it)
        current = None
        new_paths = [it.path + ".new" for it in to_commit]
        got = board.value(VERIFY.format(paths=new_paths))
        bad = [it for it, h in zip(to_commit, got, strict=True) if h != it.sha256]
        if bad:
            raise DeployRefused(f"{bad[0].label} arrived corrupted (hash differs on the board)")
        elapsed = time.monotonic() - t0
        size = sum(it.size for it in to_write)
        log(f"deploy: copied {len(to_write)} files ({kb(size)}) in {elapsed:.2f} s, "
            f"hashes verified on the board")
    except (TransportExecError, DeployRefused) as e:
        reason = str(e) if isinstance(e, DeployRefused) else last_line(e.error_output)
        what = f" {current.label}" if current else ""
        rollback(board, [it.path + ".new" for it in to_commit] + ([] if keep_marker else [MARKER]))
        raise DeployError(f"the board refused{what}: {reason}; rolled back, nothing changed"
                          ) from None
    renames = [(it.path + ".new", it.path) for it in commit_order(to_commit)]
    try:
        board.run(COMMIT.format(renames=renames, removes=removes, marker=MARKER))
    except TransportExecError as e:
        raise BoardLost(f"the commit failed on the board: {last_line(e.error_output)}") from None
    last = f" ({renames[-1][1]} last)" if renames else ""
    log(f"deploy: committed {len(renames)} files{last}, removed {len(removes)}, "
        f"{MARKER} cleared")


def write_file(board, it):
    data = it.local.read_bytes()
    tmp = it.path + ".new"
    chunks = [data[i:i + RAW_CHUNK] for i in range(0, len(data), RAW_CHUNK)] or [b""]
    for i, chunk in enumerate(chunks):
        code = ""
        if i == 0:
            code += (f"import binascii\n_f = open({tmp!r}, 'wb')\n_w = _f.write\n"
                     f"_b = binascii.a2b_base64\n")
        if chunk:
            code += f"_w(_b({base64.b64encode(chunk)!r}))\n"
        if i == len(chunks) - 1:
            code += "_f.close()\ndel _f, _w, _b\n"
        board.run(code)


def rollback(board, paths):
    try:
        board.run(ROLLBACK.format(removes=paths))
    except (TransportExecError, BoardLost) as e:
        raise BoardLost(f"could not roll back ({e})") from None
    board.restart_app()


def last_line(text):
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "?"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", default="", help="the board's serial port, e.g. /dev/ttyUSB0")
    ap.add_argument("--bundle", default=str(REPO / "build" / "xtensawin"))
    ap.add_argument("--secrets", help="secrets file (default: secrets.json in the project root)")
    ap.add_argument("--ca", help="CA certificate (default: the file config.json mqtt.ca names)")
    ap.add_argument("--dry-run", action="store_true", help="show what would change, write nothing")
    ap.add_argument("--follow", type=float, default=0, metavar="SECONDS",
                    help="print the board's output for this long after the reset")
    ap.add_argument("--no-reset", action="store_true", help="leave the board in the raw REPL")
    args = ap.parse_args(argv)
    if not args.port:
        print("deploy: no serial port given: make deploy PORT=/dev/ttyUSB0", file=sys.stderr)
        return 2
    if "://" not in args.port and not os.path.exists(args.port):
        print(f"deploy: serial port {args.port} does not exist (board unplugged?)",
              file=sys.stderr)
        return 2
    try:
        deploy(args.port, args.bundle, args.secrets, args.ca, dry_run=args.dry_run,
               follow_s=args.follow, reset=not args.no_reset)
    except DeployError as e:
        print(f"deploy: {e}", file=sys.stderr)
        return 1
    except (BoardLost, KeyboardInterrupt) as e:
        why = str(e) if isinstance(e, BoardLost) else "interrupted"
        print(f"deploy: cut short ({why}): {MARKER} stays on the board, so it boots in safe "
              f"mode until a deploy completes: run make deploy again", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
