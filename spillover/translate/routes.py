"""Routes: the two slow-path catches, one route per (model, profile), then the 404s (spillover.translate.
route_table puts them in the table).

Model selection: the ``x-model`` header, then ``model``, then the JSON body's ``model``; the header
wins so that clients which can't rewrite bodies can still choose. Unknown model: 404 with the OpenAI
``model_not_found`` error naming the model; no model at all: the same 404 with a generic message.

Profiles: one route per (model, non-default profile) matching ``config-profile``, then one route for
the model alone that serves the default profile, no profile and unknown profiles. ``config-profile``
is read before ``x-aibrix-config-profile``. Each route carries its own rate limit; because every
(model, profile) has exactly one route there is exactly one token bucket per (model, profile).

The common case is cheap: model routes are found by ``x-model`` (the table's map), match
``config-profile`` and switch the listener's json_to_metadata and Lua normaliser off, so a request that
names its model in ``x-model`` is routed without Lua and without buffering its body. A JSON request that
names its model in the body only first matches ``body-model``, which switches json_to_metadata and the
normaliser off and the body-model Lua on: it reads the body's top-level ``model`` (not the whole body,
as json_to_metadata's parse did) into ``x-model``, and the route is chosen again.
Any other request first matches a route that leaves them on: ``model`` without ``x-model``,
``x-aibrix-config-profile`` without ``config-profile``, or no ``x-model`` and a media type only
json_to_metadata reads (``missing-model``); the normaliser writes the model and profile it finds into
``x-model`` / ``config-profile`` and the route is chosen again.

Host rewrite and extra headers of a remote backend sit on the route's remote weighted-cluster entry
(or on the route when all traffic goes remote), so they only touch requests sent there.

With the splits in Envoy's runtime (`runtime_weights`), a model with a remote always has both
weighted-cluster entries, with `runtime_key_prefix` and the fallback weights (all local), whatever its
split; the split becomes runtime entries (`runtime_split`) in the gateway's one Runtime resource, so a
flip changes no route, and the route table's bytes (and Envoy's token buckets) stay as they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.config.route.v3.route_components_pb2 import FilterConfig, HeaderMatcher
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.type.matcher.v3 import metadata_pb2 as metadata_matcher_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2, value_pb2
from envoy.type.v3 import percent_pb2, token_bucket_pb2
from google.protobuf import any_pb2, struct_pb2

from spillover.ir import Model, Profile, TrafficSplit
from spillover.names import (
    METADATA_NAMESPACE,
    PREFIX_HASH_HEADER,
    RATE_LIMIT_HEADER,
    SPLIT_RUNTIME_PREFIX,
    UPSTREAM_SIDE_HEADER,
    rate_limit_stat_prefix,
    remote_cluster_name,
    route_stat_prefix,
    split_runtime_key,
)
from spillover.translate import lua
from spillover.translate.common import (
    BODY_MODEL_FILTER,
    CLIENT_HOST_FILTER,
    JSON_TO_METADATA_FILTER,
    NORMALIZE_FILTER,
    PREFIX_HASH_FILTER,
    RATE_LIMIT_BODY_KEY,
    RATE_LIMIT_FILTER,
    ROUTE_CONFIGURED_FILTERS,
    client_host_config,
    compact_json,
    duration,
    header,
    pack,
    u32,
)
from spillover.translate.failover import host_only
from spillover.translate.retries import retry_policy
from spillover.translate.strategies import Serving

__all__ = [
    "FALLBACK_SPLIT",
    "JSON_CONTENT_TYPE_REGEX",
    "model_route",
    "not_found_routes",
    "runtime_split",
    "slow_path_routes",
    "uses_prefix_hash",
]

# What a route whose weights come from runtime sends where runtime says nothing: all local.
FALLBACK_SPLIT = TrafficSplit(100, 0)

# The JSON content types the body path reads: lower-case `application/json`, parameters allowed.
JSON_CONTENT_TYPE_REGEX = r"application/json\s*(;.*)?"

# The request headers routes match on (lua.NORMALIZE writes the first and the third).
MODEL_HEADER, MODEL_HEADER_ALT = "x-model", "model"
PROFILE_HEADER, PROFILE_HEADER_AIBRIX = "config-profile", "x-aibrix-config-profile"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _metadata_match(key: str, exact: str | None) -> metadata_matcher_pb2.MetadataMatcher:
    value = value_pb2.ValueMatcher()
    if exact is None:
        value.present_match = True
    else:
        value.string_match.exact = exact
    return metadata_matcher_pb2.MetadataMatcher(
        filter=METADATA_NAMESPACE,
        path=[metadata_matcher_pb2.MetadataMatcher.PathSegment(key=key)],
        value=value,
    )


def _header_match(name: str, exact: str | None = None, absent: bool = False) -> HeaderMatcher:
    """``exact``: that value; ``absent``: no such header; neither: present and not empty."""
    if exact is not None:
        return HeaderMatcher(name=name, string_match=string_pb2.StringMatcher(exact=exact))
    if absent:
        return HeaderMatcher(name=name, present_match=True, invert_match=True)
    return HeaderMatcher(
        name=name, string_match=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".+"))
    )


def _fast_path(route: route_components_pb2.Route) -> None:
    """The headers decided: no body buffering and no Lua for this route's requests."""
    for name in (JSON_TO_METADATA_FILTER, NORMALIZE_FILTER):
        route.typed_per_filter_config[name].CopyFrom(pack(FilterConfig(disabled=True)))


def _slow_path(route: route_components_pb2.Route, prefix_hash: bool) -> None:
    """A body-routed request's chain is built on this route, before the normaliser finds its model's
    route: the filters that only a model route configures must be in it (off by default, listener.py).
    Envoy enables a filter for a route only by a config of it (a FilterConfig without one is refused),
    so each gets one that does nothing here; when they run, after the normaliser, they read the model
    route's instead (or find none there and do nothing). `prefix_hash`: some model route configures
    spillover.prefix_hash (`uses_prefix_hash`); without one it stays out of every chain, which saves a
    body-routed request its Lua (about 5k of Envoy's instructions, benchmarks/results/datapath-prefix-hash-off.md)."""
    assert set(ROUTE_CONFIGURED_FILTERS) == {PREFIX_HASH_FILTER, CLIENT_HOST_FILTER}
    if prefix_hash:
        route.typed_per_filter_config[PREFIX_HASH_FILTER].CopyFrom(pack(lua_pb2.LuaPerRoute(disabled=True)))
    # Envoy refuses a per-route header_to_metadata without rules; saving the client's host for a 404
    # (this route's own answer) is harmless.
    route.typed_per_filter_config[CLIENT_HOST_FILTER].CopyFrom(pack(client_host_config()))


def uses_prefix_hash(routes: Iterable[route_components_pb2.Route]) -> bool:
    """Whether a model's routes turn spillover.prefix_hash on (a prefix-cache strategy): then the slow-path
    routes must put it in the chain (`_slow_path`)."""
    return any(PREFIX_HASH_FILTER in route.typed_per_filter_config for route in routes)


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(values)
    return result


def _json_body(text: str) -> substitution_format_string_pb2.SubstitutionFormatString:
    return substitution_format_string_pb2.SubstitutionFormatString(
        text_format_source=base_pb2.DataSource(inline_string=text), content_type="application/json"
    )


def _openai_error(message: str, type_: str, code: str, param: str | None) -> str:
    return compact_json({"error": {"message": message, "type": type_, "param": param, "code": code}})


# -- rate limits ---------------------------------------------------------------------------------------


def _token_bucket(rps: float, burst: float = 0.0) -> token_bucket_pb2.TokenBucket:
    if float(rps).is_integer():
        tokens, per_fill, interval = int(rps), int(rps), 1.0
    else:
        # A fractional share (50 rps over 3 replicas) stays exact as `per_fill` tokens every
        # per_fill/rps seconds; Envoy's minimum fill interval is 50 ms, which sets per_fill.
        per_fill = math.ceil(rps * 0.05)
        tokens, interval = math.ceil(rps), per_fill / rps
    if burst:
        if not math.isfinite(burst) or burst < 0:
            raise ValueError(f"burst must be a finite number >= 0, got {burst!r}")
        # The bucket's size is the burst; it can't be smaller than one fill.
        tokens = max(math.ceil(burst), per_fill)
    return token_bucket_pb2.TokenBucket(
        max_tokens=tokens, tokens_per_fill=u32(per_fill), fill_interval=duration(interval, "fill_interval")
    )


def _rate_limit(stat_prefix: str, rps: float, burst: float = 0.0) -> any_pb2.Any:
    enabled = percent_pb2.FractionalPercent(numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED)
    return pack(
        local_rate_limit_pb2.LocalRateLimit(
            # Its own stats per model and profile: the 429s of one model are not everyone's.
            stat_prefix=stat_prefix,
            token_bucket=_token_bucket(rps, burst),
            filter_enabled=base_pb2.RuntimeFractionalPercent(
                default_value=enabled, runtime_key="spillover.model_rps.enabled"
            ),
            filter_enforced=base_pb2.RuntimeFractionalPercent(
                default_value=enabled, runtime_key="spillover.model_rps.enforced"
            ),
            response_headers_to_add=[header(RATE_LIMIT_HEADER, "true")],
        )
    )


def _rate_limit_body(model: Model, total: float) -> str:
    # Exactly the AIBrix body, key order included: clients compare it as text.
    return compact_json(
        {
            "error": {
                "message": f"model: {model.name} has exceeded RPS: {_number(total)}",
                "type": "rate_limit_error",
                "code": "rate_limit_exceeded",
                "param": None,
            }
        }
    )


# -- routes ------------------------------------------------------------------------------------------


def model_route(
    model: Model,
    profile: Profile,
    serving: Serving,
    local_cluster: str,
    match_profile: bool,
    failover: tuple[str, str] | None = None,
    runtime_weights: bool = False,
    through_listener: bool = True,
) -> route_components_pb2.Route:
    """`failover`: the (local-first, remote-first) aggregates the split goes to instead of the local and
    remote clusters; the remote's host and headers are then the aggregates' business; `through_listener`:
    the local-first aggregates reach the remote through its internal listener (`failover_remote`, see
    spillover.translate.failover). `runtime_weights`:
    a model with a remote gets weighted clusters whose weights Envoy reads from runtime (see
    `runtime_split`), the route carrying only the fallback (all local): the same route whatever the split."""
    # No `x-model` condition: the route table's map found these routes by an exact lookup of that header
    # (route_table.py), so matching it again would cost every request a header lookup for nothing.
    matchers = []
    if match_profile:
        matchers.append(_header_match(PROFILE_HEADER, profile.name))
    route = route_components_pb2.Route(
        name=f"{model.name}/{profile.name}",
        match=route_components_pb2.RouteMatch(prefix="/", headers=matchers),
        # Per-route stats (requests, codes, latency), tagged with the model and profile.
        stat_prefix=route_stat_prefix(model.name, profile.name),
    )
    _fast_path(route)
    meta: dict[str, Any] = {"model": model.name, "profile": profile.name, "strategy": serving.strategy}
    rps = profile.requests_per_second
    if not math.isfinite(rps) or rps < 0:
        raise ValueError(f"model {model.name!r} profile {profile.name!r}: requests_per_second must be >= 0")
    if rps > 0:
        meta[RATE_LIMIT_BODY_KEY] = _rate_limit_body(model, profile.total_requests_per_second or rps)
        route.typed_per_filter_config[RATE_LIMIT_FILTER].CopyFrom(
            _rate_limit(rate_limit_stat_prefix(model.name, profile.name), rps, profile.burst)
        )
    route.metadata.filter_metadata[METADATA_NAMESPACE].CopyFrom(_struct(meta))

    split = model.split
    if split.local == 0 and split.remote == 0:
        route.direct_response.status = 503
        route.direct_response.body_format.CopyFrom(
            _json_body(
                _openai_error(
                    f"The model `{model.name}` has no available backend",
                    "server_error",
                    "model_unavailable",
                    "model",
                )
            )
        )
        return route

    if serving.prefix_chars:
        per_route = lua_pb2.LuaPerRoute(name=lua.PREFIX_HASH_NAME)
        per_route.filter_context.update({"prefix_chars": str(serving.prefix_chars)})
        route.typed_per_filter_config[PREFIX_HASH_FILTER].CopyFrom(pack(per_route))
    else:
        # What the normaliser does on the slow path (lua.PREFIX_HASH does it on prefix-cache routes).
        route.request_headers_to_remove.append(PREFIX_HASH_HEADER)

    action = route.route
    remote = model.remote
    if runtime_weights and remote is not None:
        # Decided in runtime, not here: the route is the fallback (all local), both entries always there.
        split = FALLBACK_SPLIT
    listener_failures = False
    if failover is not None:
        local_first, remote_first = failover
        # The remote-first aggregates' upstream filters take the side of an attempt from this header,
        # which they set only for the remote's attempts: a client's copy must not make a local attempt
        # look remote. The internal listener answers with it why it could not reach the remote: that
        # is for the retry policy, not for the client.
        route.request_headers_to_remove.append(UPSTREAM_SIDE_HEADER)
        # Only a route with a local share (the local-first aggregates) can reach the internal listener
        # (with the splits in runtime, split is the fallback: all local).
        listener_failures = through_listener and split.local > 0
        if listener_failures:
            route.response_headers_to_remove.append(UPSTREAM_SIDE_HEADER)
        assert remote is not None
        only_local_first = split.remote == 0 and not runtime_weights
        if remote.host_rewrite and host_only(remote) and not (only_local_first and through_listener):
            # The remote-first aggregates' remote attempts take its host from its endpoint's hostname
            # (local endpoints and the local-first aggregates' remote member have none), so a remote
            # that needs nothing else costs no Lua. The client's host is saved first, for a local retry
            # after a remote attempt (see failover.py). A route to the local-first aggregates alone
            # needs neither when they go through the internal listener: their attempts never change the
            # request.
            action.auto_host_rewrite.value = True
            route.typed_per_filter_config[CLIENT_HOST_FILTER].CopyFrom(pack(client_host_config()))
        if only_local_first:
            action.cluster = local_first
        elif split.local == 0:
            action.cluster = remote_first
        else:
            weighted = action.weighted_clusters
            if runtime_weights:
                weighted.runtime_key_prefix = SPLIT_RUNTIME_PREFIX
            weighted.clusters.add(name=local_first, weight=u32(split.local))
            weighted.clusters.add(name=remote_first, weight=u32(split.remote))
            if serving.hash_header:
                weighted.use_hash_policy.value = True
    elif split.remote == 0 and not (runtime_weights and remote is not None):
        action.cluster = local_cluster
    elif split.local == 0:
        assert remote is not None
        action.cluster = remote_cluster_name(model.name)
        if remote.host_rewrite:
            action.host_rewrite_literal = remote.host_rewrite
        route.request_headers_to_add.extend(header(k, v) for k, v in remote.headers)
    else:
        assert remote is not None
        weighted = action.weighted_clusters
        if runtime_weights:
            weighted.runtime_key_prefix = SPLIT_RUNTIME_PREFIX
        weighted.clusters.add(name=local_cluster, weight=u32(split.local))
        remote_entry = weighted.clusters.add(name=remote_cluster_name(model.name), weight=u32(split.remote))
        if remote.host_rewrite:
            remote_entry.host_rewrite_literal = remote.host_rewrite
        remote_entry.request_headers_to_add.extend(header(k, v) for k, v in remote.headers)
        if serving.hash_header:
            # Local-or-remote follows the same hash as the endpoint choice: a session or a prompt
            # prefix keeps its KV cache on one side.
            weighted.use_hash_policy.value = True
    if serving.hash_header:
        action.hash_policy.add().header.header_name = serving.hash_header
    action.timeout.CopyFrom(duration(model.timeouts.request_s, "request_s"))  # 0s = none (Envoy: 15s)
    retry = retry_policy(model, listener_failures)
    if retry is not None:
        action.retry_policy.CopyFrom(retry)
    return route


def runtime_split(model: Model, targets: tuple[str, str]) -> dict[str, int]:
    """The runtime entries of a model whose routes take their weights from runtime: for its (local,
    remote) targets, the split's weights; none when the split is the routes' fallback (all local), so the
    Runtime resource holds only the models that spill, and a model's return to all-local removes its keys
    (Envoy then uses the route's weights). A split of 0/0 is no weight (Envoy refuses a zero total):
    it stays in the route, as a 503."""
    split = model.split
    if model.remote is None or split == FALLBACK_SPLIT or split.local + split.remote == 0:
        return {}
    local, remote = targets
    return {split_runtime_key(local): split.local, split_runtime_key(remote): split.remote}


def _missing_model_reply(route: route_components_pb2.Route) -> None:
    route.direct_response.status = 404
    route.direct_response.body_format.CopyFrom(
        _json_body(
            _openai_error(
                "No model given: set the `model` field of the JSON body or the `x-model` header",
                "invalid_request_error",
                "model_not_found",
                "model",
            )
        )
    )


def slow_path_routes(prefix_hash: bool) -> list[route_components_pb2.Route]:
    """First in the table: requests whose model or profile is in a header the model routes don't match.
    They keep the normaliser on, which moves the value into ``x-model`` / ``config-profile`` (never
    empty) so that the route chosen again is not this one; the 404 is only a guard. `prefix_hash`: as
    `_slow_path`'s."""
    model_header = route_components_pb2.Route(
        name="normalize-model-header",
        match=route_components_pb2.RouteMatch(
            prefix="/", headers=[_header_match(MODEL_HEADER, absent=True), _header_match(MODEL_HEADER_ALT)]
        ),
    )
    # The header decides the model: the body is not needed.
    model_header.typed_per_filter_config[JSON_TO_METADATA_FILTER].CopyFrom(pack(FilterConfig(disabled=True)))
    _slow_path(model_header, prefix_hash)
    _missing_model_reply(model_header)
    aibrix_profile = route_components_pb2.Route(
        name="normalize-profile-header",
        match=route_components_pb2.RouteMatch(
            prefix="/",
            headers=[_header_match(PROFILE_HEADER, absent=True), _header_match(PROFILE_HEADER_AIBRIX)],
        ),
    )
    _slow_path(aibrix_profile, prefix_hash)
    _missing_model_reply(aibrix_profile)
    return [model_header, aibrix_profile]


def not_found_routes(prefix_hash: bool) -> list[route_components_pb2.Route]:
    """The 404s, ``body-model`` and ``missing-model``; `prefix_hash`: as `_slow_path`'s."""
    unknown = route_components_pb2.Route(
        name="unknown-model",
        match=route_components_pb2.RouteMatch(prefix="/", headers=[_header_match(MODEL_HEADER)]),
    )
    _fast_path(unknown)
    unknown.direct_response.status = 404
    # json_format escapes the client-supplied model name; a text template would let a quote in it
    # break the JSON.
    unknown.direct_response.body_format.json_format.update(
        {
            "error": {
                "message": f"The model `%REQ({MODEL_HEADER})%` does not exist",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        }
    )
    # A body model no header can carry (lua.NORMALIZE left it in metadata only) is no model's name.
    unknown_body = route_components_pb2.Route(
        name="unknown-body-model",
        match=route_components_pb2.RouteMatch(prefix="/", dynamic_metadata=[_metadata_match("model", None)]),
    )
    unknown_body.direct_response.status = 404
    unknown_body.direct_response.body_format.json_format.update(
        {
            "error": {
                "message": f"The model `%DYNAMIC_METADATA({METADATA_NAMESPACE}:model)%` does not exist",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        }
    )
    # A JSON body decides the model alone: the listener's body-model Lua copies it into x-model. Only
    # lower-case `application/json`, so that the route's
    # condition is simple; any other spelling json_to_metadata accepts (`Application/JSON`) falls
    # through to `missing-model` and its slow path, which routes it the same.
    body_model = route_components_pb2.Route(
        name="body-model",
        match=route_components_pb2.RouteMatch(
            prefix="/",
            headers=[
                HeaderMatcher(
                    name="content-type",
                    string_match=string_pb2.StringMatcher(
                        safe_regex=regex_pb2.RegexMatcher(regex=JSON_CONTENT_TYPE_REGEX)
                    ),
                )
            ],
        ),
    )
    # The listener's body-model Lua is off by default: naming its source turns it on. It reads the
    # model itself, so json_to_metadata (and its parse of the whole body) is off here.
    body_model.typed_per_filter_config[BODY_MODEL_FILTER].CopyFrom(
        pack(lua_pb2.LuaPerRoute(name=lua.BODY_MODEL_NAME))
    )
    for name in (JSON_TO_METADATA_FILTER, NORMALIZE_FILTER):
        body_model.typed_per_filter_config[name].CopyFrom(pack(FilterConfig(disabled=True)))
    # Body-routed requests land here first: their chain, built on this route, needs the filters only
    # model routes configure.
    _slow_path(body_model, prefix_hash)
    _missing_model_reply(body_model)
    missing = route_components_pb2.Route(
        name="missing-model", match=route_components_pb2.RouteMatch(prefix="/")
    )
    # Where a request that names its model only in its body lands first.
    _slow_path(missing, prefix_hash)
    _missing_model_reply(missing)
    return [unknown, unknown_body, body_model, missing]
