"""The naming contract: every name that one stage writes into Envoy's config and another reads back.

The translator names clusters, stats, routes and secrets; the metric sources find those clusters again
in Envoy's stats (`/stats`, Prometheus) and in its endpoint health (`/clusters`); the controller matches
health to models. Each name is defined here once, so the writer and the readers cannot drift apart.
Pure string functions: no protobuf, no policy types.
"""

from __future__ import annotations

import hashlib
import re

__all__ = [
    "COPY_REPLICAS_SERIES",
    "DESTINATION_REACHABLE_SERIES",
    "ENVOY_CLUSTER_METRIC_PREFIX",
    "ENVOY_RATE_LIMITED_METRIC",
    "ENVOY_ROUTE_METRIC_PREFIX",
    "EVALUATION_SERIES",
    "FAILOVER_REMOTE",
    "LB_TAG_REGEX",
    "LISTENER_NAME",
    "METADATA_NAMESPACE",
    "MODEL_INFO_SERIES",
    "MODEL_METRIC_ERRORS_SERIES",
    "MODEL_METRIC_THRESHOLD_SERIES",
    "MODEL_METRIC_VALUE_SERIES",
    "MODEL_REMOTE_SHARE_SERIES",
    "MODEL_STATE_SERIES",
    "MODEL_TAG",
    "MODEL_TIME_IN_STATE_SERIES",
    "MODEL_TRANSITIONS_SERIES",
    "POLICY_ERRORS_SERIES",
    "PREFIX_HASH_HEADER",
    "PROFILE_TAG",
    "RATE_LIMIT_HEADER",
    "RATE_LIMIT_STAT_PREFIX",
    "ROUTE_CONFIG_NAME",
    "SIDE_LOCAL",
    "SIDE_REMOTE",
    "SIDE_TAG",
    "SPLIT_RUNTIME_LAYER",
    "SPLIT_RUNTIME_PREFIX",
    "SPLIT_WEIGHTS",
    "STATS_TAGS",
    "STRATEGIES",
    "UPSTREAM_METADATA_NAMESPACE",
    "UPSTREAM_SIDE_HEADER",
    "UPSTREAM_SIDE_KEY",
    "UPSTREAM_SIDE_REMOTE",
    "VIRTUAL_HOST_NAME",
    "XDS_ACKS_SERIES",
    "XDS_CONNECTED_SERIES",
    "XDS_NACKS_SERIES",
    "XDS_PUSHES_SERIES",
    "XDS_PUSH_LATENCY_SERIES",
    "XDS_RESOURCES_SERIES",
    "XDS_RESPONSES_SERIES",
    "XDS_SYNC_SERIES",
    "bearer_secret_name",
    "is_local_cluster",
    "is_local_cluster_stat_name",
    "lb_tag",
    "local_cluster_name",
    "local_cluster_prefix",
    "local_cluster_stat_prefix",
    "local_cluster_stat_regex",
    "local_first_cluster_name",
    "model_label",
    "rate_limit_stat_prefix",
    "re2_escape",
    "remote_cluster_name",
    "remote_first_cluster_name",
    "remote_listener_name",
    "remote_member_cluster_name",
    "route_stat_prefix",
    "split_runtime_key",
    "stat_name",
]

# -- the strategy vocabulary (AIBrix's names) --------------------------------------------------------

STRATEGIES: tuple[str, ...] = (
    "random",
    "round-robin",
    "least-request",
    "least-latency",
    "session-affinity",
    "prefix-cache",
    "throughput",
)

# -- listener, routes, metadata, headers ----------------------------------------------------------------

LISTENER_NAME = "spillover_http"
ROUTE_CONFIG_NAME = "spillover_routes"
VIRTUAL_HOST_NAME = "spillover"
# The dynamic-metadata namespace the model and profile are matched in.
METADATA_NAMESPACE = "spillover"
PREFIX_HASH_HEADER = "x-spillover-prefix-hash"
RATE_LIMIT_HEADER = "x-error-model-rps-exceeded"
RATE_LIMIT_STAT_PREFIX = "spillover_model_rps"

# -- split weights in Envoy's runtime (`splitWeights: runtime`) ------------------------------------------

# Where a route's local/remote split lives: "route" (in the route, the default) or "runtime" (in the
# Runtime resource SPLIT_RUNTIME_LAYER, which Envoy takes over RTDS through an `rtds_layer` of its
# bootstrap's `layered_runtime`; the route carries the fallback weights only).
SPLIT_WEIGHTS = ("route", "runtime")
SPLIT_RUNTIME_LAYER = "spillover_split"
# A weighted cluster's runtime_key_prefix: Envoy reads the weight of cluster C from `<prefix>.<C>`.
SPLIT_RUNTIME_PREFIX = "spillover.split"


def split_runtime_key(cluster: str) -> str:
    return f"{SPLIT_RUNTIME_PREFIX}.{cluster}"

# -- load-balancing tags: which local cluster of a model serves which LB policy -----------------------

# Every tag `lb_tag` can produce, and nothing that contains "/" or "_local_" (see is_local_cluster*).
LB_TAG_REGEX = r"(random|round_robin(_latency)?|least_request_c[0-9]+(_w[0-9_]+)?|ring_hash_b[0-9]+|maglev_b[0-9]+)"
_LB_TAG = re.compile(LB_TAG_REGEX)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def lb_tag(
    kind: str,
    *,
    latency: bool = False,
    weighted: bool = True,
    choice_count: int = 2,
    bias: float = 1.0,
    balance: int = 0,
) -> str:
    """The tag of a local cluster: profiles whose LB policies have one tag share one cluster.

    kind: random | round_robin | least_request | ring_hash | maglev. `latency` marks least-latency's
    cluster of its own (its endpoints carry latency weights)."""
    if latency:
        return f"{kind}_latency"
    if kind == "least_request":
        tag = f"least_request_c{choice_count}"
        return f"{tag}_w{_number(bias).replace('.', '_')}" if weighted else tag
    if kind in ("ring_hash", "maglev"):
        return f"{kind}_b{balance}"
    return kind


# -- clusters ---------------------------------------------------------------------------------------------


def local_cluster_name(model: str, tag: str) -> str:
    # Model names are kept verbatim (readable in config dumps); the tags never contain "/", so
    # "<model>/local/<tag>" and "<model>/remote" cannot collide across models.
    return f"{model}/local/{tag}"


def local_cluster_prefix(model: str) -> str:
    return local_cluster_name(model, "")


def is_local_cluster(name: str, model: str) -> bool:
    """True when `name` is one of the model's local clusters (one per LB tag)."""
    prefix = local_cluster_prefix(model)
    return name.startswith(prefix) and _LB_TAG.fullmatch(name[len(prefix):]) is not None


def remote_cluster_name(model: str) -> str:
    return f"{model}/remote"


# -- failover inside Envoy: aggregate clusters over the two sides ---------------------------------------
#
# A model whose remote can take traffic is routed to two aggregate clusters per local cluster: one tries
# the local side first and falls over to the remote, the other the reverse. The route's weighted split
# between them is spillover's decision; which side answers when one has no healthy host is Envoy's.

_LOCAL_FIRST = "local-first"
_REMOTE_FIRST = "remote-first"


def local_first_cluster_name(model: str, tag: str) -> str:
    return f"{model}/{_LOCAL_FIRST}/{tag}"


def remote_first_cluster_name(model: str, tag: str) -> str:
    return f"{model}/{_REMOTE_FIRST}/{tag}"


# The remote backend's endpoint carries this metadata, and the remote-first aggregates' upstream filters
# copy it into UPSTREAM_SIDE_HEADER for each attempt: the remote's path prefix, host, headers and
# credentials are applied only to attempts that go to the remote (spillover.translate.failover).
UPSTREAM_METADATA_NAMESPACE = "spillover"
UPSTREAM_SIDE_KEY = "upstream"
UPSTREAM_SIDE_REMOTE = "remote"
UPSTREAM_SIDE_HEADER = "x-spillover-upstream"


# The local-first aggregates reach the remote through an Envoy internal listener of the model, which
# applies the remote's host, path prefix, headers and token to its own copy of the request: their
# remote member points at it, and it forwards to the remote cluster (remote_cluster_name).
def remote_member_cluster_name(model: str) -> str:
    # Not "<model>/remote": its stats carry no model or side tag (STATS_TAGS), so that a remote request is
    # counted once, on the remote cluster.
    return f"{model}/remote-member"


def remote_listener_name(model: str) -> str:
    return f"{model}/remote"


# How the local-first aggregates reach the remote (`failoverRemote`): "internal-listener" (the default, as
# above), or "in-place" (the remote cluster itself, the remote's request changes applied per attempt by
# the aggregates' upstream filters, as the remote-first aggregates always do) for Envoys whose bootstrap
# lacks the internal listener extension, which refuse the internal listeners.
FAILOVER_REMOTE = ("internal-listener", "in-place")


# -- stats ------------------------------------------------------------------------------------------------


def stat_name(name: str) -> str:
    """A cluster's `alt_stat_name`: Envoy's stat tag extraction splits on dots, and model names such as
    "llama-3.1-8b" have them."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)


def local_cluster_stat_prefix(model: str) -> str:
    return stat_name(local_cluster_prefix(model))


def re2_escape(value: str) -> str:
    """Escape RE2 metacharacters only (re.escape also escapes "-", which reads badly in PromQL)."""
    return re.sub(r"([.^$*+?()\[\]{}|\\])", r"\\\1", value)


def local_cluster_stat_regex(model: str) -> str:
    """RE2 (PromQL) regex matching the stat names of all local clusters of the model, and of its
    local-first aggregates (see `is_local_cluster_stat_name`)."""
    return re2_escape(stat_name(model)) + f"_local(-first)?_{LB_TAG_REGEX}"


def is_local_cluster_stat_name(name: str, prefix: str) -> bool:
    """True when `name` is one of the local clusters of the model whose stat prefix is `prefix`, or one
    of its local-first aggregates: Envoy counts a request's router stats (upstream_rq_time,
    upstream_rq_<code>) on the route's cluster, which is the aggregate, while connection-pool stats
    (upstream_rq_active, upstream_rq_total) stay on the local cluster; read together they are the local
    side's stats.

    A plain prefix test would also take "a_local_x_local_random" (model "a_local_x") for model "a";
    tags never contain "_local_", so such names are refused.
    """
    prefixes = [prefix]
    if prefix.endswith("_local_"):
        prefixes.append(prefix.removesuffix("_local_") + f"_{_LOCAL_FIRST}_")
    for candidate in prefixes:
        if name.startswith(candidate):
            tag = name[len(candidate):]
            if tag and "_local_" not in tag and "_local-" not in tag and re.fullmatch(r"[A-Za-z0-9_-]+", tag):
                return True
    return False


# -- per-model stats: the tags Prometheus sees as labels -------------------------------------------------
#
# Envoy names its stats by dotted paths and turns the parts its tag extractors recognise into labels
# (Prometheus: `/stats/prometheus`). A model's stats carry it in one of three shapes:
#
#   cluster.<M>_local_<tag>.<stat>                 a local cluster            model=M side=local
#   cluster.<M>_remote.<stat>                      the remote cluster         model=M side=remote
#   cluster.<M>_local-first_<tag>.<stat>           an aggregate (failover)    model=M
#   vhost.spillover.route.<M>@<P>.<stat>           the route of profile P     model=M profile=P
#   spillover_model_rps.<M>@<P>.http_local_rate_limit.<stat>   its rate limit  model=M profile=P
#
# where M and P are `stat_name`s (no dots: Envoy splits on them). The bootstrap gives Envoy STATS_TAGS,
# so `envoy_cluster_upstream_rq_total{model="m", side="remote"}` is one metric for every model, and
# Envoy's own tags (envoy_cluster_name, envoy_response_code_class, ...) stay as they were.

MODEL_TAG = "model"
PROFILE_TAG = "profile"
SIDE_TAG = "side"
SIDE_LOCAL = "local"
SIDE_REMOTE = "remote"
# Between model and profile in route and rate-limit stats: `stat_name` never produces it, so the model
# is never confused with the profile, nor a route's stats with a cluster's.
_PROFILE_SEPARATOR = "@"


def model_label(model: str) -> str:
    """The value of the `model` label on every per-model series, Envoy's and spillover's own: the model's
    stat name ("meta-llama/Llama-3.1-8B" -> "meta-llama_Llama-3_1-8B")."""
    return stat_name(model)


def route_stat_prefix(model: str, profile: str) -> str:
    """A route's `stat_prefix`: its stats are `vhost.<VIRTUAL_HOST_NAME>.route.<this>.<stat>`."""
    return f"{stat_name(model)}{_PROFILE_SEPARATOR}{stat_name(profile)}"


def rate_limit_stat_prefix(model: str, profile: str) -> str:
    """The `stat_prefix` of a route's local rate limit (one token bucket per model and profile)."""
    return f"{RATE_LIMIT_STAT_PREFIX}.{route_stat_prefix(model, profile)}"


_NAME = r"[\w-]+"
_TAG_NC = LB_TAG_REGEX.replace("(", "(?:")  # the same tags without capture groups
_ROUTE_FAMILY = re2_escape(f"vhost.{VIRTUAL_HOST_NAME}.route.")
_RATE_LIMIT_FAMILY = re2_escape(f"{RATE_LIMIT_STAT_PREFIX}.")
# Envoy's tag regexes: the first group is cut out of the stat's name, the second is the tag's value.
# Each tag has one regex for all its shapes; the shortest model that fits is taken, so a model named
# "a_local_x" is not read as model "a". The cut parts lie inside what Envoy's own envoy.cluster_name
# cuts (or are the route's whole stat prefix), so metric names stay Envoy's.
STATS_TAGS: tuple[tuple[str, str], ...] = (
    (
        MODEL_TAG,
        rf"^(?:cluster\.|{_ROUTE_FAMILY}|{_RATE_LIMIT_FAMILY})"
        rf"(({_NAME}?)(?:_(?:local|local-first|remote-first)_{_TAG_NC}|_remote|{_PROFILE_SEPARATOR}{_NAME})\.)",
    ),
    (
        PROFILE_TAG,
        rf"^(?:{_ROUTE_FAMILY}|{_RATE_LIMIT_FAMILY}){_NAME}?{_PROFILE_SEPARATOR}(({_NAME})\.)",
    ),
    (
        SIDE_TAG,
        rf"^cluster\.({_NAME}?_({SIDE_LOCAL}|{SIDE_REMOTE})(?:_{_TAG_NC})?\.)",
    ),
)

# -- what Prometheus sees (`/stats/prometheus`) --------------------------------------------------------

ENVOY_CLUSTER_METRIC_PREFIX = "envoy_cluster_"
ENVOY_ROUTE_METRIC_PREFIX = "envoy_vhost_route_"
# A route's rate limit, once its model and profile are tags: 429s are its `rate_limited`.
ENVOY_RATE_LIMITED_METRIC = f"envoy_{RATE_LIMIT_STAT_PREFIX}_http_local_rate_limit_rate_limited"

# -- spillover's own per-model series (its /metrics), every one with a `model` label (`model_label`) ------

MODEL_INFO_SERIES = "spillover_model_info"  # 1, with the model's own name and its ModelDeployment
MODEL_STATE_SERIES = "spillover_model_state"  # 1 for the state the model is in (label `state`)
MODEL_REMOTE_SHARE_SERIES = "spillover_model_remote_share_percent"
MODEL_TIME_IN_STATE_SERIES = "spillover_model_time_in_state_seconds"
MODEL_TRANSITIONS_SERIES = "spillover_model_transitions_total"
MODEL_METRIC_VALUE_SERIES = "spillover_model_metric_value"  # label `metric`: each overflow metric
MODEL_METRIC_THRESHOLD_SERIES = "spillover_model_metric_threshold"
MODEL_METRIC_ERRORS_SERIES = "spillover_metric_errors_total"
COPY_REPLICAS_SERIES = "spillover_copy_replicas"  # label `kind`: desired, ready (the copy on a destination cluster)
DESTINATION_REACHABLE_SERIES = "spillover_destination_reachable"

# -- spillover's own control-plane series (its /metrics) that the dashboards read -------------------------
# The xDS server's (server/metrics.py) and the policy provider's (controller/reporting.py); a series no
# dashboard reads keeps its name next to its definition.

XDS_CONNECTED_SERIES = "spillover_xds_connected_proxies"  # labels `group`, `mode`
XDS_SYNC_SERIES = "spillover_xds_proxy_sync"  # labels `group`, `type`, `status`
XDS_PUSHES_SERIES = "spillover_xds_pushes_total"  # label `group`
XDS_PUSH_LATENCY_SERIES = "spillover_xds_push_latency_seconds"  # a histogram
XDS_RESPONSES_SERIES = "spillover_xds_responses_total"  # label `type`
XDS_ACKS_SERIES = "spillover_xds_acks_total"  # label `type`
XDS_NACKS_SERIES = "spillover_xds_nacks_total"  # label `type`
XDS_RESOURCES_SERIES = "spillover_xds_resources"  # labels `group`, `type`
POLICY_ERRORS_SERIES = "spillover_policy_errors"  # label `file`
EVALUATION_SERIES = "spillover_evaluation_seconds"  # a histogram


# -- secrets ----------------------------------------------------------------------------------------------


def bearer_secret_name(deployment: str, token_url: str, client_id: str) -> str:
    """The SDS secret holding a remote backend's bearer token. Named after the ModelDeployment and the
    credentials, so a rotated client id gets a fresh secret."""
    digest = hashlib.blake2b(f"{token_url}\0{client_id}".encode(), digest_size=4).hexdigest() if token_url or client_id else ""
    return f"spillover-token-{deployment}-{digest}"
