"""Translator rules that golden files would only show implicitly."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2

from spillover.ir import Endpoint, Gateway, Model, Profile, RemoteBackend, StrategyParams, TrafficSplit
from spillover.names import LB_TAG_REGEX, STRATEGIES, is_local_cluster, local_cluster_prefix
from spillover.translate import translate
from spillover.translate.route_table import table_routes
from tests.harness.envoy import Envoy
from tests.harness.pki import write_ca_and_server_cert
from tests.harness.static_bootstrap import to_static_bootstrap
from tests.harness.translate_cases import CASES, load_case


def _gateway(*models: Model) -> Gateway:
    return Gateway("g", models=models)


def _model(**kwargs: Any) -> Model:
    base = Model("m", (Endpoint("127.0.0.1", 9000),))
    return dataclasses.replace(base, **kwargs)


def _routes(gateway: Gateway) -> list:
    return list(table_routes(translate(gateway).routes["spillover_routes"]))


def _route(gateway: Gateway, name: str) -> Any:
    return next(r for r in _routes(gateway) if r.name == name)


def _with_real_ca_files(gateway: Gateway, tmp_path: Path) -> Gateway:
    """Envoy refuses a CA file that does not exist; the goldens name one of no particular machine."""
    models = []
    for model in gateway.models:
        if model.remote is not None and model.remote.ca_file is not None:
            ca = tmp_path / f"{model.name}-ca.pem"
            write_ca_and_server_cert(ca, tmp_path / "cert.pem", tmp_path / "key.pem", ["x"], "x", "ca")
            model = dataclasses.replace(model, remote=dataclasses.replace(model.remote, ca_file=str(ca)))
        models.append(model)
    return dataclasses.replace(gateway, models=tuple(models))


@pytest.mark.parametrize("case", CASES)
def test_real_envoy_accepts_every_golden_case(case: str, tmp_path: Path) -> None:
    gateway = _with_real_ca_files(load_case(case), tmp_path)
    result = Envoy.validate(to_static_bootstrap(translate(gateway)), tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_unknown_strategy_is_refused_not_defaulted() -> None:
    with pytest.raises(ValueError, match="unknown routing strategy 'fastest'"):
        translate(_gateway(_model(profiles=(Profile("default", "fastest"),))))


def test_unknown_locked_strategy_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown routing strategy"):
        translate(_gateway(_model(locked_strategy="nope")))


# The LB policy each strategy is documented to use (spillover/translate/strategies.py).
DOCUMENTED_LB_POLICY = {
    "random": "random",
    "round-robin": "round_robin",
    "least-request": "least_request",
    "least-latency": "round_robin",
    "session-affinity": "ring_hash",
    "prefix-cache": "ring_hash",
    "throughput": "least_request",
}


def test_every_strategy_has_a_documented_lb_policy() -> None:
    assert sorted(DOCUMENTED_LB_POLICY) == sorted(STRATEGIES)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_known_strategy_yields_its_lb_policy_on_a_tagged_cluster(strategy: str) -> None:
    gateway = _gateway(_model(profiles=(Profile("default", strategy),)))
    resources = translate(gateway)
    assert len(resources.clusters) == 1
    [(name, cluster)] = resources.clusters.items()
    assert is_local_cluster(name, "m")
    assert re.fullmatch(LB_TAG_REGEX, name.removeprefix(local_cluster_prefix("m")))
    [policy] = cluster.load_balancing_policy.policies
    assert policy.typed_extension_config.name == (
        f"envoy.load_balancing_policies.{DOCUMENTED_LB_POLICY[strategy]}"
    )
    [route] = [r for r in _routes(gateway) if r.name == "m/default"]
    assert route.route.cluster == name
    assert route.metadata.filter_metadata["spillover"]["strategy"] == strategy


def test_no_strategy_anywhere_is_refused() -> None:
    with pytest.raises(ValueError, match="no routing strategy"):
        translate(_gateway(_model(profiles=(Profile("default"),))))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": TrafficSplit(50, 40)}, "summing to 100"),
        ({"split": TrafficSplit(50, 50)}, "no remote backend"),
        ({"default_profile": "missing"}, "default profile 'missing'"),
        ({"profiles": (Profile("default", "random"), Profile("default", "random"))}, "defined twice"),
        ({"endpoints": (Endpoint("127.0.0.1", 1), Endpoint("127.0.0.1", 1))}, "listed twice"),
        ({"endpoints": (Endpoint("127.0.0.1", 70000),)}, "port must be"),
        ({"remote": RemoteBackend("h", 1, scheme="ftp"), "split": TrafficSplit(0, 100)}, "scheme"),
        ({"remote": RemoteBackend("h", 1, path_prefix="x"), "split": TrafficSplit(0, 100)}, "path_prefix"),
    ],
)
def test_invalid_ir_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        translate(_gateway(_model(**kwargs)))


def test_duplicate_model_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        translate(_gateway(_model(), _model()))


def test_conflicting_token_values_for_one_secret_are_refused() -> None:
    a = RemoteBackend("a", 1, bearer_token_secret_name="t", bearer_token="x")
    b = RemoteBackend("b", 1, bearer_token_secret_name="t", bearer_token="y")
    with pytest.raises(ValueError, match="two different token values"):
        translate(
            _gateway(
                dataclasses.replace(_model(), remote=a), dataclasses.replace(_model(), name="n", remote=b)
            )
        )


def test_token_never_appears_in_repr() -> None:
    remote = RemoteBackend("a", 1, bearer_token_secret_name="t", bearer_token="very-secret")
    assert "very-secret" not in repr(_model(remote=remote))


def test_default_profile_has_a_single_route_so_a_single_token_bucket() -> None:
    # "config-profile: default" and "no profile" must share one bucket: one route serves both.
    model = _model(profiles=(Profile("default", "random", 3, 3), Profile("b", "random", 1, 1)))
    names = [r.name for r in _routes(_gateway(model))]
    assert names == [
        "normalize-model-header",
        "normalize-profile-header",
        "m/b",
        "m/default",
        "unknown-model",
        "unknown-body-model",
        "body-model",
        "missing-model",
    ]


_SLOW_PATH_ROUTES = ("normalize-model-header", "normalize-profile-header", "body-model", "missing-model")


@pytest.mark.parametrize("prefix_cache", ["none", "default", "named-profile"])
def test_the_slow_path_routes_enable_prefix_hash_only_when_a_model_uses_it(prefix_cache: str) -> None:
    # A body-routed request's chain is built on the slow-path route it lands on first: prefix_hash must be
    # in it when its model's route hashes (prefix-cache), and needs not be (a Lua run per request) when no
    # model's does.
    plain = _model(name="a", profiles=(Profile("default", "least-request"),))
    profiles = {
        "none": (Profile("default", "random"),),
        "default": (Profile("default", "prefix-cache", params=StrategyParams(prefix_chars=64)),),
        "named-profile": (Profile("default", "random"), Profile("chat", "prefix-cache")),
    }[prefix_cache]
    routes = _routes(_gateway(plain, _model(name="b", profiles=profiles)))
    slow = {r.name: r for r in routes if r.name in _SLOW_PATH_ROUTES}
    assert sorted(slow) == sorted(_SLOW_PATH_ROUTES)
    for route in slow.values():
        configured = route.typed_per_filter_config
        assert "spillover.client_host" in configured  # the other filter only model routes configure
        if prefix_cache == "none":
            assert "spillover.prefix_hash" not in configured, route.name
        else:
            per_route = lua_pb2.LuaPerRoute()
            assert configured["spillover.prefix_hash"].Unpack(per_route), route.name
            assert per_route.disabled, route.name  # in the chain, off here: the model route's runs it
    hashing = [r.name for r in routes if "spillover.prefix_hash" in r.typed_per_filter_config]
    assert hashing == ([] if prefix_cache == "none" else [*_SLOW_PATH_ROUTES[:2], *(
        ["b/default"] if prefix_cache == "default" else ["b/chat"]), *_SLOW_PATH_ROUTES[2:]])


@pytest.mark.parametrize(
    ("rps", "bucket"),
    [
        (5, (5, 5, 1.0)),
        (16.5, (17, 1, 1 / 16.5)),
        (0.5, (1, 1, 2.0)),
        # Above 20/s a fraction is kept exact by filling 2 tokens every 2/33.3 s (>= Envoy's 50 ms).
        (33.3, (34, 2, 2 / 33.3)),
        (22.5, (23, 2, 2 / 22.5)),
    ],
)
def test_token_bucket_for_per_replica_share(rps: float, bucket: tuple[int, int, float]) -> None:
    route = _route(_gateway(_model(profiles=(Profile("default", "random", rps, rps * 3),))), "m/default")
    config = local_rate_limit_pb2.LocalRateLimit()
    route.typed_per_filter_config["envoy.filters.http.local_ratelimit"].Unpack(config)
    tb = config.token_bucket
    interval = tb.fill_interval.seconds + tb.fill_interval.nanos / 1e9
    assert (tb.max_tokens, tb.tokens_per_fill.value) == bucket[:2]
    assert interval == pytest.approx(bucket[2], abs=1e-9)


def test_burst_sizes_the_bucket_without_changing_the_rate() -> None:
    profile = Profile("default", "random", 10, 20, burst=40)
    route = _route(_gateway(_model(profiles=(profile,))), "m/default")
    config = local_rate_limit_pb2.LocalRateLimit()
    route.typed_per_filter_config["envoy.filters.http.local_ratelimit"].Unpack(config)
    assert config.token_bucket.max_tokens == 40
    assert config.token_bucket.tokens_per_fill.value == 10
    assert config.token_bucket.fill_interval.seconds == 1


def test_least_request_drops_weights_but_throughput_keeps_them() -> None:
    model = _model(
        endpoints=(Endpoint("127.0.0.1", 1, 5), Endpoint("127.0.0.1", 2, 1)),
        profiles=(Profile("default", "least-request"), Profile("t", "throughput")),
    )
    endpoints = translate(_gateway(model)).endpoints
    weights = {
        name: [e.load_balancing_weight.value for e in cla.endpoints[0].lb_endpoints]
        for name, cla in endpoints.items()
    }
    assert weights == {"m/local/least_request_c2": [0, 0], "m/local/least_request_c2_w1": [5, 1]}


def test_profiles_with_the_same_lb_share_a_cluster() -> None:
    model = _model(profiles=(Profile("default", "round-robin"), Profile("x", "round-robin")))
    assert list(translate(_gateway(model)).clusters) == ["m/local/round_robin"]


def test_least_latency_gets_its_own_cluster_with_latency_weights() -> None:
    model = _model(
        endpoints=(Endpoint("127.0.0.1", 1, weight=5, latency_weight=2), Endpoint("127.0.0.1", 2)),
        profiles=(Profile("default", "round-robin"), Profile("x", "least-latency")),
    )
    resources = translate(_gateway(model))
    assert list(resources.clusters) == ["m/local/round_robin", "m/local/round_robin_latency"]

    def weights(cluster: str) -> list[int]:
        cla = resources.endpoints[cluster]
        return [e.load_balancing_weight.value for e in cla.endpoints[0].lb_endpoints]

    assert weights("m/local/round_robin") == [5, 1]
    assert weights("m/local/round_robin_latency") == [2, 1]


def test_local_health_checks_and_outlier_detection_reach_every_local_cluster() -> None:
    from spillover.ir import HealthCheck, OutlierDetection

    model = _model(
        profiles=(Profile("default", "random"), Profile("chat", "session-affinity")),
        health_check=HealthCheck(path="/health", interval_s=2.0),
        outlier_detection=OutlierDetection(consecutive_5xx=3),
    )
    local = [c for name, c in translate(_gateway(model)).clusters.items() if "/local/" in name]
    assert len(local) == 2
    for cluster in local:
        assert cluster.health_checks[0].http_health_check.path == "/health"
        assert cluster.outlier_detection.consecutive_5xx.value == 3


def test_messages_come_in_push_order_cds_eds_sds_lds_rds() -> None:
    resources = translate(load_case("bearer-token"))
    messages = resources.messages()
    kinds = [m.DESCRIPTOR.full_name for m in messages]
    runs = [kind for i, kind in enumerate(kinds) if i == 0 or kinds[i - 1] != kind]
    assert runs == [
        "envoy.config.cluster.v3.Cluster",
        "envoy.config.endpoint.v3.ClusterLoadAssignment",
        "envoy.extensions.transport_sockets.tls.v3.Secret",
        "envoy.config.listener.v3.Listener",
        "envoy.config.route.v3.RouteConfiguration",
    ]
    expected = [*resources.clusters.values(), *resources.endpoints.values(), *resources.secrets.values(),
                *resources.listeners.values(), *resources.routes.values()]
    assert len(messages) == len(expected)
    assert all(a is b for a, b in zip(messages, expected, strict=True))


# -- the retry policy names only what can change a retry's choice (translate/retries.py) ---------------


@pytest.mark.parametrize("failover", [False, True], ids=["no-failover", "failover"])
def test_the_route_is_the_same_for_one_local_endpoint_as_for_two(failover: bool) -> None:
    """Scaling a model from one pod to two changes its ClusterLoadAssignment only: a route that named
    previous_hosts only where there is another host to pick would be an RDS update, which refills every
    model's rate-limit buckets (test_rate_limit_updates.py)."""
    remote = RemoteBackend("api.example.com", 443) if failover else None
    models = [
        _model(endpoints=tuple(Endpoint("127.0.0.1", 9000 + i) for i in range(count)), remote=remote, failover=failover)
        for count in (1, 2)
    ]
    routes = [_route(_gateway(model), "m/default") for model in models]
    assert routes[0] == routes[1]
    policy = routes[0].route.retry_policy
    assert [p.name for p in policy.retry_host_predicate] == ["envoy.retry_host_predicates.previous_hosts"]
    assert policy.host_selection_retry_max_attempts == 3
    # The other side, with failover (test_envoy_failover.py proves it needed).
    assert policy.retry_priority.name == ("envoy.retry_priorities.previous_priorities" if failover else "")


@pytest.mark.parametrize("split", [TrafficSplit(100, 0), TrafficSplit(50, 50), TrafficSplit(0, 100)],
                         ids=["standby", "overflow", "all-remote"])  # fmt: skip
def test_the_internal_listeners_failure_header_only_on_routes_that_can_reach_it(split: TrafficSplit) -> None:
    """Only the local-first aggregates have the internal listener as a member: a route to the remote-first
    aggregates alone neither retries on its failure header nor removes it from responses."""
    model = _model(remote=RemoteBackend("api.example.com", 443), split=split, failover=True)
    route = _route(_gateway(model), "m/default")
    reaches = split.local > 0
    assert [h.name for h in route.route.retry_policy.retriable_headers] == (["x-spillover-upstream"] if reaches else [])
    assert ("retriable-headers" in route.route.retry_policy.retry_on) == reaches
    assert list(route.response_headers_to_remove) == (["x-spillover-upstream"] if reaches else [])
