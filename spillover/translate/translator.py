"""IR → Envoy v3 resources. Pure: same Gateway in, byte-identical resources out; no I/O, no clock.

Request path (all inside Envoy; Python is never on it)::

    HCM (RDS over ADS)
      1. Lua ``spillover.normalize``   x-model/model header → metadata spillover.model,
                                       config-profile/x-aibrix-config-profile → spillover.profile
      2. json_to_metadata              body ``model`` → spillover.model unless a header set it
      3. local_ratelimit               per-route token bucket (requestsPerSecond); 429 + header
      4. Lua ``spillover.prefix_hash`` per-route (prefix-cache only): hash of the prompt prefix
      5. router                        route = (model, profile) on dynamic metadata

Model selection: the ``x-model`` header, then ``model``, then the JSON body's ``model``; the header
wins so that clients which can't rewrite bodies can still choose. Unknown model: 404 with the
OpenAI ``model_not_found`` error naming the model; no model at all: the same 404 with a generic
message.

Profiles: one route per (model, non-default profile) matching spillover.profile, then one route for
the model alone that serves the default profile, no profile and unknown profiles. ``config-profile``
is read before ``x-aibrix-config-profile``. Each route carries its own rate limit; because every
(model, profile) has exactly one route there is exactly one token bucket per (model, profile).

Strategies (``locked_strategy`` > profile's strategy > default profile's strategy):

==================  ==========================================================================
strategy            Envoy mechanism
==================  ==========================================================================
random              ``envoy.load_balancing_policies.random``
round-robin         ``envoy.load_balancing_policies.round_robin`` (EDS weights honoured)
least-request       ``envoy.load_balancing_policies.least_request``, choice_count 2 (P2C);
                    EDS weights dropped: unequal weights would turn P2C into weighted scheduling
least-latency       weighted round robin on a cluster of its own; spillover estimates each
                    endpoint's latency from Envoy's per-host stats (Little's law: in-flight ÷
                    completion rate) and pushes inverse-latency weights over EDS
session-affinity    ``ring_hash`` (or ``maglev``) + route hash_policy on the session header,
                    bounded load via consistent_hashing_lb_config.hash_balance_factor;
                    the local/remote split also hashes (use_hash_policy) so a session stays put
prefix-cache        Lua hashes the first N characters of messages/prompt into
                    ``x-spillover-prefix-hash``; ring_hash on that header with bounded load
throughput          ``least_request`` with capacity weights from EDS: Envoy picks by
                    weight / (active_requests + 1) ** active_request_bias
==================  ==========================================================================

Profiles whose strategies need the same LB policy share one local cluster; otherwise each gets its
own cluster over the same endpoints (one ClusterLoadAssignment per cluster).

Remote backend: a LOGICAL_DNS (hostname) or STATIC (IP) cluster with inline endpoints, TLS with SNI
and CA, health checks and outlier detection. Host rewrite and extra headers sit on the route's
remote weighted-cluster entry; the path prefix and the OAuth2 bearer token are upstream HTTP filters
of the remote cluster (Lua and credential_injector with an SDS generic secret over ADS), so they can
only ever touch requests that go to the remote backend.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    extension_pb2,
    health_check_pb2,
    protocol_pb2,
    substitution_format_string_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.credential_injector.v3 import credential_injector_pb2
from envoy.extensions.filters.http.json_to_metadata.v3 import json_to_metadata_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.http.upstream_codec.v3 import upstream_codec_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.http.injected_credentials.generic.v3 import generic_pb2
from envoy.extensions.load_balancing_policies.common.v3 import common_pb2 as lb_common_pb2
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
from envoy.extensions.load_balancing_policies.random.v3 import random_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as tls_common_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import metadata_pb2 as metadata_matcher_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2, value_pb2
from envoy.type.v3 import percent_pb2, token_bucket_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2
from google.protobuf.message import Message

from spillover.translate import lua
from spillover.translate.ir import (
    STRATEGIES,
    Gateway,
    HealthCheck,
    Model,
    OutlierDetection,
    Profile,
    RemoteBackend,
    StrategyParams,
)

__all__ = [
    "LISTENER_NAME",
    "METADATA_NAMESPACE",
    "PREFIX_HASH_HEADER",
    "RATE_LIMIT_HEADER",
    "ROUTE_CONFIG_NAME",
    "SYSTEM_CA_BUNDLE",
    "Resources",
    "local_cluster_name",
    "remote_cluster_name",
    "translate",
]

LISTENER_NAME = "spillover_http"
ROUTE_CONFIG_NAME = "spillover_routes"
METADATA_NAMESPACE = "spillover"
PREFIX_HASH_HEADER = "x-spillover-prefix-hash"
RATE_LIMIT_HEADER = "x-error-model-rps-exceeded"
# Debian/Ubuntu's bundle; the translator does not look at the filesystem, so this is a convention
# the Envoy image has to honour (or the IR names a ca_file).
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"

TYPE_PREFIX = "type.googleapis.com/"

_NORMALIZE_FILTER = "spillover.normalize"
_PREFIX_HASH_FILTER = "spillover.prefix_hash"
_RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
_CREDENTIAL_FILTER = "envoy.filters.http.credential_injector"
_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_RL_STAT_PREFIX = "spillover_model_rps"
_RL_BODY_KEY = "rate_limit_body"

_ADS = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
)


# -- output ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """Name → message per xDS type, names sorted. Treat the messages as read-only."""

    listeners: Mapping[str, listener_pb2.Listener]
    routes: Mapping[str, route_pb2.RouteConfiguration]
    clusters: Mapping[str, cluster_pb2.Cluster]
    endpoints: Mapping[str, endpoint_pb2.ClusterLoadAssignment]
    secrets: Mapping[str, secret_pb2.Secret]

    def by_type_url(self) -> dict[str, Mapping[str, Message]]:
        return {
            TYPE_PREFIX + cluster_pb2.Cluster.DESCRIPTOR.full_name: self.clusters,
            TYPE_PREFIX + endpoint_pb2.ClusterLoadAssignment.DESCRIPTOR.full_name: self.endpoints,
            TYPE_PREFIX + secret_pb2.Secret.DESCRIPTOR.full_name: self.secrets,
            TYPE_PREFIX + listener_pb2.Listener.DESCRIPTOR.full_name: self.listeners,
            TYPE_PREFIX + route_pb2.RouteConfiguration.DESCRIPTOR.full_name: self.routes,
        }

    def serialized(self) -> dict[str, dict[str, bytes]]:
        """Deterministic wire bytes per type URL and name: what 'byte-identical' is measured on."""
        return {
            type_url: {name: msg.SerializeToString(deterministic=True) for name, msg in items.items()}
            for type_url, items in self.by_type_url().items()
        }


def _frozen(items: dict[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType({name: items[name] for name in sorted(items)})


# -- small helpers -----------------------------------------------------------------------------------


def _any(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed


def _duration(seconds: float, field: str) -> duration_pb2.Duration:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{field} must be a finite number of seconds >= 0, got {seconds!r}")
    nanos = round(seconds * 1_000_000_000)
    return duration_pb2.Duration(seconds=nanos // 1_000_000_000, nanos=nanos % 1_000_000_000)


def _u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _socket(host: str, port: int) -> address_pb2.Address:
    if not host:
        raise ValueError("an address needs a host")
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be in 1-65535, got {port!r} for {host}")
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _stat_name(name: str) -> str:
    # Envoy's stat tag extraction splits on dots; model names like "llama-3.1-8b" have them.
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def _http1_options(http_filters: list[hcm_pb2.HttpFilter] | None = None) -> dict[str, any_pb2.Any]:
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http_protocol_options=protocol_pb2.Http1ProtocolOptions()
        ),
        http_filters=http_filters or [],
    )
    return {_HTTP_PROTOCOL_OPTIONS: _any(options)}


def local_cluster_name(model: str, lb_tag: str) -> str:
    # Model names are kept verbatim (readable in config dumps); the tags never contain "/", so
    # "<model>/local/<tag>" and "<model>/remote" cannot collide across models.
    return f"{model}/local/{lb_tag}"


def remote_cluster_name(model: str) -> str:
    return f"{model}/remote"


# -- strategies ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Lb:
    kind: str  # random | round_robin | least_request | ring_hash | maglev
    weighted: bool = True
    choice_count: int = 2
    bias: float = 1.0
    balance: int = 0
    # least-latency: the endpoints carry latency-derived weights instead of capacity weights, so the
    # strategy gets a cluster (and a ClusterLoadAssignment) of its own.
    latency: bool = False

    @property
    def tag(self) -> str:
        if self.latency:
            return f"{self.kind}_latency"
        if self.kind == "least_request":
            tag = f"least_request_c{self.choice_count}"
            return f"{tag}_w{_number(self.bias).replace('.', '_')}" if self.weighted else tag
        if self.kind in ("ring_hash", "maglev"):
            return f"{self.kind}_b{self.balance}"
        return self.kind

    def policy(self) -> cluster_pb2.LoadBalancingPolicy:
        config: Message
        if self.kind == "random":
            config = random_pb2.Random()
        elif self.kind == "round_robin":
            config = round_robin_pb2.RoundRobin()
        elif self.kind == "least_request":
            config = least_request_pb2.LeastRequest(choice_count=_u32(self.choice_count))
            if self.weighted:
                config.active_request_bias.default_value = self.bias
                config.active_request_bias.runtime_key = "spillover.throughput.active_request_bias"
        elif self.kind == "ring_hash":
            config = ring_hash_pb2.RingHash(consistent_hashing_lb_config=self._consistent())
        else:
            config = maglev_pb2.Maglev(consistent_hashing_lb_config=self._consistent())
        return cluster_pb2.LoadBalancingPolicy(
            policies=[
                cluster_pb2.LoadBalancingPolicy.Policy(
                    typed_extension_config=extension_pb2.TypedExtensionConfig(
                        name=f"envoy.load_balancing_policies.{self.kind}", typed_config=_any(config)
                    )
                )
            ]
        )

    def _consistent(self) -> lb_common_pb2.ConsistentHashingLbConfig:
        return lb_common_pb2.ConsistentHashingLbConfig(hash_balance_factor=_u32(self.balance))


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one (model, profile) is served."""

    strategy: str
    lb: _Lb
    hash_header: str | None = None
    prefix_chars: int = 0


def _plan(strategy: str, params: StrategyParams) -> _Plan:
    consistent = params.consistent_hash
    if strategy in ("session-affinity", "prefix-cache"):
        if consistent not in ("ring_hash", "maglev"):
            raise ValueError(f"consistent_hash must be 'ring_hash' or 'maglev', got {consistent!r}")
        if params.hash_balance_factor < 100:
            raise ValueError(f"hash_balance_factor must be >= 100, got {params.hash_balance_factor!r}")
    if strategy in ("least-request", "throughput") and params.choice_count < 2:
        raise ValueError(f"choice_count must be >= 2, got {params.choice_count!r}")
    if strategy == "random":
        return _Plan(strategy, _Lb("random"))
    if strategy == "round-robin":
        return _Plan(strategy, _Lb("round_robin"))
    if strategy == "least-latency":
        return _Plan(strategy, _Lb("round_robin", latency=True))
    if strategy == "least-request":
        return _Plan(strategy, _Lb("least_request", weighted=False, choice_count=params.choice_count))
    if strategy == "throughput":
        if not math.isfinite(params.active_request_bias) or params.active_request_bias < 0:
            raise ValueError(f"active_request_bias must be >= 0, got {params.active_request_bias!r}")
        return _Plan(
            strategy,
            _Lb("least_request", choice_count=params.choice_count, bias=params.active_request_bias),
        )
    if strategy == "session-affinity":
        if not params.session_header:
            raise ValueError("session-affinity needs a session_header")
        return _Plan(
            strategy,
            _Lb(consistent, balance=params.hash_balance_factor),
            hash_header=params.session_header.lower(),
        )
    if strategy == "prefix-cache":
        if params.prefix_chars < 1:
            raise ValueError(f"prefix_chars must be >= 1, got {params.prefix_chars!r}")
        return _Plan(
            strategy,
            _Lb(consistent, balance=params.hash_balance_factor),
            hash_header=PREFIX_HASH_HEADER,
            prefix_chars=params.prefix_chars,
        )
    raise ValueError(f"unknown routing strategy {strategy!r}; known: {', '.join(STRATEGIES)}")


def _effective_strategy(model: Model, profile: Profile, default: Profile) -> str:
    strategy = model.locked_strategy or profile.strategy or default.strategy
    if not strategy:
        raise ValueError(
            f"model {model.name!r} profile {profile.name!r}: no routing strategy "
            "(no locked strategy, none on the profile, none on the default profile)"
        )
    return strategy


# -- listener ------------------------------------------------------------------------------------------


def _lua_filter(name: str, **kwargs: Any) -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=name, typed_config=_any(lua_pb2.Lua(**kwargs)))


def _listener(gateway: Gateway) -> listener_pb2.Listener:
    json_rules = json_to_metadata_pb2.JsonToMetadata(
        request_rules=json_to_metadata_pb2.JsonToMetadata.MatchRules(
            rules=[
                json_to_metadata_pb2.JsonToMetadata.Rule(
                    selectors=[json_to_metadata_pb2.JsonToMetadata.Selector(key="model")],
                    on_present=json_to_metadata_pb2.JsonToMetadata.KeyValuePair(
                        metadata_namespace=METADATA_NAMESPACE,
                        key="model",
                        preserve_existing_metadata_value=True,
                    ),
                )
            ],
            # The default list is the exact string "application/json"; clients commonly add
            # "; charset=utf-8", and media types are case-insensitive.
            allow_content_types_regex=regex_pb2.RegexMatcher(regex=r"(?i)application/json\s*(;.*)?"),
        )
    )
    filters = [
        _lua_filter(
            _NORMALIZE_FILTER,
            default_source_code=base_pb2.DataSource(inline_string=lua.NORMALIZE),
            clear_route_cache=wrappers_pb2.BoolValue(value=True),
        ),
        hcm_pb2.HttpFilter(name="envoy.filters.http.json_to_metadata", typed_config=_any(json_rules)),
        # No bucket here: only routes with requestsPerSecond carry one (typed_per_filter_config).
        hcm_pb2.HttpFilter(
            name=_RATE_LIMIT_FILTER,
            typed_config=_any(local_rate_limit_pb2.LocalRateLimit(stat_prefix=_RL_STAT_PREFIX)),
        ),
        # Present even if no model uses prefix-cache so that strategy changes never touch LDS
        # (a listener update drains connections); it runs only where a route names its source.
        _lua_filter(
            _PREFIX_HASH_FILTER,
            source_codes={lua.PREFIX_HASH_NAME: base_pb2.DataSource(inline_string=lua.PREFIX_HASH)},
            clear_route_cache=wrappers_pb2.BoolValue(value=False),
        ),
        hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=_any(router_pb2.Router())),
    ]
    # local_ratelimit in 1.40 has no body option and sets no response flag the mappers can see,
    # so the 429 is recognised by status; only that filter answers 429 locally here. The body was
    # rendered (and JSON-escaped) at translation time and travels as route metadata.
    rate_limited = hcm_pb2.ResponseMapper(
        filter=accesslog_pb2.AccessLogFilter(
            status_code_filter=accesslog_pb2.StatusCodeFilter(
                comparison=accesslog_pb2.ComparisonFilter(
                    op=accesslog_pb2.ComparisonFilter.EQ,
                    value=base_pb2.RuntimeUInt32(
                        default_value=429, runtime_key="spillover.rate_limit_status"
                    ),
                )
            )
        ),
        body_format_override=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source=base_pb2.DataSource(
                inline_string=f"%METADATA(ROUTE:{METADATA_NAMESPACE}:{_RL_BODY_KEY})%"
            ),
            content_type="application/json",
        ),
    )
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix="spillover",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=_ADS, route_config_name=ROUTE_CONFIG_NAME),
        http_filters=filters,
        local_reply_config=hcm_pb2.LocalReplyConfig(mappers=[rate_limited]),
    )
    return listener_pb2.Listener(
        name=LISTENER_NAME,
        address=_socket(gateway.listener.address, gateway.listener.port),
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


# -- routes ----------------------------------------------------------------------------------------------


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


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    result = struct_pb2.Struct()
    result.update(values)
    return result


def _json_body(text: str) -> substitution_format_string_pb2.SubstitutionFormatString:
    return substitution_format_string_pb2.SubstitutionFormatString(
        text_format_source=base_pb2.DataSource(inline_string=text), content_type="application/json"
    )


def _openai_error(message: str, type_: str, code: str, param: str | None) -> str:
    return _json({"error": {"message": message, "type": type_, "param": param, "code": code}})


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
        max_tokens=tokens, tokens_per_fill=_u32(per_fill), fill_interval=_duration(interval, "fill_interval")
    )


def _rate_limit(rps: float, burst: float = 0.0) -> any_pb2.Any:
    enabled = percent_pb2.FractionalPercent(numerator=100, denominator=percent_pb2.FractionalPercent.HUNDRED)
    return _any(
        local_rate_limit_pb2.LocalRateLimit(
            stat_prefix=_RL_STAT_PREFIX,
            token_bucket=_token_bucket(rps, burst),
            filter_enabled=base_pb2.RuntimeFractionalPercent(
                default_value=enabled, runtime_key="spillover.model_rps.enabled"
            ),
            filter_enforced=base_pb2.RuntimeFractionalPercent(
                default_value=enabled, runtime_key="spillover.model_rps.enforced"
            ),
            response_headers_to_add=[_header(RATE_LIMIT_HEADER, "true")],
        )
    )


def _retry_policy(model: Model) -> route_components_pb2.RetryPolicy | None:
    retries, timeouts = model.retries, model.timeouts
    if retries.num_retries < 0:
        raise ValueError(f"model {model.name!r}: num_retries must be >= 0")
    if retries.num_retries == 0:
        return None
    if not retries.retry_on:
        raise ValueError(f"model {model.name!r}: retries need at least one retry_on condition")
    policy = route_components_pb2.RetryPolicy(
        retry_on=",".join(retries.retry_on),
        num_retries=_u32(retries.num_retries),
        # A retry should land on another endpoint: the one that just failed is likely still down.
        retry_host_predicate=[
            route_components_pb2.RetryPolicy.RetryHostPredicate(
                name="envoy.retry_host_predicates.previous_hosts",
                typed_config=_any(previous_hosts_pb2.PreviousHostsPredicate()),
            )
        ],
        host_selection_retry_max_attempts=3,
    )
    if timeouts.per_try_s > 0:
        policy.per_try_timeout.CopyFrom(_duration(timeouts.per_try_s, "per_try_s"))
    if timeouts.per_try_idle_s > 0:
        policy.per_try_idle_timeout.CopyFrom(_duration(timeouts.per_try_idle_s, "per_try_idle_s"))
    return policy


def _model_route(
    model: Model, profile: Profile, plan: _Plan, local_cluster: str, match_profile: bool
) -> route_components_pb2.Route:
    matchers = [_metadata_match("model", model.name)]
    if match_profile:
        matchers.append(_metadata_match("profile", profile.name))
    route = route_components_pb2.Route(
        name=f"{model.name}/{profile.name}",
        match=route_components_pb2.RouteMatch(prefix="/", dynamic_metadata=matchers),
    )
    meta: dict[str, Any] = {"model": model.name, "profile": profile.name, "strategy": plan.strategy}
    rps = profile.requests_per_second
    if not math.isfinite(rps) or rps < 0:
        raise ValueError(f"model {model.name!r} profile {profile.name!r}: requests_per_second must be >= 0")
    if rps > 0:
        total = profile.total_requests_per_second or rps
        # Exactly the AIBrix body, key order included: clients compare it as text.
        meta[_RL_BODY_KEY] = _json(
            {
                "error": {
                    "message": f"model: {model.name} has exceeded RPS: {_number(total)}",
                    "type": "rate_limit_error",
                    "code": "rate_limit_exceeded",
                    "param": None,
                }
            }
        )
        route.typed_per_filter_config[_RATE_LIMIT_FILTER].CopyFrom(_rate_limit(rps, profile.burst))
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

    if plan.prefix_chars:
        per_route = lua_pb2.LuaPerRoute(name=lua.PREFIX_HASH_NAME)
        per_route.filter_context.update({"prefix_chars": str(plan.prefix_chars)})
        route.typed_per_filter_config[_PREFIX_HASH_FILTER].CopyFrom(_any(per_route))

    action = route.route
    remote = model.remote
    if split.remote == 0:
        action.cluster = local_cluster
    elif split.local == 0:
        assert remote is not None
        action.cluster = remote_cluster_name(model.name)
        if remote.host_rewrite:
            action.host_rewrite_literal = remote.host_rewrite
        route.request_headers_to_add.extend(_header(k, v) for k, v in remote.headers)
    else:
        assert remote is not None
        weighted = action.weighted_clusters
        weighted.clusters.add(name=local_cluster, weight=_u32(split.local))
        remote_entry = weighted.clusters.add(name=remote_cluster_name(model.name), weight=_u32(split.remote))
        if remote.host_rewrite:
            remote_entry.host_rewrite_literal = remote.host_rewrite
        remote_entry.request_headers_to_add.extend(_header(k, v) for k, v in remote.headers)
        if plan.hash_header:
            # Local-or-remote follows the same hash as the endpoint choice: a session or a prompt
            # prefix keeps its KV cache on one side.
            weighted.use_hash_policy.value = True
    if plan.hash_header:
        action.hash_policy.add().header.header_name = plan.hash_header
    action.timeout.CopyFrom(_duration(model.timeouts.request_s, "request_s"))  # 0s = none (Envoy: 15s)
    retry = _retry_policy(model)
    if retry is not None:
        action.retry_policy.CopyFrom(retry)
    return route


def _not_found_routes() -> list[route_components_pb2.Route]:
    unknown = route_components_pb2.Route(
        name="unknown-model",
        match=route_components_pb2.RouteMatch(prefix="/", dynamic_metadata=[_metadata_match("model", None)]),
    )
    unknown.direct_response.status = 404
    # json_format escapes the client-supplied model name; a text template would let a quote in it
    # break the JSON.
    unknown.direct_response.body_format.json_format.update(
        {
            "error": {
                "message": f"The model `%DYNAMIC_METADATA({METADATA_NAMESPACE}:model)%` does not exist",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        }
    )
    missing = route_components_pb2.Route(
        name="missing-model", match=route_components_pb2.RouteMatch(prefix="/")
    )
    missing.direct_response.status = 404
    missing.direct_response.body_format.CopyFrom(
        _json_body(
            _openai_error(
                "No model given: set the `model` field of the JSON body or the `x-model` header",
                "invalid_request_error",
                "model_not_found",
                "model",
            )
        )
    )
    return [unknown, missing]


# -- clusters --------------------------------------------------------------------------------------------


def _local_cluster(name: str, lb: _Lb, model: Model) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=name,
        alt_stat_name=_stat_name(name),
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(eds_config=_ADS, service_name=name),
        connect_timeout=_duration(model.timeouts.connect_s, "connect_s"),
        load_balancing_policy=lb.policy(),
        typed_extension_protocol_options=_http1_options(),
    )
    # Active checks tell spillover (through Envoy's /clusters) when no local endpoint is ready.
    _add_health(cluster, model.health_check, model.outlier_detection, model.name)
    return cluster


def _load_assignment(name: str, model: Model, lb: _Lb) -> endpoint_pb2.ClusterLoadAssignment:
    weighted = lb.weighted
    seen: set[tuple[str, int]] = set()
    lb_endpoints = []
    for endpoint in sorted(model.endpoints, key=lambda e: (e.host, e.port)):
        key = (endpoint.host, endpoint.port)
        if key in seen:
            raise ValueError(f"model {model.name!r}: endpoint {endpoint.host}:{endpoint.port} listed twice")
        seen.add(key)
        if endpoint.weight < 1 or endpoint.latency_weight < 1:
            raise ValueError(f"model {model.name!r}: endpoint weights must be >= 1 ({endpoint.host}:{endpoint.port})")
        lb_endpoint = endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(address=_socket(endpoint.host, endpoint.port))
        )
        if weighted:
            lb_endpoint.load_balancing_weight.value = endpoint.latency_weight if lb.latency else endpoint.weight
        lb_endpoints.append(lb_endpoint)
    assignment = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    if lb_endpoints:
        assignment.endpoints.add().lb_endpoints.extend(lb_endpoints)
    return assignment


def _add_health(
    cluster: cluster_pb2.Cluster, hc: HealthCheck | None, od: OutlierDetection | None, host: str
) -> None:
    if hc is not None:
        cluster.health_checks.add(
            timeout=_duration(hc.timeout_s, "health_check.timeout_s"),
            interval=_duration(hc.interval_s, "health_check.interval_s"),
            # Envoy probes an idle cluster only every 60 s by default; a remote in STANDBY is idle,
            # and its health must be current at the moment overflow starts.
            no_traffic_interval=_duration(hc.interval_s, "health_check.interval_s"),
            healthy_threshold=_u32(hc.healthy_threshold),
            unhealthy_threshold=_u32(hc.unhealthy_threshold),
            http_health_check=health_check_pb2.HealthCheck.HttpHealthCheck(host=host, path=hc.path),
        )
    if od is not None:
        cluster.outlier_detection.CopyFrom(
            outlier_detection_pb2.OutlierDetection(
                consecutive_5xx=_u32(od.consecutive_5xx),
                interval=_duration(od.interval_s, "outlier_detection.interval_s"),
                base_ejection_time=_duration(od.base_ejection_time_s, "outlier_detection.base_ejection_time_s"),
                max_ejection_percent=_u32(od.max_ejection_percent),
            )
        )


def _remote_cluster(model: Model, remote: RemoteBackend) -> cluster_pb2.Cluster:
    name = remote_cluster_name(model.name)
    if remote.scheme not in ("http", "https"):
        raise ValueError(f"model {model.name!r}: remote scheme must be http or https, got {remote.scheme!r}")
    ip = _is_ip(remote.host)
    cluster = cluster_pb2.Cluster(
        name=name,
        alt_stat_name=_stat_name(name),
        type=cluster_pb2.Cluster.STATIC if ip else cluster_pb2.Cluster.LOGICAL_DNS,
        connect_timeout=_duration(remote.connect_timeout_s, "connect_timeout_s"),
        load_balancing_policy=_Lb("round_robin").policy(),
    )
    if not ip:
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    cluster.load_assignment.cluster_name = name
    cluster.load_assignment.endpoints.add().lb_endpoints.add().endpoint.address.CopyFrom(
        _socket(remote.host, remote.port)
    )
    if remote.scheme == "https":
        sni = remote.sni or ("" if ip else remote.host)
        san = tls_common_pb2.SubjectAltNameMatcher(
            san_type=tls_common_pb2.SubjectAltNameMatcher.DNS
            if sni
            else tls_common_pb2.SubjectAltNameMatcher.IP_ADDRESS,
            matcher=string_pb2.StringMatcher(exact=sni or remote.host),
        )
        context = tls_pb2.UpstreamTlsContext(
            sni=sni,
            common_tls_context=tls_pb2.CommonTlsContext(
                validation_context=tls_common_pb2.CertificateValidationContext(
                    trusted_ca=base_pb2.DataSource(filename=remote.ca_file or SYSTEM_CA_BUNDLE),
                    match_typed_subject_alt_names=[san],
                ),
                alpn_protocols=["http/1.1"],
            ),
        )
        cluster.transport_socket.name = "envoy.transport_sockets.tls"
        cluster.transport_socket.typed_config.CopyFrom(_any(context))
    upstream_filters: list[hcm_pb2.HttpFilter] = []
    prefix = remote.path_prefix.rstrip("/")
    if prefix:
        if not prefix.startswith("/"):
            raise ValueError(
                f"model {model.name!r}: path_prefix must start with '/', got {remote.path_prefix!r}"
            )
        upstream_filters.append(
            _lua_filter(
                "spillover.path_prefix",
                default_source_code=base_pb2.DataSource(inline_string=lua.path_prefix(prefix)),
            )
        )
    if remote.bearer_token_secret_name:
        credential = generic_pb2.Generic(
            credential=secret_pb2.SdsSecretConfig(name=remote.bearer_token_secret_name, sds_config=_ADS)
        )
        injector = credential_injector_pb2.CredentialInjector(
            # The client's own Authorization (meant for this gateway) must never reach the remote.
            overwrite=True,
            credential=extension_pb2.TypedExtensionConfig(
                name="envoy.http.injected_credentials.generic", typed_config=_any(credential)
            ),
        )
        upstream_filters.append(hcm_pb2.HttpFilter(name=_CREDENTIAL_FILTER, typed_config=_any(injector)))
    if upstream_filters:
        upstream_filters.append(
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.upstream_codec",
                typed_config=_any(upstream_codec_pb2.UpstreamCodec()),
            )
        )
    for key, value in _http1_options(upstream_filters).items():
        cluster.typed_extension_protocol_options[key].CopyFrom(value)
    _add_health(cluster, remote.health_check, remote.outlier_detection, remote.host_rewrite or remote.sni or remote.host)
    if remote.health_check is not None or remote.outlier_detection is not None:
        # A remote is usually one host: Envoy's default panic mode (< 50% healthy → use all hosts)
        # would keep sending traffic to it after a health check failed or ejected it.
        cluster.common_lb_config.healthy_panic_threshold.value = 0.0
    return cluster


# -- entry point ----------------------------------------------------------------------------------------


def _check_model(model: Model) -> dict[str, Profile]:
    if not model.name:
        raise ValueError("a model needs a name")
    profiles: dict[str, Profile] = {}
    for profile in model.profiles:
        if not profile.name:
            raise ValueError(f"model {model.name!r}: a profile needs a name")
        if profile.name in profiles:
            raise ValueError(f"model {model.name!r}: profile {profile.name!r} defined twice")
        profiles[profile.name] = profile
    if model.default_profile not in profiles:
        raise ValueError(f"model {model.name!r}: default profile {model.default_profile!r} is not defined")
    split = model.split
    if split.local < 0 or split.remote < 0 or (split.local + split.remote) not in (0, 100):
        raise ValueError(
            f"model {model.name!r}: split must be two non-negative integers summing to 100 (or 0/0), "
            f"got {split.local}/{split.remote}"
        )
    if split.remote > 0 and model.remote is None:
        raise ValueError(f"model {model.name!r}: remote weight {split.remote} but no remote backend")
    return profiles


def translate(gateway: Gateway) -> Resources:
    """Translate one gateway's IR into Envoy resources; raises ValueError on what it can't render."""
    if not gateway.name:
        raise ValueError("a gateway needs a name")
    routes: list[route_components_pb2.Route] = []
    clusters: dict[str, cluster_pb2.Cluster] = {}
    endpoints: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}
    secrets: dict[str, secret_pb2.Secret] = {}
    names = [m.name for m in gateway.models]
    if len(set(names)) != len(names):
        raise ValueError(f"gateway {gateway.name!r}: model names must be unique, got {sorted(names)}")

    for model in sorted(gateway.models, key=lambda m: m.name):
        profiles = _check_model(model)
        default = profiles[model.default_profile]
        # Named profiles first (most specific match wins in route order), the default last.
        ordered = [profiles[n] for n in sorted(profiles) if n != default.name] + [default]
        for profile in ordered:
            plan = _plan(_effective_strategy(model, profile, default), profile.params)
            cluster_name = local_cluster_name(model.name, plan.lb.tag)
            if cluster_name not in clusters:
                clusters[cluster_name] = _local_cluster(cluster_name, plan.lb, model)
                endpoints[cluster_name] = _load_assignment(cluster_name, model, plan.lb)
            routes.append(_model_route(model, profile, plan, cluster_name, profile is not default))
        if model.remote is not None:
            clusters[remote_cluster_name(model.name)] = _remote_cluster(model, model.remote)
            _add_secret(secrets, model.remote)
    routes.extend(_not_found_routes())

    route_config = route_pb2.RouteConfiguration(
        name=ROUTE_CONFIG_NAME,
        virtual_hosts=[route_components_pb2.VirtualHost(name="spillover", domains=["*"], routes=routes)],
    )
    return Resources(
        listeners=_frozen({LISTENER_NAME: _listener(gateway)}),
        routes=_frozen({ROUTE_CONFIG_NAME: route_config}),
        clusters=_frozen(clusters),
        endpoints=_frozen(endpoints),
        secrets=_frozen(secrets),
    )


def _add_secret(secrets: dict[str, secret_pb2.Secret], remote: RemoteBackend) -> None:
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
