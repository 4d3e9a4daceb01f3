"""The admin HTTP endpoint: health, readiness, Prometheus metrics and debug views (127.0.0.1 by default).

`/healthz`, `/readyz` and `/metrics` are always open (probes, Prometheus). The debug views show every
proxy's configuration; they need a credential (a bearer token from a file, or a client certificate from
the admin client CA over HTTPS) whenever one is configured, and always when the endpoint listens on an
address other hosts can reach. See `admin_auth.py`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from spillover.controller.admin_auth import AdminAuth, AdminOptions
from spillover.server.bounds import printable
from spillover.server.resources import SECRET, Resource, short_type
from spillover.server.service import XdsServer, is_loopback

log = logging.getLogger(__name__)

REDACTED = "[redacted]"


def resource_json(resource: Resource) -> dict[str, Any]:
    """A resource as JSON for humans. Secrets never leave the process in clear."""
    if not resource.body:
        return {"name": resource.name, "version": resource.version, "note": "known to the client only"}
    body = json_format.MessageToDict(resource.message(), preserving_proto_field_name=True)
    if resource.type_url == SECRET:
        body = _redact_secret(body)
    return {"name": resource.name, "version": resource.version, "resource": body}


def _redact_secret(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in {"inline_string", "inline_bytes", "environment_variable"}:
                out[key] = REDACTED
            else:
                out[key] = _redact_secret(item)
        return out
    if isinstance(value, list):
        return [_redact_secret(v) for v in value]
    return value


class AdminServer:
    def __init__(
        self,
        xds: XdsServer,
        registries: list[CollectorRegistry],
        ready: Callable[[], bool | tuple[bool, list[str]]],
        extra_routes: list[web.RouteDef] | None = None,
        options: AdminOptions | None = None,
        proxies_extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.xds = xds
        self.proxies_extra = proxies_extra
        self.registries = registries
        self.ready = ready
        self.options = options or AdminOptions()
        self.auth: AdminAuth | None = None
        # Requests are small GETs; a body is never read, and headers stay within aiohttp's own bounds.
        self.app = web.Application(client_max_size=64 * 1024, middlewares=[self._guard])
        self.app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics),
                web.get("/debug/proxies", self.proxies),
                web.get("/debug/config", self.config),
                *(extra_routes or []),
            ]
        )
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if request.path in ("/healthz", "/readyz", "/metrics"):
            response: web.StreamResponse = await handler(request)
            return response
        auth = self.auth
        if auth is None:  # not started
            return web.Response(status=503, text="not started\n")
        denied = auth.check(request)
        if denied is not None:
            return denied
        response = await handler(request)
        return response

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        """200 "ready" or 503 "not ready", each followed by one line per note (warnings, or why)."""
        answer = self.ready()
        ready, notes = answer if isinstance(answer, tuple) else (answer, [])
        text = "".join(f"{line}\n" for line in ["ready" if ready else "not ready", *notes])
        return web.Response(status=200 if ready else 503, text=text)

    async def metrics(self, request: web.Request) -> web.Response:
        await self.xds.refresh_views()  # xDS workers: their counters and stream states, as of now
        body = b"".join(generate_latest(registry) for registry in self.registries)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def proxies_json(self) -> list[dict[str, Any]]:
        out = []
        for stream in self.xds.proxies.streams():
            described = stream.describe()
            snapshot = self.xds.cache.get(stream.group)
            types = described["types"]
            assert isinstance(types, dict)
            for type_url, state in types.items():
                state["type"] = short_type(type_url)
                state["current_version"] = snapshot.version(type_url) if snapshot is not None else ""
            out.append(described)
        return out

    async def proxies(self, request: web.Request) -> web.Response:
        await self.xds.refresh_views(describe=True)
        extra = self.proxies_extra() if self.proxies_extra is not None else {}
        return json_response({**extra, "proxies": self.proxies_json()})

    async def config(self, request: web.Request) -> web.Response:
        node = request.query.get("node", "")
        if not node:
            return json_response({"error": "query parameter 'node' is required (a connected proxy's node id)"}, 400)
        await self.xds.refresh_views(node_id=node)
        sent = self.xds.sent_config(node)
        if not sent and not self.xds.proxies.find(node):
            return json_response({"error": f"no connected proxy with node id '{printable(node, 64)}'"}, 404)
        return json_response(
            {
                "node": node,
                "resources": {
                    short_type(type_url): [resource_json(r) for r in resources]
                    for type_url, resources in sent.items()
                },
            }
        )

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Raises ValueError for unusable TLS files or token settings."""
        auth = AdminAuth(self.options, loopback=is_loopback(host), registry=self.registries[0] if self.registries else None)
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=auth.ssl_context)
        await site.start()
        self._runner = runner
        self.auth = auth
        auth.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        scheme = "https" if auth.ssl_context is not None else "http"
        log.info("admin listening on %s://%s:%s; debug views: %s", scheme, host, self.port, auth.describe())
        return int(self.port)

    async def stop(self) -> None:
        if self.auth is not None:
            await self.auth.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(payload, indent=2, sort_keys=True) + "\n", content_type="application/json"
    )
