"""Clusters, their load assignments and the secrets they reference.

Local: one EDS cluster per LB policy a model's profiles need (see `strategies`), each with its own
ClusterLoadAssignment over the model's endpoints, with the model's active health checks (they tell
spillover, through Envoy's /clusters, when no local endpoint is ready) and outlier detection.

Remote backend: a LOGICAL_DNS (hostname) or STATIC (IP) cluster with inline endpoints, TLS with SNI
and CA, health checks and outlier detection. The path prefix and the OAuth2 bearer token are upstream
HTTP filters of the remote cluster (Lua and credential_injector with an SDS generic secret over ADS),
so they can only ever touch requests that go to the remote backend.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2, extension_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.filters.http.credential_injector.v3 import credential_injector_pb2
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.http.injected_credentials.generic.v3 import generic_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.type.matcher.v3 import string_pb2

from spillover.ir import HealthCheck, Model, OutlierDetection, RemoteBackend
from spillover.names import (
    UPSTREAM_METADATA_NAMESPACE,
    UPSTREAM_SIDE_KEY,
    UPSTREAM_SIDE_REMOTE,
    remote_cluster_name,
    stat_name,
)
from spillover.translate import lua
from spillover.translate.common import (
    ADS,
    CREDENTIAL_FILTER,
    address,
    duration,
    http1_options,
    is_ip,
    lua_filter,
    pack,
    u32,
)
from spillover.translate.strategies import LbPolicy

__all__ = [
    "SYSTEM_CA_BUNDLE",
    "add_bearer_secret",
    "credential_filter",
    "load_assignment",
    "local_cluster",
    "remote_cluster",
    "upstream_codec",
]

# Debian/Ubuntu's bundle; the translator does not look at the filesystem, so this is a convention
# the Envoy image has to honour (or the IR names a ca_file).
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


# -- local -------------------------------------------------------------------------------------------


def local_cluster(name: str, lb: LbPolicy, model: Model) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=name,
        alt_stat_name=stat_name(name),
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=ADS, service_name=name),
        connect_timeout=duration(model.timeouts.connect_s, "connect_s"),
        load_balancing_policy=lb.policy(),
        typed_extension_protocol_options=http1_options(),
    )
    # Active checks tell spillover (through Envoy's /clusters) when no local endpoint is ready.
    _add_health(cluster, model.health_check, model.outlier_detection, model.name)
    if model.failover:
        # Below Envoy's default panic threshold (50% healthy) the cluster would send to its unhealthy
        # hosts as well; with a remote to fall over to, only healthy hosts take traffic.
        cluster.common_lb_config.healthy_panic_threshold.value = 0.0
    return cluster


def load_assignment(name: str, model: Model, lb: LbPolicy) -> endpoint_pb2.ClusterLoadAssignment:
    weighted = lb.weighted
    seen: set[tuple[str, int]] = set()
    lb_endpoints = []
    for endpoint in sorted(model.endpoints, key=lambda e: (e.host, e.port)):
        key = (endpoint.host, endpoint.port)
        if key in seen:
            raise ValueError(f"model {model.name!r}: endpoint {endpoint.host}:{endpoint.port} listed twice")
        seen.add(key)
        if endpoint.weight < 1 or endpoint.latency_weight < 1:
            raise ValueError(
                f"model {model.name!r}: endpoint weights must be >= 1 ({endpoint.host}:{endpoint.port})"
            )
        lb_endpoint = endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=address(endpoint.host, endpoint.port))
        )
        _health_port(lb_endpoint.endpoint, model.health_check)
        if weighted:
            weight = endpoint.latency_weight if lb.latency else endpoint.weight
            lb_endpoint.load_balancing_weight.value = weight
        lb_endpoints.append(lb_endpoint)
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    if lb_endpoints:
        assignment.endpoints.add().lb_endpoints.extend(lb_endpoints)
    if model.failover:
        # Envoy moves a share of traffic to the next priority (the remote) as soon as fewer than 72% of
        # the hosts are healthy (overprovisioning 140%). spillover's states say all-local until no local
        # host is ready (FAILOVER), so one healthy host must count as a healthy level: n x 100%.
        assignment.policy.overprovisioning_factor.value = 100 * max(1, len(lb_endpoints))
    return assignment


# -- health ------------------------------------------------------------------------------------------


def _health_port(endpoint: endpoint_components_pb2.Endpoint, hc: HealthCheck | None) -> None:
    # Envoy's HealthCheck has no port: the override is per endpoint (Simplismart's healthcheck.port).
    if hc is not None and hc.port is not None:
        if not 1 <= hc.port <= 65535:
            raise ValueError(f"health check port must be 1-65535, got {hc.port}")
        endpoint.health_check_config.port_value = hc.port


def _add_health(
    cluster: cluster_pb2.Cluster, hc: HealthCheck | None, od: OutlierDetection | None, host: str
) -> None:
    if hc is not None:
        cluster.health_checks.add(
            timeout=duration(hc.timeout_s, "health_check.timeout_s"),
            interval=duration(hc.interval_s, "health_check.interval_s"),
            # Envoy probes an idle cluster only every 60 s by default; a remote in STANDBY is idle,
            # and its health must be current at the moment overflow starts.
            no_traffic_interval=duration(hc.interval_s, "health_check.interval_s"),
            healthy_threshold=u32(hc.healthy_threshold),
            unhealthy_threshold=u32(hc.unhealthy_threshold),
            http_health_check=health_check_pb2.HealthCheck.HttpHealthCheck(host=host, path=hc.path),
        )
    if od is not None:
        cluster.outlier_detection.CopyFrom(
            outlier_detection_pb2.OutlierDetection(
                consecutive_5xx=u32(od.consecutive_5xx),
                interval=duration(od.interval_s, "outlier_detection.interval_s"),
                base_ejection_time=duration(
                    od.base_ejection_time_s, "outlier_detection.base_ejection_time_s"
                ),
                max_ejection_percent=u32(od.max_ejection_percent),
            )
        )


# -- remote ------------------------------------------------------------------------------------------


def _upstream_tls(remote: RemoteBackend, ip: bool) -> tls_pb2.UpstreamTlsContext:
    sni = remote.sni or ("" if ip else remote.host)
    san = tls_common_pb2.SubjectAltNameMatcher(
        san_type=tls_common_pb2.SubjectAltNameMatcher.DNS
        if sni
        else tls_common_pb2.SubjectAltNameMatcher.IP_ADDRESS,
        matcher=string_pb2.StringMatcher(exact=sni or remote.host),
    )
    return tls_pb2.UpstreamTlsContext(
        sni=sni,
        common_tls_context=tls_pb2.CommonTlsContext(
            validation_context=tls_common_pb2.CertificateValidationContext(
                trusted_ca=base_pb2.DataSource(filename=remote.ca_file or SYSTEM_CA_BUNDLE),
                match_typed_subject_alt_names=[san],
            ),
            alpn_protocols=["http/1.1"],
        ),
    )


def credential_filter(secret_name: str, overwrite: bool = True) -> hcm_pb2.HttpFilter:
    """Adds the SDS generic secret `secret_name` ("Bearer <token>") as Authorization; with `overwrite`
    false, only when the request has none (the caller removes the client's first)."""
    credential = generic_pb2.Generic(credential=secret_pb2.SdsSecretConfig(name=secret_name, sds_config=ADS))
    injector = credential_injector_pb2.CredentialInjector(
        # The client's own Authorization (meant for this gateway) must never reach the remote.
        overwrite=overwrite,
        credential=extension_pb2.TypedExtensionConfig(
            name="envoy.http.injected_credentials.generic", typed_config=pack(credential)
        ),
    )
    return hcm_pb2.HttpFilter(name=CREDENTIAL_FILTER, typed_config=pack(injector))


def upstream_codec() -> hcm_pb2.HttpFilter:
    """The terminal filter of every upstream filter chain."""
    return hcm_pb2.HttpFilter(
        name="envoy.filters.http.upstream_codec", typed_config=pack(upstream_codec_pb2.UpstreamCodec())
    )


def _upstream_filters(model: Model, remote: RemoteBackend) -> list[hcm_pb2.HttpFilter]:
    filters: list[hcm_pb2.HttpFilter] = []
    prefix = remote.path_prefix.rstrip("/")
    if prefix:
        if not prefix.startswith("/"):
            raise ValueError(
                f"model {model.name!r}: path_prefix must start with '/', got {remote.path_prefix!r}"
            )
        filters.append(
            lua_filter(
                "spillover.path_prefix",
                default_source_code=base_pb2.DataSource(inline_string=lua.path_prefix(prefix)),
            )
        )
    if remote.bearer_token_secret_name:
        filters.append(credential_filter(remote.bearer_token_secret_name))
    if filters:
        filters.append(upstream_codec())
    return filters


def remote_cluster(model: Model, remote: RemoteBackend) -> cluster_pb2.Cluster:
    name = remote_cluster_name(model.name)
    if remote.scheme not in ("http", "https"):
        raise ValueError(f"model {model.name!r}: remote scheme must be http or https, got {remote.scheme!r}")
    ip = is_ip(remote.host)
    cluster = cluster_pb2.Cluster(
        name=name,
        alt_stat_name=stat_name(name),
        type=cluster_pb2.Cluster.STATIC if ip else cluster_pb2.Cluster.LOGICAL_DNS,
        connect_timeout=duration(remote.connect_timeout_s, "connect_timeout_s"),
        load_balancing_policy=LbPolicy("round_robin").policy(),
    )
    if not ip:
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    cluster.load_assignment.cluster_name = name
    endpoint = cluster.load_assignment.endpoints.add().lb_endpoints.add()
    endpoint.endpoint.address.CopyFrom(address(remote.host, remote.port))
    _health_port(endpoint.endpoint, remote.health_check)
    if model.failover:
        # Marks this host for the aggregates' upstream filters: an attempt that lands here gets the
        # remote's path prefix, host, headers and token (see spillover.translate.failover).
        endpoint.metadata.filter_metadata[UPSTREAM_METADATA_NAMESPACE].update(
            {UPSTREAM_SIDE_KEY: UPSTREAM_SIDE_REMOTE}
        )
        if remote.host_rewrite:
            # For the routes' auto_host_rewrite, where the remote needs no other change (failover.py).
            endpoint.endpoint.hostname = remote.host_rewrite
    if remote.scheme == "https":
        cluster.transport_socket.name = "envoy.transport_sockets.tls"
        cluster.transport_socket.typed_config.CopyFrom(pack(_upstream_tls(remote, ip)))
    # With failover the remote is only ever reached through the remote-first aggregates, whose filters
    # apply, and the internal listener, which applies them itself (failover.py).
    filters = [] if model.failover else _upstream_filters(model, remote)
    for key, value in http1_options(filters).items():
        cluster.typed_extension_protocol_options[key].CopyFrom(value)
    probe_host = remote.host_rewrite or remote.sni or remote.host
    _add_health(cluster, remote.health_check, remote.outlier_detection, probe_host)
    if remote.health_check is not None or remote.outlier_detection is not None:
        # A remote is usually one host: Envoy's default panic mode (< 50% healthy → use all hosts)
        # would keep sending traffic to it after a health check failed or ejected it.
        cluster.common_lb_config.healthy_panic_threshold.value = 0.0
    return cluster


# -- secrets -----------------------------------------------------------------------------------------


def add_bearer_secret(secrets: dict[str, secret_pb2.Secret], remote: RemoteBackend) -> None:
    """Adds the remote's "Bearer <token>" SDS secret; one name given two tokens is refused."""
    name = remote.bearer_token_secret_name
    if not name or remote.bearer_token is None:
        # No token yet: Envoy keeps the secret pending until the token fetcher supplies it.
        return
    secret = secret_pb2.Secret(
        name=name,
        generic_secret=secret_pb2.GenericSecret(
            secret=base_pb2.DataSource(inline_string=f"Bearer {remote.bearer_token}")
        ),
    )
    existing = secrets.get(name)
    if existing is not None and existing != secret:
        raise ValueError(f"secret {name!r} is given two different token values")
    secrets[name] = secret
