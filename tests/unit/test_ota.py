"""node.ota, the receiving side of an update over MQTT, under the unix port (and the 32-bit 1.27
port): the messages tools/ota.py makes, fed to a Receiver in a flash folder (tests/unit/
ota_run.py). Each bad input gets its state and reason, and leaves the running version's files
as they were.
"""

import hashlib
import hmac
import json
import re

import pytest

from tests.conftest import REPO
from tools import ota

RUN = REPO / "tests" / "unit" / "ota_run.py"
KEY = "k" * 32
NODE = "n1"
OLD = {"boot.py": b"# old boot\n", "main.py": b"# old main\n", "lib/node/a.py": b"A = 1\n",
       "lib/node/gone.mpy": b"M\x06old", "config.json": b"{}"}
NEW = {"boot.py": b"# new boot\n", "main.py": b"# new main\n",
       "lib/node/a.mpy": b"M\x06" + bytes(range(256)) * 9,  # over two chunks by itself
       "lib/node/empty.mpy": b"", "lib/newpkg/b.mpy": b"M\x06b" * 700}


def mpy_of(run):
    """(version, sub-version, arch number) the binary loads: what a bundle for it says."""
    have = int(run("import sys; print(sys.implementation._mpy)").stdout)
    return have & 0xFF, (have >> 8) & 3, have >> 10


def update_for(run, files=NEW, version="9.9.9", arch_number=None, mpy=None):
    ver, sub, arch = mpy_of(run)
    manifest = {"version": version, "arch": "test", "arch_number": arch_number or arch,
                "mpy_version": mpy or [ver, sub], "native": ["lib/node/a.mpy"]}
    return ota.make_update(manifest, sorted(files.items()))


def flash(tmp_path, files=OLD):
    root = tmp_path / "flash"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def tree(root, under=""):
    base = root / under
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*"))
            if p.is_file()} if base.exists() else {}


class Script:
    """The steps for ota_run.py, with the messages written to files."""

    def __init__(self, tmp_path, update, node=NODE, key=KEY, free=None, update_id="u1"):
        self.dir = tmp_path / "msgs"
        self.dir.mkdir(exist_ok=True)
        self.update = update
        self.steps = []
        self.free = free
        self.node, self.key = node, key
        self.manifest_msg = ota.manifest_message(update, node, key, update_id)
        self.listed = len(update.listing)  # where the files' bytes begin in the stream
        self._n = 0

    def _file(self, data):
        self._n += 1
        path = self.dir / f"m{self._n}"
        path.write_bytes(data)
        return str(path)

    def manifest(self, msg=None):
        self.steps.append(["manifest", self._file(msg if msg is not None else
                                                  self.manifest_msg)])
        return self

    def chunk(self, offset, size=ota.CHUNK_BYTES, data=None):
        msg = ota.chunk_message(self.update.stream, offset, size) if data is None else \
            offset.to_bytes(4, "big") + data
        self.steps.append(["chunk", self._file(msg)])
        return self

    def chunks(self, start=0, end=None):
        """The stream from `start` to `end`, in chunks as tools/ota.py cuts it."""
        end = len(self.update.stream) if end is None else end
        for offset in range(start, end, ota.CHUNK_BYTES):
            self.chunk(offset, min(ota.CHUNK_BYTES, end - offset))
        return self

    def wait(self, ms=500):
        self.steps.append(["wait", ms])
        return self

    def reboot(self):
        self.steps.append(["reboot", None])
        return self

    def state(self, text):
        self.steps.append(["state", text])
        return self

    def run(self, mpy, root):
        spec = self.dir / "spec.json"
        spec.write_text(json.dumps({"node": self.node, "key": self.key, "free": self.free,
                                    "steps": self.steps}))
        out = mpy(RUN, spec, cwd=root).stdout
        return Result(out)


class Result:
    def __init__(self, out):
        self.out = out
        self.states = [json.loads(line.split(" ", 2)[2].rsplit(" ", 1)[0])
                       for line in out.splitlines() if line.startswith("PUB ")]
        self.resets = out.count("\nRESET")
        self.done = out.count("DONE")

    def last(self, state=None):
        found = [s for s in self.states if state is None or s["state"] == state]
        assert found, f"no {state} state in:\n{self.out}"
        return found[-1]


def applied_files(root):
    return {k: v for k, v in tree(root).items() if not k.startswith(("ota", "boot.json"))}


def test_an_update_is_staged_checked_swapped_in_main_py_last_and_rebooted(mpy_each, tmp_path):
    root = flash(tmp_path)
    u = update_for(mpy_each)
    r = Script(tmp_path, u).manifest().chunks().wait(1500).run(mpy_each, root)
    first = r.states[0]
    assert first["state"] == "receiving" and first["next"] == 0, r.out
    assert first["bytes"] == len(u.stream) and first["target"] == "9.9.9"
    assert first["id"] == "u1" and first["version"] == "0.1.0" and first["chunk_max"] == 1024
    assert [s["next"] for s in r.states if s["state"] == "receiving"][-1] < len(u.stream)
    rebooting = r.last("verifying")
    assert "rebooting into 9.9.9" in rebooting["reason"], r.out
    assert "boot.py: update to 9.9.9 taken apart and swapped in (heap free" in r.out
    assert r.resets == 2  # the app's, once the stream is checked; the boot's, after the swap
    # The new version in place; config.json is the node's own; the old files kept aside,
    # lib/node/a.py too (it would shadow a.mpy), and gone.mpy, which the new one lacks.
    assert applied_files(root) == {**NEW, "config.json": b"{}"}
    backup = tree(root, "ota/old")
    assert backup == {k: v for k, v in OLD.items() if k != "config.json"}
    state = json.loads((root / "ota.json").read_text())
    assert state == {"phase": "trial", "boots": 0, "id": "u1", "target": "9.9.9",
                     "from": "0.1.0"}
    journal = (root / "ota" / "journal").read_text().splitlines()
    names = sorted(NEW)  # the list's order: the staged files' numbers
    assert journal[-1] == f"R {names.index('main.py')} main.py"
    assert sorted(journal[:2]) == ["M lib/node/a.py", "M lib/node/gone.mpy"]  # ilistdir order
    assert f"A {names.index('lib/newpkg/b.mpy')} lib/newpkg/b.mpy" in journal
    assert not (root / "ota" / "new").exists()
    m = re.search(r"ota: received (\d+) bytes in (\d+) ms .* heap free at least (\d+)", r.out)
    assert m and int(m.group(1)) == len(u.stream), r.out


def test_a_forged_manifest_is_refused_before_anything_is_written(mpy, tmp_path):
    root = flash(tmp_path)
    u = update_for(mpy)
    good = ota.manifest_message(u, NODE, KEY, "u1")
    tag, body = good.split(b"\n", 1)
    other_key = ota.manifest_message(u, NODE, "x" * 32, "u2")
    tampered = tag + b"\n" + body.replace(b'"9.9.9"', b'"6.6.6"')
    s = Script(tmp_path, u)
    for msg in (other_key, tampered, b"0" * 64 + b"\n" + body, b"zz" * 32 + b"\n{}",
                b"short", tag + b"\nnot json", tag + b"\n[1]"):
        s.manifest(msg)
    r = s.chunks(0, 2048).run(mpy, root)
    states = r.states
    assert [x["state"] for x in states] == ["refused"] * 7, r.out
    assert "does not verify with ota_key" in states[0]["reason"]
    assert states[0]["id"] == "u2" and states[0]["target"] == "9.9.9"
    assert "does not verify" in states[1]["reason"] and states[1]["target"] == "6.6.6"
    assert "does not verify" in states[2]["reason"]
    assert "tag is not hex" in states[3]["reason"]
    assert "not a manifest" in states[4]["reason"] and states[4]["id"] is None
    assert "not JSON" in states[5]["reason"] and "not a JSON object" in states[6]["reason"]
    assert r.done == 7 and r.resets == 0
    assert tree(root) == OLD and not (root / "ota").exists()


@pytest.mark.parametrize(("change", "reason"), [
    ({"node": "n2"}, "the manifest is for node n2"),
    ({"arch_number": 10}, "machine code for test (arch 10); this board runs arch"),
    ({"mpy": [5, 0]}, "the bundle holds .mpy v5, this firmware loads v6"),
    ({"files": 0}, "sizes are out of range"),
    ({"v": 2}, "manifest v2: this node reads v1"),
    ({"native": "yes"}, "the manifest's native is missing or not a bool"),
])
def test_a_manifest_for_another_node_chip_or_format_is_refused(mpy, tmp_path, change, reason):
    root = flash(tmp_path)
    u = update_for(mpy)
    _tag, body = ota.manifest_message(u, NODE, KEY, "u1").split(b"\n", 1)
    m = json.loads(body)
    m.update(change)
    body = json.dumps(m).encode()
    msg = hmac.new(KEY.encode(), body, hashlib.sha256).hexdigest().encode() + b"\n" + body
    r = Script(tmp_path, u).manifest(msg).run(mpy, root)
    assert r.last()["state"] == "refused" and reason in r.last()["reason"], r.out
    assert tree(root) == OLD and not (root / "ota").exists()


def test_the_running_version_offered_again_is_applied_already(mpy, tmp_path):
    root = flash(tmp_path)
    r = Script(tmp_path, update_for(mpy, version="0.1.0")).manifest().run(mpy, root)
    assert r.last() == {"state": "applied", "id": "u1", "version": "0.1.0",
                        "target": "0.1.0", "reason": "already running 0.1.0"}
    assert tree(root) == OLD


def test_a_bundle_larger_than_the_free_flash_is_refused_before_anything_is_written(mpy,
                                                                                 tmp_path):
    root = flash(tmp_path)
    u = update_for(mpy)
    r = Script(tmp_path, u, free=8192).manifest().chunks().wait(300).run(mpy, root)
    last = r.last()
    assert last["state"] == "refused", r.out
    # At most: the stream, then each file taken out of it, in littlefs's whole blocks.
    blocks = -(-len(u.stream) // 4096) + -(-u.size // 4096) + len(NEW)
    assert last["reason"] == (f"the bundle needs up to {blocks * 4} KB of flash (its stream, "
                              f"then its files), 8 KB are free")
    assert r.done == 1 and r.resets == 0
    assert tree(root) == OLD and not (root / "ota").exists()


def test_chunks_out_of_order_truncated_or_repeated_are_asked_for_again(mpy, tmp_path):
    root = flash(tmp_path)
    u = update_for(mpy)
    s = Script(tmp_path, u).manifest()
    d = s.listed
    s.chunks(0, d)  # the list, then the files from d on
    s.chunk(d).chunk(d + 2048).chunk(d + 3072)  # d + 1024 went missing: asked for once
    s.chunk(d + 1024, 100)  # truncated: the next one does not follow it
    s.chunk(d + 2048)
    s.chunk(d)  # a copy of what is there: no word
    s.chunk(d + 1124).chunks(d + 2148).wait(1500)
    r = s.run(mpy, root)
    asks = [x for x in r.states if x.get("reason", "").startswith("chunk at")]
    assert [a["reason"] for a in asks] == [f"chunk at byte {d + 2048}, expected {d + 1024}",
                                           f"chunk at byte {d + 2048}, expected {d + 1124}"], \
        r.out
    assert [a["next"] for a in asks] == [d + 1024, d + 1124]
    assert "rebooting into 9.9.9" in r.last("verifying")["reason"] and r.resets == 2
    assert applied_files(root) == {**NEW, "config.json": b"{}"}


def test_a_chunk_past_the_end_fails_the_update_and_nothing_stays(mpy, tmp_path):
    root = flash(tmp_path)
    u = update_for(mpy)
    end = len(u.stream) // 1024 * 1024
    r = Script(tmp_path, u).manifest().chunks(0, end).chunk(end, data=b"x" * 2000) \
        .run(mpy, root)
    assert r.last()["state"] == "failed" and "runs past the stream's end" in \
        r.last()["reason"], r.out
    assert tree(root) == OLD and not (root / "ota").exists()


def test_a_stream_whose_hash_differs_fails_the_update_before_the_reboot(mpy, tmp_path):
    root = flash(tmp_path)
    u = update_for(mpy)
    s = Script(tmp_path, u)  # the manifest covers the stream as it was made
    at = u.stream.index(NEW["main.py"], len(u.listing))
    u.stream = u.stream[:at] + b"# evil ma\n\n" + u.stream[at + len(NEW["main.py"]):]
    r = s.manifest().chunks().wait(1500).run(mpy, root)
    assert r.last()["state"] == "failed", r.out
    assert r.last()["reason"] == "the stream's SHA-256 differs from the manifest's"
    assert r.resets == 0 and r.done == 1
    assert tree(root) == OLD and not (root / "ota").exists()


def test_a_file_whose_hash_differs_fails_at_boot_before_the_swap(mpy, tmp_path):
    root = flash(tmp_path)
    u = update_for(mpy)
    # The list promises one main.py; other bytes of its size come, and the manifest (made by
    # whoever holds the key) covers them: the boot finds it before anything is swapped.
    at = u.stream.index(NEW["main.py"], len(u.listing))
    u.stream = u.stream[:at] + b"# evil ma\n\n" + u.stream[at + len(NEW["main.py"]):]
    r = Script(tmp_path, u).manifest().chunks().wait(1500).run(mpy, root)
    assert "boot.py: update to 9.9.9 failed: main.py: its SHA-256 on flash differs from the " \
           "list's" in r.out, r.out
    assert r.resets == 2
    state = json.loads((root / "ota.json").read_text())
    assert state["phase"] == "failed" and "main.py" in state["reason"], state
    assert tree(root) == {**OLD, "ota.json": (root / "ota.json").read_bytes()}
    assert not (root / "ota").exists()


def test_a_list_naming_files_outside_the_app_is_refused(mpy, tmp_path):
    root = flash(tmp_path)
    # Only a holder of the key can send such a list: the boot refuses it before taking out a
    # file, and the version that runs on says so (node.otaboot.report).
    for name in ("secrets.json", "lib/../boot.json", "lib/node/.hidden"):
        u = update_for(mpy, files={**NEW, name: b"x"})
        r = Script(tmp_path, u).manifest().chunks().wait(1500).run(mpy, root)
        state = json.loads((root / "ota.json").read_text())
        assert state["phase"] == "refused" and name in state["reason"], r.out
        assert f"boot.py: update to 9.9.9 refused: {name}" in r.out
        (root / "ota.json").unlink()
        assert tree(root) == OLD and not (root / "ota").exists()
    u = update_for(mpy, files={k: v for k, v in NEW.items() if k != "main.py"})
    r = Script(tmp_path, u).manifest().chunks().wait(1500).run(mpy, root)
    assert "boot.py: update to 9.9.9 refused: the bundle has no main.py" in r.out, r.out


def test_a_second_update_while_one_runs_is_refused_and_the_first_goes_on(mpy, tmp_path):
    root = flash(tmp_path)
    u = update_for(mpy)
    s = Script(tmp_path, u).manifest().chunks(0, 3072)
    other = update_for(mpy, version="8.8.8")
    s.manifest(ota.manifest_message(other, NODE, KEY, "u2"))
    s.manifest()  # the first offered again: where it stands
    r = s.chunks(3072).wait(1500).run(mpy, root)
    refused = r.last("refused")
    assert refused["id"] == "u2" and refused["target"] == "8.8.8", r.out
    assert refused["reason"] == (f"busy: the update to 9.9.9 is receiving (3072 of "
                                 f"{len(u.stream)} bytes)")
    again = r.states[r.states.index(refused) + 1]
    assert again["state"] == "receiving" and again["next"] == 3072 and again["id"] == "u1"
    assert r.resets == 2 and applied_files(root) == {**NEW, "config.json": b"{}"}


def test_an_update_on_trial_refuses_the_next_one(mpy, tmp_path):
    root = flash(tmp_path)
    r = Script(tmp_path, update_for(mpy)).state('{"phase": "trial", "target": "9.0"}') \
        .manifest().run(mpy, root)
    assert r.last()["state"] == "refused"
    assert "the last update is not finished (ota.json)" in r.last()["reason"]


def test_a_transfer_resumes_after_a_reboot_where_the_staging_stands(mpy, tmp_path):
    root = flash(tmp_path)
    u = update_for(mpy)
    s = Script(tmp_path, u).manifest().chunks(0, 4096).reboot()
    s.chunk(4096)  # nobody listens any more: dropped
    s.manifest()  # offered again: resumes
    r = s.chunks(4096).wait(1500).run(mpy, root)
    resumed = [x for x in r.states if x["state"] == "receiving"]
    at_reboot = [x["next"] for x in resumed].index(4096)
    assert resumed[at_reboot + 1]["next"] == 4096, r.out  # the offer after the reboot
    assert "resuming the update to 9.9.9" in r.out and "at byte 4096 of" in r.out
    assert r.resets == 2 and applied_files(root) == {**NEW, "config.json": b"{}"}


def test_a_staging_cut_inside_a_file_resumes_inside_it(mpy, tmp_path):
    root = flash(tmp_path)
    u = update_for(mpy)
    s = Script(tmp_path, u).manifest().chunks(0, 2048)
    s.chunk(2048, 300).reboot().manifest()  # 300 bytes of a file staged, then a reset
    r = s.chunks(2348).wait(1500).run(mpy, root)
    assert "resuming the update to 9.9.9" in r.out and "at byte 2348 of" in r.out, r.out
    assert applied_files(root) == {**NEW, "config.json": b"{}"}


@pytest.mark.parametrize("key", [b"", b"k" * 16, b"k" * 64, b"k" * 65, bytes(range(200))])
def test_hmac_matches_cpython(mpy, key):
    msgs = [b"", b"abc", bytes(range(256)) * 5]
    code = ("import binascii\nfrom node.otaoffer import hmac_sha256, same\n"
            + "".join(f"print(binascii.hexlify(hmac_sha256({key!r}, {m!r})).decode())\n"
                      for m in msgs)
            + "print(same(b'ab', b'ab'), same(b'ab', b'ac'), same(b'ab', b'abc'))\n")
    out = mpy(code).stdout.split()
    assert out[:3] == [hmac.new(key, m, hashlib.sha256).hexdigest() for m in msgs]
    assert out[3:] == ["True", "False", "False"]

