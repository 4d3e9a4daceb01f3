"""A real OAuth2 client-credentials token endpoint (aiohttp) for the remote backends' credentials."""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
from typing import Any

from aiohttp import web


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
