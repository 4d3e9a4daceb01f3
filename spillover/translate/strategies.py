"""Routing strategies → Envoy load balancing: how one (model, profile) is served.

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

Profiles whose strategies need the same LB policy share one local cluster (named after the policy's
tag, see `spillover.names.lb_tag`); otherwise each gets its own cluster over the same endpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import extension_pb2
from envoy.extensions.load_balancing_policies.common.v3 import common_pb2 as lb_common_pb2
from envoy.extensions.load_balancing_policies.least_request.v3 import least_request_pb2
from envoy.extensions.load_balancing_policies.maglev.v3 import maglev_pb2
from envoy.extensions.load_balancing_policies.random.v3 import random_pb2
from envoy.extensions.load_balancing_policies.ring_hash.v3 import ring_hash_pb2
from envoy.extensions.load_balancing_policies.round_robin.v3 import round_robin_pb2
from google.protobuf.message import Message

from spillover.ir import Model, Profile, StrategyParams
from spillover.names import PREFIX_HASH_HEADER, STRATEGIES, lb_tag
from spillover.translate.common import pack, u32

__all__ = ["LbPolicy", "Serving", "effective_strategy", "serving_for"]


@dataclass(frozen=True, slots=True)
class LbPolicy:
    """One Envoy load-balancing policy, and the tag of the local cluster that runs it."""

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
        return lb_tag(
            self.kind, latency=self.latency, weighted=self.weighted, choice_count=self.choice_count,
            bias=self.bias, balance=self.balance,
        )

    def policy(self) -> cluster_pb2.LoadBalancingPolicy:
        config: Message
        if self.kind == "random":
            config = random_pb2.Random()
        elif self.kind == "round_robin":
            config = round_robin_pb2.RoundRobin()
        elif self.kind == "least_request":
            config = least_request_pb2.LeastRequest(choice_count=u32(self.choice_count))
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
                        name=f"envoy.load_balancing_policies.{self.kind}", typed_config=pack(config)
                    )
                )
            ]
        )

    def _consistent(self) -> lb_common_pb2.ConsistentHashingLbConfig:
        return lb_common_pb2.ConsistentHashingLbConfig(hash_balance_factor=u32(self.balance))


@dataclass(frozen=True, slots=True)
class Serving:
    """How one (model, profile) is served: its strategy's LB policy and what the route hashes on."""

    strategy: str
    lb: LbPolicy
    hash_header: str | None = None
    prefix_chars: int = 0


def serving_for(strategy: str, params: StrategyParams) -> Serving:
    consistent = params.consistent_hash
    if strategy in ("session-affinity", "prefix-cache"):
        if consistent not in ("ring_hash", "maglev"):
            raise ValueError(f"consistent_hash must be 'ring_hash' or 'maglev', got {consistent!r}")
        if params.hash_balance_factor < 100:
            raise ValueError(f"hash_balance_factor must be >= 100, got {params.hash_balance_factor!r}")
    if strategy in ("least-request", "throughput") and params.choice_count < 2:
        raise ValueError(f"choice_count must be >= 2, got {params.choice_count!r}")
    if strategy == "random":
        return Serving(strategy, LbPolicy("random"))
    if strategy == "round-robin":
        return Serving(strategy, LbPolicy("round_robin"))
    if strategy == "least-latency":
        return Serving(strategy, LbPolicy("round_robin", latency=True))
    if strategy == "least-request":
        return Serving(strategy, LbPolicy("least_request", weighted=False, choice_count=params.choice_count))
    if strategy == "throughput":
        if not math.isfinite(params.active_request_bias) or params.active_request_bias < 0:
            raise ValueError(f"active_request_bias must be >= 0, got {params.active_request_bias!r}")
        return Serving(
            strategy,
            LbPolicy("least_request", choice_count=params.choice_count, bias=params.active_request_bias),
        )
    if strategy == "session-affinity":
        if not params.session_header:
            raise ValueError("session-affinity needs a session_header")
        return Serving(
            strategy,
            LbPolicy(consistent, balance=params.hash_balance_factor),
            hash_header=params.session_header.lower(),
        )
    if strategy == "prefix-cache":
        if params.prefix_chars < 1:
            raise ValueError(f"prefix_chars must be >= 1, got {params.prefix_chars!r}")
        return Serving(
            strategy,
            LbPolicy(consistent, balance=params.hash_balance_factor),
            hash_header=PREFIX_HASH_HEADER,
            prefix_chars=params.prefix_chars,
        )
    raise ValueError(f"unknown routing strategy {strategy!r}; known: {', '.join(STRATEGIES)}")


def effective_strategy(model: Model, profile: Profile, default: Profile) -> str:
    strategy = model.locked_strategy or profile.strategy or default.strategy
    if not strategy:
        raise ValueError(
            f"model {model.name!r} profile {profile.name!r}: no routing strategy "
            "(no locked strategy, none on the profile, none on the default profile)"
        )
    return strategy
