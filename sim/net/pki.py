"""TLS certificates made with the openssl CLI: throwaway ones for the simulator and the tests,
and (tools/broker.py, `make broker`) the lasting CA and server certificate of a user's broker.

Everything is EC P-256: a CA (PEM + DER, the DER is what MicroPython's ssl loads), a server
certificate for given names and addresses signed by it, a client certificate for a node or an
operator (CN = its identity, as Mosquitto's use_identity_as_username reads it; tools/provision.py
issues the nodes' own), and what a re-run needs to decide whether a certificate still fits
(cert_info, signed_by). make_pki makes the simulator's set,
valid for two days: the CA, a server certificate for `localhost` + 127.0.0.1, and on request the
two certificates a node must refuse: one from an impostor CA with the same names, and one from
the right CA for the wrong host name.

    python -m sim.net.pki DEST [--impostor] [--wrong-host] [--days N]
"""

import argparse
import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_HOSTS = ("localhost",)
DEFAULT_IPS = ("127.0.0.1",)
WRONG_HOST = "wrong.invalid"
DEFAULT_DAYS = 2


class PkiError(RuntimeError):
    """openssl is missing or one of its commands failed (the message carries its stderr)."""


@dataclass
class ServerCert:
    cert: Path  # PEM, the leaf certificate
    key: Path  # PEM, unencrypted
    ca: Path  # PEM of the CA that signed it (what the broker's `cafile` names)


@dataclass
class Pki:
    folder: Path
    ca_pem: Path
    ca_der: Path
    ca_key: Path
    server: ServerCert
    impostor: ServerCert | None = None  # same names, signed by another CA
    impostor_ca_der: Path | None = None
    wrong_host: ServerCert | None = None  # right CA, name WRONG_HOST only


def openssl_path():
    found = shutil.which("openssl")
    if not found:
        raise PkiError("openssl not found in PATH: run `make deps` (installs it)")
    return found


def _run(*args, cwd=None):
    cmd = [openssl_path(), *map(str, args)]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PkiError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _ec_key(path):
    _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    os.chmod(path, 0o600)


def make_ca(folder, name="ca", cn="sim-node test CA", days=DEFAULT_DAYS):
    """A self-signed CA: returns (pem, der, key) paths under folder."""
    folder = Path(folder)
    key, pem, der = folder / f"{name}.key", folder / f"{name}.pem", folder / f"{name}.der"
    _ec_key(key)
    _run(
        "req", "-x509", "-new", "-key", key, "-out", pem, "-days", days, "-sha256",
        "-subj", f"/CN={cn}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
    )  # fmt: skip
    _run("x509", "-in", pem, "-outform", "DER", "-out", der)
    return pem, der, key


def make_server_cert(folder, name, ca_pem, ca_key, hosts=DEFAULT_HOSTS, ips=DEFAULT_IPS,
                     days=DEFAULT_DAYS):
    """A server certificate for `hosts` and `ips` signed by the CA: returns a ServerCert."""
    folder = Path(folder)
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    _ec_key(key)
    san = ",".join([f"DNS:{h}" for h in hosts] + [f"IP:{i}" for i in ips])
    cn = hosts[0] if hosts else ips[0]
    _sign_leaf(key, cert, cn, ca_pem, ca_key, days, f"subjectAltName={san}\n", "serverAuth")
    return ServerCert(cert=cert, key=key, ca=Path(ca_pem))


def _sign_leaf(key, cert, cn, ca_pem, ca_key, days, san_line, usage):
    """Sign a certificate for `key` with CN=cn by the CA: not a CA itself, for `usage`
    (serverAuth or clientAuth) only."""
    with tempfile.TemporaryDirectory() as tmp:
        csr, ext = Path(tmp) / "leaf.csr", Path(tmp) / "ext.cnf"
        ext.write_text(
            san_line
            + "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\n"
            "authorityKeyIdentifier=keyid\n"
        )
        _run("req", "-new", "-key", key, "-out", csr, "-subj", f"/CN={cn}")
        _run(
            "x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-set_serial",
            "0x" + os.urandom(8).hex(), "-days", days, "-sha256", "-extfile", ext,
            "-out", cert,
        )  # fmt: skip


@dataclass
class ClientCert:
    cert: Path  # PEM
    key: Path  # PEM (PKCS#8), unencrypted
    cert_der: Path  # the same two in DER: what a node's mqtt.cert and mqtt.key name
    key_der: Path


def make_client_cert(folder, name, cn, ca_pem, ca_key, days=DEFAULT_DAYS):
    """A client certificate with CN=cn (a node's id, or "operator") signed by the CA, for TLS
    client authentication only: returns a ClientCert (PEM and DER of both)."""
    folder = Path(folder)
    key, cert = folder / f"{name}.key", folder / f"{name}.pem"
    key_der, cert_der = folder / f"{name}-key.der", folder / f"{name}.der"
    _ec_key(key)
    _sign_leaf(key, cert, cn, ca_pem, ca_key, days, "", "clientAuth")
    _run("x509", "-in", cert, "-outform", "DER", "-out", cert_der)
    _run("pkey", "-in", key, "-outform", "DER", "-out", key_der)
    os.chmod(key_der, 0o600)
    return ClientCert(cert=cert, key=key, cert_der=cert_der, key_der=key_der)


@dataclass
class CertInfo:
    subject: str  # as openssl prints it, e.g. "CN = localhost"
    dns: tuple  # subjectAltName DNS names, in the certificate's order
    ips: tuple  # subjectAltName IP addresses, normalised (ipaddress' str)
    not_after: datetime  # end of validity, UTC


def cert_info(pem):
    """What a PEM certificate names and until when (parsed from `openssl x509 -text`, which the
    openssl of every platform prints alike)."""
    text = _run("x509", "-in", pem, "-noout", "-subject", "-text")
    subject = re.search(r"^subject=\s*(.*)$", text, re.M)
    end = re.search(r"Not After\s*:\s*(.+?)\s*$", text, re.M)
    if not (subject and end):
        raise PkiError(f"{pem}: openssl printed no subject or end of validity")
    san = re.search(r"X509v3 Subject Alternative Name:.*\n\s*(.+)", text)
    dns, ips = [], []
    for entry in (san.group(1).split(",") if san else ()):
        kind, _, value = entry.strip().partition(":")
        if kind == "DNS":
            dns.append(value)
        elif kind == "IP Address":
            ips.append(str(ipaddress.ip_address(value)))
    not_after = datetime.strptime(end.group(1), "%b %d %H:%M:%S %Y GMT")
    not_after = not_after.replace(tzinfo=timezone.utc)
    return CertInfo(subject.group(1), tuple(dns), tuple(ips), not_after)


def signed_by(cert, ca_pem):
    """True if `cert` verifies against the CA (signature, validity now), False otherwise."""
    proc = subprocess.run([openssl_path(), "verify", "-CAfile", str(ca_pem), str(cert)],
                          capture_output=True, text=True)
    return proc.returncode == 0


def make_pki(folder, impostor=False, wrong_host=False, hosts=DEFAULT_HOSTS, ips=DEFAULT_IPS,
             days=DEFAULT_DAYS):
    """Generate a fresh set into folder (created if needed; files of the same name replaced)."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    ca_pem, ca_der, ca_key = make_ca(folder, "ca", days=days)
    pki = Pki(
        folder=folder, ca_pem=ca_pem, ca_der=ca_der, ca_key=ca_key,
        server=make_server_cert(folder, "server", ca_pem, ca_key, hosts, ips, days),
    )  # fmt: skip
    if impostor:
        i_pem, i_der, i_key = make_ca(folder, "impostor-ca", cn="sim-node test CA", days=days)
        pki.impostor = make_server_cert(folder, "impostor-server", i_pem, i_key, hosts, ips, days)
        pki.impostor_ca_der = i_der
    if wrong_host:
        pki.wrong_host = make_server_cert(
            folder, "wrong-host-server", ca_pem, ca_key, (WRONG_HOST,), (), days
        )
    return pki


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dest", help="folder for the files (created)")
    ap.add_argument("--impostor", action="store_true", help="also a server cert from another CA")
    ap.add_argument("--wrong-host", action="store_true", help=f"also a cert for {WRONG_HOST}")
    ap.add_argument("--days", type=int, default=DEFAULT_DAYS,
                    help="validity in days (default %(default)s)")
    args = ap.parse_args(argv)
    try:
        pki = make_pki(args.dest, impostor=args.impostor, wrong_host=args.wrong_host,
                       days=args.days)
    except PkiError as e:
        print(f"pki: {e}", file=sys.stderr)
        return 1
    for p in sorted(pki.folder.iterdir()):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
