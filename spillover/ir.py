"""The IR: one gateway (node group) described as plain frozen values, the contract between plan and translate.

The plan stage (spillover.plan) maps the policies' pydantic models and the decisions onto these
dataclasses (Envoy Gateway's policy → IR → translator split), so the translator never sees YAML,
Kubernetes or metrics, and the IR can be built by hand in tests. Validation of user input happens upstream; the translator still refuses
values it cannot render (``ValueError``) rather than guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "Endpoint",
    "Gateway",
    "HealthCheck",
    "Listener",
    "Model",
    "OutlierDetection",
    "Profile",
    "RemoteBackend",
    "Retries",
    "StrategyParams",
    "Timeouts",
    "TrafficSplit",
]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One local backend pod. ``weight`` is the EDS load-balancing weight (1-128 is Envoy's sweet
    spot): latency-derived for least-latency, capacity for throughput."""

    host: str
    port: int
    weight: int = 1  # capacity (throughput, round-robin)
    latency_weight: int = 1  # least-latency: inverse of the observed latency


@dataclass(frozen=True, slots=True)
class HealthCheck:
    path: str = "/health"
    interval_s: float = 10.0
    timeout_s: float = 5.0
    healthy_threshold: int = 1
    unhealthy_threshold: int = 3
    port: int | None = None  # probe this port of every endpoint instead of its serving port


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx: int = 5
    interval_s: float = 10.0
    base_ejection_time_s: float = 30.0
    max_ejection_percent: int = 100


@dataclass(frozen=True, slots=True)
class RemoteBackend:
    """Where a model spills to. ``path_prefix`` is already expanded (no ``$model``/``$workspace``)."""

    host: str
    port: int
    scheme: str = "https"  # "http" | "https"
    sni: str | None = None  # defaults to ``host`` for https
    ca_file: str | None = None  # None: the system CA bundle (SYSTEM_CA_BUNDLE)
    host_rewrite: str | None = None
    path_prefix: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    # Name of the SDS generic secret holding "Bearer <token>"; spillover fetches and refreshes
    # the OAuth2 client-credentials token itself and pushes it under this name.
    bearer_token_secret_name: str | None = None
    # The current access token. Kept out of repr so that IR dumps in logs never carry it.
    bearer_token: str | None = field(default=None, repr=False)
    health_check: HealthCheck | None = None
    outlier_detection: OutlierDetection | None = None
    connect_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class StrategyParams:
    """Knobs of the strategies that have any; ignored by the others."""

    session_header: str = "x-session-id"  # session-affinity
    prefix_chars: int = 256  # prefix-cache: how much of the prompt/messages is hashed
    # Bounded load for consistent hashing: a host takes at most factor/100 times the average load.
    hash_balance_factor: int = 150
    consistent_hash: str = "ring_hash"  # "ring_hash" | "maglev"
    choice_count: int = 2  # least-request: power of N choices
    active_request_bias: float = 1.0  # throughput: weight / (active + 1) ** bias


@dataclass(frozen=True, slots=True)
class Profile:
    """An AIBrix config profile. ``strategy`` None: the default profile's strategy applies.

    ``requests_per_second`` is this Envoy replica's share (0 = unlimited);
    ``total_requests_per_second`` is the model-level figure quoted in the 429 body;
    ``burst`` is this replica's share of the bucket size (0 = one second's worth).
    """

    name: str
    strategy: str | None = None
    requests_per_second: float = 0.0
    total_requests_per_second: float = 0.0
    burst: float = 0.0
    params: StrategyParams = StrategyParams()


@dataclass(frozen=True, slots=True)
class TrafficSplit:
    """Percentages; they sum to 100, or are both 0 (no backend may take traffic: 503)."""

    local: int = 100
    remote: int = 0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; 0 = none. LLM responses stream for minutes, so the overall request and per-try
    timeouts default to none and ``per_try_idle_s`` (time between bytes) is the useful guard."""

    request_s: float = 0.0
    per_try_s: float = 0.0
    per_try_idle_s: float = 0.0
    connect_s: float = 5.0


@dataclass(frozen=True, slots=True)
class Retries:
    num_retries: int = 2
    retry_on: tuple[str, ...] = ("connect-failure", "refused-stream", "reset")


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    endpoints: tuple[Endpoint, ...] = ()
    profiles: tuple[Profile, ...] = (Profile("default", "random"),)
    default_profile: str = "default"
    # AIBrix precedence: a locked strategy beats the profile's, which beats the default profile's.
    locked_strategy: str | None = None
    remote: RemoteBackend | None = None
    split: TrafficSplit = TrafficSplit()
    timeouts: Timeouts = Timeouts()
    retries: Retries = Retries()
    # Of the local endpoints.
    health_check: HealthCheck | None = None
    outlier_detection: OutlierDetection | None = None
    # The local endpoints and the remote back each other up inside Envoy: the split goes to aggregate
    # clusters that fall over to the other side when theirs has no healthy host, and retries of a failed
    # attempt go to the other side. Only for a remote that can take traffic (its token, if it needs
    # one, is there): a remote that would fail every request must not be anyone's fallback.
    failover: bool = False


@dataclass(frozen=True, slots=True)
class Listener:
    address: str = "0.0.0.0"
    port: int = 10000


@dataclass(frozen=True, slots=True)
class Gateway:
    """Everything one node group of Envoys serves."""

    name: str
    listener: Listener = Listener()
    models: tuple[Model, ...] = ()
    # Where the models' local/remote splits go (spillover.names.SPLIT_WEIGHTS): "route", in each route; or
    # "runtime", in one Runtime resource over RTDS, the routes then the same whatever the decisions (a
    # flip changes no route: no route table resent, no token bucket refilled).
    split_weights: str = "route"
    # How failover models' local-first aggregates reach the remote (spillover.names.FAILOVER_REMOTE):
    # "internal-listener", through an Envoy internal listener of the model; or "in-place", the remote
    # cluster itself (for Envoys whose bootstrap lacks envoy.bootstrap.internal_listener).
    failover_remote: str = "internal-listener"
