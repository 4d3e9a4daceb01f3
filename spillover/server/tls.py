"""mTLS for the xDS port: the server certificate and the client CA from files, reloaded when they change.

gRPC asks `fetch` for a new certificate configuration before every TLS handshake (dynamic server
credentials), so a rotated certificate is served to the next connection without a restart; connections
already open keep theirs. The files are looked at no more than once per `check_interval` (a reconnect
storm costs one `stat` per file per interval), and a new set is taken only when it is complete and
consistent: the key must match the certificate and the CA must parse (checked with the standard `ssl`
module), read twice to be sure no writer was halfway. Otherwise the last good set stays in use and the
error is logged; the same refused set is not read again (a change of the files is counted once, taken or
refused, however often it is looked at). Kubernetes Secret volumes swap a symlink atomically, which `stat` (following links) sees.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from spillover.server.bounds import LogThrottle

__all__ = ["CertificateReloader", "TlsError", "TlsFiles"]

log = logging.getLogger(__name__)


class TlsError(ValueError):
    """The certificate files are missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate chain and key, and the CA that signs client certificates."""

    cert: Path
    key: Path
    client_ca: Path


@dataclass(frozen=True)
class _Loaded:
    cert: bytes
    key: bytes
    client_ca: bytes


_Stamp = tuple[tuple[int, int, int, int, int] | None, ...]


def _stamp(files: TlsFiles) -> _Stamp:
    # ctime too: a file made readable (chmod) changes nothing else, and a refused set is looked at again
    # only when its stamp changes.
    stamps: list[tuple[int, int, int, int, int] | None] = []
    for path in (files.cert, files.key, files.client_ca):
        try:
            stat = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size, stat.st_ino, stat.st_dev))
    return tuple(stamps)


def _read(files: TlsFiles) -> _Loaded:
    parts = []
    for label, path in (("certificate", files.cert), ("key", files.key), ("client CA", files.client_ca)):
        try:
            parts.append(path.read_bytes())
        except OSError as error:
            raise TlsError(f"{label} {path}: {error.strerror or error}") from None
    return _Loaded(*parts)


def load_consistent(files: TlsFiles) -> _Loaded:
    """The three files, checked: the key matches the certificate, the CA bundle parses."""
    first = _read(files)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(files.cert, files.key)
    except (ssl.SSLError, OSError) as error:
        raise TlsError(f"certificate {files.cert} and key {files.key} do not form a pair: {error}") from None
    try:
        context.load_verify_locations(cadata=first.client_ca.decode("ascii", errors="replace"))
    except (ssl.SSLError, ValueError) as error:
        raise TlsError(f"client CA {files.client_ca}: not a PEM certificate bundle ({error})") from None
    if _read(files) != first:
        raise TlsError("the certificate files changed while they were read")
    return first


class CertificateReloader:
    """Dynamic server credentials over `files`. `on_reload(ok)` is told about every reload attempt."""

    def __init__(
        self,
        files: TlsFiles,
        check_interval: float = 1.0,
        on_reload: Callable[[bool], None] = lambda ok: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.files = files
        self.check_interval = check_interval
        self.on_reload = on_reload
        self.clock = clock
        self._lock = threading.Lock()
        self._errors = LogThrottle(burst=3, period=60.0)
        self._stamp = _stamp(files)
        self._refused: _Stamp | None = None
        # Fails at start: a server that cannot serve TLS must not come up at all.
        self._loaded = load_consistent(files)
        self._checked_at = clock()
        self.loaded_at = time.time()
        self.reloads = 0
        self.last_error = ""

    def _configuration(self, loaded: _Loaded) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(loaded.key, loaded.cert)], root_certificates=loaded.client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(self._loaded), self.fetch, require_client_authentication=True
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's certificate configuration fetcher: a new configuration when the files changed, else None."""
        now = self.clock()
        with self._lock:
            if now - self._checked_at < self.check_interval:
                return None
            self._checked_at = now
            stamp = _stamp(self.files)
            if stamp == self._stamp or stamp == self._refused:
                return None
            try:
                loaded = load_consistent(self.files)
            except TlsError as error:
                self._refused = stamp
                self.last_error = str(error)
                allowed, suppressed = self._errors.allow("reload")
                if allowed:
                    more = f" ({suppressed} similar errors not shown)" if suppressed else ""
                    log.error("xDS TLS: keeping the current certificate: %s%s", error, more)
                self.on_reload(False)
                return None
            self._stamp, self._loaded, self._refused = stamp, loaded, None
            self.loaded_at = time.time()
            self.reloads += 1
            self.last_error = ""
        log.info("xDS TLS: new certificate files loaded from %s; new connections use them", self.files.cert.parent)
        self.on_reload(True)
        return self._configuration(loaded)
