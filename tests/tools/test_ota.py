"""tools/ota.py, the sending side of `make ota`, without a broker: what it reads (CONFIG,
SECRETS, the bundle), what it sends (the manifest, its tag, the stream in chunks) and how it
follows a node's answers (window, resends, offers again, outcomes). tests/e2e/test_ota.py runs
it against the node on the simulated board.
"""

import hashlib
import hmac
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tools import bundle, ota

KEY = "k" * 32


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small project (boot.py, main.py, config.json, lib/node) and its x64 bundle."""
    src = tmp_path_factory.mktemp("app")
    (src / "lib" / "node").mkdir(parents=True)
    (src / "boot.py").write_text("# boot\n")
    (src / "main.py").write_text("# main\n")
    (src / "config.json").write_text("{}\n")
    (src / "lib" / "node" / "__init__.py").write_text('VERSION = "4.5.6"\n')
    # A long constant: a stream of several KB, a window of chunks and more.
    (src / "lib" / "node" / "a.py").write_text('DATA = "%s"\n' % ("0123456789" * 800))
    out = src.parent / "bundle"
    bundle.build(src, out, "x64", log=lambda line: None)
    return src, out


def test_the_update_is_the_bundle_without_config_json(built):
    _src, out = built
    u = ota.load_update(out)
    assert u.version == "4.5.6" and u.arch == "x64"
    names = [f[0] for f in u.files]
    assert names == ["boot.py", "lib/node/__init__.mpy", "lib/node/a.mpy", "main.py"]
    lines = u.listing.decode().splitlines()
    for (rel, size, sha), line in zip(u.files, lines, strict=True):
        data = (out / rel).read_bytes()
        assert line == f"{size} {sha} {rel}" and size == len(data)
        assert sha == hashlib.sha256(data).hexdigest()
    assert u.stream == u.listing + b"".join((out / rel).read_bytes() for rel in names)


def test_the_manifest_is_tagged_over_its_exact_bytes(built):
    u = ota.load_update(built[1])
    msg = ota.manifest_message(u, "node-1", KEY, "abcd")
    tag, body = msg.split(b"\n", 1)
    assert tag == hmac.new(KEY.encode(), body, hashlib.sha256).hexdigest().encode()
    m = json.loads(body)
    assert m == {"v": 1, "id": "abcd", "node": "node-1", "version": "4.5.6", "arch": "x64",
                 "arch_number": 2, "mpy": u.manifest["mpy_version"], "native": False,
                 "files": 4, "bytes": u.size, "list_bytes": len(u.listing),
                 "sha256": hashlib.sha256(u.stream).hexdigest()}
    assert ota.chunk_message(u.stream, 5, 3) == b"\x00\x00\x00\x05" + u.stream[5:8]


def test_a_stale_or_partial_bundle_is_refused(built, tmp_path):
    src, out = built
    (src / "main.py").write_text("# changed\n")
    try:
        with pytest.raises(ota.OtaError, match=r"is older than main\.py: run make bundle"):
            ota.load_update(out)
    finally:
        (src / "main.py").write_text("# main\n")
    with pytest.raises(ota.OtaError, match="not a complete bundle"):
        ota.load_update(tmp_path)


@pytest.mark.parametrize(("words", "ids", "prefixes"), [
    (["n1"], ["n1"], []),
    (["n1 n2", "n1"], ["n1", "n2"], []),
    (["kitchen-*"], [], ["kitchen-"]),
    (["*", "hall"], ["hall"], [""]),
])
def test_node_ids_and_prefix_wildcards(words, ids, prefixes):
    assert ota.parse_nodes(words) == (ids, prefixes)


@pytest.mark.parametrize("words", [[""], ["a*b"], ["nodes/+"], ["#"]])
def test_bad_node_names_are_refused(words):
    with pytest.raises(ota.OtaError, match="NODE"):
        ota.parse_nodes(words)


def _config(tmp_path, **mqtt):
    cfg = json.loads((REPO / "config.json").read_text())
    cfg["mqtt"].update(mqtt)
    (tmp_path / "ca.der").write_bytes(b"x")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


def _secrets(tmp_path, **values):
    path = tmp_path / "secrets.json"
    path.write_text(json.dumps(values))
    return path


def test_the_target_comes_from_the_nodes_config_and_an_operators_secrets(tmp_path):
    t = ota.load_target(_config(tmp_path, host="b.lan", port=8884),
                        _secrets(tmp_path, ota_key=KEY, mqtt_user="op", mqtt_password="pw"))
    assert (t.host, t.port, t.server_hostname, t.prefix) == ("b.lan", 8884, "b.lan", "nodes")
    assert t.ca == tmp_path / "ca.der" and (t.user, t.password, t.key) == ("op", "pw", KEY)
    assert (t.stable_after_s, t.trial_boots, t.trial_s) == (60, 3, 300)


@pytest.mark.parametrize(("mqtt", "secrets", "words"), [
    ({"port": "8883"}, {"ota_key": KEY}, "config.json: mqtt.port: expected an integer"),
    ({}, {}, "ota_key: expected a string of at least 16 characters"),
    ({}, {"ota_key": "short"}, "ota_key: expected a string of at least 16"),
    ({}, {"ota_key": KEY, "mqtt_user": "op"}, "mqtt_user/mqtt_password: both set or both"),
    ({"ca": "missing.der"}, {"ota_key": KEY}, "mqtt.ca:"),
])
def test_bad_config_or_secrets_are_named(tmp_path, mqtt, secrets, words):
    with pytest.raises(ota.OtaError, match=words.replace("(", r"\(")) as e:
        ota.load_target(_config(tmp_path, **mqtt), _secrets(tmp_path, **secrets))
    assert "short" not in str(e.value) and KEY not in str(e.value)


class FakeClient:
    def __init__(self):
        self.sent = []
        self.subscribed = []

    def subscribe(self, topic, qos=0):
        self.subscribed.append(topic)

    def publish(self, topic, payload, qos=0):
        self.sent.append((topic, payload))

    def chunks(self):
        return [int.from_bytes(p[:4], "big") for t, p in self.sent if t.endswith("/chunk")]

    def offers(self):
        return [p for t, p in self.sent if t.endswith("/manifest")]


class Clock:
    now = 100.0

    def __call__(self):
        return self.now


def _session(built, tmp_path, window=4):
    target = ota.Target("h", 1, tmp_path, "h", "nodes", key=KEY)
    clock = Clock()
    s = ota.Session(target, ota.load_update(built[1]), log=lambda line: None, window=window,
                    clock=clock)
    s.client = FakeClient()
    s.offer(["n1"])
    return s, s.transfers["n1"], clock


def _answer(s, t, state, **fields):
    msg = {"state": state, "id": t.update_id, "version": "0.1.0", "target": "4.5.6", **fields}
    s._handle(("message", "nodes/n1/ota", json.dumps(msg).encode()))


def test_the_stream_goes_out_a_window_at_a_time_and_from_where_the_node_asks(built, tmp_path):
    s, t, _clock = _session(built, tmp_path)
    assert len(s.client.offers()) == 1 and not s.client.chunks()
    _answer(s, t, "receiving", next=0, bytes=t.total, chunk_max=512)
    assert s.client.chunks() == [0, 512, 1024, 1536]  # four in flight, of the node's size
    _answer(s, t, "receiving", next=1024, bytes=t.total, chunk_max=512)
    assert s.client.chunks()[4:] == [2048, 2560]
    # The node lost one: it says so, and the stream goes on from there.
    _answer(s, t, "receiving", next=1024, bytes=t.total, chunk_max=512,
            reason="chunk at byte 1536, expected 1024")
    assert s.client.chunks()[6:] == [1024, 1536, 2048, 2560]
    # An answer of an earlier update (another id) is not this one's.
    s._handle(("message", "nodes/n1/ota", b'{"state": "applied", "id": "old"}'))
    assert not t.done
    _answer(s, t, "verifying")
    _answer(s, t, "verifying", reason="verified; swapping 4 files in and rebooting into 4.5.6")
    assert t.state == "rebooting"
    _answer(s, t, "applied", reason="runs stably with a broker connection")
    assert t.done and t.state == "applied" and t.version == "0.1.0"


def test_a_quiet_node_is_offered_the_manifest_again_and_a_silent_one_given_up(built, tmp_path):
    s, t, clock = _session(built, tmp_path)
    _answer(s, t, "receiving", next=0, bytes=t.total, chunk_max=1024)
    clock.now += ota.STALL_S + 1
    s.tick()
    assert len(s.client.offers()) == 2  # it went quiet: where does it stand?
    # After a broker restart the node answers from where its stream stands: no start over.
    _answer(s, t, "receiving", next=2048, bytes=t.total, chunk_max=1024)
    assert s.client.chunks()[-1] >= 2048 and s.client.chunks()[-4] == 2048
    s2, t2, clock2 = _session(built, tmp_path)
    clock2.now += ota.ANSWER_S + 1
    s2.tick()
    assert t2.state == "no answer" and "no answer to the offer" in t2.reason


def test_refusals_end_the_transfer_with_the_nodes_reason(built, tmp_path):
    s, t, _clock = _session(built, tmp_path)
    _answer(s, t, "refused", reason="the tag does not verify with ota_key")
    assert t.done and t.state == "refused" and "ota_key" in t.reason
    lines = ota.summary(s.transfers)
    assert lines[-1] == "ota: 0 of 1 nodes run 4.5.6" and "refused" in lines[0]


def test_usage_errors_exit_2_with_the_reason(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tools.ota", "--node", "n1"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "CONFIG= and SECRETS= are needed" in proc.stderr
