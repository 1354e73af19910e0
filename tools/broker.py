"""`make broker`: a Mosquitto with TLS for your own network, kept in broker/ (git-ignored).

    python -m tools.broker [--names "host.local 192.168.1.5"] [--port 8883] [--bind ADDRESS]
                           [--renew] [--client-certs] [--no-start] [--dir broker]
                           [--config config.json] [--secrets secrets.json]

The first run makes, in --dir:
- a CA (ca.pem, ca.key; 10 years) and a server certificate (server.pem, server.key; 825 days)
  naming this machine: <host name>.local, its host name, its IPv4 address, localhost and
  127.0.0.1 (--names: those instead; the first is the one printed for clients to use);
- two users with generated passwords (users.json): `node` for the boards, `client` for MQTT
  Explorer, Home Assistant and mosquitto_sub; the password file mosquitto reads (passwd);
- mosquitto.conf: TLS on --port (8883), on every interface unless --bind, no anonymous client
  (Mosquitto 2's default too), retained messages kept across restarts (persistence).
And for the node, where `make deploy` takes them: mqtt_user/mqtt_password into secrets.json
(made from secrets.example.json if missing), the CA into the file config.json's mqtt.ca names.
It prints what to type into MQTT Explorer and Home Assistant and what config.json's mqtt
section needs, then runs mosquitto in the foreground (Ctrl-C stops it; --no-start prints the
command instead).

--client-certs (`make broker CLIENT_CERTS=1`) identifies every client by its certificate instead
of a password: require_certificate and use_identity_as_username (a client's user name is its
certificate's CN), and an ACL (acl, from config.json's topic_prefix and discovery.prefix) that
confines each node to `<prefix>/<node>/#` and its Home Assistant discovery topics, and lets it
read Home Assistant's status. The CA above is the fleet CA: `make provision NODE=<id>`
(tools/provision.py) issues each node's certificate from it. The operator's certificate
(operator.pem, operator.key; CN "operator", every topic of the nodes and of Home Assistant) is
for make plot, make ota, MQTT Explorer and Home Assistant. secrets.json is left alone.

A re-run keeps the CA and the passwords, and the server certificate unless the names changed,
it is not signed by the CA or expires within 30 days, or --renew asks for a new one. What it
did not write is not replaced silently: other MQTT credentials in secrets.json stay (with a
warning), a different CA file at mqtt.ca is moved to <file>.old, passwd keeps the users added
with mosquitto_passwd. Delete the folder to start again (then deploy the nodes again).
"""

import argparse
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sim.net.broker import BrokerError, mosquitto_path
from sim.net.pki import (
    PkiError,
    cert_info,
    make_ca,
    make_client_cert,
    make_server_cert,
    signed_by,
)
from tools.hosttools import REPO

DEFAULT_PORT = 8883
CA_DAYS = 3650
# The longest any client accepts: Apple's TLS stack refuses a server certificate valid for more
# than 825 days, whichever CA signed it.
SERVER_DAYS = 825
RENEW_BEFORE = timedelta(days=30)
NODE_USER = "node"  # what the boards log in as (secrets.json)
CLIENT_USER = "client"  # MQTT Explorer, Home Assistant, mosquitto_sub
# With --client-certs: the identity (certificate CN, so user name) of the tools and clients
# that watch and command every node.
OPERATOR = "operator"
# A client certificate is not bound by the 825 days of a server's; within the CA's life.
CLIENT_DAYS = 3650
_PASSWORD_BYTES = 18  # 24 URL-safe characters: nothing to quote in JSON, YAML or a shell
_HOSTNAME_RX = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


class SetupError(Exception):
    """A file or an option stops the setup; the message names it and what to do."""


# --- names -------------------------------------------------------------------------------------
def _unique(items):
    return list(dict.fromkeys(items))


def local_addresses():
    """This machine's IPv4 addresses other than loopback: those its name resolves to, and the
    source address of its default route (connect() on a UDP socket sends nothing)."""
    found = []
    try:
        found += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None,
                                                            socket.AF_INET)]
    except OSError:
        pass  # a name that does not resolve: the route's address below still counts
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1 (RFC 5737): only picks the route
            found.append(s.getsockname()[0])
        except OSError:
            pass  # no default route: no LAN address to name
    return [a for a in _unique(found) if not ipaddress.ip_address(a).is_loopback]


def default_names():
    """This machine's names: <host>.local first (mDNS: macOS and most Linux desktops answer it,
    and the ESP32 port resolves .local names itself), then the host name, its addresses,
    localhost and 127.0.0.1 (for clients on this machine)."""
    host = socket.gethostname()
    short = host.split(".")[0]
    names = []
    if short and short != "localhost":
        names += [host if host.endswith(".local") else f"{short}.local", host]
    return _unique([*names, *local_addresses(), "localhost", "127.0.0.1"])


def parse_names(text):
    """NAMES as given ("a.lan, 192.168.1.5" or space-separated): a list, checked, in order."""
    names = _unique(n for n in re.split(r"[\s,]+", text or "") if n)
    for name in names:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            if not _HOSTNAME_RX.match(name) or name.replace(".", "").isdigit():
                raise SetupError(f"NAMES: {name!r} is neither a host name nor an IP address") \
                    from None
    return names


def split_names(names):
    """(DNS names, IP addresses as ipaddress' str), each in the order given."""
    dns, ips = [], []
    for name in names:
        try:
            ips.append(str(ipaddress.ip_address(name)))
        except ValueError:
            dns.append(name.rstrip(".").lower())
    return dns, ips


# --- files -------------------------------------------------------------------------------------
def _write_private(path, text):
    """Write a file only its owner can read, atomically (a key, a password, a password file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def read_json(path, what):
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise SetupError(f"{path}: cannot read {what} ({e.strerror})") from None
    except ValueError as e:
        raise SetupError(f"{path}: not valid JSON ({e}): fix it or move it away") from None


class Broker:
    """The broker's folder: what it holds, and the steps that make or keep each part."""

    def __init__(self, folder):
        self.dir = Path(folder).resolve()
        self.ca_pem, self.ca_key = self.dir / "ca.pem", self.dir / "ca.key"
        self.server_pem, self.server_key = self.dir / "server.pem", self.dir / "server.key"
        self.users_path, self.passwd = self.dir / "users.json", self.dir / "passwd"
        self.conf = self.dir / "mosquitto.conf"
        self.acl = self.dir / "acl"
        self.operator_pem, self.operator_key = self.dir / "operator.pem", self.dir / "operator.key"
        self.notes = []  # what this run made, kept or changed: printed in the summary

    def note(self, text):
        self.notes.append(text)

    def ensure_ca(self):
        have = [p.exists() for p in (self.ca_pem, self.ca_key)]
        if all(have):
            info = cert_info(self.ca_pem)
            self.note(f"CA: kept {self.ca_pem} ({info.subject}, valid until "
                      f"{info.not_after:%Y-%m-%d})")
            return
        if any(have):
            missing = self.ca_key if have[0] else self.ca_pem
            raise SetupError(f"{missing} is missing, so the CA beside it cannot sign: restore it, "
                             f"or delete {self.dir} to start again (then deploy the nodes again)")
        self.dir.mkdir(parents=True, exist_ok=True)
        host = socket.gethostname() or "this machine"
        make_ca(self.dir, "ca", cn=f"sensor-node broker CA ({host})", days=CA_DAYS)
        self.note(f"CA: new {self.ca_pem} (valid {CA_DAYS // 365} years)")

    def _server_cert_reason(self, names, renew):
        """Why a new server certificate is needed (None: the one there fits)."""
        if renew:
            return "on request (--renew)"
        if not (self.server_pem.exists() and self.server_key.exists()):
            return "none yet"
        info = cert_info(self.server_pem)
        want_dns, want_ips = split_names(names)
        if (set(info.dns), set(info.ips)) != (set(want_dns), set(want_ips)):
            return f"names changed: {', '.join(info.dns + info.ips)} -> {', '.join(names)}"
        if not signed_by(self.server_pem, self.ca_pem):
            return f"not signed by {self.ca_pem}, or expired"
        if info.not_after - datetime.now(timezone.utc) < RENEW_BEFORE:
            return f"expires on {info.not_after:%Y-%m-%d}"
        return None

    def ensure_server_cert(self, names, renew=False):
        reason = self._server_cert_reason(names, renew)
        if reason is None:
            info = cert_info(self.server_pem)
            self.note(f"server certificate: kept ({', '.join(names)}; valid until "
                      f"{info.not_after:%Y-%m-%d})")
            return
        dns, ips = split_names(names)
        # Made aside and moved in: a failed openssl leaves the old pair whole.
        with tempfile.TemporaryDirectory(dir=self.dir) as tmp:
            made = make_server_cert(tmp, "server", self.ca_pem, self.ca_key, dns, ips,
                                    SERVER_DAYS)
            os.replace(made.key, self.server_key)
            os.replace(made.cert, self.server_pem)
        self.note(f"server certificate: new for {', '.join(names)} ({reason}; valid "
                  f"{SERVER_DAYS} days: `make broker RENEW=1` makes the next)")

    def issue_client_cert(self, cn, cert_path, key_path, days=CLIENT_DAYS):
        """A certificate for `cn` signed by the CA, valid `days` but never past the CA (it
        would be refused then anyway), written to cert_path and key_path (PEM) once whole."""
        left = (cert_info(self.ca_pem).not_after - datetime.now(timezone.utc)).days
        with tempfile.TemporaryDirectory(dir=self.dir) as tmp:
            made = make_client_cert(tmp, "client", cn, self.ca_pem, self.ca_key,
                                    max(1, min(days, left)))
            os.replace(made.key, key_path)
            os.replace(made.cert, cert_path)

    def ensure_operator(self):
        """The operator's certificate: kept while it is the CA's and not about to expire."""
        pem, key = self.operator_pem, self.operator_key
        if pem.exists() and key.exists() and signed_by(pem, self.ca_pem):
            info = cert_info(pem)
            if info.not_after - datetime.now(timezone.utc) >= RENEW_BEFORE:
                self.note(f"operator certificate: kept {pem} (CN {OPERATOR}, valid until "
                          f"{info.not_after:%Y-%m-%d})")
                return
        self.issue_client_cert(OPERATOR, pem, key)
        self.note(f"operator certificate: new {pem} + {key.name} (CN {OPERATOR}: make plot, "
                  "make ota, MQTT Explorer, Home Assistant)")

    def write_acl(self, prefix, discovery_prefix):
        self.acl.write_text(acl_text(prefix, discovery_prefix))

    def ensure_users(self):
        """{user: password}: the stored ones, a generated password for any user missing."""
        users = read_json(self.users_path, "the passwords") if self.users_path.exists() else {}
        if not isinstance(users, dict) or not all(isinstance(v, str) and v
                                                  for v in users.values()):
            raise SetupError(f"{self.users_path}: expected {{\"user\": \"password\", ...}}: fix "
                             "it or delete it (new passwords, then deploy the nodes again)")
        new = [u for u in (NODE_USER, CLIENT_USER) if u not in users]
        for user in new:
            users[user] = secrets.token_urlsafe(_PASSWORD_BYTES)
        if new:
            _write_private(self.users_path, json.dumps(users, indent=2) + "\n")
            self.note(f"users: new password for {', '.join(new)} (in {self.users_path})")
        else:
            self.note(f"users: kept the passwords in {self.users_path}")
        self.write_passwd(users)
        return users

    def write_passwd(self, users):
        """Mosquitto's password file for `users`, keeping the lines of any other user (added
        with mosquitto_passwd). Hashed by mosquitto_passwd -U from a private plain-text file,
        so no password appears on a command line."""
        tool = shutil.which("mosquitto_passwd") or shutil.which("mosquitto_passwd",
                                                                path="/usr/bin:/usr/sbin")
        if not tool:
            raise SetupError("mosquitto_passwd not found (it comes with mosquitto): run "
                             "`make deps`")
        others = []
        if self.passwd.exists():
            others = [line for line in self.passwd.read_text().splitlines()
                      if line.strip() and line.split(":", 1)[0] not in users]
        plain = self.dir / "passwd.plain"
        _write_private(plain, "".join(f"{u}:{p}\n" for u, p in users.items()))
        try:
            proc = subprocess.run([tool, "-U", str(plain)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise SetupError(f"mosquitto_passwd -U failed: {proc.stderr.strip()}")
            hashed = plain.read_text()
        finally:
            plain.unlink(missing_ok=True)
        _write_private(self.passwd, "\n".join([*others, *hashed.splitlines()]) + "\n")
        if others:
            self.note(f"passwd: kept {len(others)} more user(s) added with mosquitto_passwd")

    def write_conf(self, port, bind=None, client_certs=False):
        """mosquitto.conf, rewritten every run from the options (say so at its top)."""
        if client_certs:
            # Every client shows a certificate from the CA; its CN is its user name, which the
            # ACL confines (password_file is not used on such a listener).
            auth = ["require_certificate true", f"cafile {self.ca_pem}",
                    "use_identity_as_username true", f"acl_file {self.acl}"]
        else:
            auth = [f"password_file {self.passwd}"]
        lines = [
            "# Written by `make broker` (tools/broker.py) at each run, from its options: edits",
            "# here are lost. For settings of your own, start mosquitto with a copy of this file.",
            f"listener {port}{' ' + bind if bind else ''}",
            f"certfile {self.server_pem}",
            f"keyfile {self.server_key}",
            # Mosquitto 2 refuses clients without a user name anyway; said here to be plain.
            "allow_anonymous false",
            *auth,
            # Retained messages (status, Home Assistant's discovery) survive a restart.
            "persistence true",
            f"persistence_location {self.dir}/",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
            "log_timestamp_format %Y-%m-%d %H:%M:%S",
        ]
        if os.geteuid() == 0:
            # As root mosquitto drops to user `mosquitto`, which cannot read our 0600 key.
            lines.append("user root")
        self.conf.write_text("\n".join(lines) + "\n")


def acl_text(prefix, discovery_prefix):
    """Mosquitto's acl_file for brokers that take a client's certificate CN as its user name
    (use_identity_as_username): each node its own topics, the operator every node's.

    A node publishes under <prefix>/<node>/ (status, readings, telemetry, reply; it also clears
    a retained command on its cmd topic) and subscribes to its cmd; it announces Home Assistant
    discovery at <discovery>/sensor/<node>/<object>/config (node.discovery: `+` takes any
    component) and listens to <discovery>/status. Mosquitto refuses to substitute a %u that
    holds a wildcard or a slash, so no certificate can widen its own pattern.
    """
    return f"""\
# Written by `make broker` (tools/broker.py) at each run: edits here are lost. With
# use_identity_as_username a client's user name is its certificate's CN: a node's id (make
# provision NODE=<id>), or "{OPERATOR}".
# Every node: its own topics, its Home Assistant discovery configs, Home Assistant's status.
pattern readwrite {prefix}/%u/#
pattern write {discovery_prefix}/+/%u/#
pattern read {discovery_prefix}/status
# The operator (make plot, make ota, MQTT Explorer, Home Assistant): every node's topics, all
# of discovery (Home Assistant publishes its status there), commands and updates to any node.
user {OPERATOR}
topic readwrite {prefix}/#
topic readwrite {discovery_prefix}/#
"""


# --- the node's side ----------------------------------------------------------------------------
def ca_target(config, config_path):
    """The file config.json's mqtt.ca names, where deploy.py takes it: relative to the config's
    folder (the project's root)."""
    name = (config.get("mqtt") or {}).get("ca")
    if not isinstance(name, str) or not name:
        raise SetupError(f"{config_path}: mqtt.ca names no file (the node's CA, e.g. \"ca.der\")")
    return Path(config_path).resolve().parent / name.lstrip("/")


def install_ca(broker, target):
    """Copy the CA to target: DER for a .der name, else PEM. A different file there is moved to
    <name>.old, not lost."""
    pem = broker.ca_pem.read_text()
    data = (ssl.PEM_cert_to_DER_cert(pem) if target.suffix.lower() == ".der"
            else pem.encode())
    if target.exists():
        if target.read_bytes() == data:
            broker.note(f"mqtt.ca: {target} already holds this CA")
            return
        old = target.with_name(target.name + ".old")
        os.replace(target, old)
        broker.note(f"mqtt.ca: {target} held another CA, moved to {old}")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    broker.note(f"mqtt.ca: this CA copied to {target} (make deploy sends it)")
    return target


def read_secrets(path, example=REPO / "secrets.example.json"):
    """(secrets as a dict, created): secrets.json, or the example if there is none yet. Read
    before anything is written, so a broken file stops the run with nothing changed."""
    created = not Path(path).exists()
    data = read_json(example if created else path, "the secrets")
    if not isinstance(data, dict):
        raise SetupError(f"{example if created else path}: expected an object {{...}} at the "
                         "top level")
    return data, created


def update_secrets(broker, path, data, created, password):
    """Put the node's user into secrets.json; other MQTT credentials already there are kept.
    Returns True if secrets.json has ours."""
    user = data.get("mqtt_user")
    if user not in (None, NODE_USER):
        broker.note(f"secrets.json: WARNING: {path} logs in as {user!r}, kept: for this broker "
                    f"set mqtt_user \"{NODE_USER}\" and mqtt_password (in {broker.users_path})")
        return False
    if user == NODE_USER and data.get("mqtt_password") == password:
        broker.note(f"secrets.json: {path} already has user {NODE_USER!r} and its password")
        return True
    data.update(mqtt_user=NODE_USER, mqtt_password=password)
    _write_private(path, json.dumps(data, indent=2) + "\n")
    if created:
        broker.note(f"secrets.json: made {path} from secrets.example.json with user "
                    f"{NODE_USER!r}: put your Wi-Fi's wifi_ssid and wifi_password in it")
    else:
        broker.note(f"secrets.json: {path} now logs in as {NODE_USER!r} (the rest kept)")
    return True


def config_advice(config, names, port):
    """What config.json's mqtt section needs for this broker: (ok, text)."""
    mqtt = config.get("mqtt") or {}
    checked = mqtt.get("server_hostname") or mqtt.get("host")
    host_ok = checked in names or str(checked).lower() in split_names(names)[0]
    port_ok = mqtt.get("port", DEFAULT_PORT) == port
    if host_ok and port_ok:
        return True, f"mqtt.host {mqtt.get('host')!r} and port {port}: this broker's"
    fragment = json.dumps({"host": names[0], "port": port, "server_hostname": None})[1:-1]
    return False, (f"set in \"mqtt\": {fragment}  (now host {mqtt.get('host')!r}, port "
                   f"{mqtt.get('port', DEFAULT_PORT)}; the certificate also names: "
                   f"{', '.join(names[1:]) or '-'})")


# --- what to type where -------------------------------------------------------------------------
def instructions(broker, names, port, users, config, config_note, topic):
    host, ca = names[0], broker.ca_pem
    client_pw = users[CLIENT_USER]
    discovery = (config.get("discovery") or {}).get("prefix") or "homeassistant"
    return f"""
MQTT Explorer: + (a new connection), then
  Validate certificate: on   Encryption (tls): on   Protocol: mqtt://
  Host:      {host}
  Port:      {port}
  Username:  {CLIENT_USER}
  Password:  {client_pw}
  ADVANCED > Topic: {topic} > ADD  (and {discovery}/# for the discovery messages)
  ADVANCED > CERTIFICATES > Server Certificate (CA): {ca}
  BACK, BACK, SAVE, CONNECT. The host must be one the certificate names: {', '.join(names)}

mosquitto_sub (Debian/Ubuntu package mosquitto-clients):
  mosquitto_sub -h {host} -p {port} --cafile {shlex.quote(str(ca))} -u {CLIENT_USER} \\
    -P {client_pw} -t {shlex.quote(topic)} -v

Home Assistant, to use this broker: Settings > Devices & services > + Add integration > MQTT
  ("Manually enter the MQTT broker connection details" where it offers its Mosquitto add-on)
  Broker:    {host}
  Port:      {port}
  Username:  {CLIENT_USER}
  Password:  {client_pw}
  Advanced options: on, then Submit (the switch shows with Advanced mode on in your profile)
  Broker certificate validation: Custom, then Upload custom CA certificate file: {ca}
  MQTT transport: TCP. The nodes appear by discovery (prefix "{discovery}").
Home Assistant's Mosquitto add-on instead of this broker (README, the section of that name): a
  certificate for its host (`make broker NAMES="homeassistant.local <its IP address>"`), then
  broker/{broker.server_pem.name} and {broker.server_key.name} into its /ssl folder; its options:
  certfile: {broker.server_pem.name}
  keyfile: {broker.server_key.name}
  logins:
    - username: {NODE_USER}
      password: {users[NODE_USER]}
    - username: {CLIENT_USER}
      password: {client_pw}

The node (make deploy sends secrets.json and the CA):
  config.json: {config_note}
"""


def cert_instructions(broker, names, port, config, config_note, topic):
    """What to type where when every client shows a certificate (--client-certs)."""
    host, ca = names[0], broker.ca_pem
    pem, key = broker.operator_pem, broker.operator_key
    discovery = (config.get("discovery") or {}).get("prefix") or "homeassistant"
    return f"""
Every client shows a certificate signed by {ca}; its CN is its user name, and {broker.acl}
says what each may do: a node its own topics, "{OPERATOR}" every node's.

The nodes: `make provision NODE=<node id>` for each (the id in its topics: config.json's node_id,
  or the board's unique id in hex), then `make deploy`: it sends that key and certificate.
  In secrets.json mqtt_user and mqtt_password may be null: the broker does not read them.
  config.json: {config_note}

MQTT Explorer: + (a new connection), then
  Validate certificate: on   Encryption (tls): on   Protocol: mqtt://
  Host: {host}   Port: {port}   Username and Password: empty
  ADVANCED > Topic: {topic} > ADD  (and {discovery}/# for the discovery messages)
  ADVANCED > CERTIFICATES > Server Certificate (CA): {ca}
                            Client Certificate: {pem}
                            Client Key: {key}
  BACK, BACK, SAVE, CONNECT.

mosquitto_sub -h {host} -p {port} --cafile {shlex.quote(str(ca))} --cert {shlex.quote(str(pem))} \
    --key {shlex.quote(str(key))} -t {shlex.quote(topic)} -v
make plot BROKER={host}:{port} CA={ca} CERT={pem} KEY={key}

Home Assistant: Settings > Devices & services > + Add integration > MQTT, Broker {host}, Port
  {port}, no user name; Advanced options: Broker certificate validation: Custom, upload {ca};
  Use a client certificate: on, then upload {pem} (client certificate) and {key} (private key).
"""


def port_free(port, bind):
    """True if mosquitto could listen there now (SO_REUSEADDR, as mosquitto sets it)."""
    with socket.socket(socket.AF_INET6 if bind and ":" in bind else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind or "", port))
        except OSError:
            return False
    return True


def setup(args):
    """Every file, then the text to print; returns (broker, text)."""
    names = parse_names(args.names) if args.names else default_names()
    if not names:
        raise SetupError("NAMES: no name given")
    config_path = Path(args.config)
    config = read_json(config_path, "the node's configuration")
    if not isinstance(config, dict):
        raise SetupError(f"{config_path}: expected an object {{...}} at the top level")
    ca_file = ca_target(config, config_path)
    broker = Broker(args.dir)
    prefix = config.get("topic_prefix") or "nodes"
    if args.client_certs:
        broker.ensure_ca()
        broker.ensure_server_cert(names, args.renew)
        broker.ensure_operator()
        broker.write_acl(prefix, (config.get("discovery") or {}).get("prefix") or "homeassistant")
        broker.write_conf(args.port, args.bind, client_certs=True)
        install_ca(broker, ca_file)
        broker.note("secrets.json: left alone: the nodes log in with their certificates "
                    "(make provision NODE=<id>)")
    else:
        secrets_data, created = read_secrets(args.secrets)
        broker.ensure_ca()
        broker.ensure_server_cert(names, args.renew)
        users = broker.ensure_users()
        broker.write_conf(args.port, args.bind)
        install_ca(broker, ca_file)
        update_secrets(broker, args.secrets, secrets_data, created, users[NODE_USER])
    ok, advice = config_advice(config, names, args.port)
    if not ok:
        broker.note(f"config.json: {config_path} does not point at this broker yet (below)")
    topic = f"{prefix}/#"
    if args.client_certs:
        how = cert_instructions(broker, names, args.port, config, advice, topic)
    else:
        how = instructions(broker, names, args.port, users, config, advice, topic)
    return broker, "\n".join(broker.notes) + "\n" + how


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--names", default="",
                    help="host names and addresses the certificate names, the first for clients "
                         "(default: this machine's)")
    ap.add_argument("--port", type=lambda v: int(v) if v else DEFAULT_PORT, default=DEFAULT_PORT,
                    help="TLS port (default %(default)s)")
    ap.add_argument("--bind", default=None,
                    help="listen on this address only (default: every interface)")
    ap.add_argument("--renew", action="store_true", help="a new server certificate")
    ap.add_argument("--client-certs", action="store_true",
                    help="clients show certificates (require_certificate, use_identity_as_"
                         "username, an ACL per node) instead of passwords")
    ap.add_argument("--no-start", action="store_true", help="print how to start mosquitto")
    ap.add_argument("--dir", default=str(REPO / "broker"), help="the broker's folder")
    ap.add_argument("--config", default=str(REPO / "config.json"), help="the node's config")
    ap.add_argument("--secrets", default=str(REPO / "secrets.json"), help="the node's secrets")
    args = ap.parse_args(argv)
    try:
        mosquitto = mosquitto_path()
        broker, text = setup(args)
    except (SetupError, PkiError, BrokerError) as e:
        print(f"broker: {e}", file=sys.stderr)
        return 1
    print(text)
    command = [mosquitto, "-c", str(broker.conf)]
    where = f"{args.bind or 'every interface'}, port {args.port}"
    if args.no_start:
        print(f"Start the broker ({where}) with:\n  {shlex.join(command)}")
        return 0
    if not port_free(args.port, args.bind):
        print(f"broker: port {args.port} is taken ({where}): another broker? Stop it, or "
              f"`make broker BROKER_PORT=...` and set that port in config.json", file=sys.stderr)
        return 1
    print(f"Starting mosquitto ({where}); Ctrl-C stops it. Later, the same: "
          f"{shlex.join(command)}", flush=True)
    sys.stderr.flush()
    os.execv(mosquitto, command)  # mosquitto in the foreground, Ctrl-C straight to it
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
