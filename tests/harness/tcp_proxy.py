"""A TCP proxy on 127.0.0.1 that can cut the network between a client and a server, as a partition does.

``TcpProxy(target_port).start()`` forwards every connection to ``127.0.0.1:target_port`` (TLS passes
through untouched: the server's certificate is valid for 127.0.0.1 whatever the port). ``cut()``
partitions: every open connection is frozen (no byte goes either way any more, nothing is closed, as
when packets are dropped) and new connections are accepted and frozen at once, so a client sees neither
a refusal nor a reset — only silence, until its own timeouts. ``restore()`` forwards new connections
again; the frozen ones stay dead, as after a real partition. ``stop()`` closes everything.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

from tests.harness.ports import free_port

__all__ = ["TcpProxy"]


class _Link:
    def __init__(self, client: socket.socket, server: socket.socket | None, frozen: bool) -> None:
        self.client, self.server = client, server
        self.frozen = frozen
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()
        for sock in (self.client, self.server):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._cut = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.accepted = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for _attempt in range(5):
            try:
                listener.bind(("127.0.0.1", free_port()))
                break
            except OSError:
                continue
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name=f"tcp proxy :{self.port}", daemon=True)
        self._thread.start()
        return self

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            for link in self._links:
                link.frozen = True

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    @property
    def is_cut(self) -> bool:
        return self._cut

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            with self._lock:
                frozen = self._cut
            server = None
            if not frozen:
                try:
                    server = socket.create_connection(self.target, timeout=5)
                except OSError:
                    with contextlib.suppress(OSError):
                        client.close()
                    continue
            link = _Link(client, server, frozen)
            with self._lock:
                self._links.append(link)
            if server is not None:
                threading.Thread(target=self._pump, args=(link,), daemon=True).start()

    def _pump(self, link: _Link) -> None:
        assert link.server is not None
        pairs = {link.client: link.server, link.server: link.client}
        while not link.closed.is_set() and not self._stopping.is_set():
            if link.frozen:
                link.closed.wait(0.1)  # partitioned: bytes neither read nor sent, nothing closed
                continue
            try:
                readable, _, _ = select.select(list(pairs), [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        link.close()
                        return
                    if link.frozen:
                        break  # cut mid-flight: these bytes are lost, as on the wire
                    pairs[sock].sendall(data)
            except OSError:
                link.close()
                return

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()
        if self._thread is not None:
            self._thread.join(timeout=2)
