"""Free loopback ports for servers started by tests."""

from __future__ import annotations

import socket
from collections import deque

__all__ = ["free_port"]

# The ports handed out lately. The kernel picks a bind(0) port at random in the ephemeral range, so
# two calls made before either caller binds (a server's xDS and admin ports) can get the same port, and
# the second server to bind then fails with "address already in use". A few thousand is more than any
# test holds at once.
_RECENT: deque[int] = deque(maxlen=4096)
_RECENT_SET: set[int] = set()
_ATTEMPTS = 64


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, and not handed out by a recent call."""
    for _ in range(_ATTEMPTS):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _RECENT_SET:
            if len(_RECENT) == _RECENT.maxlen:
                _RECENT_SET.discard(_RECENT[0])
            _RECENT.append(port)
            _RECENT_SET.add(port)
            return port
    raise RuntimeError(f"no free port on 127.0.0.1 that was not handed out lately, after {_ATTEMPTS} tries")
