"""The gRPC xDS server: ADS (SotW and Delta) and the per-type discovery services, on grpc.aio.

Responses leave as pre-encoded bytes (the response serializer is the identity), so the only protobuf
work per stream is parsing the client's requests.

Every stream passes the same gate before it is served: its identity (the verified client certificate,
with mTLS) may open another stream (admission's bound per identity); its first request carries a node
within bounds; admission lets that identity use that node id in that group; the group is one the server
has room for. A refused stream ends with PERMISSION_DENIED, UNAUTHENTICATED, RESOURCE_EXHAUSTED,
INVALID_ARGUMENT or DEADLINE_EXCEEDED and a message naming the rule, counted in
`spillover_xds_refused_streams_total{reason}`. Only admitted streams are registered (ProxyRegistry).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import CollectorRegistry

from spillover.server import gc_tuning
from spillover.server.admission import AdmissionPolicy, Refusal
from spillover.server.bounds import LimitExceeded, LogThrottle, RequestBucket, StreamLimits, printable
from spillover.server.cache import Snapshot, SnapshotCache
from spillover.server.grpc_options import GRPC_SERVER_OPTIONS
from spillover.server.identity import PeerIdentity, identity_from_auth_context
from spillover.server.memory import release_free_memory
from spillover.server.metrics import (
    StreamMetricEvents,
    SyncStates,
    WithoutInternalListener,
    WithoutSplitLayer,
    XdsMetrics,
)
from spillover.server.registry import GroupTracker, IdentityStreams, ProxyRegistry
from spillover.server.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    Resource,
)
from spillover.server.stream_writer import StreamWriter
from spillover.server.streams import DeltaStream, ProtocolError, SotwStream
from spillover.server.tls import CertificateReloader, TlsFiles

log = logging.getLogger(__name__)

_PER_TYPE_SERVICES = {
    "envoy.service.cluster.v3.ClusterDiscoveryService": ("Clusters", CLUSTER),
    "envoy.service.endpoint.v3.EndpointDiscoveryService": ("Endpoints", ENDPOINT),
    "envoy.service.listener.v3.ListenerDiscoveryService": ("Listeners", LISTENER),
    "envoy.service.route.v3.RouteDiscoveryService": ("Routes", ROUTE),
    "envoy.service.secret.v3.SecretDiscoveryService": ("Secrets", SECRET),
}
ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"

class InsecureAddressError(ValueError):
    """Plain text was asked for on an address other hosts can reach, without opting in."""


@dataclass(frozen=True)
class XdsOptions:
    """How the xDS port is protected and bounded.

    tls:         mTLS (server certificate, key and the CA of client certificates, reloaded on change);
                 None: plain text, which a non-loopback address only gets with `insecure`.
    admission:   which identities may use which groups and node ids, and how many streams each holds;
                 None admits every client that reaches the port (and passed mTLS when it is on).
    max_groups:  node groups at once (a group is made by its first stream).
    group_grace: seconds a group without streams is kept (its snapshot and metric series) before it
                 is forgotten.
    """

    tls: TlsFiles | None = None
    insecure: bool = False
    admission: AdmissionPolicy | None = None
    limits: StreamLimits = field(default_factory=StreamLimits)
    max_groups: int = 1024
    group_grace: float = 120.0
    tls_check_interval: float = 1.0

    def __post_init__(self) -> None:
        if self.max_groups < 1:
            raise ValueError(f"max_groups must be >= 1, got {self.max_groups}")
        if self.group_grace < 0 or self.tls_check_interval <= 0:
            raise ValueError("group_grace must be >= 0 and tls_check_interval > 0")


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_STATUS = {
    "permission": grpc.StatusCode.PERMISSION_DENIED,
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "deadline": grpc.StatusCode.DEADLINE_EXCEEDED,
}


def group_by_cluster(node: base_pb2.Node) -> str:
    """Default grouping: Envoys with the same `node.cluster` share one snapshot."""
    return node.cluster or node.id


def _group_by_metadata_key(key: str, node: base_pb2.Node) -> str:
    value = node.metadata.fields.get(key)
    if value is not None and value.WhichOneof("kind") == "string_value":
        return value.string_value
    return group_by_cluster(node)


def group_by_metadata(key: str) -> Callable[[base_pb2.Node], str]:
    # A partial of a module function, not a closure: xDS worker processes are sent it (pickled).
    return functools.partial(_group_by_metadata_key, key)


# Quiet time after the last forgotten group before free memory is given back (one trim per wave).
_TRIM_AFTER_S = 1.0

# How long an ending stream waits for a write in flight before its status is sent.
_QUIESCE_S = 2.0

# How long a stream refused before its first request waits for that request before the status goes out.
_UNREAD_REFUSAL_WAIT_S = 1.0


def _limit_refusal(error: LimitExceeded, reason: str) -> Refusal:
    return Refusal(reason, f"limit: {error.rule}", "exhausted" if error.resource else "invalid")


class XdsServer:
    """Serves snapshots from a SnapshotCache to Envoys over gRPC."""

    grpc_options: list[tuple[str, Any]] = GRPC_SERVER_OPTIONS

    def __init__(
        self,
        cache: SnapshotCache,
        group_of: Callable[[base_pb2.Node], str] = group_by_cluster,
        registry: CollectorRegistry | None = None,
        warm_timeout: float = 5.0,
        options: XdsOptions | None = None,
        push_pause: gc_tuning.PushPause = gc_tuning.PUSH_PAUSE,
    ) -> None:
        """push_pause: what keeps the collector off while a publish is written (the process-wide one;
        tests give their own, with a shorter limit)."""
        self.cache = cache
        self.push_pause = push_pause
        self.warm_timeout = warm_timeout
        self.group_of = group_of
        self.options = options or XdsOptions()
        self.admission = self.options.admission or AdmissionPolicy.admit_all()
        self.limits = self.options.limits
        self.metrics_registry = registry or CollectorRegistry()
        self.metrics = XdsMetrics(self.metrics_registry)
        self.proxies = ProxyRegistry()
        self.groups = GroupTracker(self.options.max_groups, self.options.group_grace, self._forget_group)
        self.identities = IdentityStreams()
        # Told when a node group is forgotten (after its grace period without streams).
        self.on_group_expired: list[Callable[[str], None]] = []
        self.metrics_registry.register(SyncStates(self.proxies.streams))
        self.metrics_registry.register(WithoutSplitLayer(self.proxies.streams))
        self.metrics_registry.register(WithoutInternalListener(self.proxies.streams))
        self._events = StreamMetricEvents(self.metrics)
        self._refusals = LogThrottle(burst=10, period=60.0)
        self._server: grpc.aio.Server | None = None
        self.tls: CertificateReloader | None = None
        self.port: int | None = None
        self._trim: asyncio.TimerHandle | None = None
        # The writers of the streams being served: stop() closes those whose stream's task gRPC has not
        # ended yet, so that none is still counted in the collector's pause once the server is stopped.
        self._writers: set[StreamWriter] = set()
        cache.on_publish.append(self._on_publish)

    def _on_publish(self, group: str, snapshot: Snapshot) -> None:
        # The new snapshot (and the state of streams connected since) leaves the collector's sight.
        gc_tuning.after_publish()
        series = self.metrics.group_series(group)
        series.pushes.inc()
        self.metrics.build_seconds.observe(snapshot.build_seconds)
        for type_url, resources in snapshot.resources.items():
            series.resources(type_url).set(len(resources))

    def expect_group(self, group: str) -> bool:
        """A node group served before a restart: it counts among the groups and is forgotten after the
        grace period unless a stream of it comes back. False when there is no room for it."""
        if not self.groups.expect(group):
            return False
        self.metrics.groups.set(len(self.groups))
        return True

    def _forget_group(self, group: str) -> None:
        self.cache.remove(group)
        self.metrics.forget_group(group)
        self.metrics.groups_expired.inc()
        self.metrics.groups.set(len(self.groups))
        allowed, suppressed = self._refusals.allow("group_expired")
        if allowed:
            more = f" ({suppressed} more forgotten before, not logged)" if suppressed else ""
            log.info("node group '%s' had no stream for %gs: forgotten%s", printable(group, 64), self.groups.grace, more)
        for callback in self.on_group_expired:
            try:
                callback(group)
            except Exception:
                log.exception("group expiry observer failed")
        # Groups leave in waves (a fleet gone, a flood of fake groups): once a wave is over, the memory it
        # held goes back to the system instead of staying in the allocator.
        if self._trim is not None:
            self._trim.cancel()
        self._trim = asyncio.get_running_loop().call_later(_TRIM_AFTER_S, self._release_memory)

    def _release_memory(self) -> None:
        self._trim = None
        if release_free_memory():
            log.debug("returned free memory to the system after node groups were forgotten")

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        # Coroutine handlers: grpc.aio hands them the call's context, whose read()/write() the stream's one
        # task uses (no request iterator, no response generator). Requests arrive as bytes and are parsed
        # by _serve: a broken message is then this server's refusal, not an error inside gRPC racing with it.
        def sotw(default_type: str = "") -> grpc.RpcMethodHandler:
            async def handle(requests: object, context: grpc.aio.ServicerContext) -> None:
                stream = SotwStream(
                    context.peer(), self.group_of, self.cache.get, default_type, self._events, self.warm_timeout,
                    limits=self.limits,
                )
                await self._serve(stream, context, discovery_pb2.DiscoveryRequest.FromString)

            return grpc.stream_stream_rpc_method_handler(handle, response_serializer=bytes)

        def delta(default_type: str = "") -> grpc.RpcMethodHandler:
            async def handle(requests: object, context: grpc.aio.ServicerContext) -> None:
                stream = DeltaStream(
                    context.peer(), self.group_of, self.cache.get, default_type, self._events, self.warm_timeout,
                    limits=self.limits,
                )
                await self._serve(stream, context, discovery_pb2.DeltaDiscoveryRequest.FromString)

            return grpc.stream_stream_rpc_method_handler(handle, response_serializer=bytes)

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

    async def _refuse(
        self, context: grpc.aio.ServicerContext, stream: SotwStream | DeltaStream, refusal: Refusal
    ) -> None:
        self.metrics.refused.labels(refusal.reason).inc()
        allowed, suppressed = self._refusals.allow(refusal.reason)
        if allowed:
            more = f" ({suppressed} more refused for this reason before)" if suppressed else ""
            log.warning(
                "xDS stream from %s (identity %s, node '%s') refused: %s%s",
                stream.peer, printable(stream.identity or "-", 128), printable(stream.node_id, 64),
                refusal.message, more,
            )
        await context.abort(_STATUS[refusal.kind], refusal.message)

    async def _refuse_unread(
        self, context: grpc.aio.ServicerContext, stream: SotwStream | DeltaStream, refusal: Refusal
    ) -> None:
        # A status that overtakes the client's first request makes that request's write fail, and a
        # gRPC client may then report its own write failure (INTERNAL, "Internal error from Core")
        # instead of our status: the request is read and dropped first, waiting briefly for a silent one.
        try:
            async with asyncio.timeout(min(self.limits.first_request_timeout, _UNREAD_REFUSAL_WAIT_S)):
                await context.read()
        except TimeoutError:
            pass
        await self._refuse(context, stream, refusal)

    def _admit(self, stream: SotwStream | DeltaStream, identity: PeerIdentity, request: Any) -> Refusal | None:
        """The first request: node checks, admission, room for the group. None when the stream may go on."""
        try:
            stream.accept_node(request.node, request.HasField("node"))
        except LimitExceeded as error:
            return _limit_refusal(error, "node_limit")
        except ProtocolError as error:
            return Refusal("no_node", str(error), "invalid")
        decision = self.admission.admit(identity, stream.node_id, stream.group)
        if isinstance(decision, Refusal):
            return decision
        if not self.groups.join(stream.group):
            return Refusal(
                "too_many_groups",
                f"limit: at most {self.groups.max_groups} node groups at once; this stream would make one more",
                "exhausted",
            )
        stream.admitted_by = decision.name if decision is not None else ""
        self.metrics.groups.set(len(self.groups))
        return None

    # -- hooks of the xDS worker processes (spillover.server.workers), where the main process decides ----
    async def _open_identity(self, key: tuple[bool, str], limit: int) -> bool:
        """May this identity open one more stream (admitted or still waiting for its first request)?"""
        return self.identities.open(key, limit)

    async def _confirm_admission(self, stream: SotwStream | DeltaStream) -> Refusal | None:
        """The last word on an admitted stream before it is registered; one process has nobody to ask."""
        return None

    async def refresh_views(self, node_id: str | None = None, describe: bool = False) -> None:
        """Brings the proxies' states (and `node_id`'s sent resources) up to date before they are read:
        nothing to do in one process, where they are the streams themselves."""

    # -- end of the worker hooks ------------------------------------------------------------------------

    async def _serve(
        self,
        stream: SotwStream | DeltaStream,
        context: grpc.aio.ServicerContext,
        parse: Callable[[bytes], Any],
    ) -> None:
        """The stream's one task: reads and answers requests; pushes go through its StreamWriter."""
        identity = identity_from_auth_context(context.auth_context())
        stream.identity = identity.principal if identity.authenticated else ""
        limit = self.admission.stream_limit(identity)
        if isinstance(limit, Refusal):
            await self._refuse_unread(context, stream, limit)
            return
        key = (identity.authenticated, identity.principal)
        if not await self._open_identity(key, limit):
            await self._refuse_unread(
                context, stream,
                Refusal("too_many_streams", f"admission: at most {limit} streams at once for this identity", "exhausted"),
            )
            return

        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        metrics = self.metrics
        writer = StreamWriter(
            stream, context.write, loop, metrics.count_response, self.cache.published_at,
            metrics.push_latency.observe, on_failure=task.cancel if task is not None else lambda: None,
            pause=self.push_pause,
        )
        self._writers.add(writer)
        observe_size = metrics.request_bytes.observe
        registered = False
        connected = None
        try:
            try:
                async with asyncio.timeout(self.limits.first_request_timeout):
                    raw = await context.read()
            except TimeoutError:
                await self._refuse(
                    context, stream,
                    Refusal(
                        "first_request_timeout",
                        f"limit: no first request within {self.limits.first_request_timeout:g}s",
                        "deadline",
                    ),
                )
                return
            bucket = RequestBucket(self.limits.requests_per_second, self.limits.request_burst, loop.time())
            while raw is not grpc.aio.EOF:
                observe_size(len(raw))
                refusal = None
                request = None
                # Most requests of an admitted stream only ACK its newest response: known by their bytes.
                plain_ack = stream.plain_ack(raw) if registered else None
                if plain_ack is None:
                    try:
                        request = parse(raw)
                    except Exception:  # a broken client ends its own stream, never the server
                        # The exception's text may quote the client's bytes: it is not passed on.
                        refusal = Refusal("unreadable_request", "unreadable request (not a valid message)", "invalid")
                if refusal is None and not bucket.take(loop.time()):
                    refusal = Refusal(
                        "request_rate",
                        f"limit: at most {self.limits.requests_per_second:g} requests per second on a stream "
                        f"(bursts of {self.limits.request_burst})",
                        "exhausted",
                    )
                elif refusal is None and not registered:
                    refusal = self._admit(stream, identity, request)
                    if refusal is None:
                        refusal = await self._confirm_admission(stream)
                    if refusal is None:
                        registered = True
                        self.cache.watch(stream.group, writer)
                        self.proxies.add(stream)
                        connected = metrics.connected.labels(stream.group, stream.mode)
                        connected.inc()
                outgoing = None
                if refusal is None:
                    try:
                        outgoing = stream.on_request(request, raw) if plain_ack is None else stream.on_plain_ack(plain_ack)
                    except LimitExceeded as error:
                        refusal = _limit_refusal(error, "request_limit")
                    except ProtocolError as error:
                        refusal = Refusal("protocol_error", str(error), "invalid")
                if refusal is not None:
                    # Outside the except clauses and without the request: the abort's traceback must
                    # not keep a large request (or its exception) alive after the stream.
                    raw = request = None
                    await writer.quiesce(_QUIESCE_S)
                    await self._refuse(context, stream, refusal)
                    return
                if outgoing:
                    await writer.send(outgoing)
                writer.schedule_wake()
                raw = request = outgoing = None
                raw = await context.read()
            await writer.quiesce(_QUIESCE_S)
        finally:
            writer.close()
            self._writers.discard(writer)
            self.identities.close(key)
            if registered:
                self.cache.unwatch(stream.group, writer)
                self.proxies.remove(stream)
                if connected is not None:
                    connected.dec()
                self.groups.leave(stream.group)
                metrics.groups.set(len(self.groups))

    async def start(self, address: str = "127.0.0.1:0") -> int:
        """Binds and starts. Raises InsecureAddressError for plain text on a non-loopback address without
        `options.insecure`, TlsError when the certificate files are unusable, OSError when it cannot bind."""
        host = address.rsplit(":", 1)[0]
        options = self.options
        if options.tls is None and not options.insecure and not is_loopback(host):
            raise InsecureAddressError(
                f"plain-text xDS on {host}, which other hosts can reach: anyone there could read every "
                "configuration and secret. Give a server certificate and client CA (mTLS), or opt in to plain text."
            )
        server = grpc.aio.server(
            options=[*self.grpc_options, ("grpc.max_receive_message_length", self.limits.max_request_bytes)]
        )
        server.add_generic_rpc_handlers(self.handlers())
        if options.tls is not None:
            self.tls = CertificateReloader(
                options.tls, options.tls_check_interval,
                on_reload=lambda ok: self.metrics.tls_reloads.labels("ok" if ok else "error").inc(),
            )
            port = server.add_secure_port(address, self.tls.credentials())
        else:
            port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot bind the xDS server to {address}")
        await server.start()
        self._server, self.port = server, port
        self.groups.resume()
        where = host + f":{port}"
        if options.tls is not None:
            log.info(
                "xDS server listening on %s with mTLS (certificate %s, client CA %s; reloaded when they change)",
                where, options.tls.cert, options.tls.client_ca,
            )
        elif is_loopback(host):
            log.info("xDS server listening on %s in plain text: loopback only, no client is authenticated", where)
        else:
            log.warning(
                "xDS server listening on %s in PLAIN TEXT (insecure): any host that reaches it can read every "
                "configuration and secret",
                where,
            )
        if options.admission is None:
            log.info("xDS admission: none given; every client that reaches the port may use any node group")
        else:
            log.info("xDS admission: %d rules (%s)", len(options.admission.rules),
                     ", ".join(rule.name for rule in options.admission.rules))
        return port

    async def stop(self, grace: float = 1.0) -> None:
        """Ends every stream; Envoys keep serving their last accepted configuration."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        # gRPC has cancelled the calls, but their tasks (and their pushes) end only when the loop runs
        # them again, which an embedder closing its loop right after never lets happen.
        for writer in self._writers:
            writer.close()
        self.groups.close()
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None

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
