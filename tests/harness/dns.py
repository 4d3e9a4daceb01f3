"""A tiny authoritative DNS server for tests (UDP, RFC 1035 wire format): the names the test gives, on a free
loopback port, for an Envoy whose DNS resolver points at it. A and AAAA questions only: a name without
the asked family gets an empty answer (NOERROR), an unknown name NXDOMAIN, as a real server does."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Mapping

from tests.harness.ports import free_port

__all__ = ["DnsServer"]

_A, _AAAA = 1, 28


def _name(packet: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    while True:
        length = packet[offset]
        offset += 1
        if length == 0:
            return ".".join(labels), offset
        if length & 0xC0:  # a question never needs compression; refuse it rather than loop
            raise ValueError("compressed name in a question")
        labels.append(packet[offset:offset + length].decode("ascii", "replace"))
        offset += length


class DnsServer:
    """``DnsServer({"my-model-on-another-cluster": "198.51.100.20"}).start()``; ``queries`` records
    (name, type) of every question."""

    def __init__(self, records: Mapping[str, str], ttl: int = 5) -> None:
        self.records = {k.lower().rstrip("."): v for k, v in records.items()}
        self.ttl = ttl
        self.port = 0
        self.queries: list[tuple[str, int]] = []
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> DnsServer:
        self.port = free_port()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._serve, name="dns", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _serve(self) -> None:
        sock = self._sock
        while sock is not None and sock.fileno() >= 0:
            try:
                packet, peer = sock.recvfrom(512)
            except OSError:
                return
            try:
                answer = self._answer(packet)
            except (ValueError, IndexError, struct.error):
                continue  # not a question we understand: no answer, as for a lost packet
            try:
                sock.sendto(answer, peer)
            except OSError:
                return

    def _answer(self, packet: bytes) -> bytes:
        ident, flags, qdcount = struct.unpack("!HHH", packet[:6])
        if qdcount != 1:
            raise ValueError("one question per query")
        name, end = _name(packet, 12)
        qtype, qclass = struct.unpack("!HH", packet[end:end + 4])
        question = packet[12:end + 4]
        self.queries.append((name, qtype))
        address = self.records.get(name.lower().rstrip("."))
        rd = flags & 0x0100
        if address is None:
            return struct.pack("!HHHHHH", ident, 0x8400 | rd | 3, 1, 0, 0, 0) + question  # NXDOMAIN
        if qtype != _A or qclass != 1:
            return struct.pack("!HHHHHH", ident, 0x8400 | rd, 1, 0, 0, 0) + question  # no such family
        record = struct.pack("!HHHIH", 0xC00C, _A, 1, self.ttl, 4) + socket.inet_aton(address)
        return struct.pack("!HHHHHH", ident, 0x8400 | rd, 1, 1, 0, 0) + question + record
