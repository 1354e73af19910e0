"""Send an update to nodes through their broker, then wait for how each one ends.

    python -m tools.ota --node ID [ID ...] --config config.json --secrets secrets.json
                        [--bundle build/xtensawin] [--window N] [--timeout S]

`make ota NODE="<id> ..." CONFIG=... SECRETS=... [ARCH=...]` builds the bundle and runs this.
- NODE: node ids, or a prefix wildcard ("kitchen-*", "*"): every node whose retained status on
  the broker is "online" and whose id starts with the prefix.
- CONFIG: the nodes' config.json, checked as the node checks it (lib/node/config.py): its
  broker (mqtt.host, mqtt.port, mqtt.ca relative to the file's folder, mqtt.server_hostname),
  topic_prefix, and stable_after_s, ota_trial_boots and ota_trial_s, for how long to wait.
- SECRETS: a JSON file with ota_key (the one in the nodes' secrets.json) and the broker
  credentials to connect with (mqtt_user, mqtt_password): the nodes' secrets.json, or an
  operator's file with just those.

What is sent is the bundle's boot.py, main.py and lib/ (config.json is each node's own), by the
protocol lib/node/ota.py describes: a manifest tagged with HMAC-SHA256 under ota_key, then the
stream (the file list, then the files) in chunks, `window` of them in flight; the node says
where it stands after each one. A node that goes quiet is offered the manifest again and the
stream goes on from where it says. Prints each node's progress and outcome; exits 0 when every
node runs the new version.
"""

import argparse
import hashlib
import hmac
import json
import os
import queue
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tools import bundle as bundles
from tools.hosttools import REPO

OUTCOMES = ("applied", "rolled_back", "refused", "failed")
CHUNK_BYTES = 1024  # the node may ask for less (its chunk_max)
WINDOW = 4  # chunks in flight: 4 KB fit the ESP32's TCP receive window
# A node that says nothing for this long while receiving is offered the manifest again.
STALL_S = 5.0
# An offer nobody answers (the node is off, or has no ota_key) is given up after this long.
ANSWER_S = 60.0
DISCOVER_S = 2.0  # retained status messages arrive within this
CONNECT_S = 10.0
# The update's topics below <prefix>/<node>/ (lib/node/payload.py Topics).
STATE_TOPIC, MANIFEST_TOPIC, CHUNK_TOPIC = "ota", "ota/manifest", "ota/chunk"
# Offers carry the version of the manifest format the node reads.
MANIFEST_VERSION = 1


class OtaError(Exception):
    """A problem with the command line, the files or the broker: the one line we print."""


# --- what to send ----------------------------------------------------------------------------
@dataclass
class Update:
    """The bundle as it goes to a node: the file list and the stream (list, then files)."""

    version: str
    arch: str
    manifest: dict  # the bundle's .bundle.json
    files: list  # (path, size, sha256) in the list's order
    listing: bytes
    stream: bytes

    @property
    def size(self):
        return len(self.stream) - len(self.listing)


def load_update(bundle_dir):
    """The update from a bundle tools/bundle.py built (fresh, whole), without config.json."""
    bundle_dir = Path(bundle_dir)
    try:
        manifest = bundles.load_manifest(bundle_dir)
    except bundles.BundleError as e:
        raise OtaError(str(e)) from None
    stale = bundles.stale_sources(manifest)
    if stale:
        raise OtaError(f"{bundle_dir} is older than {', '.join(stale[:3])}: run make bundle "
                       f"ARCH={manifest['arch']}")
    if not manifest.get("version"):
        raise OtaError(f"{bundle_dir}: no VERSION recorded (lib/node/__init__.py): run make "
                       f"bundle")
    contents = []
    for rel, info in sorted(manifest["files"].items()):
        if rel == "config.json":
            continue  # each node keeps its own: pins, node id, broker
        content = (bundle_dir / rel).read_bytes()
        if hashlib.sha256(content).hexdigest() != info["sha256"]:
            raise OtaError(f"{bundle_dir / rel} differs from its bundle manifest: run make "
                           f"bundle")
        contents.append((rel, content))
    return make_update(manifest, contents)


def make_update(manifest, contents):
    """The Update of `contents` ((path, bytes) pairs) for the bundle `manifest` describes."""
    files = [(rel, len(data), hashlib.sha256(data).hexdigest()) for rel, data in contents]
    listing = "".join(f"{size} {sha} {rel}\n" for rel, size, sha in files).encode()
    return Update(manifest["version"], manifest["arch"], manifest, files, listing,
                  listing + b"".join(data for _rel, data in contents))


def manifest_message(update, node_id, key, update_id):
    """What goes on ota/manifest: the tag in hex, a newline, the manifest's JSON."""
    m = update.manifest
    body = json.dumps({
        "v": MANIFEST_VERSION, "id": update_id, "node": node_id, "version": update.version,
        "arch": update.arch, "arch_number": m["arch_number"], "mpy": m["mpy_version"],
        "native": bool(m["native"]), "files": len(update.files), "bytes": update.size,
        "list_bytes": len(update.listing), "sha256": hashlib.sha256(update.stream).hexdigest(),
    }, separators=(",", ":")).encode()  # fmt: skip
    tag = hmac.new(key.encode(), body, hashlib.sha256).hexdigest().encode()
    return tag + b"\n" + body


def chunk_message(stream, offset, size):
    return offset.to_bytes(4, "big") + stream[offset:offset + size]


# --- where to send it ------------------------------------------------------------------------
@dataclass
class Target:
    """The broker, how to reach it, and the nodes' settings that say how long an update takes."""

    host: str
    port: int
    ca: Path
    server_hostname: str
    prefix: str
    user: str = None
    password: str = None
    key: str = ""
    stable_after_s: int = 60
    trial_boots: int = 3
    trial_s: int = 300


def _node_config():
    """lib/node/config.py, the node's own checks (pure Python, so CPython runs it too)."""
    lib = str(REPO / "lib")
    if lib not in sys.path:
        sys.path.append(lib)
    from node import config

    return config


def load_target(config_path, secrets_path):
    config = _node_config()
    config_path, secrets_path = Path(config_path), Path(secrets_path)
    try:
        raw = config.read_json(str(config_path))
        cfg = config.resolve_paths(config.validate(raw, str(config_path)), str(config_path))
        sec = config.read_json(str(secrets_path))
    except config.ConfigError as e:
        raise OtaError(str(e)) from None
    if not isinstance(sec, dict):
        raise OtaError(f"{secrets_path}: expected a JSON object")
    key = sec.get("ota_key")
    if not isinstance(key, str) or len(key) < config.OTA_KEY_MIN_CHARS:
        raise OtaError(f"{secrets_path}: ota_key: expected a string of at least "
                       f"{config.OTA_KEY_MIN_CHARS} characters, the one the nodes' "
                       f"secrets.json holds (make one: python3 -c 'import secrets; "
                       f"print(secrets.token_hex(32))', then make deploy it once)")
    user, password = sec.get("mqtt_user"), sec.get("mqtt_password")
    if (user is None) != (password is None):
        raise OtaError(f"{secrets_path}: mqtt_user/mqtt_password: both set or both null")
    ca = Path(cfg["mqtt"]["ca_path"])
    if not ca.is_file():
        raise OtaError(f"{config_path}: mqtt.ca: {ca} not found")
    mqtt = cfg["mqtt"]
    return Target(mqtt["host"], mqtt["port"], ca, mqtt["server_hostname"],
                  cfg["topic_prefix"], user, password, key, cfg["stable_after_s"],
                  cfg["ota_trial_boots"], cfg["ota_trial_s"])


def parse_nodes(words):
    """(ids, prefixes): plain ids, and the prefixes of wildcards ("kitchen-*" -> "kitchen-")."""
    ids, prefixes = [], []
    for word in " ".join(words).split():
        if "*" in word[:-1] or any(c in word for c in "+#/"):
            raise OtaError(f"NODE: {word!r}: a node id, or a prefix followed by * (kitchen-*)")
        if word.endswith("*"):
            prefixes.append(word[:-1])
        elif word not in ids:
            ids.append(word)
    if not ids and not prefixes:
        raise OtaError("NODE: name at least one node (an id, several, or a prefix*)")
    return ids, prefixes


# --- one node's transfer ---------------------------------------------------------------------
@dataclass
class Transfer:
    node: str
    message: bytes
    update_id: str
    total: int
    offered: str  # the version sent
    state: str = "offered"
    reason: str = None
    version: str = None  # what the node says it runs
    acked: int = 0  # the node's "next"
    sent: int = 0
    chunk: int = CHUNK_BYTES
    bytes_sent: int = 0
    offers: int = 0
    rewind: bool = True  # take the node's next as where to send from, at its next word
    times: dict = field(default_factory=dict)  # offered, receiving, verifying, rebooting, done
    heard: float = 0.0

    @property
    def done(self):
        return self.state in OUTCOMES or self.state == "no answer"


class Session:
    """One broker connection; the transfers to every node, side by side."""

    def __init__(self, target, update, log=print, window=WINDOW, clock=time.monotonic):
        self.target, self.update, self.log = target, update, log
        self.window = window
        self.clock = clock
        self.transfers = {}
        self.online = {}  # node id -> its last status ("online", "offline", "safe-mode")
        self.events = queue.Queue()
        self.client = None
        self.discovering = False  # subscribed to every node's status (a prefix wildcard)

    def _topic(self, node, kind):
        return f"{self.target.prefix}/{node}/{kind}"

    # --- the broker ---
    def connect(self):
        import paho.mqtt.client as mqtt

        from sim.net.broker import tls_context

        t = self.target
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"ota-{socket.gethostname()[:20]}-{os.getpid()}")
        client.tls_set_context(tls_context(t.ca, t.server_hostname))
        if t.user is not None:
            client.username_pw_set(t.user, t.password)
        client.reconnect_delay_set(0.5, 4)
        client.on_connect = lambda c, u, f, rc, p: self.events.put(("connect", rc))
        client.on_message = lambda c, u, m: self.events.put(("message", m.topic, m.payload))
        try:
            client.connect(t.host, t.port, keepalive=30)
        except (OSError, ValueError) as e:
            raise OtaError(f"cannot connect to {t.host}:{t.port}: {e}") from None
        client.loop_start()
        self.client = client
        deadline = self.clock() + CONNECT_S
        while self.clock() < deadline:
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if event[0] == "connect":
                if event[1].is_failure:
                    self.close()
                    raise OtaError(f"the broker refused this tool: {event[1]}")
                return
            self._handle(event)
        self.close()
        raise OtaError(f"no answer from {t.host}:{t.port} within {CONNECT_S:.0f} s")

    def close(self):
        if self.client is not None:
            self.client.loop_stop()
            self.client.disconnect()
            self.client = None

    def _subscribe(self, nodes=(), status_all=False):
        topics = [self._topic("+", "status")] if status_all else []
        for node in nodes:
            topics += [self._topic(node, STATE_TOPIC), self._topic(node, "status")]
        for topic in topics:
            self.client.subscribe(topic, qos=1)

    # --- which nodes ---
    def discover(self, ids, prefixes):
        """The nodes to update: the ids, and the online nodes each prefix matches."""
        nodes = list(ids)
        if prefixes:
            self.discovering = True
            self._subscribe(status_all=True)
            self._pump_events(DISCOVER_S)
            for node, status in sorted(self.online.items()):
                if status == "online" and node not in nodes and any(
                        node.startswith(p) for p in prefixes):
                    nodes.append(node)
            others = sorted(n for n, s in self.online.items() if s != "online"
                            and any(n.startswith(p) for p in prefixes))
            if others:
                self.log(f"ota: not online, left out: {', '.join(others)}")
        if not nodes:
            raise OtaError(f"no online node matches {' '.join(p + '*' for p in prefixes)}")
        return nodes

    # --- the transfers ---
    def offer(self, nodes):
        self._subscribe(nodes)
        u = self.update
        for node in nodes:
            update_id = secrets.token_hex(4)
            t = Transfer(node, manifest_message(u, node, self.target.key, update_id), update_id,
                         len(u.stream), u.version)
            self.transfers[node] = t
            self.log(f"ota: {node}: offering {u.version} ({u.arch}, {len(u.files)} files, "
                     f"{u.size / 1024:.1f} KB)")
            self._offer(t)

    def _offer(self, t):
        t.offers += 1
        t.rewind = True
        t.heard = self.clock()
        t.times.setdefault("offered", t.heard)
        self.client.publish(self._topic(t.node, MANIFEST_TOPIC), t.message, qos=1)

    def run(self, timeout=None):
        """Until every transfer has ended (or `timeout` s); returns the transfers."""
        start = self.clock()
        while not all(t.done for t in self.transfers.values()):
            if timeout is not None and self.clock() - start > timeout:
                for t in self.transfers.values():
                    if not t.done:
                        self._end(t, "no answer", f"no outcome within {timeout:.0f} s "
                                  f"(last: {t.state})")
                break
            self._pump_events(0.05)
            self.tick()
        return self.transfers

    def tick(self):
        """Send what each window allows; offer again to a node gone quiet; give up on one
        that never answers."""
        now = self.clock()
        for t in self.transfers.values():
            if t.done:
                continue
            self._send(t)
            quiet = now - t.heard
            if t.state == "offered" and now - t.times["offered"] > ANSWER_S:
                self._end(t, "no answer", f"no answer to the offer within {ANSWER_S:.0f} s: "
                          f"offline, or updates off (no ota_key in its secrets.json)")
            elif t.state in ("offered", "receiving") and quiet > STALL_S:
                self._offer(t)  # it went quiet: where does it stand?
            elif t.state in ("verifying", "rebooting") and quiet > self._trial_wait():
                self._end(t, "no answer", f"no outcome {quiet:.0f} s after {t.state}")

    def _trial_wait(self):
        t = self.target
        return t.trial_boots * t.trial_s + t.stable_after_s + 60

    def _pump_events(self, wait_s):
        deadline = self.clock() + wait_s
        while True:
            try:
                event = self.events.get(timeout=max(0.0, deadline - self.clock()))
            except queue.Empty:
                return
            self._handle(event)

    def _handle(self, event):
        if event[0] == "connect":
            if event[1].is_failure:
                self.log(f"ota: the broker refused the reconnect: {event[1]}")
                return
            # Back after a lost link: subscribe again, and ask every transfer where it stands.
            self._subscribe(list(self.transfers), status_all=self.discovering)
            for t in self.transfers.values():
                if t.state in ("offered", "receiving"):
                    self._offer(t)
            return
        _, topic, payload = event
        parts = topic.split("/")
        if topic.endswith("/status"):
            self.online[parts[-2]] = payload.decode(errors="replace")
            return
        node = parts[-2]
        t = self.transfers.get(node)
        if t is None or t.done:
            return
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        if not isinstance(msg, dict) or msg.get("id") != t.update_id:
            return  # an earlier update's state (retained), or another sender's
        self._on_state(t, msg)

    def _on_state(self, t, msg):
        now = self.clock()
        t.heard = now
        state, reason = msg.get("state"), msg.get("reason")
        t.version = msg.get("version", t.version)
        if state == "receiving":
            nxt = msg.get("next")
            if not isinstance(nxt, int) or not 0 <= nxt <= t.total:
                return
            if t.state == "offered":
                t.times["receiving"] = now
                where = "from the start" if nxt == 0 else f"from byte {nxt} (resumed)"
                self.log(f"ota: {t.node}: receiving {where}")
            t.state = "receiving"
            if isinstance(msg.get("chunk_max"), int) and msg["chunk_max"] > 0:
                t.chunk = min(CHUNK_BYTES, msg["chunk_max"])
            if t.rewind or reason or nxt < t.acked or nxt > t.sent:
                t.sent = nxt  # it asked for this offset: go on from there
                t.rewind = False
            t.acked = nxt
            self._send(t)
        elif state == "verifying":
            if t.state not in ("verifying", "rebooting"):
                t.times["verifying"] = now
                self.log(f"ota: {t.node}: all {t.total} bytes in; verifying")
            t.state = "verifying"
            if reason and "rebooting" in reason:
                t.state = "rebooting"
                t.times["rebooting"] = now
                self.log(f"ota: {t.node}: {reason}; waiting for it to run stably with a broker "
                         f"connection (up to {self.target.trial_boots} boots of "
                         f"{self.target.trial_s} s)")
        elif state in OUTCOMES:
            self._end(t, state, reason)

    def _send(self, t):
        if t.state != "receiving":
            return
        while t.sent < t.total and t.sent - t.acked < self.window * t.chunk:
            n = min(t.chunk, t.total - t.sent)
            self.client.publish(self._topic(t.node, CHUNK_TOPIC),
                                chunk_message(self.update.stream, t.sent, n), qos=0)
            t.sent += n
            t.bytes_sent += n

    def _end(self, t, state, reason):
        t.state, t.reason = state, reason
        t.times["done"] = self.clock()
        self.log(f"ota: {t.node}: {state}" + (f": {reason}" if reason else ""))


def figures(t):
    """The transfer's timings: transfer_s, kb_per_s, total_s (None where unknown)."""
    times = t.times
    out = {"transfer_s": None, "kb_per_s": None, "total_s": None}
    if "receiving" in times and "verifying" in times:
        out["transfer_s"] = times["verifying"] - times["receiving"]
        out["kb_per_s"] = t.total / 1024 / max(out["transfer_s"], 1e-6)
    if "done" in times:
        out["total_s"] = times["done"] - times["offered"]
    return out


def update_nodes(words, config_path, secrets_path, bundle_dir, log=print, window=WINDOW,
                 timeout=None):
    """The whole of `make ota`: returns {node: Transfer}."""
    ids, prefixes = parse_nodes(words)
    target = load_target(config_path, secrets_path)
    update = load_update(bundle_dir)
    session = Session(target, update, log, window)
    session.connect()
    try:
        session.offer(session.discover(ids, prefixes))
        return session.run(timeout)
    finally:
        session.close()


def summary(transfers):
    lines = []
    version = next(iter(transfers.values())).offered
    for node, t in transfers.items():
        f = figures(t)
        what = t.state
        if t.state == "applied":
            what += f": runs {t.version}"
        elif t.reason:
            what += f": {t.reason}"
        if f["kb_per_s"] is not None:
            what += (f" ({t.total / 1024:.1f} KB in {f['transfer_s']:.1f} s, "
                     f"{f['kb_per_s']:.1f} KB/s; {t.bytes_sent / 1024:.1f} KB sent)")
        lines.append(f"  {node}: {what}")
    ok = sum(t.state == "applied" for t in transfers.values())
    lines.append(f"ota: {ok} of {len(transfers)} nodes run {version}")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--node", nargs="+", default=[], help="node ids, or prefix* for a fleet")
    ap.add_argument("--config", default="", help="the nodes' config.json (their broker)")
    ap.add_argument("--secrets", default="", help="ota_key and the broker credentials")
    ap.add_argument("--bundle", default=str(REPO / "build" / "xtensawin"))
    ap.add_argument("--window", type=int, default=WINDOW, help="chunks in flight")
    ap.add_argument("--timeout", type=float, default=None, help="give up after this many s")
    args = ap.parse_args(argv)
    try:
        if not args.config or not args.secrets:
            raise OtaError("CONFIG= and SECRETS= are needed: the broker to use, and ota_key")
        transfers = update_nodes(args.node, args.config, args.secrets, args.bundle,
                                 window=args.window, timeout=args.timeout)
    except OtaError as e:
        print(f"ota: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ota: interrupted: what the nodes staged stays; run it again to go on",
              file=sys.stderr)
        return 130
    for line in summary(transfers):
        print(line)
    return 0 if all(t.state == "applied" for t in transfers.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
