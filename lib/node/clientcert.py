"""The node's own certificate and key (mqtt.cert, mqtt.key) into the SSLContext, checked first.

A broker that identifies devices by certificate (Mosquitto's require_certificate, AWS IoT Core)
is shown this one at every handshake. What can be known at boot is checked here, so that a bad
file is a ConfigError naming it (safe mode) instead of a broker turning the node away without a
reason: a file missing or unreadable, neither PEM nor DER, no certificate or no private key in
it, a key protected by a passphrase, a key that is not the certificate's (mbedTLS takes any
pair, and the handshake would fail later), a certificate the clock shows expired. MicroPython's
load_cert_chain() takes both as bytes, DER on every port (the unix port's mbedTLS parses no
PEM), and one certificate: of a file with several (a chain), the one the key belongs to is
presented, and the log says so. The key's bytes never appear in a message. Boot-only, as
node.cafile: imported for the TLS context, then dropped.
"""

import os
from binascii import a2b_base64

from node import x509
from node.cafile import der_blocks, pem_blocks
from node.config import ConfigError
from node.log import log

_MAX_CERT_BYTES = 8192  # the node's certificate, perhaps with its CA chain
_MAX_KEY_BYTES = 4096  # an RSA-4096 key is about 3.3 KB in PEM; an EC P-256 key 241 bytes
_KEY_LABELS = (b"PRIVATE KEY", b"EC PRIVATE KEY", b"RSA PRIVATE KEY")
_DECRYPT_HINT = ("the node has no passphrase to open it: save it unencrypted, e.g. `openssl "
                 "pkey -in KEY -out node-key.der -outform DER`")


def load(ctx, cert_path, key_path, now_s=None, exact=False):
    """Load the certificate of the file at cert_path and its key (key_path) into ctx; returns
    the certificate's subject. now_s and exact: as node.cafile.load (what the clock knows)."""
    key = _read_key(key_path)
    try:
        public = x509.public_key(key)
    except x509.CertError as e:
        raise ConfigError("mqtt.key: %s is not a private key the node can use (%s)"
                          % (key_path, e))
    der, cert, others = _certificate(cert_path, key_path, public)
    name = '"%s"' % cert.subject
    late = cert.out_of_date(now_s, exact)
    if late:  # one that is not valid yet was made on a machine whose clock is ahead
        raise ConfigError("mqtt.cert: %s: %s %s: the node needs a new one (make provision, or"
                          " your broker's CA)" % (cert_path, name, late))
    try:
        ctx.load_cert_chain(der, key)
    except ValueError as e:  # mbedTLS: "invalid key"/"invalid cert", e.g. a curve it lacks
        raise ConfigError("mqtt.cert/mqtt.key: %s and %s refused by the TLS module (%s)"
                          % (cert_path, key_path, e))
    log("mqtt", 'client certificate %s: %s issued by "%s", valid until %s%s'
        % (cert_path, name, cert.issuer, x509.date(cert.not_after),
           "" if public is not None else
           "; the key file holds no public key, so whether it is this certificate's is known"
           " only at the handshake"))
    if others:
        log("mqtt", "client certificate %s: the %d other certificate(s) in it are not presented"
            " (the TLS module sends one): the broker must know the CAs between it and its root"
            % (cert_path, others))
    return cert.subject


def _open(path, key, what, max_bytes):
    try:
        size = os.stat(path)[6]
        f = open(path, "rb")
    except OSError:
        raise ConfigError("%s: cannot read the %s file %s (missing?)" % (key, what, path))
    if size > max_bytes:
        f.close()
        raise ConfigError("%s: %s is %d bytes, more than the %d a %s file needs"
                          % (key, path, size, max_bytes, what))
    return f


def _read_key(path):
    """The key file's DER: the file itself, or the body of its PEM PRIVATE KEY block."""
    with _open(path, "mqtt.key", "private key", _MAX_KEY_BYTES) as f:
        data = f.read()
    if data[:1] == b"\x30":  # DER starts with an ASN.1 SEQUENCE
        try:
            x509.parse(data)
        except x509.CertError:
            return data
        raise ConfigError("mqtt.key: %s holds a certificate, not a private key (mqtt.cert and"
                          " mqtt.key swapped?)" % path)
    body = None
    for raw in data.split(b"\n"):
        line = raw.strip()
        if body is None:
            if line == b"-----BEGIN ENCRYPTED PRIVATE KEY-----":
                raise ConfigError("mqtt.key: %s is encrypted: %s" % (path, _DECRYPT_HINT))
            if (line.startswith(b"-----BEGIN ") and line.endswith(b"-----")
                    and line[11:-5] in _KEY_LABELS):
                body = []
        elif line.startswith(b"-----END "):
            break
        elif line.startswith(b"Proc-Type:") and b"ENCRYPTED" in line:
            raise ConfigError("mqtt.key: %s is encrypted: %s" % (path, _DECRYPT_HINT))
        elif line:
            body.append(line)
    if body is None:
        if b"-----BEGIN CERTIFICATE-----" in data:
            raise ConfigError("mqtt.key: %s holds a certificate, not a private key (mqtt.cert"
                              " and mqtt.key swapped?)" % path)
        raise ConfigError("mqtt.key: %s is neither a PEM nor a DER private key" % path)
    try:
        der = a2b_base64(b"".join(body))
    except ValueError:  # binascii.Error on CPython is one
        der = b""
    if not der:  # MicroPython's a2b_base64 passes over what is not base64
        raise ConfigError("mqtt.key: %s: corrupt PEM (not base64)" % path)
    return der


def _certificate(path, key_path, public):
    """(DER, x509.Cert, how many others) of the certificate in the file at path that the key
    belongs to (the first, when the key does not say)."""
    found = []
    chosen = None
    with _open(path, "mqtt.cert", "certificate", _MAX_CERT_BYTES) as f:
        pem = f.read(1) != b"\x30"
        f.seek(0)
        try:
            for block in pem_blocks(f) if pem else der_blocks(f):
                try:
                    der = a2b_base64(block) if pem else block
                except ValueError:  # binascii.Error on CPython is one
                    der = b""
                if not der:  # MicroPython's a2b_base64 passes over what is not base64
                    raise ConfigError("mqtt.cert: %s: certificate %d: corrupt PEM (not base64)"
                                      % (path, len(found) + 1))
                try:
                    cert = x509.parse(der)
                except x509.CertError as e:
                    raise ConfigError("mqtt.cert: %s: certificate %d is not an X.509 certificate"
                                      " (%s)" % (path, len(found) + 1, e))
                found.append(cert.subject)
                if chosen is None and (public is None
                                       or der[cert.key_start:cert.key_end] == public):
                    chosen = der, cert
        except x509.CertError as e:  # DER framing: nothing after the break is sure
            raise ConfigError("mqtt.cert: %s: certificate %d: %s" % (path, len(found) + 1, e))
    if not found:
        raise ConfigError("mqtt.cert: %s is neither a PEM nor a DER certificate" % path)
    if chosen is None:
        raise ConfigError('mqtt.key: %s is not the key of %s in %s: they do not belong together'
                          " (each node's key and certificate are made as a pair)"
                          % (key_path, " nor ".join('"%s"' % s for s in found), path))
    return chosen[0], chosen[1], len(found) - 1
