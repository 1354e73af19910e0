"""Loads the broker's CA file (mqtt.ca) into an SSLContext: PEM or DER, one certificate or many.

Every CA certificate in the file is trusted, so a bundle with other CAs before the broker's, or
a chain saved with `openssl s_client -showcerts` (the server's certificate first, then its CAs)
works. MicroPython's load_verify_locations() takes one DER certificate per call (the unix
port's mbedTLS parses no PEM, and of several DER certificates in one call it reads the first),
and each call adds to the CAs before it: so the file is split here, a certificate at a time.
A server certificate in the file is skipped and named (one that signed itself is trusted as
itself: mbedTLS accepts exactly that certificate); so is a CA whose dates the clock can show
to be wrong. A file left with no CA is a ConfigError naming the file and every certificate's
problem. Boot-only: node.app imports this module (and node.x509) for the TLS context, then
drops both.
"""

import os
from binascii import a2b_base64

from node import x509
from node.config import ConfigError
from node.log import log

# A CA file for one broker holds a few certificates. A system's whole CA store (some 200 KB)
# would not fit: mbedTLS keeps about 1.5 KB of RAM per certificate it trusts.
_MAX_FILE_BYTES = 16384
_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_END = b"-----END CERTIFICATE-----"
_LINE_BYTES = 128  # read at most this much at once: a PEM line has 64 characters


def load(ctx, path, now_s=None, exact=False):
    """Trust every usable CA certificate of the file at `path` in `ctx`; returns how many.

    now_s: a time the clock has certainly reached (Unix seconds), or None when nothing is known
    (then no date is checked; mbedTLS checks them at the handshake). A CA that expired before
    now_s is refused. exact: now_s is the time itself (NTP, or kept across a reset), so a CA not
    valid until after it is refused too; after a power-on now_s may be only the floor
    (sntp.known_time), behind the true time, and a CA made since then is fine.
    """
    try:
        size = os.stat(path)[6]
        f = open(path, "rb")
    except OSError:
        raise ConfigError("mqtt.ca: cannot read the CA file %s (missing?)" % path)
    with f:
        if size > _MAX_FILE_BYTES:
            raise ConfigError(
                "mqtt.ca: %s is %d bytes, more than the %d a CA file for one broker needs (a"
                " system's whole CA store does not fit the board's RAM): keep only the CA that"
                " signed the broker's certificate" % (path, size, _MAX_FILE_BYTES))
        pem = f.read(1) != b"\x30"  # DER starts with an ASN.1 SEQUENCE
        f.seek(0)
        count = trusted = 0
        problems = []
        try:
            for block in pem_blocks(f) if pem else der_blocks(f):
                count += 1
                problem = _trust(ctx, path, block, pem, now_s, exact)
                if problem is None:
                    trusted += 1
                else:
                    problems.append("certificate %d: %s" % (count, problem))
                    log("mqtt", "CA file %s: skipped %s" % (path, problems[-1]))
        except x509.CertError as e:  # a DER file whose framing broke: nothing after it is sure
            problems.append("certificate %d: %s" % (count + 1, e))
            log("mqtt", "CA file %s: stopped at %s" % (path, problems[-1]))
    if not count and not problems:
        raise ConfigError("mqtt.ca: %s is neither a PEM nor a DER certificate" % path)
    if not trusted:
        raise ConfigError("mqtt.ca: %s has no usable CA certificate: %s"
                          % (path, "; ".join(problems)))
    return trusted


def _trust(ctx, path, block, pem, now_s, exact):
    """Load one certificate into ctx if it is a usable CA; else the reason it is not."""
    try:
        der = a2b_base64(block) if pem else block
    except ValueError:  # binascii.Error on CPython is one
        return "corrupt PEM (not base64)"
    try:
        cert = x509.parse(der)
    except x509.CertError as e:
        return "not an X.509 certificate (%s)" % e
    name = '"%s"' % cert.subject
    if not cert.ca and not cert.self_issued:
        return ('%s is a server certificate, not a CA: the CA that signed it is "%s"'
                % (name, cert.issuer))
    late = cert.out_of_date(now_s, exact)
    if late:
        return "%s %s" % (name, late)
    try:
        ctx.load_verify_locations(cadata=der)
    except ValueError as e:  # mbedTLS: an algorithm this firmware lacks, say
        return "%s refused by the TLS module (%s)" % (name, e)
    if cert.ca:
        log("mqtt", "CA file %s: trusting %s, valid until %s"
            % (path, name, x509.date(cert.not_after)))
    else:
        log("mqtt", "CA file %s: trusting the self-signed server certificate %s itself (not a"
            " CA: only a broker presenting exactly it is accepted)" % (path, name))
    return None


def pem_blocks(f):
    """The base64 body of each certificate of a PEM file, read a line at a time: text around
    the blocks (s_client's "depth=..." lines, comments) and other PEM blocks are passed over."""
    body = None
    while True:
        line = f.readline(_LINE_BYTES)
        if not line:
            return
        line = line.strip()
        if line == _PEM_BEGIN:
            body = []
        elif line == _PEM_END:
            if body is not None:
                yield b"".join(body)
            body = None
        elif body is not None:
            body.append(line)


def der_blocks(f):
    """Each certificate of a DER file (one, or several one after the other), one at a time."""
    while True:
        head = f.read(2)
        if not head:
            return
        if len(head) == 2 and head[1] & 0x80:
            head += f.read(head[1] & 0x7F)
        start, length = x509.header(head, 0)[1:]
        # The length is checked before anything is read: f.read(n) takes n bytes of heap first.
        if head[0] != 0x30 or start + length > _MAX_FILE_BYTES:
            raise x509.CertError("no DER certificate there")
        der = head + f.read(start + length - len(head))
        if len(der) < start + length:
            raise x509.CertError("the file ends inside it")
        yield der
