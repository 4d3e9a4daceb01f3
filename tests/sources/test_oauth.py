"""Client-credentials tokens against a real local OAuth2 token endpoint (aiohttp, loopback)."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from spillover.sources.oauth import ClientCredentials, Token, TokenManager, refresh_delay
from tests.harness.polling import async_wait_until

SECRET = "s3cr3t-value-never-logged"


@dataclass
class TokenEndpoint:
    url: str = ""
    lifetime: int = 3600
    fail_with: int = 0
    requests: list[dict[str, str]] = field(default_factory=list)
    issued: int = 0


@pytest.fixture
async def endpoint() -> AsyncIterator[TokenEndpoint]:
    state = TokenEndpoint()

    async def token(request: web.Request) -> web.Response:
        form = dict(await request.post())
        form["authorization"] = request.headers.get("Authorization", "")
        state.requests.append(form)  # type: ignore[arg-type]
        if state.fail_with:
            return web.json_response({"error": "server_error", "echo": form.get("client_secret")}, status=state.fail_with)
        expected = "Basic " + base64.b64encode(f"model-client:{SECRET}".encode()).decode()
        if form["grant_type"] != "client_credentials" or form["authorization"] != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        state.issued += 1
        return web.json_response(
            {"access_token": f"token-{state.issued}", "token_type": "Bearer", "expires_in": state.lifetime}
        )

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}/oauth/token"
    yield state
    await runner.cleanup()


def credentials(url: str, secret: str = SECRET) -> ClientCredentials:
    return ClientCredentials(token_url=url, client_id="model-client", client_secret=lambda: secret, secret_ref="file:/x")


async def test_a_token_is_fetched_once_and_reused(endpoint: TokenEndpoint) -> None:
    changes: list[float] = []
    manager = TokenManager(changed=lambda: changes.append(time.monotonic()))
    creds = credentials(endpoint.url)
    manager.want([creds])
    await async_wait_until(lambda: manager.token(creds), message="first token")
    assert manager.token(creds) == "token-1"
    for _ in range(50):
        assert manager.token(creds) == "token-1"
    manager.want([creds])  # declaring the same credentials again starts no new fetch
    assert len(endpoint.requests) == 1 and len(changes) == 1
    await manager.close()


async def test_a_token_is_refreshed_before_it_expires(endpoint: TokenEndpoint) -> None:
    endpoint.lifetime = 2
    manager = TokenManager()
    creds = credentials(endpoint.url)
    manager.want([creds])
    await async_wait_until(lambda: manager.token(creds) == "token-1", message="first token")
    first_at = time.monotonic()
    await async_wait_until(lambda: manager.token(creds) == "token-2", timeout=5, message="refreshed token")
    assert time.monotonic() - first_at < 2.0, "the new token arrives before the old one expires"
    await manager.close()


async def test_an_outage_keeps_the_token_then_recovers_without_logging_secrets(
    endpoint: TokenEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    endpoint.fail_with = 503
    manager = TokenManager(max_backoff=0.2)
    creds = credentials(endpoint.url)
    manager.want([creds])
    await async_wait_until(lambda: len(endpoint.requests) >= 3, message="retries with backoff")
    assert manager.token(creds) is None
    assert "HTTP 503" in manager.error(creds)
    endpoint.fail_with = 0
    await async_wait_until(lambda: manager.token(creds), timeout=5, message="recovered")
    assert manager.error(creds) == ""
    assert SECRET not in caplog.text and SECRET not in repr(creds)
    await manager.close()


async def test_wrong_credentials_are_reported_with_the_status_only(endpoint: TokenEndpoint) -> None:
    manager = TokenManager(max_backoff=0.2)
    creds = credentials(endpoint.url, secret="wrong")
    manager.want([creds])
    await async_wait_until(lambda: manager.error(creds), message="error recorded")
    assert manager.error(creds) == f"token endpoint {endpoint.url} answered HTTP 401"
    assert manager.token(creds) is None
    await manager.close()


async def test_credentials_no_longer_wanted_are_dropped(endpoint: TokenEndpoint) -> None:
    manager = TokenManager()
    creds = credentials(endpoint.url)
    manager.want([creds])
    await async_wait_until(lambda: manager.token(creds), message="token")
    manager.want([])
    assert manager.token(creds) is None
    await manager.close()


def test_refresh_schedule() -> None:
    hour = Token(value="t", fetched_at=0.0, expires_at=3600.0)
    assert refresh_delay(hour, 0.0) == pytest.approx(2880.0)  # 80% of the lifetime
    short = Token(value="t", fetched_at=0.0, expires_at=40.0)
    assert refresh_delay(short, 0.0) == pytest.approx(20.0)  # never later than half of a short life
    assert refresh_delay(short, 39.9) == 0.5
