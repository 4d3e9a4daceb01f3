"""The fleet's Leases on the API server: plain requests through the `kubernetes` ApiClient, counted.

`LeaseApi` is GET / POST / PUT / merge-PATCH / DELETE of `coordination.k8s.io/v1` Leases in one
namespace, with the request timeout of each call, answering plain JSON and counting what it costs
(requests per verb, bytes of request and response bodies: the membership traffic of a replica).
Synchronous, like the client: callers run it in a worker thread. `LeaseWatch` is an informer on the
fleet's Leases (a label selector), its events handed to the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from spillover.sources.kube.informer import Informer
from spillover.sources.kube.kinds import Object, Resource

log = logging.getLogger(__name__)

__all__ = ["FLEET_LABEL", "LEASES", "ROLE_LABEL", "LeaseApi", "LeaseWatch", "TrafficCounter"]

LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
FLEET_LABEL = "spillover.dev/fleet"  # which fleet a Lease belongs to (the leader Lease's name)
ROLE_LABEL = "spillover.dev/role"  # member | decisions
_MAX_RESPONSE = 4 << 20


@dataclass
class TrafficCounter:
    """What the fleet's own API requests cost (the informer's watch bytes are its own stats)."""

    requests: Counter[str] = field(default_factory=Counter)  # by verb
    sent_bytes: int = 0
    received_bytes: int = 0
    errors: int = 0


class LeaseApi:
    def __init__(self, api: ApiClient, namespace: str, timeout: float = 5.0) -> None:
        self.api = api
        self.namespace = namespace
        self.timeout = timeout
        self.traffic = TrafficCounter()

    def _path(self, name: str = "") -> str:
        base = LEASES.path(self.namespace)
        return f"{base}/{name}" if name else base

    def _call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Object | None:
        """The answer's JSON; None for 404; ApiException for any other non-2xx answer."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, serialized, post = self.api.param_serialize(
            method=method, resource_path=path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        self.traffic.requests[method] += 1
        if body is not None:
            self.traffic.sent_bytes += len(json.dumps(body))
        try:
            rest = self.api.call_api(method, url, header_params=headers, body=serialized, post_params=post,
                                     _request_timeout=self.timeout)
        except Exception:
            self.traffic.errors += 1
            raise
        response = rest.response
        try:
            data = response.read(_MAX_RESPONSE + 1)
        finally:
            response.release_conn()
        self.traffic.received_bytes += len(data or b"")
        if response.status == 404:
            return None
        if not 200 <= response.status <= 299:
            self.traffic.errors += 1
            raise ApiException(status=response.status, reason=response.reason, body=(data or b"").decode("utf-8", "replace"))
        if len(data) > _MAX_RESPONSE:
            raise ApiException(status=0, reason=f"a Lease answer over {_MAX_RESPONSE} bytes")
        document = json.loads(data) if data else {}
        if not isinstance(document, dict):
            raise ApiException(status=0, reason="the API server answered something other than an object")
        return document

    def get(self, name: str) -> Object | None:
        return self._call("GET", self._path(name))

    def create(self, body: Object) -> Object:
        created = self._call("POST", self._path(), body)
        if created is None:
            raise ApiException(status=404, reason=f"namespace {self.namespace} not found")
        return created

    def replace(self, name: str, body: Object) -> Object | None:
        """PUT; with `metadata.resourceVersion` a concurrent write gives a 409 ApiException."""
        return self._call("PUT", self._path(name), body)

    def patch(self, name: str, patch: Object) -> Object | None:
        """A JSON merge patch; None when the Lease does not exist."""
        return self._call("PATCH", self._path(name), patch, "application/merge-patch+json")

    def delete(self, name: str) -> None:
        self._call("DELETE", self._path(name))


class LeaseWatch:
    """An informer on the Leases of one fleet; `on_event(type, lease)` and `on_sync()` run in the event
    loop. Reconnects fast (at most 2 s between attempts): a replica back from a partition must see the
    fleet again before it may judge anyone gone."""

    def __init__(
        self,
        api: ApiClient,
        namespace: str,
        fleet: str,
        on_event: Callable[[str, Object], None],
        on_sync: Callable[[], None],
    ) -> None:
        self._on_event = on_event
        self._on_sync = on_sync
        self._loop: asyncio.AbstractEventLoop | None = None
        self.informer = Informer(
            api, LEASES, namespace=namespace, label_selector=f"{FLEET_LABEL}={fleet}",
            on_event=self._event, on_sync=self._sync, backoff_initial=0.25, backoff_max=2.0,
            watch_timeout=240.0, read_timeout_slack=15.0, name=f"fleet leases {namespace}/{fleet}",
        )

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.informer.start()

    def stop(self) -> None:
        self.informer.stop(timeout=1.0)

    def _event(self, type_: str, obj: Object) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_event, type_, obj)

    def _sync(self) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_sync)

    def restart(self) -> None:
        """Ends the open watch (it is reopened at once): for a watch that stopped delivering."""
        self.informer.restart_watch()
