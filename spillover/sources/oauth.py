"""OAuth2 client-credentials tokens for remote backends: fetched, cached, refreshed before expiry.

Why spillover fetches the token instead of Envoy: Envoy's oauth2 filter is for user logins, and its
credential injector only injects a secret it is given. spillover fetches the token once per backend
(not per request, not per Envoy), refreshes it before it expires, and pushes it to every Envoy as an SDS
secret; the injector adds `Authorization: Bearer ...` only on the route to the remote backend. A token
endpoint outage keeps the last token until it expires, with retries backing off.

This is a source stage: it produces token values, and the controller feeds them into planning. Secret values
never appear in logs, reprs or errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from spillover.policy import ModelDeployment
from spillover.sources.files.secrets import resolve_client_secret

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientCredentials:
    token_url: str
    client_id: str
    client_secret: Callable[[], str] = field(repr=False, compare=False)  # read when needed, never stored
    secret_ref: str = ""  # what identifies the secret (a file path, a Secret name), for equality and logs
    scope: str = ""
    auth_method: str = "basic"  # "basic" (RFC 6749 2.3.1 recommended) or "post" (form fields)
    ca_file: str = ""  # CA for an https token endpoint; empty = system CAs

    def key(self) -> tuple[str, ...]:
        return (self.token_url, self.client_id, self.secret_ref, self.scope, self.auth_method, self.ca_file)


@dataclass
class Token:
    value: str = field(repr=False)
    expires_at: float  # monotonic
    fetched_at: float


class TokenError(Exception):
    pass


async def fetch_token(session: aiohttp.ClientSession, credentials: ClientCredentials, timeout: float = 10.0) -> Token:
    form = {"grant_type": "client_credentials"}
    if credentials.scope:
        form["scope"] = credentials.scope
    headers = {"Accept": "application/json"}
    try:
        secret = credentials.client_secret()
    except Exception as error:  # a missing or unreadable secret file: its message names the file only
        raise TokenError(f"client secret of {credentials.client_id}: {error}") from None
    if credentials.auth_method == "post":
        form["client_id"] = credentials.client_id
        form["client_secret"] = secret
    else:
        headers["Authorization"] = aiohttp.encode_basic_auth(credentials.client_id, secret)
    ssl_context: ssl.SSLContext | bool = True
    if credentials.ca_file:
        ssl_context = ssl.create_default_context(cafile=credentials.ca_file)
    started = time.monotonic()
    try:
        async with session.post(
            credentials.token_url,
            data=form,
            ssl=ssl_context,
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers=headers,
        ) as response:
            if response.status != 200:
                # The body of an error may echo what was sent: report only the status.
                raise TokenError(f"token endpoint {credentials.token_url} answered HTTP {response.status}")
            payload = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        raise TokenError(f"token endpoint {credentials.token_url}: {type(error).__name__}: {error}") from None
    value = payload.get("access_token") if isinstance(payload, dict) else None
    if not isinstance(value, str) or not value:
        raise TokenError(f"token endpoint {credentials.token_url}: response has no access_token")
    token_type = str(payload.get("token_type", "bearer")).lower()
    if token_type != "bearer":
        raise TokenError(f"token endpoint {credentials.token_url}: token_type {token_type!r} is not bearer")
    try:
        lifetime = float(payload.get("expires_in", 3600))
    except (TypeError, ValueError):
        lifetime = 3600.0
    return Token(value=value, expires_at=started + max(lifetime, 1.0), fetched_at=started)


def refresh_delay(token: Token, now: float) -> float:
    """Refresh when 80% of the lifetime has passed, and at least 30 s before expiry when it is long."""
    lifetime = token.expires_at - token.fetched_at
    refresh_at = token.fetched_at + min(lifetime * 0.8, max(lifetime - 30.0, lifetime * 0.5))
    return max(refresh_at - now, 0.5)


class TokenManager:
    """Keeps one fresh token per set of client credentials; `changed` is called when a token changes."""

    def __init__(self, changed: Callable[[], None] = lambda: None, max_backoff: float = 30.0) -> None:
        self.changed = changed
        self.max_backoff = max_backoff
        self._wanted: dict[tuple[str, ...], ClientCredentials] = {}
        self._tokens: dict[tuple[str, ...], Token] = {}
        self._errors: dict[tuple[str, ...], str] = {}
        self._tasks: dict[tuple[str, ...], asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0

    def want(self, credentials: list[ClientCredentials]) -> None:
        """Declares the credentials in use now; tokens for others are dropped."""
        wanted = {c.key(): c for c in credentials}
        for key in list(self._tasks):
            if key not in wanted:
                self._tasks.pop(key).cancel()
                self._tokens.pop(key, None)
                self._errors.pop(key, None)
        self._wanted = wanted
        loop = asyncio.get_running_loop()
        for key, creds in wanted.items():
            if key not in self._tasks:
                self._tasks[key] = loop.create_task(self._keep_fresh(creds))

    def token(self, credentials: ClientCredentials) -> str | None:
        token = self._tokens.get(credentials.key())
        if token is None or token.expires_at <= time.monotonic():
            return None
        return token.value

    def error(self, credentials: ClientCredentials) -> str:
        return self._errors.get(credentials.key(), "")

    async def _keep_fresh(self, credentials: ClientCredentials) -> None:
        key = credentials.key()
        backoff = 1.0
        while True:
            try:
                if self._session is None:
                    self._session = aiohttp.ClientSession()
                self.fetches += 1
                token = await fetch_token(self._session, credentials)
            except TokenError as error:
                self._errors[key] = str(error)
                log.warning("%s (client %s); retrying in %.0fs", error, credentials.client_id, backoff)
                current = self._tokens.get(key)
                if current is not None and current.expires_at <= time.monotonic():
                    del self._tokens[key]  # an expired token is worse than none: the remote gets no traffic
                    self.changed()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            except Exception:
                log.exception("unexpected failure fetching a token for client %s", credentials.client_id)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff = 1.0
            self._errors.pop(key, None)
            previous = self._tokens.get(key)
            self._tokens[key] = token
            if previous is None or previous.value != token.value:
                self.changed()
            await asyncio.sleep(refresh_delay(token, time.monotonic()))

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


def credentials_of(md: ModelDeployment) -> ClientCredentials | None:
    """The OAuth2 client credentials of a model's remote backend, if it has any."""
    offloading = md.spec.offloading_config
    remote = offloading.remote_backend if offloading else None
    oauth = remote.auth_config.oauth_config if remote and remote.auth_config else None
    if oauth is None:
        return None

    def secret() -> str:
        value = resolve_client_secret(oauth)
        if value is None:
            raise LookupError(f"model {md.model}: the client secret is a Kubernetes Secret reference")
        return value.get_secret_value()

    ref = oauth.client_secret_ref
    if ref is not None and ref.file:
        secret_ref = f"file:{ref.file}"
    elif oauth.client_secret is not None:
        # Identifies the inline value without keeping it: a changed secret means new credentials.
        digest = hashlib.blake2b(oauth.client_secret.get_secret_value().encode(), digest_size=8).hexdigest()
        secret_ref = f"inline:{digest}"
    else:
        secret_ref = f"secret:{ref.namespace or md.metadata.namespace}/{ref.name}/{ref.key}" if ref else ""
    return ClientCredentials(
        token_url=oauth.token_url,
        client_id=oauth.client_id,
        client_secret=secret,
        secret_ref=secret_ref,
        scope=" ".join(oauth.scopes),
    )
