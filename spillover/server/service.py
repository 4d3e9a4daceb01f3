"""The gRPC xDS server: ADS (SotW and Delta) and the per-type discovery services, on grpc.aio.

Responses leave as pre-encoded bytes (the response serializer is the identity), so the only protobuf
work per stream is parsing the client's requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from spillover.server.cache import Snapshot, SnapshotCache
from spillover.server.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    Resource,
    short_type,
)
from spillover.server.streams import BaseStream, DeltaStream, ProtocolError, SotwStream, StreamEvents

log = logging.getLogger(__name__)

_PER_TYPE_SERVICES = {
    "envoy.service.cluster.v3.ClusterDiscoveryService": ("Clusters", CLUSTER),
    "envoy.service.endpoint.v3.EndpointDiscoveryService": ("Endpoints", ENDPOINT),
    "envoy.service.listener.v3.ListenerDiscoveryService": ("Listeners", LISTENER),
    "envoy.service.route.v3.RouteDiscoveryService": ("Routes", ROUTE),
    "envoy.service.secret.v3.SecretDiscoveryService": ("Secrets", SECRET),
}
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

# Thousands of long-lived streams: detect dead peers with keepalives, accept Envoy's own keepalive
# pings, never cap stream lifetime, and allow large snapshots.
GRPC_SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_concurrent_streams", 100_000),
    ("grpc.max_send_message_length", 512 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
]


def group_by_cluster(node: base_pb2.Node) -> str:
    """Default grouping: Envoys with the same `node.cluster` share one snapshot."""
    return node.cluster or node.id


def group_by_metadata(key: str) -> Callable[[base_pb2.Node], str]:
    def group_of(node: base_pb2.Node) -> str:
        value = node.metadata.fields.get(key)
        if value is not None and value.WhichOneof("kind") == "string_value":
            return value.string_value
        return group_by_cluster(node)

    return group_of


class XdsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected = Gauge(
            "spillover_xds_connected_proxies", "Connected xDS streams", ["group", "mode"], registry=registry
        )
        self.responses = Counter(
            "spillover_xds_responses_total", "xDS responses sent", ["type"], registry=registry
        )
        self.pushes = Counter(
            "spillover_xds_pushes_total", "Snapshots published to a node group", ["group"], registry=registry
        )
        self.push_latency = Histogram(
            "spillover_xds_push_latency_seconds",
            "From a snapshot's publish to its response being handed to a stream",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.acks = Counter("spillover_xds_acks_total", "ACKs received", ["type"], registry=registry)
        self.nacks = Counter("spillover_xds_nacks_total", "NACKs received", ["type"], registry=registry)
        self.stale = Counter(
            "spillover_xds_stale_nonce_total", "Requests ignored for a stale nonce", ["type"], registry=registry
        )
        self.ignored = Counter(
            "spillover_xds_ignored_requests_total", "Requests ignored as malformed", ["reason"], registry=registry
        )
        self.resources = Gauge(
            "spillover_xds_resources", "Resources in the published snapshot", ["group", "type"], registry=registry
        )
        self.build_seconds = Histogram(
            "spillover_xds_snapshot_build_seconds",
            "Time to serialize and version a snapshot",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )


class _MetricEvents(StreamEvents):
    def __init__(self, metrics: XdsMetrics) -> None:
        self.metrics = metrics

    def on_ack(self, type_url: str) -> None:
        self.metrics.acks.labels(short_type(type_url)).inc()

    def on_nack(self, type_url: str, error: str) -> None:
        self.metrics.nacks.labels(short_type(type_url)).inc()
        log.warning("NACK for %s: %s", short_type(type_url), error)

    def on_stale_nonce(self, type_url: str) -> None:
        self.metrics.stale.labels(short_type(type_url)).inc()

    def on_ignored(self, reason: str) -> None:
        self.metrics.ignored.labels(reason).inc()


class ProxyRegistry:
    """The connected streams. Observers learn when the set of proxies in a group changes."""

    def __init__(self) -> None:
        self._streams: set[BaseStream] = set()
        self.on_change: list[Callable[[str], None]] = []

    def add(self, stream: BaseStream) -> None:
        self._streams.add(stream)
        self._notify(stream.group)

    def remove(self, stream: BaseStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)
            self._notify(stream.group)

    def _notify(self, group: str) -> None:
        for callback in self.on_change:
            try:
                callback(group)
            except Exception:
                log.exception("proxy registry observer failed")

    def streams(self) -> list[BaseStream]:
        return sorted(self._streams, key=lambda s: (s.group, s.node_id, s.connected_at))

    def replicas(self, group: str) -> int:
        """Distinct Envoys (by node id) connected for a group."""
        return len({s.node_id for s in self._streams if s.group == group})

    def admin_urls(self, group: str | None = None) -> list[str]:
        """Admin endpoints of the connected Envoys (one per node id), for reading their stats."""
        urls: dict[str, str] = {}
        for stream in self.streams():
            url = stream.admin_url()
            if url and (group is None or stream.group == group):
                urls.setdefault(stream.node_id, url)
        return [urls[node] for node in sorted(urls)]

    def find(self, node_id: str) -> list[BaseStream]:
        return [s for s in self.streams() if s.node_id == node_id]


_EOF = object()
_TICK = object()  # a stream's own deadline passed (warming timeout)


class XdsServer:
    """Serves snapshots from a SnapshotCache to Envoys over gRPC."""

    def __init__(
        self,
        cache: SnapshotCache,
        group_of: Callable[[base_pb2.Node], str] = group_by_cluster,
        registry: CollectorRegistry | None = None,
        warm_timeout: float = 5.0,
    ) -> None:
        self.cache = cache
        self.warm_timeout = warm_timeout
        self.group_of = group_of
        self.metrics_registry = registry or CollectorRegistry()
        self.metrics = XdsMetrics(self.metrics_registry)
        self.proxies = ProxyRegistry()
        self._events = _MetricEvents(self.metrics)
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None
        cache.on_publish.append(self._on_publish)

    def _on_publish(self, group: str, snapshot: Snapshot) -> None:
        self.metrics.pushes.labels(group).inc()
        self.metrics.build_seconds.observe(snapshot.build_seconds)
        for type_url, resources in snapshot.resources.items():
            self.metrics.resources.labels(group, short_type(type_url)).set(len(resources))

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def sotw(default_type: str = "") -> grpc.RpcMethodHandler:
            async def handle(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
                stream = SotwStream(
                    context.peer(), self.group_of, self.cache.get, default_type, self._events, self.warm_timeout
                )
                async for payload in self._serve(stream, requests, context):
                    yield payload

            return grpc.stream_stream_rpc_method_handler(
                handle,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=bytes,
            )

        def delta(default_type: str = "") -> grpc.RpcMethodHandler:
            async def handle(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
                stream = DeltaStream(
                    context.peer(), self.group_of, self.cache.get, default_type, self._events, self.warm_timeout
                )
                async for payload in self._serve(stream, requests, context):
                    yield payload

            return grpc.stream_stream_rpc_method_handler(
                handle,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=bytes,
            )

        handlers = [
            grpc.method_handlers_generic_handler(
                ADS_SERVICE,
                {"StreamAggregatedResources": sotw(), "DeltaAggregatedResources": delta()},
            )
        ]
        for service, (noun, type_url) in _PER_TYPE_SERVICES.items():
            handlers.append(
                grpc.method_handlers_generic_handler(
                    service, {f"Stream{noun}": sotw(type_url), f"Delta{noun}": delta(type_url)}
                )
            )
        return handlers

    async def _serve(
        self, stream: SotwStream | DeltaStream, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        inbox: asyncio.Queue[object] = asyncio.Queue()

        async def read() -> None:
            try:
                async for request in requests:
                    inbox.put_nowait(request)
            except Exception as error:  # a broken client ends its own stream, never the server
                inbox.put_nowait(error)
            finally:
                inbox.put_nowait(_EOF)

        loop = asyncio.get_running_loop()
        reader = loop.create_task(read())
        registered = False
        scheduled_wake: float | None = None
        try:
            while True:
                item = await inbox.get()
                if item is _EOF:
                    return
                if isinstance(item, BaseException):
                    log.info("stream %s (%s) sent an unreadable request: %r", stream.node_id, stream.peer, item)
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unreadable request: {item}")
                    return
                if item is _TICK:
                    outgoing = stream.on_tick()
                    published = None
                elif isinstance(item, Snapshot):
                    outgoing = stream.on_snapshot()
                    published = self.cache.published_at(stream.group)
                else:
                    try:
                        outgoing = stream.on_request(item)
                    except ProtocolError as error:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
                        return
                    published = None
                    if not registered:
                        registered = True
                        self.cache.watch(stream.group, inbox)
                        self.proxies.add(stream)
                        self.metrics.connected.labels(stream.group, stream.mode).inc()
                for response in outgoing:
                    self.metrics.responses.labels(short_type(response.type_url)).inc()
                    yield response.payload
                if published is not None and outgoing:
                    self.metrics.push_latency.observe(time.monotonic() - published)
                wake_at = stream.wake_at
                if wake_at is not None and wake_at != scheduled_wake:
                    scheduled_wake = wake_at
                    loop.call_at(loop.time() + max(0.0, wake_at - time.monotonic()), inbox.put_nowait, _TICK)
        finally:
            reader.cancel()
            if registered:
                self.cache.unwatch(stream.group, inbox)
                self.proxies.remove(stream)
                self.metrics.connected.labels(stream.group, stream.mode).dec()

    async def start(self, address: str = "127.0.0.1:0") -> int:
        server = grpc.aio.server(options=GRPC_SERVER_OPTIONS)
        server.add_generic_rpc_handlers(self.handlers())
        port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot bind the xDS server to {address}")
        await server.start()
        self._server, self.port = server, port
        log.info("xDS server listening on %s", address.rsplit(":", 1)[0] + f":{port}")
        return port

    async def stop(self, grace: float = 1.0) -> None:
        """Ends every stream; Envoys keep serving their last accepted configuration."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    def sent_config(self, node_id: str) -> dict[str, list[Resource]]:
        """What the proxy with this node id was sent, merged over its streams."""
        merged: dict[str, dict[str, Resource]] = {}
        for stream in self.proxies.find(node_id):
            for type_url, resources in stream.sent_resources().items():
                merged.setdefault(type_url, {}).update({r.name: r for r in resources})
        return {t: [named[n] for n in sorted(named)] for t, named in sorted(merged.items())}
