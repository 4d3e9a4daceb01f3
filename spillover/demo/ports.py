"""The demo's ports: each one checked free before anything starts, so that a busy port ends the demo
with one line saying which port, what it is for and how to choose another.

Why bind instead of trusting the later bind to fail: Envoy's listeners (and gRPC servers) set
SO_REUSEPORT, so a second Envoy binding a port another Envoy already listens on *succeeds* and the
kernel splits new connections between the two. A test socket without SO_REUSEPORT cannot share the
port with anyone listening there, so its bind fails exactly when the port is taken, reuse or not.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class DemoPort:
    role: str  # what listens there, for the message
    host: str
    port: int
    make_variable: str  # `make run NAME=...`
    option: str  # `spillover demo --option ...`


def port_problem(port: DemoPort) -> str | None:
    """Why ``port`` cannot be used (one line), or None when it is free."""
    family = socket.AF_INET6 if ":" in port.host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR: a port whose last connections are in TIME_WAIT is free for a listener.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((port.host, port.port))
        probe.listen(1)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            why = "is in use"
        elif error.errno == errno.EACCES:
            why = "needs privileges"
        elif error.errno == errno.EADDRNOTAVAIL:
            why = "is not on this machine (no such address)"
        else:
            why = f"cannot be bound ({error.strerror})"
        return (
            f"spillover demo: port {port.port} on {port.host} ({port.role}) {why}: stop what holds it or "
            f"choose another port (make run {port.make_variable}=N, or spillover demo {port.option})"
        )
    finally:
        probe.close()
    return None


def first_problem(ports: list[DemoPort]) -> str | None:
    """The first port that is taken, or that two roles share; None when every port is free."""
    seen: dict[int, DemoPort] = {}
    for port in ports:
        if port.port in seen:
            other = seen[port.port]
            return (
                f"spillover demo: port {port.port} is given to both {other.role} ({other.make_variable}) and "
                f"{port.role} ({port.make_variable}): choose two different ports"
            )
        seen[port.port] = port
        problem = port_problem(port)
        if problem is not None:
            return problem
    return None
