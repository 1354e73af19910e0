"""What the node needs to know of an X.509 certificate (DER): its names, its dates, whether it
is a CA, its public key; and which public key goes with a private key.

A small DER walker, enough to sort the certificates of a CA file before mbedTLS gets them
(node.cafile) and to tell whether the node's own key belongs to its certificate
(node.clientcert); it checks no signature, which mbedTLS does at the handshake. Pure: the same
code runs on CPython (the tests' reference) and on MicroPython, and works on offsets into the
certificate rather than slices of it, so reading one allocates little. Imported only while the
certificate files are loaded, at boot.
"""

# (Plain ints, not const(): this module also runs on CPython.)
_BOOLEAN = 0x01
_INTEGER = 0x02
_BIT_STRING = 0x03
_OCTET_STRING = 0x04
_OID = 0x06
_UTC_TIME = 0x17
_GENERALIZED_TIME = 0x18
_SEQUENCE = 0x30
_SET = 0x31
_VERSION = 0xA0  # [0] EXPLICIT, in tbsCertificate
_EXTENSIONS = 0xA3  # [3] EXPLICIT
_EC_PUBLIC_KEY = 0xA1  # [1] EXPLICIT, in ECPrivateKey (RFC 5915)
_OID_EC_KEY = b"\x2a\x86\x48\xce\x3d\x02\x01"  # 1.2.840.10045.2.1 id-ecPublicKey
_OID_RSA_KEY = b"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01"  # 1.2.840.113549.1.1.1
_BASIC_CONSTRAINTS = b"\x55\x1d\x13"  # 2.5.29.19
_ATTRIBUTE_PREFIX = b"\x55\x04"  # 2.5.4.x: the name attributes below
# The attributes a message shows, by their last arc, with OpenSSL's short names.
_ATTRIBUTES = {3: "CN", 6: "C", 7: "L", 8: "ST", 10: "O", 11: "OU"}
_DAY_S = 86400


class CertError(ValueError):
    """Not a well-formed certificate (or private key); str() says what is wrong, by offset:
    never the bytes themselves, which for a key are the secret."""


class Cert:
    """One certificate: `subject` and `issuer` as text ("O=Example, CN=Example CA"),
    `self_issued` (the two names are the same), `ca`, the validity in Unix seconds, and where
    its subjectPublicKey lies in the DER (der[key_start:key_end], what public_key() returns for
    the private key that goes with it)."""

    def __init__(self, subject, issuer, self_issued, ca, not_before, not_after, key_start,
                 key_end):
        self.subject = subject
        self.issuer = issuer
        self.self_issued = self_issued
        self.ca = ca
        self.not_before = not_before
        self.not_after = not_after
        self.key_start = key_start
        self.key_end = key_end

    def out_of_date(self, now_s, exact):
        """Why the certificate is not valid at now_s ("expired on ..."), or None; None too
        when the clock is unknown (now_s None). Too early only when `exact`: after a
        power-on the clock may read just a floor below the true date (node.cafile.load)."""
        if now_s is None:
            return None
        if self.not_after < now_s:
            return "expired on %s (the clock reads %s)" % (date(self.not_after), date(now_s))
        if exact and self.not_before > now_s:
            return "is not valid until %s (the clock reads %s)" % (date(self.not_before),
                                                                  date(now_s))
        return None


def header(der, pos):
    """(tag, where the value starts, its length) of the DER element at der[pos]; the value itself
    need not be there yet (node.cafile reads a DER file a certificate at a time)."""
    if pos + 2 > len(der):
        raise CertError("cut short at byte %d" % pos)
    tag = der[pos]
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        # 0: BER's indefinite length, not DER; more than 3 bytes: over 16 MB, not a certificate.
        if count == 0 or count > 3 or pos + count > len(der):
            raise CertError("bad length at byte %d" % (pos - 1))
        length = 0
        for i in range(pos, pos + count):
            length = length << 8 | der[i]
        pos += count
    return tag, pos, length


def _element(der, pos, end, tag, what):
    """(start, end) of the value of the element at der[pos], which must be a `tag` inside end."""
    got, start, length = header(der, pos)
    if got != tag:
        raise CertError("%s expected at byte %d" % (what, pos))
    if start + length > end:
        raise CertError("%s cut short at byte %d" % (what, pos))
    return start, start + length


def parse(der):
    """The Cert that `der` holds: one certificate and nothing after it. CertError if malformed."""
    start, end = _element(der, 0, len(der), _SEQUENCE, "certificate")
    if end != len(der):
        raise CertError("%d bytes after the certificate" % (len(der) - end))
    pos, tbs_end = _element(der, start, end, _SEQUENCE, "tbsCertificate")
    version = 1
    if pos < tbs_end and der[pos] == _VERSION:
        v_start, v_end = _element(der, pos, tbs_end, _VERSION, "version")
        n_start, n_end = _element(der, v_start, v_end, _INTEGER, "version")
        if n_end - n_start != 1 or der[n_start] > 2:
            raise CertError("unknown version at byte %d" % n_start)
        version = der[n_start] + 1
        pos = v_end
    pos = _element(der, pos, tbs_end, _INTEGER, "serial number")[1]
    pos = _element(der, pos, tbs_end, _SEQUENCE, "signature algorithm")[1]
    issuer_at = pos
    pos = _element(der, pos, tbs_end, _SEQUENCE, "issuer")[1]
    issuer_end = pos
    v_start, pos = _element(der, pos, tbs_end, _SEQUENCE, "validity")
    not_before, v_start = _time(der, v_start, pos, "notBefore")
    not_after = _time(der, v_start, pos, "notAfter")[0]
    subject_at = pos
    pos = _element(der, pos, tbs_end, _SEQUENCE, "subject")[1]
    self_issued = der[issuer_at:issuer_end] == der[subject_at:pos]
    spki_start, pos = _element(der, pos, tbs_end, _SEQUENCE, "subjectPublicKeyInfo")
    key_start, key_end = _bits(der, _element(der, spki_start, pos, _SEQUENCE,
                                             "key algorithm")[1], pos, "subjectPublicKey")
    # mbedTLS trusts a v1/v2 certificate as a root without a CA flag (it cannot carry one).
    ca = version < 3
    while pos < tbs_end:  # issuerUniqueID [1], subjectUniqueID [2], extensions [3]
        tag, start, length = header(der, pos)
        if start + length > tbs_end:
            raise CertError("field cut short at byte %d" % pos)
        if tag == _EXTENSIONS:
            ca = _is_ca(der, start, start + length)
        pos = start + length
    return Cert(_name(der, subject_at), _name(der, issuer_at), self_issued, ca, not_before,
                not_after, key_start, key_end)


def _bits(der, pos, end, what):
    """(start, end) of the bytes of a BIT STRING of whole bytes (a key), past its "unused bits"
    count."""
    start, stop = _element(der, pos, end, _BIT_STRING, what)
    if start == stop or der[start] != 0:
        raise CertError("%s at byte %d is not a key of whole bytes" % (what, pos))
    return start + 1, stop


def public_key(der):
    """The public key that goes with the private key `der` (DER: PKCS#8, or the older EC
    (SEC1) and RSA (PKCS#1) forms), as bytes equal to the subjectPublicKey of its certificate
    (Cert.key_start:key_end); None when the file does not hold it (an EC key saved without
    its public point, which only curve maths could recover). CertError when malformed or of
    another kind than EC or RSA."""
    start, end = _element(der, 0, len(der), _SEQUENCE, "private key")
    if end != len(der):
        raise CertError("%d bytes after the private key" % (len(der) - end))
    pos = _element(der, start, end, _INTEGER, "key version")[1]
    if pos >= end:
        raise CertError("private key cut short at byte %d" % pos)
    tag = der[pos]
    if tag == _SEQUENCE:  # PKCS#8: the algorithm, then the key of that kind in an OCTET STRING
        alg_start, alg_end = _element(der, pos, end, _SEQUENCE, "key algorithm")
        oid_start, oid_end = _element(der, alg_start, alg_end, _OID, "key algorithm")
        key_at = _element(der, alg_end, end, _OCTET_STRING, "private key")[0]
        oid = der[oid_start:oid_end]
        if oid == _OID_EC_KEY:
            return _ec_public(der, key_at)
        if oid == _OID_RSA_KEY:
            return _rsa_public(der, key_at)
        raise CertError("a private key neither EC nor RSA (the TLS module takes only those)")
    if tag == _OCTET_STRING:  # SEC1 ECPrivateKey: version 1, then the private scalar
        return _ec_public(der, 0)
    if tag == _INTEGER:  # PKCS#1 RSAPrivateKey: version 0, then the modulus
        return _rsa_public(der, 0)
    raise CertError("not a private key (PKCS#8, EC or RSA) at byte %d" % pos)


def _ec_public(der, pos):
    """The public point of the ECPrivateKey at der[pos] (its optional [1] field), or None."""
    pos, end = _element(der, pos, len(der), _SEQUENCE, "EC private key")
    pos = _element(der, pos, end, _INTEGER, "EC key version")[1]
    pos = _element(der, pos, end, _OCTET_STRING, "EC private key")[1]
    while pos < end:  # [0] parameters, [1] public key: both optional
        tag, start, length = header(der, pos)
        if start + length > end:
            raise CertError("EC key field cut short at byte %d" % pos)
        if tag == _EC_PUBLIC_KEY:
            bits_start, bits_end = _bits(der, start, start + length, "EC public key")
            return der[bits_start:bits_end]
        pos = start + length
    return None


def _rsa_public(der, pos):
    """The RSAPublicKey (modulus, exponent) of the RSAPrivateKey at der[pos], DER-encoded as a
    certificate holds it: both INTEGERs copied as they are (DER has one encoding of each)."""
    pos, end = _element(der, pos, len(der), _SEQUENCE, "RSA private key")
    at = _element(der, pos, end, _INTEGER, "RSA key version")[1]
    stop = _element(der, _element(der, at, end, _INTEGER, "RSA modulus")[1], end, _INTEGER,
                    "RSA exponent")[1]
    size = stop - at
    if size < 0x80:
        head = bytes((_SEQUENCE, size))
    elif size < 0x100:
        head = bytes((_SEQUENCE, 0x81, size))
    else:
        head = bytes((_SEQUENCE, 0x82, size >> 8, size & 0xFF))
    return head + der[at:stop]


def _is_ca(der, pos, end):
    """basicConstraints' cA flag, from the [3] extensions; False when it is absent."""
    pos, end = _element(der, pos, end, _SEQUENCE, "extensions")
    while pos < end:
        start, ext_end = _element(der, pos, end, _SEQUENCE, "extension")
        oid_start, oid_end = _element(der, start, ext_end, _OID, "extension id")
        if der[oid_start:oid_end] == _BASIC_CONSTRAINTS:
            at = oid_end
            if at < ext_end and der[at] == _BOOLEAN:  # "critical"
                at = _element(der, at, ext_end, _BOOLEAN, "critical")[1]
            value_start, value_end = _element(der, at, ext_end, _OCTET_STRING, "extension value")
            start, stop = _element(der, value_start, value_end, _SEQUENCE, "basicConstraints")
            if start < stop and der[start] == _BOOLEAN:
                flag_start, flag_end = _element(der, start, stop, _BOOLEAN, "cA")
                return flag_end > flag_start and der[flag_start] != 0
            return False  # cA DEFAULT FALSE
        pos = ext_end
    return False


def _name(der, pos):
    """A Name as "C=DE, O=Example, CN=Example CA": the attributes of _ATTRIBUTES, in order."""
    pos, end = _element(der, pos, len(der), _SEQUENCE, "name")
    parts = []
    while pos < end:  # each RelativeDistinguishedName: a SET of (type, value)
        start, pos = _element(der, pos, end, _SET, "name part")
        while start < pos:
            a_start, start = _element(der, start, pos, _SEQUENCE, "name attribute")
            oid_start, oid_end = _element(der, a_start, start, _OID, "attribute type")
            key = None
            if oid_end - oid_start == 3 and der[oid_start:oid_start + 2] == _ATTRIBUTE_PREFIX:
                key = _ATTRIBUTES.get(der[oid_start + 2])
            if key:
                v_start, v_length = header(der, oid_end)[1:]
                if v_start + v_length > start:
                    raise CertError("name attribute cut short at byte %d" % oid_end)
                parts.append(key + "=" + _text(der[v_start:v_start + v_length]))
    return ", ".join(parts) if parts else "(no name)"


def _text(raw):
    """A name's value fit for one log line: UTF-8 (Printable and IA5 strings are ASCII); other
    encodings (BMP, Teletex) keep their printable ASCII; control characters become "?"."""
    try:
        text = raw.decode()
    except UnicodeError:
        text = "".join(chr(b) for b in raw if 32 <= b < 127)
    return "".join(c if c >= " " else "?" for c in text)


def _time(der, pos, end, what):
    """(Unix seconds, end) of a UTCTime (YYMMDDHHMMSSZ, 1950-2049) or GeneralizedTime."""
    tag, start, length = header(der, pos)
    if start + length > end:
        raise CertError("%s cut short at byte %d" % (what, pos))
    if tag == _UTC_TIME and length == 13:
        year = _digits(der, start, 2, what)
        year += 1900 if year >= 50 else 2000  # RFC 5280, 4.1.2.5.1
        at = start + 2
    elif tag == _GENERALIZED_TIME and length == 15:
        year = _digits(der, start, 4, what)
        at = start + 4
    else:
        raise CertError("%s at byte %d is not a UTC or generalized time" % (what, pos))
    if der[start + length - 1] != 0x5A:  # "Z": UTC, as RFC 5280 wants
        raise CertError("%s at byte %d is not a time in UTC" % (what, pos))
    month, day = _digits(der, at, 2, what), _digits(der, at + 2, 2, what)
    hour, minute = _digits(der, at + 4, 2, what), _digits(der, at + 6, 2, what)
    second = _digits(der, at + 8, 2, what)
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise CertError("%s at byte %d is not a valid date" % (what, pos))
    return days(year, month, day) * _DAY_S + hour * 3600 + minute * 60 + second, start + length


def _digits(der, pos, count, what):
    value = 0
    for i in range(pos, pos + count):
        digit = der[i] - 0x30
        if not 0 <= digit <= 9:
            raise CertError("%s has a non-digit at byte %d" % (what, i))
        value = value * 10 + digit
    return value


def days(year, month, day):
    """Days from 1970-01-01 to that date of the Gregorian calendar (H. Hinnant's algorithm):
    the board's time.mktime has ports with other epochs, CPython's a local time zone."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month - 3 if month > 2 else month + 9) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def date(unix_s):
    """"YYYY-MM-DD" of a Unix time, in UTC: days() the other way round."""
    z = unix_s // _DAY_S + 719468
    era = z // 146097
    day_of_era = z - era * 146097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36524
                   - day_of_era // 146096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    m = (5 * day_of_year + 2) // 153
    month = m + 3 if m < 10 else m - 9
    day = day_of_year - (153 * m + 2) // 5 + 1
    return "%04d-%02d-%02d" % (year_of_era + era * 400 + (month <= 2), month, day)
