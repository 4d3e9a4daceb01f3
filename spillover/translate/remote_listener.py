"""The local-first aggregates' way to a failover model's remote (see spillover.translate.failover): a member
cluster whose one host is an Envoy internal listener of the model, which applies the remote's host, path
prefix, headers and token to its own copy of the request and forwards it to the remote cluster. Local
attempts then never find a remote attempt's changes in the request they share."""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.internal_upstream.v3 import internal_upstream_pb2
from envoy.extensions.transport_sockets.raw_buffer.v3 import raw_buffer_pb2

from spillover.ir import Model, RemoteBackend
from spillover.names import (
    UPSTREAM_SIDE_HEADER,
    remote_cluster_name,
    remote_listener_name,
    remote_member_cluster_name,
    stat_name,
)
from spillover.translate.clusters import credential_filter
from spillover.translate.common import duration, header, http1_options, pack, u32
from spillover.translate.strategies import LbPolicy

__all__ = ["INTERNAL_LISTENER_EXTENSION", "REMOTE_FAILURES", "remote_side"]

# The bootstrap extension without which Envoy refuses an internal listener.
INTERNAL_LISTENER_EXTENSION = "envoy.bootstrap.internal_listener"
# What the internal listener says in UPSTREAM_SIDE_HEADER when it could not reach the remote: the retry
# condition an outer attempt at the remote itself would have met, by the response flags of its 503.
REMOTE_FAILURES: dict[str, tuple[str, ...]] = {
    # Upstream connection failure; no healthy upstream (the remote cluster's health check failed it,
    # or its outlier detection ejected it): an aggregate would have gone to its other member.
    "connect-failure": ("UF", "UH"),
    "reset": ("UR", "UC"),  # upstream reset / connection termination before the response
}


def _member_outlier_detection(remote: RemoteBackend) -> outlier_detection_pb2.OutlierDetection | None:
    """The member is ejected (the aggregates fail over, without a retry per request) once the internal
    listener answered as many gateway errors in a row as the remote's health check needs failures: the
    remote unreachable, failed by its health check or ejected (503), or answering 502-504 itself. Envoy
    can't health-check the member itself: its checks run on the main thread, which has no internal
    listeners (they exist on the workers only)."""
    hc, od = remote.health_check, remote.outlier_detection
    if hc is None and od is None:
        return None
    failures = hc.unhealthy_threshold if hc is not None else od.consecutive_5xx  # type: ignore[union-attr]
    seconds = hc.interval_s if hc is not None else od.base_ejection_time_s  # type: ignore[union-attr]
    field = "health_check.interval_s" if hc is not None else "outlier_detection.base_ejection_time_s"
    every = duration(seconds, field)
    return outlier_detection_pb2.OutlierDetection(
        consecutive_gateway_failure=u32(failures),
        enforcing_consecutive_gateway_failure=u32(100),
        # Only the rule above: the remote's own 5xx and success rate are the remote cluster's business.
        enforcing_consecutive_5xx=u32(0),
        enforcing_success_rate=u32(0),
        interval=every,
        # Back after one interval, however often it was ejected: the remote cluster's health check says
        # when the remote is back, and the next attempt finds out.
        base_ejection_time=every,
        max_ejection_time=every,
        max_ejection_percent=u32(100),
    )


def _member(model: Model, remote: RemoteBackend) -> cluster_pb2.Cluster:
    """The aggregates' remote member: one host, the model's internal listener."""
    name = remote_member_cluster_name(model.name)
    cluster = cluster_pb2.Cluster(
        name=name,
        alt_stat_name=stat_name(name),
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration(remote.connect_timeout_s, "connect_timeout_s"),
        load_balancing_policy=LbPolicy("round_robin").policy(),
    )
    cluster.load_assignment.cluster_name = name
    endpoint = cluster.load_assignment.endpoints.add().lb_endpoints.add().endpoint
    endpoint.address.CopyFrom(
        address_pb2.Address(
            envoy_internal_address=address_pb2.EnvoyInternalAddress(
                server_listener_name=remote_listener_name(model.name)
            )
        )
    )
    cluster.transport_socket.name = "envoy.transport_sockets.internal_upstream"
    cluster.transport_socket.typed_config.CopyFrom(
        pack(
            internal_upstream_pb2.InternalUpstreamTransport(
                transport_socket=base_pb2.TransportSocket(
                    name="envoy.transport_sockets.raw_buffer", typed_config=pack(raw_buffer_pb2.RawBuffer())
                )
            )
        )
    )
    outlier = _member_outlier_detection(remote)
    if outlier is not None:
        cluster.outlier_detection.CopyFrom(outlier)
        # One host: Envoy's panic mode (< 50% healthy -> use all hosts) would undo its ejection.
        cluster.common_lb_config.healthy_panic_threshold.value = 0.0
    for key, value in http1_options().items():
        cluster.typed_extension_protocol_options[key].CopyFrom(value)
    return cluster


def _remote_failure_replies() -> list[hcm_pb2.ResponseMapper]:
    return [
        hcm_pb2.ResponseMapper(
            filter=accesslog_pb2.AccessLogFilter(
                response_flag_filter=accesslog_pb2.ResponseFlagFilter(flags=list(flags))
            ),
            headers_to_add=[header(UPSTREAM_SIDE_HEADER, condition)],
        )
        for condition, flags in REMOTE_FAILURES.items()
    ]


def _listener(model: Model, remote: RemoteBackend) -> listener_pb2.Listener:
    name = remote_listener_name(model.name)
    action = route_components_pb2.RouteAction(cluster=remote_cluster_name(model.name))
    # The outer route's timeouts (request, per try) bound the attempt; none of its own here.
    action.timeout.SetInParent()
    if remote.host_rewrite:
        # Sets x-envoy-original-host to the client's host, as the remote routes without failover do.
        action.host_rewrite_literal = remote.host_rewrite
    prefix = remote.path_prefix.rstrip("/")
    if prefix:
        if not prefix.startswith("/"):
            raise ValueError(f"model {model.name!r}: path_prefix must start with '/', got {remote.path_prefix!r}")
        # "/v1/chat" -> "<prefix>/v1/chat", as the remote cluster's path_prefix Lua does without failover.
        action.prefix_rewrite = prefix + "/"
    route = route_components_pb2.Route(
        name="remote",
        match=route_components_pb2.RouteMatch(prefix="/"),
        route=action,
        request_headers_to_add=[header(k, v) for k, v in remote.headers],
    )
    filters = []
    if remote.bearer_token_secret_name:
        # The client's Authorization (meant for this gateway) is replaced by the remote's token.
        filters.append(credential_filter(remote.bearer_token_secret_name, overwrite=True))
    filters.append(hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router())))
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_name(name),
        codec_type=hcm_pb2.HttpConnectionManager.HTTP1,
        route_config=route_pb2.RouteConfiguration(
            name=name,
            virtual_hosts=[route_components_pb2.VirtualHost(name="remote", domains=["*"], routes=[route])],
        ),
        http_filters=filters,
        local_reply_config=hcm_pb2.LocalReplyConfig(mappers=_remote_failure_replies()),
    )
    # The outer Envoy's timeouts apply to the attempt.
    manager.stream_idle_timeout.SetInParent()
    return listener_pb2.Listener(
        name=name,
        internal_listener=listener_pb2.Listener.InternalListenerConfig(),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager", typed_config=pack(manager)
                    )
                ]
            )
        ],
    )


def remote_side(model: Model) -> tuple[cluster_pb2.Cluster, listener_pb2.Listener]:
    """The local-first aggregates' remote member and the internal listener it points at."""
    remote = model.remote
    if remote is None:
        raise ValueError(f"model {model.name!r}: failover needs a remote backend")
    return _member(model, remote), _listener(model, remote)
