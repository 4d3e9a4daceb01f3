"""The peer channel between replicas: what Kubernetes and Prometheus cannot carry.

Every evaluation round (0.5 s) the leader needs what every replica's Envoys report: their stats
(metrics of source `envoy`) and their view of endpoint health. A write to the API server per round is
what the fleet must never do, Prometheus (when there is one) scrapes every 15-30 s and would add its
scrape interval to every reaction, and the leader reading every Envoy of the fleet itself would put
every replica's scraping (thousands of `/stats` documents per round) on one process. So each replica
reads its own Envoys, as it always did, and sums each metric up (`EnvoyPartial`: a few numbers per
metric, not one per Envoy); the leader asks each replica for those once per round over HTTP. The other
question asked here: a replica that lost the API server asks the others whether *they* still are
members of the fleet (see `fleet.py`: whether to hand its Envoys over).

Authenticated both ways by a shared token (a Secret's file, `--fleet-token-file`) that never crosses
the network: a request carries an HMAC-SHA256 of its method, path and time under the token (refused
when more than a minute off, or under no token the server knows), and the answer an HMAC of the
request's time and the answer's body (a client takes no answer it cannot verify: nobody without the
token can feed the leader readings). The file's first line is the token signed with, any of its lines
is accepted, so a token is rotated without a restart (add the new one, roll it out, drop the old one);
the file is read again when it changes. Bounded: GET only, no request body, 8 requests at a time (the
rest get 503 at once), answers of at most `max_bytes` read.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

log = logging.getLogger(__name__)

__all__ = ["INPUTS_PATH", "MEMBER_PATH", "PeerClient", "PeerServer", "PeerToken"]

INPUTS_PATH = "/fleet/v1/inputs"
MEMBER_PATH = "/fleet/v1/member"
_MAX_TOKEN_FILE = 16 << 10
_SCHEME = "SpilloverFleet"
_SIGNATURE_HEADER = "X-Spillover-Fleet-Signature"
_SKEW = 60.0  # seconds a request's time may be off (the nodes' clocks)


class PeerToken:
    """The shared tokens of `path` (one a line); the first is the one this replica sends."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.clock = clock
        self._tokens: list[bytes] = []
        self._stamp: tuple[int, int] | None = None
        self._checked = -1e9
        self.problem = ""
        self._read()
        if not self._tokens:
            raise ValueError(f"--fleet-token-file {self.path}: {self.problem or 'holds no token'}")

    def _read(self) -> None:
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return
            if stat.st_size > _MAX_TOKEN_FILE:
                raise OSError(f"over {_MAX_TOKEN_FILE} bytes")
            text = self.path.read_text()
        except OSError as exc:
            self.problem = f"cannot read it ({getattr(exc, 'strerror', None) or exc})"
            log.warning("fleet token file %s: %s; keeping the tokens read before", self.path, self.problem)
            return
        tokens = [line.strip().encode() for line in text.splitlines() if line.strip()]
        tokens = [t for t in tokens if len(t) >= 16]
        self._stamp = stamp
        if not tokens:
            self.problem = "holds no token of 16 characters or more"
            return
        self.problem = ""
        self._tokens = tokens

    def _fresh(self) -> list[bytes]:
        if self.clock() - self._checked >= 1.0:
            self._checked = self.clock()
            self._read()
        return self._tokens

    def sign(self, method: str, path: str, at: float | None = None) -> tuple[str, str]:
        """(the Authorization header of a request, its time as signed)."""
        stamp = f"{time.time() if at is None else at:.3f}"
        signature = _mac(self._fresh()[0], f"{method}\n{path}\n{stamp}")
        return f"{_SCHEME} ts={stamp},sig={signature}", stamp

    def verify(self, header: str, method: str, path: str, now: float | None = None) -> tuple[bytes, str] | None:
        """The token a request was signed with, and its time; None when it was signed with none of ours."""
        scheme, _, rest = header.partition(" ")
        fields = dict(part.partition("=")[::2] for part in rest.split(",") if "=" in part)
        stamp, signature = fields.get("ts", ""), fields.get("sig", "")
        try:
            at = float(stamp)
        except ValueError:
            return None
        if scheme != _SCHEME or not signature or abs((time.time() if now is None else now) - at) > _SKEW:
            return None
        found = None
        # Every token is compared (compare_digest): the time taken tells nothing about which matched.
        for token in self._fresh():
            if hmac.compare_digest(signature, _mac(token, f"{method}\n{path}\n{stamp}")) and found is None:
                found = token
        return None if found is None else (found, stamp)

    def answer_signature(self, token: bytes, stamp: str, body: bytes) -> str:
        return _mac(token, f"{stamp}\n{hashlib.sha256(body).hexdigest()}")

    def answer_verified(self, signature: str, stamp: str, body: bytes) -> bool:
        digest = hashlib.sha256(body).hexdigest()
        return sum(hmac.compare_digest(signature, _mac(token, f"{stamp}\n{digest}")) for token in self._fresh()) > 0


def _mac(token: bytes, text: str) -> str:
    return hmac.new(token, text.encode(), hashlib.sha256).hexdigest()


class PeerServer:
    """The peer endpoint: `GET /fleet/v1/inputs` and `GET /fleet/v1/member`, with the shared token."""

    def __init__(
        self,
        token: PeerToken,
        inputs: Callable[[], Mapping[str, Any]],
        member: Callable[[], Mapping[str, Any]],
        concurrency: int = 8,
    ) -> None:
        self.token = token
        self._inputs = inputs
        self._member = member
        self._slots = asyncio.Semaphore(concurrency)
        self.refused = 0
        self.app = web.Application(middlewares=[self._guard], client_max_size=1024)
        self.app.add_routes([web.get(INPUTS_PATH, self._serve_inputs), web.get(MEMBER_PATH, self._serve_member)])
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        verified = self.token.verify(request.headers.get("Authorization", ""), request.method, request.path)
        if verified is None:
            self.refused += 1
            return web.json_response({"error": "a request signed with the fleet's token is required"}, status=401,
                                     headers={"WWW-Authenticate": f'{_SCHEME} realm="spillover-fleet"'})
        if self._slots.locked():
            return web.json_response({"error": "busy"}, status=503)
        async with self._slots:
            response: web.Response = await handler(request)
        token, stamp = verified
        body = bytes(response.body) if isinstance(response.body, bytes | bytearray) else b""
        response.headers[_SIGNATURE_HEADER] = self.token.answer_signature(token, stamp, body)
        return response

    async def _serve_inputs(self, request: web.Request) -> web.Response:
        return _json(self._inputs())

    async def _serve_member(self, request: web.Request) -> web.Response:
        return _json(self._member())

    async def start(self, host: str, port: int) -> int:
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("fleet peer endpoint listening on %s:%s", host, self.port)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _json(payload: Mapping[str, Any]) -> web.Response:
    return web.Response(body=json.dumps(payload, separators=(",", ":")).encode(), content_type="application/json")


class PeerClient:
    def __init__(self, token: PeerToken, timeout: float = 1.0, max_bytes: int = 8 << 20) -> None:
        self.token = token
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None

    async def get(self, base: str, path: str, timeout: float | None = None) -> dict[str, Any]:
        """The JSON object a peer answers; raises (OSError, ValueError, aiohttp errors) otherwise."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=30), raise_for_status=False
            )
        authorization, stamp = self.token.sign("GET", path)
        async with self._session.get(
            base.rstrip("/") + path, headers={"Authorization": authorization},
            timeout=aiohttp.ClientTimeout(total=timeout or self.timeout), allow_redirects=False,
        ) as response:
            if response.status != 200:
                raise ValueError(f"{base}{path} answered HTTP {response.status}")
            body = await response.content.read(self.max_bytes + 1)
            if len(body) > self.max_bytes:
                raise ValueError(f"{base}{path}: answer over {self.max_bytes} bytes")
            signature = response.headers.get(_SIGNATURE_HEADER, "")
        if not self.token.answer_verified(signature, stamp, body):
            raise ValueError(f"{base}{path}: the answer is not signed with the fleet's token")
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError(f"{base}{path}: not a JSON object")
        return document

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
