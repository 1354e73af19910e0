"""node.clientcert: the node's certificate and key, as users have them, into the TLS context.

Every file kind a user may hold (PEM or DER; PKCS#8, EC and RSA keys; a chain) loads, on the
unix port and the 32-bit 1.27 port; every bad one (missing, garbage, cut, encrypted, swapped,
someone else's key, expired) is a ConfigError naming the file, and no output ever holds a byte
of the key. node.x509.public_key, which tells a key's certificate, is checked against openssl.
"""

import base64
import json
import subprocess
from datetime import datetime, timedelta, timezone

import pytest

from sim.net.pki import openssl_path
from tests.certs import Maker
from tests.conftest import REPO

UTC = timezone.utc
NOW_S = int(datetime.now(UTC).timestamp())
OLD = (datetime(2020, 1, 1, tzinfo=UTC), datetime(2020, 2, 1, tzinfo=UTC))
SOON = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)


def openssl(*args, cwd):
    subprocess.run([openssl_path(), *map(str, args)], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The certificates and keys of the tests, in every form, as {name: bytes}; made once."""
    folder = tmp_path_factory.mktemp("client")
    m = Maker(folder)
    ca = m.cert("ca", "/O=Fleet/CN=Fleet CA")
    node = m.cert("node", "/CN=node-1", issuer=ca, ca=False)
    other = m.cert("other", "/CN=node-2", issuer=ca, ca=False)
    old = m.cert("old", "/CN=node-old", issuer=ca, ca=False, not_before=OLD[0],
                 not_after=OLD[1])
    later = m.cert("later", "/CN=node-later", issuer=ca, ca=False, not_before=SOON,
                   not_after=SOON + timedelta(days=30))
    # The same node key in the forms openssl writes: PKCS#8 (its default), SEC1 ("EC PRIVATE
    # KEY"), DER of both, one without its public point, encrypted ones.
    k = node.key
    openssl("pkey", "-in", k, "-outform", "DER", "-out", "node-key.der", cwd=folder)
    openssl("ec", "-in", k, "-out", "node-sec1.pem", cwd=folder)
    openssl("ec", "-in", k, "-outform", "DER", "-out", "node-sec1.der", cwd=folder)
    openssl("ec", "-in", k, "-no_public", "-outform", "DER", "-out", "node-nopub.der",
            cwd=folder)
    openssl("pkcs8", "-topk8", "-in", k, "-out", "node-enc.pem", "-passout", "pass:x",
            cwd=folder)
    openssl("ec", "-in", k, "-aes128", "-out", "node-legacy-enc.pem", "-passout", "pass:x",
            cwd=folder)
    # An RSA node, as AWS IoT Core issues them (a PKCS#1 "RSA PRIVATE KEY" file).
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out",
            "rsa.key", cwd=folder)
    openssl("rsa", "-in", "rsa.key", "-traditional", "-out", "rsa-pkcs1.pem", cwd=folder)
    openssl("req", "-new", "-key", "rsa.key", "-subj", "/CN=node-rsa", "-out", "rsa.csr",
            cwd=folder)
    openssl("x509", "-req", "-in", "rsa.csr", "-CA", ca.pem, "-CAkey", ca.key, "-days", "2",
            "-set_serial", "77", "-out", "rsa.pem", cwd=folder)
    files = {name: (folder / name).read_bytes() for name in (
        "node-key.der", "node-sec1.pem", "node-sec1.der", "node-nopub.der", "node-enc.pem",
        "node-legacy-enc.pem", "rsa.key", "rsa-pkcs1.pem", "rsa.pem")}
    for name, c in (("ca", ca), ("node", node), ("other", other), ("old", old),
                    ("later", later)):
        files[name + ".pem"] = c.pem.read_bytes()
        files[name + ".der"] = c.der.read_bytes()
        files[name + ".key"] = c.key.read_bytes()
    return files


_LOAD = """
import json, ssl, sys
from node import clientcert
from node.config import ConfigError
for cert, key, now_s, exact in json.load(open(sys.argv[1])):
    print("== " + cert + " " + key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        print("loaded " + clientcert.load(ctx, cert, key, now_s, exact))
    except ConfigError as e:
        print("error " + str(e))
"""


NOW = object()


def load_all(mpy_run, tmp_path, made, pairs, files=None, now_s=NOW, exact=True):
    """{(cert, key): (result line, [log lines])} of clientcert.load for each (cert, key) name
    pair: names of `made` or of `files` {name: bytes} (a name in neither: a missing file).
    now_s NOW: the time of the call (the RSA certificate is valid from when it was made)."""
    if now_s is NOW:
        now_s = int(datetime.now(UTC).timestamp())
    folder = tmp_path / "flash"
    folder.mkdir(exist_ok=True)
    for name, data in {**made, **(files or {})}.items():
        (folder / name).write_bytes(data)
    cases = [[str(folder / c), str(folder / k), now_s, exact] for c, k in pairs]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    stdout = mpy_run(_LOAD, tmp_path / "cases.json").stdout
    out, result = {}, None
    for line in stdout.replace(str(folder) + "/", "").splitlines():
        if line.startswith("== "):
            result = out.setdefault(tuple(line[3:].split(" ")), [None, []])
        elif line.startswith(("loaded ", "error ")):
            result[0] = line
        else:  # a log record: "<uptime> mqtt: client certificate <path>: ..."
            result[1].append(line.split(" ", 1)[1])
    return out, stdout


def key_traces(made):
    """What of the node keys may never be printed: the base64 and hex of each key's DER and
    of its private scalar's bytes."""
    traces = []
    for name in ("node-key.der", "node-sec1.der", "node-nopub.der"):
        der = made[name]
        traces += [base64.b64encode(der).decode()[8:40], der.hex()[16:60]]
    for name in ("node.key", "rsa.key", "rsa-pkcs1.pem", "other.key"):
        body = b"".join(made[name].split(b"\n")[1:3]).decode()  # the start of the base64
        traces.append(body[8:40])
    return traces


def test_every_form_of_a_good_pair_loads(mpy_each, made, tmp_path):
    chain = made["node.pem"] + made["ca.pem"]
    ca_first = made["ca.pem"] + made["other.pem"] + made["node.pem"]
    out, stdout = load_all(mpy_each, tmp_path, made, [
        ("node.pem", "node.key"), ("node.der", "node-key.der"), ("node.pem", "node-sec1.pem"),
        ("node.der", "node-sec1.der"), ("rsa.pem", "rsa-pkcs1.pem"), ("rsa.pem", "rsa.key"),
        ("chain.pem", "node.key"), ("ca-first.pem", "node-key.der"),
        ("two.der", "node-key.der"), ("crlf.pem", "crlf.key"),
    ], files={"chain.pem": chain, "ca-first.pem": ca_first,
              "two.der": made["other.der"] + made["node.der"],
              "crlf.pem": made["node.pem"].replace(b"\n", b"\r\n"),
              "crlf.key": made["node.key"].replace(b"\n", b"\r\n")})
    for pair, (result, _log) in out.items():
        want = "node-rsa" if pair[0] == "rsa.pem" else "node-1"
        assert result == "loaded CN=" + want, (pair, result)
    until = datetime.now(UTC) + timedelta(days=30)
    assert out[("node.pem", "node.key")][1] == [
        'mqtt: client certificate node.pem: "CN=node-1" issued by "O=Fleet, CN=Fleet CA", valid'
        " until %s" % until.strftime("%Y-%m-%d")], out
    # The key tells which of a file's certificates is the node's; the others are named.
    for pair in (("chain.pem", "node.key"), ("ca-first.pem", "node-key.der")):
        log = out[pair][1]
        assert '"CN=node-1"' in log[0] and "other certificate(s) in it are not presented" in log[1]
    assert "the 2 other" in out[("ca-first.pem", "node-key.der")][1][1]
    for trace in key_traces(made):
        assert trace not in stdout


def test_a_key_without_its_public_point_loads_and_says_it_was_not_checked(mpy, made, tmp_path):
    out, _ = load_all(mpy, tmp_path, made, [("node.der", "node-nopub.der")])
    result, log = out[("node.der", "node-nopub.der")]
    assert result == "loaded CN=node-1"
    assert "holds no public key, so whether it is this certificate's is known only at the" \
           " handshake" in log[0]


def test_bad_files_are_config_errors_naming_the_file(mpy_each, made, tmp_path):
    files = {
        "garbage.pem": b"hello, this is not a certificate\n",
        "binary": bytes(range(1, 256)),
        "empty": b"",
        "cut.der": made["node.der"][:-10],
        "cut-key.der": made["node-key.der"][:-5],
        "bad-base64.pem": b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        "bad-base64.key": b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
        "huge.pem": made["node.pem"] * 30,
        "huge.key": made["node.key"] * 20,
        "notcert.pem": (b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(b"\x30\x03\x02\x01"
                        b"\x01") + b"-----END CERTIFICATE-----\n"),
    }
    pairs = [
        ("nope.pem", "node.key"), ("node.pem", "nope.key"),
        ("garbage.pem", "node.key"), ("binary", "node.key"), ("empty", "node.key"),
        ("node.pem", "garbage.pem"), ("node.pem", "binary"), ("node.pem", "empty"),
        ("cut.der", "node.key"), ("node.pem", "cut-key.der"),
        ("bad-base64.pem", "node.key"), ("node.pem", "bad-base64.key"),
        ("node.pem", "other.key"), ("node.pem", "rsa.key"), ("chain.pem", "rsa.key"),
        ("node.pem", "node-enc.pem"), ("node.pem", "node-legacy-enc.pem"),
        ("node.key", "node.pem"), ("node.pem", "node.pem"), ("node.pem", "node.der"),
        ("node.key", "node.key"),
        ("huge.pem", "node.key"), ("node.pem", "huge.key"), ("notcert.pem", "node.key"),
        ("old.pem", "old.key"),
    ]
    files["chain.pem"] = made["node.pem"] + made["ca.pem"]
    out, stdout = load_all(mpy_each, tmp_path, made, pairs, files=files)
    err = {pair: out[pair][0] for pair in pairs}
    assert all(r.startswith("error ") for r in err.values()), err
    assert err[("nope.pem", "node.key")] == (
        "error mqtt.cert: cannot read the certificate file nope.pem (missing?)")
    assert err[("node.pem", "nope.key")] == (
        "error mqtt.key: cannot read the private key file nope.key (missing?)")
    for name in ("garbage.pem", "binary", "empty"):
        assert err[(name, "node.key")] == (
            "error mqtt.cert: %s is neither a PEM nor a DER certificate" % name)
    assert err[("node.pem", "garbage.pem")] == (
        "error mqtt.key: garbage.pem is neither a PEM nor a DER private key")
    assert err[("node.pem", "empty")] == "error mqtt.key: empty is neither a PEM nor a DER" \
                                         " private key"
    assert err[("node.pem", "binary")].startswith(
        "error mqtt.key: binary is neither a PEM nor a DER private key")
    assert err[("cut.der", "node.key")] == (
        "error mqtt.cert: cut.der: certificate 1: the file ends inside it")
    assert err[("node.pem", "cut-key.der")].startswith(
        "error mqtt.key: cut-key.der is not a private key the node can use (")
    assert err[("bad-base64.pem", "node.key")] == (
        "error mqtt.cert: bad-base64.pem: certificate 1: corrupt PEM (not base64)")
    assert err[("node.pem", "bad-base64.key")] == (
        "error mqtt.key: bad-base64.key: corrupt PEM (not base64)")
    # Someone else's key: mbedTLS would take the pair and the broker refuse the handshake.
    assert err[("node.pem", "other.key")] == (
        'error mqtt.key: other.key is not the key of "CN=node-1" in node.pem: they do not'
        " belong together (each node's key and certificate are made as a pair)")
    assert "is not the key of" in err[("node.pem", "rsa.key")]
    assert ('is not the key of "CN=node-1" nor "O=Fleet, CN=Fleet CA" in chain.pem'
            in err[("chain.pem", "rsa.key")])
    for key in ("node-enc.pem", "node-legacy-enc.pem"):
        assert err[("node.pem", key)].startswith(
            "error mqtt.key: %s is encrypted: the node has no passphrase to open it" % key)
    for key in ("node.pem", "node.der"):  # the key is read first: a swap is named by it
        assert err[("node.pem", key)] == ("error mqtt.key: %s holds a certificate, not a private"
                                          " key (mqtt.cert and mqtt.key swapped?)" % key)
    assert err[("node.key", "node.pem")] == err[("node.pem", "node.pem")]
    assert err[("node.key", "node.key")] == (
        "error mqtt.cert: node.key is neither a PEM nor a DER certificate")
    assert err[("huge.pem", "node.key")].startswith(
        "error mqtt.cert: huge.pem is %d bytes, more than the 8192" % len(files["huge.pem"]))
    assert err[("node.pem", "huge.key")].startswith(
        "error mqtt.key: huge.key is %d bytes, more than the 4096" % len(files["huge.key"]))
    assert err[("notcert.pem", "node.key")].startswith(
        "error mqtt.cert: notcert.pem: certificate 1 is not an X.509 certificate (")
    today = datetime.fromtimestamp(NOW_S, UTC).strftime("%Y-%m-%d")
    assert err[("old.pem", "old.key")] == (
        'error mqtt.cert: old.pem: "CN=node-old" expired on 2020-02-01 (the clock reads %s):'
        " the node needs a new one (make provision, or your broker's CA)" % today)
    for pair, (_result, log) in out.items():
        assert not log, (pair, log)  # nothing was loaded, so nothing claims it was
    for trace in key_traces(made):
        assert trace not in stdout


def test_dates_are_checked_as_far_as_the_clock_is_known(mpy, made, tmp_path):
    pairs = [("old.pem", "old.key"), ("later.pem", "later.key")]
    unknown, _ = load_all(mpy, tmp_path, made, pairs, now_s=None, exact=False)
    assert [r for r, _ in unknown.values()] == ["loaded CN=node-old", "loaded CN=node-later"]
    floor, _ = load_all(mpy, tmp_path, made, pairs, exact=False)  # a lower bound only
    assert "expired on 2020-02-01" in floor[pairs[0]][0]
    assert floor[pairs[1]][0] == "loaded CN=node-later"
    exact, _ = load_all(mpy, tmp_path, made, pairs)
    assert exact[pairs[1]][0] == ('error mqtt.cert: later.pem: "CN=node-later" is not valid'
                                  " until %s (the clock reads %s): the node needs a new"
                                  " one (make provision, or your broker's CA)"
                                  % (SOON.strftime("%Y-%m-%d"),
                                     datetime.fromtimestamp(NOW_S, UTC).strftime("%Y-%m-%d")))


_PUBLIC = """
import sys
from node import x509
cert = open(sys.argv[1], "rb").read()
c = x509.parse(cert)
for path in sys.argv[2:]:
    key = x509.public_key(open(path, "rb").read())
    print(path.rsplit("/", 1)[1], None if key is None else key == cert[c.key_start:c.key_end],
          None if key is None else key.hex())
"""


def test_public_key_is_the_one_openssl_puts_in_the_certificate(mpy_each, made, tmp_path):
    for name, data in made.items():
        (tmp_path / name).write_bytes(data)
    # The RSA pair in DER too, as the node reads it: PKCS#8 and PKCS#1.
    openssl("x509", "-in", "rsa.pem", "-outform", "DER", "-out", "rsa.der", cwd=tmp_path)
    openssl("pkey", "-in", "rsa.key", "-outform", "DER", "-out", "rsa-key.der", cwd=tmp_path)
    openssl("rsa", "-in", "rsa.key", "-traditional", "-outform", "DER", "-out", "rsa-pkcs1.der",
            cwd=tmp_path)
    for cert, keys in (("node.der", ("node-key.der", "node-sec1.der", "node-nopub.der")),
                       ("rsa.der", ("rsa-key.der", "rsa-pkcs1.der"))):
        lines = mpy_each(_PUBLIC, tmp_path / cert, *(tmp_path / k for k in keys)).stdout
        # openssl's own view of the public key: the subjectPublicKey ends its SPKI's DER.
        spki = subprocess.run([openssl_path(), "pkey", "-in", str(tmp_path / keys[0]), "-inform",
                               "DER", "-pubout", "-outform", "DER"], capture_output=True,
                              check=True).stdout
        assert len(lines.splitlines()) == len(keys), lines
        for line in lines.splitlines():
            name, same, hexkey = line.split()
            if name == "node-nopub.der":
                assert (same, hexkey) == ("None", "None")
                continue
            assert same == "True", line
            assert spki.endswith(bytes.fromhex(hexkey)), line


# --- boot-only: dropped after use ---------------------------------------------------------------
_DROP = """
import gc, ssl, sys
from node import config, startup  # noqa: F401 - loaded while the files are: boot reads config
import node
mqtt = {"ca_path": sys.argv[1], "cert_path": None, "key_path": None}
if len(sys.argv) > 2:
    mqtt.update(cert_path=sys.argv[2], key_path=sys.argv[3])
gc.collect()
before = gc.mem_free()
bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # what a context costs the heap by itself
gc.collect()
context = before - gc.mem_free()
before = gc.mem_free()
ctx = startup.tls_context(mqtt)
gc.collect()
print("left", [m for m in ("node.cafile", "node.clientcert", "node.x509")
               if m in sys.modules or hasattr(node, m[5:])])
print("kept", before - gc.mem_free() - context)
"""


def test_the_loader_is_dropped_once_the_context_is_built(mpy_each, made, tmp_path):
    """startup.tls_context imports node.clientcert (only with mqtt.cert) and forgets it with
    node.cafile and node.x509: what stays is the context (mbedTLS keeps the certificate and
    key outside the GC heap), and the few hundred bytes of names interned while the modules
    loaded, as for the CA alone (tests/unit/test_cafile.py)."""
    for name in ("ca.pem", "node.pem", "node.key", "node.der", "node-key.der"):
        (tmp_path / name).write_bytes(made[name])
    results = {}
    for label, extra in (("CA only", ()), ("CA + client PEM", ("node.pem", "node.key")),
                         ("CA + client DER", ("node.der", "node-key.der"))):
        out = mpy_each(_DROP, tmp_path / "ca.pem", *(tmp_path / e for e in extra),
                       cwd=tmp_path, path=(REPO / "sim" / "board",), heap="1m").stdout
        assert "left []" in out, out
        results[label] = int(out.split("kept ")[1].split()[0])
        # The names interned while the modules loaded stay (MicroPython never frees its qstr
        # pool; a frozen firmware keeps them in flash): clientcert adds a few dozen.
        assert results[label] < 2048, out
    print("\nheap kept after tls_context:", results)
