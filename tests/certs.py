"""Certificates with chosen names, dates and CA flags for the tests, made with the openssl CLI.

sim/net/pki.py makes the simulator's CA and server certificate, valid from now; the CA file tests
also need CAs that expired in 2020 or start in 2100, intermediates, version 1 certificates and
server certificates that signed themselves. `openssl ca` takes explicit dates, so everything
here goes through a throwaway CA database in the folder.

    made = Maker(tmp_path)
    root = made.cert("root", "/CN=Right CA")
    leaf = made.cert("leaf", "/CN=localhost", issuer=root, ca=False)
"""

import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sim.net.pki import openssl_path

_CA_CONFIG = """\
[ca]
default_ca = test
[test]
database = index.txt
new_certs_dir = .
serial = serial
policy = any
default_md = sha256
unique_subject = no
[any]
commonName = supplied
"""
CA_EXTENSIONS = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
SERVER_EXTENSIONS = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                     "extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n")


@dataclass
class Made:
    pem: Path
    der: Path
    key: Path
    not_before: datetime
    not_after: datetime


def _stamp(when):
    return when.astimezone(timezone.utc).strftime("%Y%m%d%H%M%SZ")


class Maker:
    def __init__(self, folder):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "ca.cnf").write_text(_CA_CONFIG)
        (self.folder / "index.txt").write_text("")
        (self.folder / "serial").write_text("1000\n")

    def _run(self, *args):
        subprocess.run([openssl_path(), *map(str, args)], cwd=self.folder, check=True,
                       capture_output=True)

    def cert(self, name, subject, issuer=None, ca=True, not_before=None, not_after=None,
             v1=False):
        """A certificate for `subject` ("/O=Org/CN=Name", kept in that order), signed by
        `issuer` (a Made) or by itself; a CA unless ca=False (then a server certificate for
        localhost); v1: no extensions at all (version 1). Dates default to yesterday .. in 30
        days."""
        now = datetime.now(timezone.utc).replace(microsecond=0)
        not_before = not_before or now - timedelta(days=1)
        not_after = not_after or now + timedelta(days=30)
        key, csr = self.folder / f"{name}.key", self.folder / f"{name}.csr"
        pem, der = self.folder / f"{name}.pem", self.folder / f"{name}.der"
        self._run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-out", key)
        self._run("req", "-new", "-utf8", "-key", key, "-subj", subject, "-out", csr)
        args = ["ca", "-batch", "-config", "ca.cnf", "-utf8", "-preserveDN", "-notext",
                "-in", csr, "-out", pem, "-startdate", _stamp(not_before),
                "-enddate", _stamp(not_after)]
        if issuer is None:
            args += ["-selfsign", "-keyfile", key]
        else:
            args += ["-cert", issuer.pem, "-keyfile", issuer.key]
        if not v1:
            ext = self.folder / f"{name}.ext"
            ext.write_text(CA_EXTENSIONS if ca else SERVER_EXTENSIONS)
            args += ["-extfile", ext]
        self._run(*args)
        self._run("x509", "-in", pem, "-outform", "DER", "-out", der)
        return Made(pem, der, key, not_before, not_after)
