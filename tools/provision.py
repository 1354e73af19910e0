"""`make provision NODE=<id>`: a node's key and certificate from the fleet CA, for make deploy.

    python -m tools.provision --node ID [--days N] [--renew] [--dir broker]
                              [--config config.json]

The fleet CA is `make broker`'s (broker/ca.pem and ca.key; made here if there is none yet), the
CA the broker's certificate comes from too: one CA for the user to keep, and the one file
(`cafile`) a Mosquitto with `require_certificate true` needs to check the nodes. A node's
certificate cannot stand in for the broker's: it is for TLS client authentication only
(extendedKeyUsage clientAuth), which the nodes' mbedTLS checks of a server's.

For NODE (its id in its topics: config.json's node_id, or the board's unique id in hex when that
is null; the boot log's "main: node <id>" line shows it) it makes an EC P-256 key and a
certificate with CN = NODE (what Mosquitto's use_identity_as_username and the ACL of `make
broker CLIENT_CERTS=1` take as its user name), valid --days (default 3650, never past the CA),
kept in broker/nodes/<id>/ (key 0600). A re-run for the same node keeps them, unless --renew,
or the CA changed, or they expire within 30 days. Then it copies the pair to the files
config.json's mqtt.cert and mqtt.key name (DER for a .der name, else PEM), where `make deploy`
takes them: provision a node, deploy it, then the next. A file there that is no node's of this
CA is moved to <name>.old, never lost. Without mqtt.cert/mqtt.key in config.json it writes
node-cert.der and node-key.der beside it and prints the two lines config.json needs.
"""

import argparse
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from sim.net.pki import PkiError, cert_info, openssl_path, signed_by
from tools.broker import RENEW_BEFORE, Broker, SetupError, read_json
from tools.hosttools import REPO

DEFAULT_DAYS = 3650
DEFAULT_CERT, DEFAULT_KEY = "node-cert.der", "node-key.der"
# What node.config accepts as a node id: it goes into topics, and into the ACL's %u.
_NODE_ID_RX = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _openssl(*args):
    proc = subprocess.run([openssl_path(), *map(str, args)], capture_output=True)
    if proc.returncode != 0:
        raise PkiError(f"openssl {' '.join(map(str, args))} failed: "
                       f"{proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def targets(config, config_path):
    """(cert path, key path, named in config.json?) where make deploy takes the pair."""
    mqtt = config.get("mqtt") or {}
    cert, key = mqtt.get("cert"), mqtt.get("key")
    if (cert is None) != (key is None):
        raise SetupError(f"{config_path}: mqtt.cert and mqtt.key go together: set both, or "
                         "neither (then node-cert.der and node-key.der are used)")
    for name, value in (("mqtt.cert", cert), ("mqtt.key", key)):
        if value is not None and not (isinstance(value, str) and value):
            raise SetupError(f"{config_path}: {name} names no file")
    root = Path(config_path).resolve().parent
    named = cert is not None
    return (root / (cert or DEFAULT_CERT).lstrip("/"), root / (key or DEFAULT_KEY).lstrip("/"),
            named)


def issue(broker, node, days, renew):
    """The node's (cert.pem, key.pem) in broker/nodes/<node>/: kept, or made now."""
    folder = broker.dir / "nodes" / node
    pem, key = folder / "cert.pem", folder / "key.pem"
    if not renew and pem.exists() and key.exists() and signed_by(pem, broker.ca_pem):
        info = cert_info(pem)
        if info.not_after - datetime.now(timezone.utc) >= RENEW_BEFORE:
            broker.note(f"node {node}: kept its certificate {pem} ({info.subject}, valid until "
                        f"{info.not_after:%Y-%m-%d})")
            return pem, key
    folder.mkdir(parents=True, exist_ok=True)
    broker.issue_client_cert(node, pem, key, days)
    info = cert_info(pem)
    broker.note(f"node {node}: new key and certificate in {folder} ({info.subject}, valid until "
                f"{info.not_after:%Y-%m-%d})")
    return pem, key


def _form(pem_path, target, kind):
    """The bytes to write at target: DER for a .der name, else the PEM file as it is."""
    if target.suffix.lower() != ".der":
        return Path(pem_path).read_bytes()
    if kind == "cert":
        return _openssl("x509", "-in", pem_path, "-outform", "DER")
    return _openssl("pkey", "-in", pem_path, "-outform", "DER")


def _ours(broker, target, kind):
    """True when the file at target is a certificate (or key) this CA issued to a node: the
    copy of an earlier provision, safe to replace."""
    for folder in (broker.dir / "nodes").glob("*"):
        pem = folder / ("cert.pem" if kind == "cert" else "key.pem")
        if pem.is_file() and target.read_bytes() == _form(pem, target, kind):
            return True
    return False


def install(broker, pem, key, cert_target, key_target):
    """Copy the pair to where make deploy takes it; another file there is moved aside."""
    for kind, src, target in (("cert", pem, cert_target), ("key", key, key_target)):
        data = _form(src, target, kind)
        if target.exists():
            if target.read_bytes() == data:
                broker.note(f"mqtt.{kind}: {target} already holds it")
                continue
            if not _ours(broker, target, kind):
                old = target.with_name(target.name + ".old")
                os.replace(target, old)
                broker.note(f"mqtt.{kind}: {target} held a file no node of this CA has, moved "
                            f"to {old}")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if kind == "key" else 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        tmp.replace(target)
        broker.note(f"mqtt.{kind}: {target} (make deploy sends it)")


def node_advice(config, node):
    """What the node's config.json must say for this certificate's ACL to fit (None: fine)."""
    node_id = config.get("node_id")
    if node_id is None:
        return (f"config.json's node_id is null: the node publishes under its board's unique id,"
                f" which must be {node!r} for the broker to let it (or set \"node_id\": "
                f"\"{node}\")")
    if node_id != node:
        return (f"WARNING: config.json's node_id is {node_id!r}: a broker that takes the "
                f"certificate's CN as the user name ({node!r}) refuses its topics; set "
                f"\"node_id\": \"{node}\" before make deploy")
    return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--node", default="", help="the node's id (as in its topics)")
    ap.add_argument("--days", type=lambda v: int(v) if v else DEFAULT_DAYS, default=DEFAULT_DAYS,
                    help="validity in days (default %(default)s, never past the CA's)")
    ap.add_argument("--renew", action="store_true", help="a new key and certificate")
    ap.add_argument("--dir", default=str(REPO / "broker"), help="the fleet CA's folder")
    ap.add_argument("--config", default=str(REPO / "config.json"), help="the node's config")
    args = ap.parse_args(argv)
    if not _NODE_ID_RX.match(args.node):
        print(f"provision: NODE={args.node!r}: expected the node's id, 1..64 letters, digits, "
              "'_' or '-' (make provision NODE=kitchen)", file=sys.stderr)
        return 2
    if args.days < 1:
        print(f"provision: DAYS={args.days}: expected a number of days, at least 1",
              file=sys.stderr)
        return 2
    try:
        config_path = Path(args.config)
        config = read_json(config_path, "the node's configuration")
        if not isinstance(config, dict):
            raise SetupError(f"{config_path}: expected an object {{...}} at the top level")
        cert_target, key_target, named = targets(config, config_path)
        broker = Broker(args.dir)
        broker.ensure_ca()
        pem, key = issue(broker, args.node, args.days, args.renew)
        install(broker, pem, key, cert_target, key_target)
    except (SetupError, PkiError) as e:
        print(f"provision: {e}", file=sys.stderr)
        return 1
    print("\n".join(broker.notes))
    if not named:
        print(f'\nconfig.json needs, in "mqtt": "cert": "{cert_target.name}", '
              f'"key": "{key_target.name}"')
    advice = node_advice(config, args.node)
    if advice:
        print("\n" + advice)
    print(f"\nThe broker must trust {broker.ca_pem} for client certificates (make broker "
          "CLIENT_CERTS=1 does), or register it (AWS IoT Core: README).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
