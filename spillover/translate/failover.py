"""Failover inside Envoy: the aggregate clusters that let a model's two sides back each other up.

A model with `failover` has, per local cluster (one per LB tag), two aggregate clusters: local-first
(the local cluster, then the remote) and remote-first (the reverse). The route splits traffic between
them by spillover's decision; when the first member of an aggregate has no healthy host (active health
checks, outlier ejection), Envoy sends its traffic to the second one by itself, within the health-check
interval, whether spillover is running or not. Retries of a failed attempt go to the other side
(`retry_priority: previous_priorities`, see routes).

Envoy runs the upstream HTTP filters of the route's cluster, which is the aggregate, not those of the
member that was chosen, and the attempts of one request share one request header map: whatever a remote
attempt changed, a local attempt after it would find. The two aggregates deal with that in two ways.

The local-first aggregates, which take the local share (all of a model's traffic in STANDBY), change
nothing: their remote member (`remote_member_cluster_name`) has one host, an Envoy internal listener of
the model (`remote_listener_name`), whose own connection manager applies the remote's host
(host_rewrite_literal, setting x-envoy-original-host to the client's host), path prefix, headers and token
(credential injector) to its own copy of the request and forwards it to the remote cluster. A local
attempt runs no upstream filter: it costs what an aggregate costs. A remote attempt (a retry of a failed
local one, or all traffic once no local host is healthy) pays a second pass through a connection
manager, about as much as a whole request through Envoy; the remote-first aggregates, which take the
spilled share, would pay that on every remote request, so they don't use it. Envoy can't health-check
an internal listener (health checks run on its main thread, internal listeners exist on the workers
only): the member is ejected by outlier detection when the internal listener answers gateway errors
(`remote_listener._member_outlier_detection`), and the internal listener names the condition it met when it could not
reach the remote (`remote_listener.REMOTE_FAILURES`) for the routes' retry policy.

The remote-first aggregates go to the remote cluster itself and apply the remote's request changes per
attempt, only when the chosen host is the remote one: the remote's endpoint carries
`spillover.upstream: remote` metadata, and a header_mutation filter copies it into a header for the
attempt (the routes drop a client's copy) that the matchers below read. So whatever a remote attempt
changed must be undone for a local attempt after it.

A remote that needs only its host (no path prefix, headers or token, `host_only`), the common case, gets
it from Envoy itself: the route has `auto_host_rewrite` and the remote's endpoint a `hostname` (local
endpoints have none, nor has the internal listener, so their attempts keep the host they find). Envoy
applies it when the connection pool is ready, which may be before the upstream filters run (a warm pool)
or after, and it stays in the header map, with the x-envoy-original-host it sets (a remote after a remote
overwrites that with the remote's host). So the route saves the client's :authority and
x-envoy-original-host in dynamic metadata before the first attempt (`common.client_host_config`), and the
remote-first aggregates run a Lua (`lua.client_host`) only on a local attempt that finds the remote's
host, putting the client's back. A route to the local-first aggregates alone (no spill decided, split
weights in the route) needs neither. The remote now sees x-envoy-original-host (the client's host), as
the remote routes without failover (host_rewrite_literal) always did.

Any other remote runs `lua.remote_side` in the remote-first aggregates: a remote attempt saves the
client's headers in dynamic metadata and applies the remote's path prefix, host and headers; with a
token, the credential injector adds it where the Lua removed the client's Authorization, i.e. on the
remote's attempts only. It sits in a `match_delegate` wrapper that skips it on a local attempt that no
remote attempt came before (the side header absent, nothing saved), whose request is already as the
client sent it; a local attempt after a remote one runs it to undo the remote's changes.

An internal listener needs the `envoy.bootstrap.internal_listener` bootstrap extension, which spillover's
bootstrap (`spillover bootstrap`, the chart) has. An Envoy whose bootstrap lacks it refuses the internal
listeners, and its local-first aggregates then have no remote to fail over to: for such a fleet,
`failover_remote: in-place` (`spillover serve --failover-remote in-place`) gives the local-first
aggregates the remote cluster and the remote-first aggregates' upstream filters, as above, and no
internal listener.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import base_pb2, extension_pb2
from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2
from envoy.extensions.matching.input_matchers.metadata.v3 import metadata_pb2 as input_metadata_pb2
from envoy.type.matcher.v3 import http_inputs_pb2, value_pb2
from google.protobuf.message import Message
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import matcher_pb2, string_pb2

from spillover.ir import Model, RemoteBackend
from spillover.names import (
    UPSTREAM_METADATA_NAMESPACE,
    UPSTREAM_SIDE_HEADER,
    UPSTREAM_SIDE_KEY,
    UPSTREAM_SIDE_REMOTE,
    local_first_cluster_name,
    remote_cluster_name,
    remote_first_cluster_name,
    remote_member_cluster_name,
    stat_name,
)
from spillover.translate import lua
from spillover.translate.clusters import credential_filter, upstream_codec
from spillover.translate.common import (
    CLIENT_HOST_KEY,
    CLIENT_HOST_NAMESPACE,
    CLIENT_ORIGINAL_HOST_KEY,
    http1_options,
    lua_filter,
    pack,
    u32,
)

__all__ = [
    "aggregate_clusters",
    "failover_targets",
    "host_only",
]

REMOTE_SIDE_FILTER = "spillover.remote_side"
CLIENT_HOST_RESTORE_FILTER = "spillover.client_host_restore"
SIDE_HEADER_REMOVAL_FILTER = "spillover.no_side_header"
NO_AUTHORIZATION_FILTER = "spillover.no_authorization"
# The Authorization of a request whose client sent none, between the aggregates' first filter and the
# last: it keeps the credential injector off local attempts and never leaves Envoy.
NO_AUTHORIZATION = "spillover-none"
# Every failed attempt may be retried on the other side at once; Envoy's default of 3 retries in
# flight per cluster would turn a dead side under load into 503s (upstream_rq_retry_overflow).
MAX_RETRIES_IN_FLIGHT = 1024



def failover_targets(model: str, tag: str) -> tuple[str, str]:
    """(local-first, remote-first): the aggregates over the model's local cluster of LB tag `tag`."""
    return local_first_cluster_name(model, tag), remote_first_cluster_name(model, tag)


def host_only(remote: RemoteBackend) -> bool:
    """The remote's requests differ from the client's in their host at most: no path prefix, headers
    or token. Its failover routes then rewrite the host natively (auto_host_rewrite) and its
    aggregates run no Lua on the remote's attempts."""
    return not remote.path_prefix.rstrip("/") and not remote.headers and not remote.bearer_token_secret_name


def _mutation(*mutations: mutation_rules_pb2.HeaderMutation) -> hcm_pb2.HttpFilter:
    config = header_mutation_pb2.HeaderMutation(
        mutations=header_mutation_pb2.Mutations(request_mutations=list(mutations))
    )
    return hcm_pb2.HttpFilter(name="envoy.filters.http.header_mutation", typed_config=pack(config))


def _side_header(token: bool) -> hcm_pb2.HttpFilter:
    side = mutation_rules_pb2.HeaderMutation(
        append=base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(
                key=UPSTREAM_SIDE_HEADER,
                value=f"%UPSTREAM_METADATA({UPSTREAM_METADATA_NAMESPACE}:{UPSTREAM_SIDE_KEY})%",
            ),
            # Empty for a local host, and then not set at all: its absence is what lets the matchers
            # below skip the Lua. A remote attempt removes it again (its Lua, or a header_mutation).
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
    )
    if not token:
        return _mutation(side)
    # The credential injector can't sit in a match_delegate (Envoy 1.40 crashes loading it), so it runs
    # on every attempt, adding the token only where there is no Authorization: the Lua removes it on
    # the remote's attempts, and a request without one carries this placeholder past the injector,
    # removed after it.
    placeholder = mutation_rules_pb2.HeaderMutation(
        append=base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key="authorization", value=NO_AUTHORIZATION),
            append_action=base_pb2.HeaderValueOption.ADD_IF_ABSENT,
        )
    )
    return _mutation(side, placeholder)


def _predicate(
    input_name: str, input_config: Message, value: Message
) -> matcher_pb2.Matcher.MatcherList.Predicate:
    Predicate = matcher_pb2.Matcher.MatcherList.Predicate
    single = Predicate.SinglePredicate(
        input=xds_extension_pb2.TypedExtensionConfig(name=input_name, typed_config=pack(input_config))
    )
    if isinstance(value, string_pb2.StringMatcher):
        single.value_match.CopyFrom(value)
    else:
        single.custom_match.CopyFrom(
            xds_extension_pb2.TypedExtensionConfig(
                name="envoy.matching.matchers.metadata_matcher", typed_config=pack(value)
            )
        )
    return Predicate(single_predicate=single)


def _not(predicate: matcher_pb2.Matcher.MatcherList.Predicate) -> matcher_pb2.Matcher.MatcherList.Predicate:
    return matcher_pb2.Matcher.MatcherList.Predicate(not_matcher=predicate)


def _remote_attempt() -> matcher_pb2.Matcher.MatcherList.Predicate:
    """This attempt goes to the remote: the side header says so."""
    return _predicate(
        "envoy.matching.inputs.request_headers",
        http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=UPSTREAM_SIDE_HEADER),
        string_pb2.StringMatcher(exact=UPSTREAM_SIDE_REMOTE),
    )


def _state(key: str, value: value_pb2.ValueMatcher) -> matcher_pb2.Matcher.MatcherList.Predicate:
    """The remote-side Lua's dynamic metadata (lua.UPSTREAM_STATE) at `key` matches `value`."""
    path = [network_inputs_pb2.DynamicMetadataInput.PathSegment(key=key)]
    return _predicate(
        "envoy.matching.inputs.dynamic_metadata",
        network_inputs_pb2.DynamicMetadataInput(filter=lua.UPSTREAM_STATE, path=path),
        input_metadata_pb2.Metadata(value=value),
    )


def _skip_when(
    name: str, filter_config: hcm_pb2.HttpFilter, predicate: matcher_pb2.Matcher.MatcherList.Predicate
) -> hcm_pb2.HttpFilter:
    """`filter_config` wrapped so that it does not run on an attempt `predicate` matches. The negations
    are spelled out as not_matcher: a missing header or metadata key makes a single predicate false."""
    matcher = matcher_pb2.Matcher(
        matcher_list=matcher_pb2.Matcher.MatcherList(
            matchers=[
                matcher_pb2.Matcher.MatcherList.FieldMatcher(
                    predicate=predicate,
                    on_match=matcher_pb2.Matcher.OnMatch(
                        action=xds_extension_pb2.TypedExtensionConfig(
                            name="skip", typed_config=pack(skip_action_pb2.SkipFilter())
                        )
                    ),
                )
            ]
        )
    )
    wrapped = extension_matcher_pb2.ExtensionWithMatcher(
        xds_matcher=matcher,
        extension_config=extension_pb2.TypedExtensionConfig(
            name=filter_config.name, typed_config=filter_config.typed_config
        ),
    )
    return hcm_pb2.HttpFilter(name=name, typed_config=pack(wrapped))


def _host_only_filters(remote: RemoteBackend) -> list[hcm_pb2.HttpFilter]:
    """The remote's attempts get its host from Envoy (route auto_host_rewrite, endpoint hostname),
    whether the connection pool is ready before the upstream filters run or after. That rewrite (and
    the x-envoy-original-host it sets) stays in the header map for a local attempt after it: the
    local attempt that finds the remote's host there runs lua.client_host, which puts back what the
    route saved before the first attempt. No other attempt runs a Lua."""
    if not remote.host_rewrite:
        # Nothing to apply, nothing to undo.
        return []
    restore = lua_filter(
        CLIENT_HOST_RESTORE_FILTER,
        default_source_code=base_pb2.DataSource(
            inline_string=lua.client_host(CLIENT_HOST_NAMESPACE, CLIENT_HOST_KEY, CLIENT_ORIGINAL_HOST_KEY)
        ),
    )
    remote_host = _predicate(
        "envoy.matching.inputs.request_headers",
        http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=":authority"),
        string_pb2.StringMatcher(exact=remote.host_rewrite),
    )
    # Skipped unless the attempt is local and carries the remote's host. The restore comes before the
    # side header's removal below, which would make a remote attempt look local to its matcher.
    not_a_local_retry = matcher_pb2.Matcher.MatcherList.Predicate(
        or_matcher=matcher_pb2.Matcher.MatcherList.Predicate.PredicateList(
            predicate=[_remote_attempt(), _not(remote_host)]
        )
    )
    # The side header is for the matchers only: it never reaches the remote. Removed on every attempt
    # (a local attempt has none: a no-op), which costs less than a matcher deciding whether to.
    no_side = _mutation(mutation_rules_pb2.HeaderMutation(remove=UPSTREAM_SIDE_HEADER))
    no_side.name = SIDE_HEADER_REMOVAL_FILTER
    return [
        _side_header(token=False),
        _skip_when(CLIENT_HOST_RESTORE_FILTER, restore, not_a_local_retry),
        no_side,
        upstream_codec(),
    ]


def _upstream_filters(model: Model, remote: RemoteBackend) -> list[hcm_pb2.HttpFilter]:
    if host_only(remote):
        return _host_only_filters(remote)
    prefix = remote.path_prefix.rstrip("/")
    if prefix and not prefix.startswith("/"):
        raise ValueError(f"model {model.name!r}: path_prefix must start with '/', got {remote.path_prefix!r}")
    token = bool(remote.bearer_token_secret_name)
    script = lua.remote_side(
        UPSTREAM_SIDE_HEADER,
        UPSTREAM_SIDE_REMOTE,
        prefix,
        remote.host_rewrite,
        remote.headers,
        token,
        NO_AUTHORIZATION,
    )
    remote_side = lua_filter(
        REMOTE_SIDE_FILTER, default_source_code=base_pb2.DataSource(inline_string=script)
    )
    # Skipped when the attempt is local and no remote attempt saved the client's headers before it.
    untouched = matcher_pb2.Matcher.MatcherList.Predicate(
        and_matcher=matcher_pb2.Matcher.MatcherList.Predicate.PredicateList(
            predicate=[
                _not(_remote_attempt()),
                _not(_state("client", value_pb2.ValueMatcher(present_match=True))),
            ]
        )
    )
    filters = [_side_header(token), _skip_when(REMOTE_SIDE_FILTER, remote_side, untouched)]
    if token:
        assert remote.bearer_token_secret_name is not None
        filters.append(credential_filter(remote.bearer_token_secret_name, overwrite=False))
        placeholder = _predicate(
            "envoy.matching.inputs.request_headers",
            http_inputs_pb2.HttpRequestHeaderMatchInput(header_name="authorization"),
            string_pb2.StringMatcher(exact=NO_AUTHORIZATION),
        )
        remove = _mutation(mutation_rules_pb2.HeaderMutation(remove="authorization"))
        filters.append(_skip_when(NO_AUTHORIZATION_FILTER, remove, _not(placeholder)))
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
            thresholds=[
                circuit_breaker_pb2.CircuitBreakers.Thresholds(max_retries=u32(MAX_RETRIES_IN_FLIGHT))
            ]
        ),
    )
    for key, value in http1_options(filters).items():
        cluster.typed_extension_protocol_options[key].CopyFrom(value)
    return cluster


def aggregate_clusters(
    model: Model, local_cluster: str, tag: str, through_listener: bool = True
) -> dict[str, cluster_pb2.Cluster]:
    """The two aggregates over `local_cluster` and the model's remote: local-first over the internal
    listener's member (no upstream filters), remote-first over the remote cluster (with them). Without
    `through_listener` (`failover_remote: in-place`) both go to the remote cluster, with the filters."""
    remote = model.remote
    if remote is None:
        raise ValueError(f"model {model.name!r}: failover needs a remote backend")
    local_first, remote_first = failover_targets(model.name, tag)
    remote_name = remote_cluster_name(model.name)
    filters = _upstream_filters(model, remote)
    if through_listener:
        local = _aggregate(local_first, [local_cluster, remote_member_cluster_name(model.name)], [])
    else:
        local = _aggregate(local_first, [local_cluster, remote_name], filters)
    return {local_first: local, remote_first: _aggregate(remote_first, [remote_name, local_cluster], filters)}
