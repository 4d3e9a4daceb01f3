"""A model route's retry policy: how many attempts, which failures, and with failover which side the retry
goes to (spillover.translate.routes builds the routes that carry it).

Envoy pays for a route's retry policy on every request, retried or not: it builds the retry state and each
plugin the policy names (a previous_priorities plugin validates its config per request), buffers the
request body for a replay, and matches `retriable_headers` against every response. So the policy names
only what can change a retry's choice on that route (benchmarks/results/datapath-retry-stats.md):
previous_priorities only with failover, the internal listener's failure header only on routes whose
attempts can reach it. previous_hosts stays on every route (the route must not depend on the endpoints)."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2
from envoy.config.route.v3.route_components_pb2 import HeaderMatcher
from envoy.extensions.retry.host.previous_hosts.v3 import previous_hosts_pb2
from envoy.extensions.retry.priority.previous_priorities.v3 import previous_priorities_config_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from spillover.ir import Model
from spillover.names import UPSTREAM_SIDE_HEADER
from spillover.translate.common import duration, pack, u32
from spillover.translate.remote_listener import REMOTE_FAILURES

__all__ = ["retry_policy"]


def retry_policy(model: Model, listener_failures: bool = True) -> route_components_pb2.RetryPolicy | None:
    """With failover, a retry goes to the other side (the aggregates' other priority): the side that just
    failed is likely still down, and waiting for its health check to say so is what costs requests.
    `listener_failures`: the route's attempts can reach the remote through its internal listener (a
    failover route with a local share, `failover_remote: internal-listener`), whose failure header is
    then retried like the failure it names."""
    retries, timeouts = model.retries, model.timeouts
    if retries.num_retries < 0:
        raise ValueError(f"model {model.name!r}: num_retries must be >= 0")
    if retries.num_retries == 0:
        return None
    if not retries.retry_on:
        raise ValueError(f"model {model.name!r}: retries need at least one retry_on condition")
    policy = route_components_pb2.RetryPolicy(
        retry_on=",".join(retries.retry_on), num_retries=u32(retries.num_retries)
    )
    # A retry should land on another endpoint: the one that just failed is likely still down. Named even
    # for a model of one local endpoint, where it has nothing else to pick (~950 Envoy instructions a
    # request, benchmarks/results/datapath-retry-stats.md): the route must not depend on how many pods
    # the model has, or scaling from one pod to two would be an RDS update (and refill every model's
    # rate-limit buckets, tests/translate/test_rate_limit_updates.py).
    policy.retry_host_predicate.append(
        route_components_pb2.RetryPolicy.RetryHostPredicate(
            name="envoy.retry_host_predicates.previous_hosts",
            typed_config=pack(previous_hosts_pb2.PreviousHostsPredicate()),
        )
    )
    policy.host_selection_retry_max_attempts = 3
    if model.failover:
        # The local-first aggregates reach the remote through its internal listener, where an attempt
        # neither fails to connect nor is reset: the internal listener answers 503 and names the
        # condition it met on its way to the remote (remote_listener.REMOTE_FAILURES). A route to the
        # remote-first aggregates alone never meets it (their members are the remote cluster itself
        # and the local one).
        conditions = [c for c in REMOTE_FAILURES if c in retries.retry_on] if listener_failures else []
        if conditions:
            policy.retry_on += ",retriable-headers"
            policy.retriable_headers.append(
                HeaderMatcher(
                    name=UPSTREAM_SIDE_HEADER,
                    string_match=string_pb2.StringMatcher(
                        safe_regex=regex_pb2.RegexMatcher(regex="|".join(conditions))
                    ),
                )
            )
        policy.retry_priority.name = "envoy.retry_priorities.previous_priorities"
        policy.retry_priority.typed_config.CopyFrom(
            pack(previous_priorities_config_pb2.PreviousPrioritiesConfig(update_frequency=1))
        )
    if timeouts.per_try_s > 0:
        policy.per_try_timeout.CopyFrom(duration(timeouts.per_try_s, "per_try_s"))
    if timeouts.per_try_idle_s > 0:
        policy.per_try_idle_timeout.CopyFrom(duration(timeouts.per_try_idle_s, "per_try_idle_s"))
    return policy
