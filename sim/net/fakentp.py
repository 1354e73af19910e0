"""An SNTP server on loopback that answers as it is told: like an NTP server, or like a broken one.

    server = FakeNtp(lambda request: server_answer(1800000000))   # server.port, server.requests
    ...
    server.close()
"""

import socket
import struct
import threading

NTP_TO_UNIX_S = 2208988800


class FakeNtp:
    """A UDP server on loopback answering every request with `make(request) -> bytes | None`."""

    def __init__(self, make):
        self.make = make
        self.requests = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            self.requests += 1
            answer = self.make(data)
            if answer is not None:
                self.sock.sendto(answer, addr)

    def close(self):
        self._stop = True
        self._thread.join()
        self.sock.close()


def server_answer(unix_s, mode=4, stratum=2, leap=0, size=48):
    """A server packet saying `unix_s`; the other fields as given, to make it untrustworthy."""
    packet = bytearray(48)
    packet[0] = leap << 6 | 4 << 3 | mode
    packet[1] = stratum
    struct.pack_into("!II", packet, 40, (unix_s + NTP_TO_UNIX_S) & 0xFFFFFFFF, 0)
    return bytes(packet[:size])
