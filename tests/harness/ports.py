"""Free loopback ports for servers started by tests."""

from __future__ import annotations

import socket

__all__ = ["free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    The kernel hands out ephemeral ports round-robin, so a port just released is unlikely to be
    handed out again before the caller binds it; tests that race here retry on bind errors.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
