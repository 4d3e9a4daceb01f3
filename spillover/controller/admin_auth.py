"""Who may read the admin endpoint's debug views (every proxy's configuration, every model's state).

- On loopback with no credential configured: anyone on the host (the development default).
- Otherwise: a request with `Authorization: Bearer <token>` (the token read from a file, re-read when the
  file changes, compared in constant time), or over HTTPS with a client certificate signed by the admin
  client CA. Exposed without either configured, the debug views are closed (403), never open.

The admin TLS files (certificate, key, client CA) are looked at every few seconds and a consistent new
set is used for the next handshakes, like the xDS port's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from spillover.server.tls import TlsError, TlsFiles, load_consistent

__all__ = ["AdminAuth", "AdminOptions"]

log = logging.getLogger(__name__)

_MAX_TOKEN_BYTES = 4096
_MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class AdminOptions:
    """token_file: a bearer token for the debug views. tls: serve HTTPS; clients presenting a certificate
    from `tls.client_ca` may read the debug views (a certificate is optional: probes and Prometheus
    need none for the open paths)."""

    token_file: Path | None = None
    tls: TlsFiles | None = None
    tls_check_interval: float = 5.0


class _TokenFile:
    """The token, read again whenever the file's stat changes (Kubernetes Secret rotation)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._token: bytes | None = None
        self.problem = ""

    def current(self) -> bytes | None:
        try:
            stat = os.stat(self.path)
        except OSError as error:
            self._stamp, self._token = None, None
            self.problem = f"{self.path}: {error.strerror or error}"
            return None
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp != self._stamp:
            self._stamp = stamp
            self._token, self.problem = self._read()
            if self.problem:
                log.error("admin token: %s; the debug views refuse every token until it is fixed", self.problem)
        return self._token

    def _read(self) -> tuple[bytes | None, str]:
        try:
            with self.path.open("rb") as file:
                data = file.read(_MAX_TOKEN_BYTES + 1)
        except OSError as error:
            return None, f"{self.path}: {error.strerror or error}"
        if len(data) > _MAX_TOKEN_BYTES:
            return None, f"{self.path}: longer than {_MAX_TOKEN_BYTES} bytes"
        token = data.strip()
        if len(token) < _MIN_TOKEN_CHARS:
            return None, f"{self.path}: a token needs at least {_MIN_TOKEN_CHARS} characters"
        return token, ""


def _server_context(files: TlsFiles) -> ssl.SSLContext:
    load_consistent(files)  # a clear error for a mismatched pair or a broken CA, before ssl's own
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.client_ca))
    context.load_cert_chain(files.cert, files.key)
    context.verify_mode = ssl.CERT_OPTIONAL
    return context


class AdminAuth:
    def __init__(self, options: AdminOptions, loopback: bool, registry: CollectorRegistry | None = None) -> None:
        self.options = options
        self.loopback = loopback
        self.token = _TokenFile(options.token_file) if options.token_file is not None else None
        self.ssl_context: ssl.SSLContext | None = None
        self._current: ssl.SSLContext | None = None
        self._stamp: object = None
        self._watcher: asyncio.Task[None] | None = None
        if options.tls is not None:
            try:
                self.ssl_context = self._current = _server_context(options.tls)
            except (TlsError, ssl.SSLError, OSError) as error:
                raise ValueError(f"admin TLS: {error}") from None
            self._stamp = _stat(options.tls)
            # Every handshake switches to the newest context, so rotated files serve the next connection.
            self.ssl_context.sni_callback = self._pick_context
        self.denied = Counter(
            "spillover_admin_denied_total", "Debug view requests refused, by why", ["reason"],
            registry=registry if registry is not None else CollectorRegistry(),
        )

    @property
    def required(self) -> bool:
        return not self.loopback or self.token is not None or self.options.tls is not None

    def describe(self) -> str:
        if not self.required:
            return "open (loopback, no credential configured)"
        ways = []
        if self.token is not None:
            ways.append(f"bearer token from {self.token.path}")
        if self.options.tls is not None:
            ways.append(f"client certificates from {self.options.tls.client_ca}")
        return "need " + " or ".join(ways) if ways else "closed (not on loopback and no credential configured)"

    def check(self, request: web.Request) -> web.Response | None:
        """None when the request may read the debug views, else the response refusing it."""
        if not self.required:
            return None
        if self.options.tls is not None and request.transport is not None and (
            request.transport.get_extra_info("peercert")
        ):
            return None  # verified against the admin client CA during the handshake
        if self.token is None and self.options.tls is None:
            self.denied.labels("not_configured").inc()
            return web.Response(
                status=403,
                text="debug views are closed: the admin endpoint is not on loopback and no admin token or "
                "admin client CA is configured\n",
            )
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        expected = self.token.current() if self.token is not None else None
        if scheme.lower() == "bearer" and expected is not None and hmac.compare_digest(
            presented.strip().encode("utf-8", errors="replace"), expected
        ):
            return None
        self.denied.labels("missing" if not header else "invalid").inc()
        return web.Response(
            status=401,
            text="debug views need a credential (Authorization: Bearer <token>, or a client certificate)\n",
            headers={"WWW-Authenticate": 'Bearer realm="spillover-admin"'},
        )

    def _pick_context(self, sslobj: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        current = self._current
        if current is not None and current is not context:
            sslobj.context = current

    def start(self) -> None:
        if self.options.tls is not None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(self.options.tls))

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None

    async def _watch(self, files: TlsFiles) -> None:
        while True:
            await asyncio.sleep(self.options.tls_check_interval)
            stamp = _stat(files)
            if stamp == self._stamp:
                continue
            try:
                context = _server_context(files)
            except (TlsError, ssl.SSLError, OSError) as error:
                log.error("admin TLS: keeping the current certificate: %s", error)
                continue
            self._stamp, self._current = stamp, context
            log.info("admin TLS: new certificate files loaded; new connections use them")


def _stat(files: TlsFiles) -> object:
    stamps: list[tuple[int, int, int] | None] = []
    for path in (files.cert, files.key, files.client_ca):
        try:
            stat = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((stat.st_mtime_ns, stat.st_size, stat.st_ino))
    return tuple(stamps)
