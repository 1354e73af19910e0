"""The CA file as users have it (node.cafile) and the DER walker under it (node.x509).

Certificates are made here by openssl (tests/certs.py): bundles with another CA first, chains
saved leaf first, DER one or several, CAs expired or not valid yet, server certificates alone.
Each file runs through the real module on the unix port and on the 32-bit 1.27 port with a real
ssl.SSLContext, and the handshake tests prove that what it trusted lets MicroPython's TLS reach
a loopback server whose certificate the second CA of the file signed. x509 is checked against
CPython's OpenSSL (ssl._ssl._test_decode_cert) and CPython's datetime.
"""

import calendar
import json
import socket
import ssl
import threading
from datetime import datetime, timezone

import pytest
from node import x509

from tests.certs import Maker
from tests.conftest import REPO

UTC = timezone.utc
NOW_S = int(datetime.now(UTC).timestamp())
OLD = (datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 2, 1, tzinfo=UTC))
FUTURE = (datetime(2100, 1, 1, tzinfo=UTC), datetime(2101, 2, 1, tzinfo=UTC))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Every certificate the tests need, made once."""
    m = Maker(tmp_path_factory.mktemp("certs"))
    c = {}
    c["other"] = m.cert("other", "/O=Other Org/CN=Other CA")
    c["right"] = m.cert("right", "/O=Right Org/CN=Right CA")
    c["server"] = m.cert("server", "/CN=localhost", issuer=c["right"], ca=False)
    c["inter"] = m.cert("inter", "/O=Right Org/CN=Right Intermediate", issuer=c["right"])
    c["server2"] = m.cert("server2", "/CN=localhost", issuer=c["inter"], ca=False)
    c["old"] = m.cert("old", "/CN=Old CA", not_before=OLD[0], not_after=OLD[1])
    c["future"] = m.cert("future", "/CN=Future CA", not_before=FUTURE[0], not_after=FUTURE[1])
    c["v1"] = m.cert("v1", "/CN=Version 1 CA", v1=True)
    c["self"] = m.cert("self", "/CN=localhost", ca=False)  # a server certificate, self-signed
    c["utf8"] = m.cert("utf8", "/C=CH/O=Öko Org/CN=Zürich CA")
    return c


def pem(*certs):
    return b"".join(c.pem.read_bytes() for c in certs)


# --- node.x509 --------------------------------------------------------------------------------
_PARSE = """
import json, sys
from node import x509
for path in sys.argv[1:]:
    c = x509.parse(open(path, "rb").read())
    print(json.dumps([c.subject, c.issuer, c.self_issued, c.ca, c.not_before, c.not_after]))
"""


def _openssl_view(path):
    """subject, issuer and dates as OpenSSL decodes them (CPython's ssl module)."""
    d = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]

    def name(rdns):
        short = {"commonName": "CN", "organizationName": "O", "countryName": "C"}
        return ", ".join(f"{short[k]}={v}" for rdn in rdns for k, v in rdn)

    return [name(d["subject"]), name(d["issuer"]), ssl.cert_time_to_seconds(d["notBefore"]),
            ssl.cert_time_to_seconds(d["notAfter"])]


def test_x509_reads_what_openssl_wrote(mpy_each, made):
    kinds = ("right", "server", "inter", "old", "future", "v1", "self", "utf8")
    ca = {"right": True, "server": False, "inter": True, "old": True, "future": True,
          "v1": True, "self": False, "utf8": True}  # v1: mbedTLS trusts it as a root
    lines = mpy_each(_PARSE, *(made[k].der for k in kinds)).stdout.splitlines()
    for kind, line in zip(kinds, lines):
        got = json.loads(line)
        c = x509.parse(made[kind].der.read_bytes())  # CPython runs the same code
        assert got == [c.subject, c.issuer, c.self_issued, c.ca, c.not_before, c.not_after]
        subject, issuer, not_before, not_after = _openssl_view(made[kind].pem)
        assert got[0] == subject and got[1] == issuer, (kind, got)
        assert got[4:] == [not_before, not_after], (kind, got)
        assert got[2] == (subject == issuer), kind
        assert got[3] == ca[kind], kind
    assert json.loads(lines[-1])[0] == "C=CH, O=Öko Org, CN=Zürich CA"
    # GeneralizedTime (2050 and later) as well as UTCTime
    assert json.loads(lines[kinds.index("future")])[5] == calendar.timegm((2101, 2, 1, 0, 0, 0))


_DATES = """
import sys
from node import x509
for t in sys.argv[1:]:
    print(x509.date(int(t)))
"""


def test_dates_match_cpython_across_leap_years(mpy_each):
    days = [calendar.timegm((y, m, d, 12, 0, 0)) for y in (1950, 1999, 2000, 2024, 2049, 2100)
            for m, d in ((1, 1), (2, 28), (2, 29) if y % 4 == 0 and y != 2100 else (3, 1),
                         (12, 31))]
    days += [0, 86399, 86400, 951782400, 4102444799, 253402300799]  # 9999-12-31T23:59:59Z
    got = mpy_each(_DATES, *days).stdout.split()
    assert got == [datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d") for t in days]
    for t in days:
        when = datetime.fromtimestamp(t, UTC)
        assert x509.days(when.year, when.month, when.day) == t // 86400


_FUZZ = """
import sys
from node import x509
der = open(sys.argv[1], "rb").read()
counts = [0, 0]  # refused, parsed


def check(case):
    try:
        x509.parse(case)
        counts[1] += 1
    except x509.CertError:
        counts[0] += 1


for n in range(len(der)):
    check(der[:n])
for i in range(len(der)):
    for v in (0x00, 0xFF, der[i] ^ 0x80, der[i] ^ 0x01):
        check(der[:i] + bytes([v]) + der[i + 1:])
for case in (der + b"\\x00", b"", b"\\x30", b"\\x30\\x80", b"\\x30\\x84\\xff\\xff\\xff\\xff"):
    check(case)
print(len(der), counts[0], counts[1])
"""


def test_every_damaged_certificate_is_a_cert_error_never_a_crash(mpy_each, made):
    """Every truncation and thousands of corrupted bytes: CertError or a Cert, nothing else
    (an IndexError here would be a crash of the node at boot)."""
    size, refused, parsed = map(int, mpy_each(_FUZZ, made["server"].der).stdout.split())
    assert refused + parsed == size + 4 * size + 5
    assert refused > size  # every truncation, and more
    assert parsed > 0  # a flipped byte in a key or signature leaves a certificate to sort


# --- node.cafile ------------------------------------------------------------------------------
_LOAD = """
import json, ssl, sys
from node import cafile
from node.config import ConfigError
for path, now_s, exact in json.load(open(sys.argv[1])):
    print("== " + path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        print("trusted %d" % cafile.load(ctx, path, now_s, exact))
    except ConfigError as e:
        print("error " + str(e))
"""


def load_all(mpy_run, tmp_path, files, now_s=NOW_S, exact=True):
    """{name: (result line, [log lines])} of cafile.load for each of files {name: bytes}."""
    folder = tmp_path / "files"
    folder.mkdir(exist_ok=True)
    cases = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        cases.append([str(folder / name), now_s, exact])
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    out, result = {}, None
    for line in mpy_run(_LOAD, tmp_path / "cases.json").stdout.splitlines():
        if line.startswith("== "):
            result = out.setdefault(line[3:].rsplit("/", 1)[1], [None, []])
        elif line.startswith(("trusted ", "error ")):
            result[0] = line.replace(str(folder) + "/", "")
        else:  # a log record: "<uptime> mqtt: CA file <path>: ..."
            result[1].append(line.split(" ", 1)[1].replace(str(folder) + "/", ""))
    return out


def test_bundles_chains_and_der_files_trust_every_ca_in_them(mpy_each, made, tmp_path):
    s_client = (b"CONNECTED(00000003)\n"  # what `openssl s_client -showcerts` prints around them
                b"depth=1 O = Right Org, CN = Right Intermediate\n---\nCertificate chain\n"
                b" 0 s:CN = localhost\n   i:O = Right Org, CN = Right Intermediate\n"
                + pem(made["server2"])
                + b" 1 s:O = Right Org, CN = Right Intermediate\n"
                + b"   i:O = Right Org, CN = Right CA\n"
                + pem(made["inter"]) + b"---\nServer certificate\nsubject=CN = localhost\n")
    out = load_all(mpy_each, tmp_path, {
        "bundle.pem": pem(made["other"], made["right"]),
        "chain.pem": pem(made["server"], made["right"]),
        "s_client.txt": s_client,
        "crlf.pem": pem(made["other"], made["right"]).replace(b"\n", b"\r\n"),
        "one.der": made["right"].der.read_bytes(),
        "two.der": made["other"].der.read_bytes() + made["right"].der.read_bytes(),
        "v1.pem": pem(made["v1"]),
        "self.pem": pem(made["self"]),
        "utf8.pem": pem(made["utf8"]),
    })
    assert out["bundle.pem"] == ["trusted 2", [
        'mqtt: CA file bundle.pem: trusting "O=Other Org, CN=Other CA", valid until %s'
        % made["other"].not_after.strftime("%Y-%m-%d"),
        'mqtt: CA file bundle.pem: trusting "O=Right Org, CN=Right CA", valid until %s'
        % made["right"].not_after.strftime("%Y-%m-%d")]]
    result, log = out["chain.pem"]
    assert result == "trusted 1"
    assert log[0] == ('mqtt: CA file chain.pem: skipped certificate 1: "CN=localhost" is a'
                      ' server certificate, not a CA: the CA that signed it is'
                      ' "O=Right Org, CN=Right CA"')
    assert "trusting \"O=Right Org, CN=Right CA\"" in log[1]
    result, log = out["s_client.txt"]
    assert result == "trusted 1" and "skipped certificate 1" in log[0], log
    assert "trusting \"O=Right Org, CN=Right Intermediate\"" in log[1]
    assert out["crlf.pem"][0] == "trusted 2"
    assert out["one.der"][0] == "trusted 1"
    assert out["two.der"][0] == "trusted 2" and "Other CA" in out["two.der"][1][0]
    assert out["v1.pem"][0] == "trusted 1"
    assert out["self.pem"] == ["trusted 1", [
        'mqtt: CA file self.pem: trusting the self-signed server certificate "CN=localhost"'
        ' itself (not a CA: only a broker presenting exactly it is accepted)']]
    assert 'trusting "C=CH, O=Öko Org, CN=Zürich CA"' in out["utf8.pem"][1][0]


def test_files_without_a_usable_ca_are_refused_by_name(mpy_each, made, tmp_path):
    key = made["right"].key.read_bytes()
    out = load_all(mpy_each, tmp_path, {
        "leaf.pem": pem(made["server"]),
        "leaf.der": made["server"].der.read_bytes(),
        "old.pem": pem(made["old"]),
        "future.pem": pem(made["future"]),
        "garbage.pem": b"hello, this is not a certificate\n",
        "binary": bytes(range(1, 256)),
        "empty.pem": b"",
        "key.pem": key,
        "bad-base64.pem": b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        "cut.der": made["right"].der.read_bytes()[:-10],
        "cut.pem": pem(made["right"])[:300] + b"\n-----END CERTIFICATE-----\n",
        "huge.pem": pem(made["right"]) * 40,
    })
    day = made["old"].not_after.strftime("%Y-%m-%d")
    today = datetime.fromtimestamp(NOW_S, UTC).strftime("%Y-%m-%d")
    assert out["leaf.pem"][0] == (
        'error mqtt.ca: leaf.pem has no usable CA certificate: certificate 1: "CN=localhost"'
        ' is a server certificate, not a CA: the CA that signed it is "O=Right Org, CN=Right CA"')
    assert "is a server certificate, not a CA" in out["leaf.der"][0]
    assert out["old.pem"][0] == (
        'error mqtt.ca: old.pem has no usable CA certificate: certificate 1: "CN=Old CA"'
        ' expired on %s (the clock reads %s)' % (day, today))
    assert out["future.pem"][0] == (
        'error mqtt.ca: future.pem has no usable CA certificate: certificate 1: "CN=Future CA"'
        ' is not valid until 2100-01-01 (the clock reads %s)' % today)
    for name in ("garbage.pem", "binary", "empty.pem", "key.pem"):
        assert out[name][0] == "error mqtt.ca: %s is neither a PEM nor a DER certificate" % name
    assert out["bad-base64.pem"][0].startswith(
        "error mqtt.ca: bad-base64.pem has no usable CA certificate: certificate 1: ")
    assert out["cut.der"][0] == ("error mqtt.ca: cut.der has no usable CA certificate:"
                                 " certificate 1: the file ends inside it")
    assert "certificate 1: not an X.509 certificate" in out["cut.pem"][0]
    assert out["huge.pem"][0].startswith("error mqtt.ca: huge.pem is %d bytes, more than the"
                                          " 16384" % len(pem(made["right"]) * 40))
    for name, (_, log) in out.items():
        assert all("trusting" not in line for line in log), (name, log)


def test_a_bundle_keeps_its_good_cas_and_names_the_rest(mpy, made, tmp_path):
    out = load_all(mpy, tmp_path, {
        "mixed.pem": pem(made["server"], made["old"], made["future"], made["right"]),
    })
    result, log = out["mixed.pem"]
    assert result == "trusted 1"
    assert [line.split(": ", 3)[2] for line in log] == [
        "skipped certificate 1", "skipped certificate 2", "skipped certificate 3",
        'trusting "O=Right Org, CN=Right CA", valid until %s'
        % made["right"].not_after.strftime("%Y-%m-%d")], log
    assert '"CN=Old CA" expired on 2020-02-01' in log[1]


def test_dates_are_checked_only_as_far_as_the_clock_is_known(mpy, made, tmp_path):
    files = {"old.pem": pem(made["old"]), "future.pem": pem(made["future"])}
    # No time known (the RTC at 2000, no floor): nothing can be said of either.
    unknown = load_all(mpy, tmp_path, files, now_s=None, exact=False)
    assert unknown["old.pem"][0] == unknown["future.pem"][0] == "trusted 1"
    # Only the floor (a lower bound): past its notAfter is expired for sure; a CA that starts
    # after the floor may well be valid by now.
    floor = load_all(mpy, tmp_path, files, now_s=NOW_S, exact=False)
    assert "expired on 2020-02-01" in floor["old.pem"][0]
    assert floor["future.pem"][0] == "trusted 1"


def test_a_missing_file_is_named(mpy, tmp_path):
    out = mpy(_LOAD.replace("json.load(open(sys.argv[1]))", "[[sys.argv[1], None, False]]"),
              tmp_path / "nope.der").stdout
    assert "error mqtt.ca: cannot read the CA file %s/nope.der (missing?)" % tmp_path in out


# --- the TLS handshake with what was trusted --------------------------------------------------
class TlsServer:
    """A loopback TLS server presenting `chain` (a PEM file: its certificate, then CAs)."""

    def __init__(self, chain, key):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(chain, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"hello")
            except (ssl.SSLError, OSError):
                pass  # the client refused our certificate: its side says why

    def close(self):
        self.sock.close()


_HANDSHAKE = """
import socket, ssl, sys
from node import cafile
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.verify_mode = ssl.CERT_REQUIRED
cafile.load(ctx, sys.argv[1])
sock = socket.socket()
sock.connect(socket.getaddrinfo("127.0.0.1", int(sys.argv[2]))[0][-1])
try:
    tls = ctx.wrap_socket(sock, server_hostname="localhost")
    print("handshake ok", tls.read(5))
except (ValueError, OSError) as e:
    print("handshake refused:", repr(e))
"""


@pytest.mark.parametrize("server,trust,ok", [
    # the bundle: the server's CA second, after another
    ("server", ("other", "right"), True),
    ("server", ("other",), False),  # the same file without it: proof the test can fail
    # a chain saved leaf first, as `openssl s_client -showcerts` shows it (leaf, intermediate)
    ("server2", ("server2", "inter"), True),
    ("server2", ("server2", "other"), False),
])
def test_the_cas_trusted_let_tls_reach_the_server(mpy_each, made, tmp_path, server, trust, ok):
    chain = tmp_path / "chain.pem"
    chain.write_bytes(pem(made[server], made["inter"]) if server == "server2"
                      else pem(made[server]))
    (tmp_path / "ca.pem").write_bytes(pem(*(made[k] for k in trust)))
    srv = TlsServer(chain, made[server].key)
    try:
        out = mpy_each(_HANDSHAKE, tmp_path / "ca.pem", srv.port, timeout=30).stdout
    finally:
        srv.close()
    if ok:
        assert "handshake ok b'hello'" in out, out
    else:
        assert "handshake refused: ValueError" in out and "trusted CA" in out, out


# --- boot-only: dropped after use ---------------------------------------------------------------
_DROP = """
import gc, ssl, sys
from node import config, startup  # noqa: F401 - loaded while the CA is: boot reads the config
import node
gc.collect()
before = gc.mem_free()
bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # what a context costs the heap by itself
gc.collect()
context = before - gc.mem_free()
before = gc.mem_free()
ctx = startup.tls_context({"ca_path": sys.argv[1], "cert_path": None, "key_path": None})
gc.collect()
print("left", [m for m in ("node.cafile", "node.x509") if m in sys.modules or
               hasattr(node, m[5:])])
print("kept", before - gc.mem_free() - context)
"""


def test_the_ca_loader_is_dropped_once_the_context_is_built(mpy_each, made, tmp_path):
    """startup.tls_context imports node.cafile and node.x509 and forgets them: what stays on the
    heap is the context, not the loader's code (about 7 KB on the 32-bit port). A few hundred
    bytes do stay: the names interned while the modules loaded (MicroPython never frees its
    qstr pool; a frozen firmware keeps them in flash)."""
    (tmp_path / "ca.pem").write_bytes(pem(made["other"], made["right"]))
    out = mpy_each(_DROP, tmp_path / "ca.pem", cwd=tmp_path, path=(REPO / "sim" / "board",),
                   heap="1m").stdout
    assert "left []" in out, out
    kept = int(out.split("kept ")[1].split()[0])
    assert kept < 1536, out
