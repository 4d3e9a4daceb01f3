"""Real HTTP(S)/1.1 upstream servers that echo what they received, for tests that route through Envoy."""

from __future__ import annotations

import contextlib
import errno
import json
import re
import socket
import ssl
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.harness.pki import write_ca_and_server_cert
from tests.harness.ports import free_port

__all__ = ["HttpUpstream", "HttpsUpstream", "make_self_signed_ca_and_cert"]

# Per-request overrides, so one upstream can answer a single request slowly or with an error
# (retry and outlier-detection tests) without touching the shared settings.
STATUS_HEADER = "x-upstream-status"
DELAY_HEADER = "x-upstream-delay-s"


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 so Envoy's connection pool can keep connections alive, as real backends do.
    protocol_version = "HTTP/1.1"
    # Without it Nagle + delayed ACKs cost ~40 ms per request on a kept-alive connection.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # Trailers end with an empty line.
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        upstream = self.server.upstream
        body = self._read_body()
        headers: dict[str, str] = {}
        for key, value in self.headers.items():
            key = key.lower()
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        record: dict[str, Any] = {
            "upstream": upstream.name,
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "body": body.decode("utf-8", errors="replace"),
        }
        if isinstance(self.connection, ssl.SSLSocket):
            record["sni"] = getattr(self.connection, "spillover_sni", None)
        status, delay = upstream._settings()
        if STATUS_HEADER in headers:
            status = int(headers[STATUS_HEADER])
        if DELAY_HEADER in headers:
            delay = float(headers[DELAY_HEADER])
        upstream._record(record)
        # Waiting on the stop event rather than sleeping lets stop() cut a slow answer short.
        if delay > 0 and upstream._stopping.wait(delay):
            self.close_connection = True
            return
        payload = json.dumps(record).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("x-upstream-name", upstream.name)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Keep-alive connections from Envoy idle for an hour; joining their threads would hang stop().
    block_on_close = False
    allow_reuse_address = True
    # socketserver listens with a backlog of 5: when a route switches to a new cluster, Envoy opens
    # a burst of connections at once, the kernel drops the SYNs past the backlog and retries them a
    # second later, and Envoy's 1 s connect timeout answers 503 UF. Real servers listen with far more.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], upstream: HttpUpstream, tls: ssl.SSLContext | None) -> None:
        self.upstream = upstream
        self.tls = tls
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)

    def close_all_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        # The handshake runs here, in the connection's own thread, so a slow client cannot stall
        # the accept loop.
        try:
            tls_sock = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        try:
            super().finish_request(tls_sock, client_address)
        finally:
            tls_sock.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Connections reset by Envoy or by stop() are expected; a traceback per reset is noise.
        pass


class HttpUpstream:
    """An HTTP/1.1 echo server on 127.0.0.1; every answer and record is the request as seen here."""

    scheme = "http"

    def __init__(
        self, name: str, delay_s: float = 0.0, status: int = 200, *, port: int = 0, max_recorded: int = 1000,
        host: str = "127.0.0.1",
    ) -> None:
        self.name = name
        # Another address only inside a private network namespace (tests/harness/netns.py).
        self.host = host
        self._lock = threading.Lock()
        self._delay_s = float(delay_s)
        self._status = int(status)
        self._requests: deque[dict[str, Any]] = deque(maxlen=max_recorded)
        self._count = 0
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # 0 until started; kept across stop() so a restart comes back on the same port.
        self.port = port

    # settings changeable while serving ---------------------------------------------------------

    @property
    def delay_s(self) -> float:
        with self._lock:
            return self._delay_s

    @delay_s.setter
    def delay_s(self, value: float) -> None:
        with self._lock:
            self._delay_s = float(value)

    @property
    def status(self) -> int:
        with self._lock:
            return self._status

    @status.setter
    def status(self, value: int) -> None:
        with self._lock:
            self._status = int(value)

    def _settings(self) -> tuple[int, float]:
        with self._lock:
            return self._status, self._delay_s

    # recorded traffic --------------------------------------------------------------------------

    def _record(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._count += 1
            self._requests.append(record)

    @property
    def request_count(self) -> int:
        with self._lock:
            return self._count

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._count = 0
            self._requests.clear()

    # lifecycle -----------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def _bind(self, tls: ssl.SSLContext | None) -> _Server:
        if self.port or self.host != "127.0.0.1":
            return _Server((self.host, self.port), self, tls)
        # Not bind(0): the kernel may hand out a port that free_port() has just given a server that binds
        # it later (a listener in an Envoy's config), which then fails, or serves this upstream's answers
        # in its place (seen: test_scoped_routes). free_port() doesn't hand its ports out again soon.
        for _ in range(8):
            try:
                return _Server((self.host, free_port()), self, tls)
            except OSError as error:
                if error.errno != errno.EADDRINUSE:
                    raise
        raise RuntimeError(f"upstream {self.name}: no free port after 8 tries")

    def _tls_context(self) -> ssl.SSLContext | None:
        return None

    def start(self) -> HttpUpstream:
        if self._server is not None:
            raise RuntimeError(f"upstream {self.name} is already running on {self.address}")
        self._stopping.clear()
        self._server = self._bind(self._tls_context())
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"upstream-{self.name}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, cut open connections (Envoy must see the backend go away); idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.close_all_connections()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def is_running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> HttpUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, address={self.address!r})"


class HttpsUpstream(HttpUpstream):
    """HttpUpstream behind TLS; each record also carries the SNI the client sent (``sni``)."""

    scheme = "https"

    def __init__(
        self,
        name: str,
        cert_path: str | Path,
        key_path: str | Path,
        delay_s: float = 0.0,
        status: int = 200,
        *,
        port: int = 0,
        max_recorded: int = 1000,
    ) -> None:
        super().__init__(name, delay_s=delay_s, status=status, port=port, max_recorded=max_recorded)
        self.cert_path = Path(cert_path)
        self.key_path = Path(key_path)

    def _tls_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        ctx.set_alpn_protocols(["http/1.1"])

        def remember_sni(sock: Any, server_name: str | None, _ctx: ssl.SSLContext) -> None:
            sock.spillover_sni = server_name

        ctx.sni_callback = remember_sni
        return ctx


def make_self_signed_ca_and_cert(tmpdir: str | Path, hostname: str) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for ``hostname`` signed by it.

    Returns ``(ca_pem_path, cert_path, key_path)``. The certificate's SAN holds exactly
    ``hostname`` (as an IP SAN if it is an IP address), so SAN/SNI verification can be tested.
    """
    tmpdir = Path(tmpdir)
    tmpdir.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", hostname) or "host"
    ca_path, cert_path, key_path = (
        tmpdir / f"{stem}-ca.pem",
        tmpdir / f"{stem}-cert.pem",
        tmpdir / f"{stem}-key.pem",
    )
    write_ca_and_server_cert(
        ca_path, cert_path, key_path, [hostname], hostname, f"spillover test CA for {hostname}"
    )
    return ca_path, cert_path, key_path



