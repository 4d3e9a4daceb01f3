"""A private network namespace for one test: a loopback of its own where pod addresses are local.

Kubernetes refuses loopback addresses in EndpointSlices, so a test whose Envoy must really send traffic to
"pods" needs pod addresses that are not 127.0.0.0/8 and still never leave the machine. Inside a fresh
network namespace there is nothing but a loopback interface: the test adds the pod addresses to it
(e.g. 198.51.100.10/32), binds its upstreams there on the pods' real port (80), and nothing it sends can
reach any other network, because there is none.

`private_network(addresses)` moves the calling thread into a new network namespace (unshare), brings its
loopback up with those addresses (ioctl, no `ip` binary needed), and moves the thread back on exit
(setns). Sockets, threads and processes the thread creates meanwhile live in the namespace (and stay
there until they end: stop them inside the block). It needs CAP_SYS_ADMIN, as root in a container has;
`PrivateNetworkUnavailable` says why when it cannot.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import struct
from collections.abc import Iterator, Sequence

__all__ = ["PrivateNetworkUnavailable", "private_network"]

_CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _SIOCSIFADDR, _SIOCSIFNETMASK = 0x8913, 0x8914, 0x8916, 0x891C
_IFF_UP = 0x1


class PrivateNetworkUnavailable(RuntimeError):
    pass


def _ifreq_flags(sock: socket.socket, name: str) -> None:
    request = struct.pack("16sh", name.encode(), 0) + b"\0" * 22
    flags = struct.unpack("16sh", fcntl.ioctl(sock, _SIOCGIFFLAGS, request)[:18])[1]
    fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sh", name.encode(), flags | _IFF_UP) + b"\0" * 22)


def _ifreq_address(sock: socket.socket, name: str, code: int, address: str) -> None:
    sockaddr = struct.pack("HH4s8x", socket.AF_INET, 0, socket.inet_aton(address))
    fcntl.ioctl(sock, code, struct.pack("16s", name.encode()) + sockaddr + b"\0" * 8)


@contextlib.contextmanager
def private_network(addresses: Sequence[str] = ()) -> Iterator[None]:
    """The block runs in a new network namespace whose loopback has 127.0.0.1 and `addresses` (IPv4)."""
    libc = ctypes.CDLL(None, use_errno=True)
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(_CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise PrivateNetworkUnavailable(f"unshare(CLONE_NEWNET): {os.strerror(error)} (needs CAP_SYS_ADMIN)")
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                _ifreq_flags(sock, "lo")
                for i, address in enumerate(addresses):
                    alias = f"lo:{i}"
                    _ifreq_address(sock, alias, _SIOCSIFADDR, address)
                    _ifreq_address(sock, alias, _SIOCSIFNETMASK, "255.255.255.255")
            yield
        finally:
            if libc.setns(original, _CLONE_NEWNET) != 0:
                error = ctypes.get_errno()
                # The thread would stay cut off: nothing after this test could work.
                os.write(2, f"setns back to the original network namespace failed: {os.strerror(error)}\n".encode())
                os._exit(70)
    finally:
        os.close(original)
