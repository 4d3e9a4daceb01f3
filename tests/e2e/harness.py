"""End-to-end pieces: `spillover serve --policies` as a real subprocess, Envoys bootstrapped to it,
a real OAuth2 token endpoint (aiohttp) and a load generator that measures accepted request rates.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.harness.client import Response, request
from tests.harness.polling import wait_until
from tests.harness.ports import free_port

REPO = Path(__file__).resolve().parents[2]
CHAT = "/v1/chat/completions"


class Spillover:
    """`python -m spillover serve --policies DIR` on free loopback ports; stopped by pid (SIGTERM)."""

    def __init__(
        self,
        policies: Path,
        workdir: Path,
        log_level: str = "INFO",
        debounce: float = 0.05,
        extra_args: list[str] | None = None,
    ) -> None:
        self.extra_args = list(extra_args or [])
        self.policies = policies
        self.listen_port = free_port()
        self.xds_port = free_port()
        self.admin_port = free_port()
        self.log_path = workdir / "spillover.log"
        self.log_level = log_level
        self.debounce = debounce
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def xds_address(self) -> str:
        return f"127.0.0.1:{self.xds_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 20.0) -> Spillover:
        command = [
            sys.executable, "-m", "spillover", "--log-level", self.log_level, "serve",
            "--policies", str(self.policies),
            "--listen", f"127.0.0.1:{self.listen_port}",
            "--xds-address", self.xds_address,
            "--admin-address", f"127.0.0.1:{self.admin_port}",
            "--debounce", str(self.debounce),
            *self.extra_args,
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            )
        proc = self.proc

        def ready_or_exited() -> bool:
            return proc.poll() is not None or request("GET", self.admin + "/readyz", timeout=1).status == 200

        wait_until(ready_or_exited, timeout=timeout, message="spillover serve never became ready")
        assert proc.poll() is None, f"spillover serve exited with {proc.returncode}:\n{self.log()}"
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM by pid; returns the exit code (SIGKILL, and -9, if it does not exit in time)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        return proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def get(self, path: str) -> Response:
        return request("GET", self.admin + path, timeout=5)

    def get_json(self, path: str) -> Any:
        response = self.get(path)
        assert response.status == 200, (path, response.status, response.text)
        return response.json()

    def metric(self, name: str) -> float:
        """The sum of every sample of a metric family in /metrics (0 when absent)."""
        total = 0.0
        for line in self.get("/metrics").text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            sample, _, value = line.rpartition(" ")
            if sample.split("{", 1)[0] == name:
                total += float(value)
        return total

    def models(self) -> dict[str, Any]:
        return self.get_json("/debug/models")

    def proxies(self) -> list[dict[str, Any]]:
        return self.get_json("/debug/proxies")["proxies"]


def post_model(
    port: int, model: str | None, headers: dict[str, str] | None = None, path: str = CHAT
) -> Response:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if model is not None:
        body["model"] = model
    hdrs = {"content-type": "application/json", **(headers or {})}
    return request("POST", f"http://127.0.0.1:{port}{path}", body=body, headers=hdrs, timeout=10)


def served_by(response: Response) -> str | None:
    return response.headers.get("x-upstream-name") if response.status == 200 else None


# -- load ----------------------------------------------------------------------------------------------


@dataclass
class Load:
    """What a closed-loop load run saw: (monotonic time, status) of every answer."""

    answers: list[tuple[float, int]] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    samples: dict[int, Response] = field(default_factory=dict)

    @property
    def statuses(self) -> Counter[int]:
        return Counter(status for _, status in self.answers)

    def accepted_rate(self, bucket: float) -> float:
        """Accepted requests per second over the run, minus the bucket that was full at the start."""
        return (self.statuses[200] - bucket) / (self.ended - self.started)


def drive(port: int, model: str, seconds: float, workers: int = 4) -> Load:
    """Offers far more than the limit (each worker sends back to back, one fresh connection per
    request so that SO_REUSEPORT spreads them over every Envoy bound to the port)."""
    load = Load()
    lock = threading.Lock()
    body = json.dumps({"model": model, "messages": []}).encode()
    headers = {"content-type": "application/json"}

    def worker() -> None:
        while True:
            now = time.monotonic()
            if now >= load.ended:
                return
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("POST", CHAT, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
                sample = Response(status, {k.lower(): v for k, v in resp.getheaders()}, data)
            except (OSError, http.client.HTTPException):
                status, sample = -1, None
            finally:
                conn.close()
            with lock:
                load.answers.append((time.monotonic(), status))
                if sample is not None:
                    load.samples.setdefault(status, sample)

    load.started = time.monotonic()
    load.ended = load.started + seconds
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(worker) for _ in range(workers)]:
            future.result()
    load.ended = max(load.ended, max((t for t, _ in load.answers), default=load.ended))
    return load


# -- OAuth2 token endpoint -------------------------------------------------------------------------------


class TokenEndpoint:
    """A real OAuth2 client-credentials token endpoint (aiohttp, own loop thread).

    Accepts HTTP Basic (RFC 6749 2.3.1) or form credentials; anything else gets 401. Counts requests.
    """

    def __init__(self, client_id: str, client_secret: str, expires_in: int = 3600) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.expires_in = expires_in
        self.tokens: list[str] = []
        self.requests = 0
        self.rejected = 0
        self.grant_types: list[str] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="oauth", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def _credentials(self, request: web.Request, form: Any) -> tuple[str, str]:
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return user, password
        return str(form.get("client_id", "")), str(form.get("client_secret", ""))

    async def _token(self, request: web.Request) -> web.Response:
        self.requests += 1
        form = await request.post()
        self.grant_types.append(str(form.get("grant_type", "")))
        client_id, client_secret = self._credentials(request, form)
        if (client_id, client_secret) != (self.client_id, self.client_secret):
            self.rejected += 1
            return web.json_response({"error": "invalid_client"}, status=401)
        if form.get("grant_type") != "client_credentials":
            self.rejected += 1
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        token = "tok-" + secrets.token_hex(16)
        self.tokens.append(token)
        return web.json_response(
            {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
        )

    def start(self) -> TokenEndpoint:
        self._thread.start()

        async def up() -> None:
            app = web.Application()
            app.router.add_post("/token", self._token)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        asyncio.run_coroutine_threadsafe(up(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
