"""The admin HTTP endpoint: health, readiness, Prometheus metrics and debug views (127.0.0.1 by default)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from spillover.server.resources import SECRET, Resource, short_type
from spillover.server.service import XdsServer

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
        ready: Callable[[], bool],
        extra_routes: list[web.RouteDef] | None = None,
    ) -> None:
        self.xds = xds
        self.registries = registries
        self.ready = ready
        self.app = web.Application()
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

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def metrics(self, request: web.Request) -> web.Response:
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
        return json_response({"proxies": self.proxies_json()})

    async def config(self, request: web.Request) -> web.Response:
        node = request.query.get("node", "")
        if not node:
            return json_response({"error": "query parameter 'node' is required (a connected proxy's node id)"}, 400)
        sent = self.xds.sent_config(node)
        if not sent and not self.xds.proxies.find(node):
            return json_response({"error": f"no connected proxy with node id {node!r}"}, 404)
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
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("admin listening on http://%s:%s", host, self.port)
        return int(self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(payload, indent=2, sort_keys=True) + "\n", content_type="application/json"
    )
