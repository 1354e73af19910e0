"""ssl for the simulated board: the unix port's own ssl, with the ESP32's handshake cost.

A TLS handshake on the ESP32 spends about a second of CPU in mbedTLS's software P-256 (ECDHE,
the server's signature), inside one blocking call, with every asyncio task stopped. The host
does it in a few ms, so an app that forgets the cost would pass here and stall on the board.
SIM_TLS_MS (default 1000; 0: none) is spent, blocking, once per handshake: inside wrap_socket()
when it does the handshake, else in the write() or read that completes it (or fails it with a
TLS error after the server's certificate came). A context holding a client certificate
(load_cert_chain) also signs the handshake with its key (CertificateVerify): SIM_TLS_CERT_MS
more (default 100), on a refusal too, since a broker turns the certificate down only after the
signature, and closes the connection then (an OSError here). Everything else is the real
module's.
"""

import io
import sys
import time

import _simenv

_me = sys.modules["ssl"]  # this module, while it runs
_path = sys.path
sys.path = (".frozen",)  # the unix port's ssl is frozen; this file shadows it
try:
    del sys.modules["ssl"]
    import ssl as _real
    from ssl import *  # noqa: F403
finally:
    sys.path = _path
    sys.modules["ssl"] = _me
del _path, _me

import select  # noqa: E402

from micropython import const  # noqa: E402

_MP_STREAM_POLL = const(3)
_MP_STREAM_GET_FILENO = const(10)
_EINVAL = const(22)
_costs = []


def _check_env():
    """(SIM_TLS_MS, SIM_TLS_CERT_MS), read once; _firmware asks first, so that a bad value is
    reported before the app runs. The second is a P-256 signature with the node's key: mbedTLS
    on the host spends about a tenth of a handshake's CPU on it (docs/ARCHITECTURE.md)."""
    if not _costs:
        for name, default in (("SIM_TLS_MS", "1000"), ("SIM_TLS_CERT_MS", "100")):
            text = _simenv.env(name, default)
            try:
                ms = int(text)
                if ms < 0:
                    raise ValueError
            except ValueError:
                _simenv.config_error(name, "%r is not a number of milliseconds, like %s"
                                     % (text, default))
            _costs.append(ms)
    return _costs


def _spend(why, client_cert):
    ms, cert_ms = _check_env()
    if client_cert:
        ms += cert_ms
    if ms:
        t0 = time.ticks_ms()
        time.sleep_ms(ms)  # blocking, as the board's mbedTLS computation is
        _simenv.say("TLS handshake %s: %d ms of blocking CPU, as the ESP32's P-256 in software "
                    "(SIM_TLS_MS%s)" % (why, time.ticks_diff(time.ticks_ms(), t0),
                                        " + SIM_TLS_CERT_MS" if client_cert else ""))


class _Handshaking(io.IOBase):
    """The TLS socket until its handshake is over: the call that completes it blocks."""

    def __init__(self, tls, sock, client_cert):
        self._tls = tls
        self._fd = sock.fileno() if hasattr(sock, "fileno") else -1
        self._client_cert = client_cert
        self._done = False
        self._poller = None

    def _call(self, method, args):
        try:
            result = method(*args)
        except (ValueError, OSError) as e:
            # ValueError: the server's certificate was computed on, then refused. An OSError
            # costs the handshake only with a client certificate: the broker that closes the
            # connection then has turned it down, after the node's whole flight.
            if not self._done and (isinstance(e, ValueError) or self._client_cert):
                self._done = True
                _spend("failed", self._client_cert)
            raise e
        if result is not None and not self._done:
            self._done = True
            _spend("done", self._client_cert)
        return result

    def write(self, *args):
        return self._call(self._tls.write, args)

    def readinto(self, *args):
        return self._call(self._tls.readinto, args)

    def read(self, *args):
        return self._call(self._tls.read, args)

    def readline(self, *args):
        return self._call(self._tls.readline, args)

    def setblocking(self, flag):
        return self._tls.setblocking(flag)

    def close(self):
        return self._tls.close()

    def ioctl(self, req, arg):
        # The unix port's poll asks for the file descriptor first, as it does of the real TLS
        # socket (which hands over its socket's): then it polls that, as without this wrapper.
        # Otherwise only poll is answered, from the real TLS socket.
        if req == _MP_STREAM_GET_FILENO and self._fd >= 0:
            return self._fd
        if req != _MP_STREAM_POLL:
            return -_EINVAL
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self._tls, arg)
        else:
            self._poller.modify(self._tls, arg)
        ready = 0
        for entry in self._poller.ipoll(0):
            ready |= entry[1]
        return ready

    def __getattr__(self, name):
        return getattr(self._tls, name)


class SSLContext(_real.SSLContext):
    _client_cert = False

    def load_cert_chain(self, certfile, keyfile):
        super().load_cert_chain(certfile, keyfile)
        self._client_cert = True

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True,
                    server_hostname=None):
        try:
            tls = super().wrap_socket(sock, server_side=server_side,
                                      do_handshake_on_connect=do_handshake_on_connect,
                                      server_hostname=server_hostname)
        except (ValueError, OSError) as e:
            if do_handshake_on_connect and (isinstance(e, ValueError) or self._client_cert):
                _spend("failed", self._client_cert)
            raise e
        if do_handshake_on_connect:
            _spend("done", self._client_cert)
            return tls
        return _Handshaking(tls, sock, self._client_cert)


def wrap_socket(sock, server_side=False, key=None, cert=None, cert_reqs=CERT_NONE,  # noqa: F405
                cadata=None, server_hostname=None, do_handshake=True):
    # The frozen module's function, on this module's SSLContext.
    con = SSLContext(PROTOCOL_TLS_SERVER if server_side else PROTOCOL_TLS_CLIENT)  # noqa: F405
    if cert or key:
        con.load_cert_chain(cert, key)
    if cadata:
        con.load_verify_locations(cadata=cadata)
    con.verify_mode = cert_reqs
    return con.wrap_socket(sock, server_side=server_side,
                           do_handshake_on_connect=do_handshake,
                           server_hostname=server_hostname)
