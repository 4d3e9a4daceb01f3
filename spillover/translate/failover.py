"""Failover inside Envoy: the aggregate clusters that let a model's two sides back each other up.

A model with `failover` has, per local cluster (one per LB tag), two aggregate clusters: local-first
(the local cluster, then the remote) and remote-first (the reverse). The route splits traffic between
them by spillover's decision; when the first member of an aggregate has no healthy host (active health
checks, outlier ejection), Envoy sends its traffic to the second one by itself, within the health-check
interval, whether spillover is running or not. Retries of a failed attempt go to the other side
(`retry_priority: previous_priorities`, see routes).

Envoy runs the upstream HTTP filters of the route's cluster, which is the aggregate, not those of the
member that was chosen. So the remote's request changes (path prefix, host, headers, the OAuth2 token)
are upstream filters of the aggregates, applied per attempt and only when the chosen host is the remote
one: the remote's endpoint carries `spillover.upstream: remote` metadata, a header_mutation filter copies
it into a header for the attempt, a Lua filter applies or undoes the remote's changes (see
`lua.remote_side`), and after the credential injector another Lua filter gives local attempts the
client's own Authorization back.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from spillover.ir import Model, RemoteBackend
from spillover.names import (
    UPSTREAM_METADATA_NAMESPACE,
    UPSTREAM_SIDE_HEADER,
    UPSTREAM_SIDE_KEY,
    UPSTREAM_SIDE_REMOTE,
    local_first_cluster_name,
    remote_cluster_name,
    remote_first_cluster_name,
    stat_name,
)
from spillover.translate import lua
from spillover.translate.clusters import credential_filter, upstream_codec
from spillover.translate.common import http1_options, lua_filter, pack, u32

__all__ = ["aggregate_clusters", "failover_targets"]

REMOTE_SIDE_FILTER = "spillover.remote_side"
LOCAL_CREDENTIALS_FILTER = "spillover.local_credentials"
# Every failed attempt may be retried on the other side at once; Envoy's default of 3 retries in
# flight per cluster would turn a dead side under load into 503s (upstream_rq_retry_overflow).
MAX_RETRIES_IN_FLIGHT = 1024


def failover_targets(model: str, tag: str) -> tuple[str, str]:
    """(local-first, remote-first): the aggregates over the model's local cluster of LB tag `tag`."""
    return local_first_cluster_name(model, tag), remote_first_cluster_name(model, tag)


def _side_header() -> hcm_pb2.HttpFilter:
    mutation = header_mutation_pb2.HeaderMutation(
        mutations=header_mutation_pb2.Mutations(
            request_mutations=[
                mutation_rules_pb2.HeaderMutation(
                    append=base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(
                            key=UPSTREAM_SIDE_HEADER,
                            value=f"%UPSTREAM_METADATA({UPSTREAM_METADATA_NAMESPACE}:{UPSTREAM_SIDE_KEY})%",
                        ),
                        # Overwrites whatever a client sent under that name, even for a local attempt.
                        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                        keep_empty_value=True,
                    )
                )
            ]
        )
    )
    return hcm_pb2.HttpFilter(name="envoy.filters.http.header_mutation", typed_config=pack(mutation))


def _upstream_filters(model: Model, remote: RemoteBackend) -> list[hcm_pb2.HttpFilter]:
    prefix = remote.path_prefix.rstrip("/")
    if prefix and not prefix.startswith("/"):
        raise ValueError(f"model {model.name!r}: path_prefix must start with '/', got {remote.path_prefix!r}")
    token = bool(remote.bearer_token_secret_name)
    script = lua.remote_side(
        UPSTREAM_SIDE_HEADER, UPSTREAM_SIDE_REMOTE, prefix, remote.host_rewrite, remote.headers, token
    )
    filters = [
        _side_header(),
        lua_filter(REMOTE_SIDE_FILTER, default_source_code=base_pb2.DataSource(inline_string=script)),
    ]
    if token:
        assert remote.bearer_token_secret_name is not None
        filters.append(credential_filter(remote.bearer_token_secret_name))
        filters.append(
            lua_filter(
                LOCAL_CREDENTIALS_FILTER,
                default_source_code=base_pb2.DataSource(inline_string=lua.local_credentials()),
            )
        )
    filters.append(upstream_codec())
    return filters


def _aggregate(name: str, members: list[str], filters: list[hcm_pb2.HttpFilter]) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=name,
        alt_stat_name=stat_name(name),
        lb_policy=cluster_pb2.Cluster.CLUSTER_PROVIDED,
        cluster_type=cluster_pb2.Cluster.CustomClusterType(
            name="envoy.clusters.aggregate", typed_config=pack(aggregate_pb2.ClusterConfig(clusters=members))
        ),
        circuit_breakers=circuit_breaker_pb2.CircuitBreakers(
            thresholds=[circuit_breaker_pb2.CircuitBreakers.Thresholds(max_retries=u32(MAX_RETRIES_IN_FLIGHT))]
        ),
    )
    for key, value in http1_options(filters).items():
        cluster.typed_extension_protocol_options[key].CopyFrom(value)
    return cluster


def aggregate_clusters(model: Model, local_cluster: str, tag: str) -> dict[str, cluster_pb2.Cluster]:
    """The two aggregates over `local_cluster` and the model's remote."""
    remote = model.remote
    if remote is None:
        raise ValueError(f"model {model.name!r}: failover needs a remote backend")
    local_first, remote_first = failover_targets(model.name, tag)
    remote_name = remote_cluster_name(model.name)
    filters = _upstream_filters(model, remote)
    return {
        local_first: _aggregate(local_first, [local_cluster, remote_name], filters),
        remote_first: _aggregate(remote_first, [remote_name, local_cluster], filters),
    }

