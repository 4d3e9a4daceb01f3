"""A TCP forwarder on loopback that a test can cut: `stop()` closes its port and every connection
through it (a partition as the client sees it: refused, reset), `start()` opens the same port again,
`pause()` only refuses new connections.

Used to cut a control-plane replica off from the API server (its kubeconfig points here), and to steer
which replica an Envoy's first xDS connection goes to (a bootstrap listing one forwarder per replica).
Counts the bytes it forwarded each way. Threads only; stopped by the test that started it. (Unlike
tests/harness/tcp_proxy.py, whose cut is silence until timeouts, this one's cut is a closed port and
reset connections: what a replica sees of an API server it can no longer reach at all.)
"""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.harness.ports import free_port

__all__ = ["TcpForwarder"]


class TcpForwarder:
    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self.sent = 0  # client -> target
        self.received = 0  # target -> client
        self.connections = 0
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._cuts = 0  # stop() calls: a connection accepted before one is cut by it
        self._lock = threading.Lock()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._listener is not None

    def start(self) -> TcpForwarder:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name=f"tcp-proxy-{self.port}", daemon=True).start()
        return self

    def pause(self) -> None:
        """Refuses new connections (its port is closed); those open go on."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def stop(self) -> None:
        """Refuses new connections and cuts every open one."""
        self.pause()
        with self._lock:
            self._cuts += 1
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            cuts = self._cuts
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._cuts != cuts:  # cut while it was being connected
                    client.close()
                    upstream.close()
                    continue
                self._open.update((client, upstream))
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, outbound: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
                with self._lock:
                    if outbound:
                        self.sent += len(data)
                    else:
                        self.received += len(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._open.discard(source)
                self._open.discard(sink)
            source.close()
