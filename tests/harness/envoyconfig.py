"""Small builders for plain Envoy resources fetched over ADS (used by the xDS tests and benchmarks).

Model-aware configuration lives in `spillover.translate`; these are the generic pieces.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, config_source_pb2, substitution_format_string_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2


def ads_source() -> config_source_pb2.ConfigSource:
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def _any(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))


# One line per request: enough to tell why a request failed (the response flags say who answered:
# UH no healthy upstream, NC no cluster, UC upstream connection termination, NR no route, ...).
ACCESS_LOG_FORMAT = (
    "%START_TIME% %RESPONSE_CODE% flags=%RESPONSE_FLAGS% details=%RESPONSE_CODE_DETAILS% "
    "cluster=%UPSTREAM_CLUSTER% host=%UPSTREAM_HOST% attempts=%UPSTREAM_REQUEST_ATTEMPT_COUNT%\n"
)


def file_access_log(path: str) -> accesslog_pb2.AccessLog:
    config = file_pb2.FileAccessLog(
        path=path,
        log_format=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source={"inline_string": ACCESS_LOG_FORMAT}
        ),
    )
    return accesslog_pb2.AccessLog(name="envoy.access_loggers.file", typed_config=_any(config))


def http_listener(
    name: str, host: str, port: int, route_config: str, access_log: str | None = None
) -> listener_pb2.Listener:
    """``access_log``: a file Envoy writes one line per request to (`ACCESS_LOG_FORMAT`)."""
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=name,
        rds=hcm_pb2.Rds(config_source=ads_source(), route_config_name=route_config),
        http_filters=[hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=_any(router_pb2.Router()))],
    )
    if access_log is not None:
        manager.access_log.append(file_access_log(access_log))
    return listener_pb2.Listener(
        name=name,
        address=socket_address(host, port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager", typed_config=_any(manager)
                    )
                ]
            )
        ],
    )


def weighted_route(name: str, weights: Mapping[str, int], prefix: str = "/") -> route_pb2.RouteConfiguration:
    if len(weights) == 1:
        action = route_components_pb2.RouteAction(cluster=next(iter(weights)))
    else:
        action = route_components_pb2.RouteAction(
            weighted_clusters=route_components_pb2.WeightedCluster(
                clusters=[
                    route_components_pb2.WeightedCluster.ClusterWeight(
                        name=cluster, weight=wrappers_pb2.UInt32Value(value=weight)
                    )
                    for cluster, weight in sorted(weights.items())
                ]
            )
        )
    return route_pb2.RouteConfiguration(
        name=name,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name=name,
                domains=["*"],
                routes=[
                    route_components_pb2.Route(
                        match=route_components_pb2.RouteMatch(prefix=prefix), route=action
                    )
                ],
            )
        ],
    )


def eds_cluster(name: str, connect_timeout_s: float = 1.0) -> cluster_pb2.Cluster:
    seconds = int(connect_timeout_s)
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ads_source()),
        connect_timeout=duration_pb2.Duration(seconds=seconds, nanos=int((connect_timeout_s - seconds) * 1e9)),
    )


def endpoints(cluster: str, addresses: Iterable[tuple[str, int]]) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(address=socket_address(host, port))
                    )
                    for host, port in addresses
                ]
            )
        ],
    )
