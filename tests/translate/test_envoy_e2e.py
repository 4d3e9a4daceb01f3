"""The translator's resources on a real Envoy 1.40 with real HTTP upstreams.

RDS/EDS/SDS are inlined into a static bootstrap (tests/translate/static.py) because the xDS
server is a separate stage; everything else is exactly what the translator emits.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from spillover.ir import (
    Endpoint,
    Gateway,
    HealthCheck,
    Listener,
    Model,
    Profile,
    RemoteBackend,
    StrategyParams,
    TrafficSplit,
)
from spillover.names import RATE_LIMIT_HEADER
from spillover.translate import Resources, translate
from spillover.translate.bootstrap import build_bootstrap
from tests.harness.client import Response, request
from tests.harness.envoy import Envoy
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.translated import CHAT, ep, served_by
from tests.harness.upstream import make_self_signed_ca_and_cert

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


# -- model selection (body routing: test_envoy_body_routing.py) ----------------------------------------


def test_profile_header_selects_the_profile_cluster(gateway, upstream_factory) -> None:
    up = upstream_factory("pod")
    model = Model(
        "m",
        (ep(up),),
        profiles=(Profile("default", "random"), Profile("batch", "least-request")),
    )
    gw = gateway(model)
    default_stat = "cluster.m_local_random.upstream_rq_total"
    batch_stat = "cluster.m_local_least_request_c2.upstream_rq_total"

    cases = [
        ({"config-profile": "batch"}, batch_stat),
        ({"x-aibrix-config-profile": "batch"}, batch_stat),
        ({"config-profile": "batch", "x-aibrix-config-profile": "nope"}, batch_stat),
        # An empty config-profile is there (the AIBrix header is not read) and an empty AIBrix one is not.
        ({"config-profile": "", "x-aibrix-config-profile": "batch"}, default_stat),
        ({"x-aibrix-config-profile": ""}, default_stat),
        ({}, default_stat),
        ({"config-profile": "unknown"}, default_stat),
        ({"config-profile": "default"}, default_stat),
    ]
    # The model in the body (the normaliser's slow path) and in x-model (routes alone).
    for model_header in ({}, {"x-model": "m"}):
        for headers, stat in cases:
            before = gw.counter(stat)
            assert served_by(gw.post({"model": "m"}, {**model_header, **headers})) == "pod"

            def counted(stat: str = stat, before: int = before) -> bool:
                return gw.counter(stat) == before + 1

            wait_until(counted, timeout=5, message=str({**model_header, **headers}))


# -- strategies -------------------------------------------------------------------------------------


def test_session_affinity_keeps_each_session_on_one_endpoint(gateway, upstream_factory) -> None:
    ups = [upstream_factory(f"pod-{i}") for i in range(3)]
    model = Model(
        "chat",
        tuple(ep(u) for u in ups),
        profiles=(
            Profile("default", "session-affinity", params=StrategyParams(session_header="x-session-id")),
        ),
    )
    gw = gateway(model)
    homes: dict[str, set[str]] = {}
    for session in range(12):
        for turn in range(4):
            served = served_by(
                gw.post({"model": "chat", "messages": [turn]}, {"x-session-id": f"s{session}"})
            )
            homes.setdefault(f"s{session}", set()).add(served)
    assert all(len(pods) == 1 for pods in homes.values()), homes
    # Hashing, not a single hot endpoint: twelve sessions land on more than one pod.
    assert len(set().union(*homes.values())) >= 2, homes


def test_least_request_avoids_a_slow_endpoint(gateway, upstream_factory) -> None:
    slow = upstream_factory("slow", delay_s=1.5)
    fast = [upstream_factory(f"fast-{i}") for i in range(2)]
    gw = gateway(
        Model("m", (ep(slow), *(ep(f) for f in fast)), profiles=(Profile("default", "least-request"),))
    )

    def one(i: int) -> str:
        time.sleep(i * 0.02)  # staggered starts so that the slow pod's backlog is visible to P2C
        return served_by(gw.post({"model": "m"}))

    with ThreadPoolExecutor(max_workers=8) as pool:
        served = Counter(pool.map(one, range(60)))
    # Round robin would give the slow pod 20 of 60; P2C picks it only when both samples are it.
    assert served["slow"] < 15, served


def test_least_latency_follows_eds_weights(gateway, upstream_factory) -> None:
    a, b = upstream_factory("a"), upstream_factory("b")
    # Latency weights (not capacity weights) drive least-latency.
    gw = gateway(
        Model(
            "m",
            (
                dataclasses.replace(ep(a, 9), latency_weight=1),
                dataclasses.replace(ep(b, 1), latency_weight=9),
            ),
            profiles=(Profile("default", "least-latency"),),
        )
    )
    served = Counter(served_by(gw.post({"model": "m"})) for _ in range(100))
    assert 3 <= served["a"] <= 20, served


def _prompt(system: str, user: str) -> dict:
    return {
        "model": "m",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
    }


# The filters a model route configures are off by default in the listener (listener.py): a header-routed
# request's chain is built on its model's route, a body-routed one's on the slow-path route it lands on
# first; both must run them.
ROUTED = pytest.mark.parametrize("routed", ["body", "header"])


def _routing(routed: str, model: str) -> dict[str, str]:
    return {"x-model": model} if routed == "header" else {}


@ROUTED
def test_prefix_cache_sends_equal_prefixes_to_one_endpoint(gateway, upstream_factory, routed: str) -> None:
    ups = [upstream_factory(f"pod-{i}") for i in range(3)]
    params = StrategyParams(prefix_chars=80)
    gw = gateway(
        Model("m", tuple(ep(u) for u in ups), profiles=(Profile("default", "prefix-cache", params=params),))
    )
    homes: dict[int, set[str]] = {}
    for system in range(10):
        for question in range(4):
            # Same first 80 characters of "messages" (the system prompt), different tails; a
            # client-sent hash header must not steer the choice.
            body = _prompt(f"You are assistant number {system:03d}. " + "Be terse. " * 10, f"q{question}")
            response = gw.post(
                body, {"x-spillover-prefix-hash": f"forged-{question}", **_routing(routed, "m")}
            )
            homes.setdefault(system, set()).add(served_by(response))
    assert all(len(pods) == 1 for pods in homes.values()), homes
    assert len(set().union(*homes.values())) >= 2, homes
    seen = {r["headers"].get("x-spillover-prefix-hash") for u in ups for r in u.requests}
    assert len(seen) == 10 and not any(h is None or h.startswith("forged") for h in seen), seen


def test_retries_move_connect_failures_to_another_endpoint(gateway, upstream_factory) -> None:
    up = upstream_factory("alive")
    dead = Endpoint("127.0.0.1", free_port())  # nothing listens: connection refused
    gw = gateway(Model("m", (dead, ep(up)), profiles=(Profile("default", "round-robin"),)))
    assert [gw.post({"model": "m"}).status for _ in range(10)] == [200] * 10
    # Proof that the dead endpoint was tried and retried away from, not skipped.
    assert gw.counter("cluster.m_local_round_robin.upstream_rq_retry") >= 4


# -- rate limit ----------------------------------------------------------------------------------------


@ROUTED
def test_requests_per_second_429_with_exact_header_and_body(gateway, upstream_factory, routed: str) -> None:
    up = upstream_factory("pod")
    gw = gateway(
        Model(
            "llama",
            (ep(up),),
            profiles=(Profile("default", "random", requests_per_second=5, total_requests_per_second=15),),
        )
    )
    window = 2.0
    statuses: Counter[int] = Counter()
    limited: Response | None = None
    start = time.monotonic()
    while time.monotonic() - start < window:
        response = gw.post({"model": "llama"}, _routing(routed, "llama"))
        statuses[response.status] += 1
        if response.status == 429:
            limited = response
    assert limited is not None, statuses
    assert limited.headers.get(RATE_LIMIT_HEADER) == "true"
    assert limited.headers["content-type"] == "application/json"
    assert limited.body == (
        b'{"error":{"message":"model: llama has exceeded RPS: 15","type":"rate_limit_error",'
        b'"code":"rate_limit_exceeded","param":null}}'
    )
    # A full bucket of 5 plus 5 per second: about 15 in two seconds, whatever the offered load.
    assert 9 <= statuses[200] <= 17, statuses
    assert up.request_count == statuses[200]
    assert statuses[200] + statuses[429] == sum(statuses.values())


# -- local/remote split and the remote backend ------------------------------------------------------------


def _wait_healthy(envoy: Envoy, cluster: str) -> None:
    def healthy() -> bool:
        hosts = envoy.cluster_endpoints(cluster)
        return bool(hosts) and all(
            h.get("health_status", {}).get("eds_health_status") == "HEALTHY"
            and not h.get("health_status", {}).get("failed_active_health_check")
            for h in hosts
        )

    wait_until(healthy, timeout=10, message=f"{cluster} hosts never healthy")


def test_weighted_split_and_remote_rewrites_headers_and_bearer_only_toward_remote(
    gateway, upstream_factory
) -> None:
    local, remote = upstream_factory("local"), upstream_factory("remote")
    backend = RemoteBackend(
        host="127.0.0.1",
        port=remote.port,
        scheme="http",
        host_rewrite="api.remote.example",
        path_prefix="/ws-1/models/m",
        headers=(("x-spillover-origin", "edge-1"),),
        bearer_token_secret_name="remote-oauth",
        bearer_token="tok-123",
    )
    gw = gateway(Model("m", (ep(local),), remote=backend, split=TrafficSplit(70, 30)))
    n = 200
    served = Counter(
        served_by(gw.post({"model": "m"}, {"authorization": "Bearer client-key"})) for _ in range(n)
    )
    assert served["local"] + served["remote"] == n
    assert 0.18 * n <= served["remote"] <= 0.42 * n, served

    for record in remote.requests:
        assert record["path"] == "/ws-1/models/m" + CHAT
        assert record["headers"]["host"] == "api.remote.example"
        assert record["headers"]["x-spillover-origin"] == "edge-1"
        assert record["headers"]["authorization"] == "Bearer tok-123"
    for record in local.requests:
        assert record["path"] == CHAT
        assert record["headers"]["host"] == f"127.0.0.1:{gw.port}"
        assert "x-spillover-origin" not in record["headers"]
        assert record["headers"]["authorization"] == "Bearer client-key"


def test_https_remote_with_sni_ca_and_health_check(gateway, upstream_factory, tmp_path: Path) -> None:
    ca, cert, key = make_self_signed_ca_and_cert(tmp_path / "pki", "models.remote.test")
    remote = upstream_factory("remote-tls", cert_path=cert, key_path=key)
    backend = RemoteBackend(
        host="127.0.0.1",
        port=remote.port,
        scheme="https",
        sni="models.remote.test",
        ca_file=str(ca),
        health_check=HealthCheck(path="/health", interval_s=0.2, timeout_s=1, unhealthy_threshold=1),
    )
    gw = gateway(Model("m", (), remote=backend, split=TrafficSplit(0, 100)))
    _wait_healthy(gw.envoy, "m/remote")
    assert served_by(gw.post({"model": "m"})) == "remote-tls"
    traffic = [r for r in remote.requests if r["path"] == CHAT]
    assert traffic and traffic[-1]["sni"] == "models.remote.test"
    assert any(r["path"] == "/health" for r in remote.requests)

    # The active health check takes a failing remote out: Envoy answers 503 without sending it traffic.
    remote.status = 503
    wait_until(
        lambda: any(
            h.get("health_status", {}).get("failed_active_health_check")
            for h in gw.envoy.cluster_endpoints("m/remote")
        ),
        timeout=10,
        message="health check never failed the remote",
    )
    before = len([r for r in remote.requests if r["path"] == CHAT])
    assert gw.post({"model": "m"}).status == 503
    assert len([r for r in remote.requests if r["path"] == CHAT]) == before


def test_https_remote_with_the_wrong_ca_is_refused(gateway, upstream_factory, tmp_path: Path) -> None:
    _, cert, key = make_self_signed_ca_and_cert(tmp_path / "pki", "models.remote.test")
    other_ca, _, _ = make_self_signed_ca_and_cert(tmp_path / "other", "models.remote.test")
    remote = upstream_factory("remote-tls", cert_path=cert, key_path=key)
    backend = RemoteBackend(
        host="127.0.0.1", port=remote.port, scheme="https", sni="models.remote.test", ca_file=str(other_ca)
    )
    gw = gateway(Model("m", (), remote=backend, split=TrafficSplit(0, 100)))
    assert gw.post({"model": "m"}).status == 503
    assert remote.request_count == 0


def test_zero_zero_split_answers_503_json(gateway, upstream_factory) -> None:
    up = upstream_factory("pod")
    gw = gateway(Model("m", (ep(up),), split=TrafficSplit(0, 0)))
    response = gw.post({"model": "m"})
    assert response.status == 503
    assert json.loads(response.body)["error"]["code"] == "model_unavailable"
    assert up.request_count == 0


# -- over ADS: the real spillover xDS server instead of the static conversion -----------------------------


def test_resources_over_ads_with_sds_token_rotation(xds_server, envoy_factory, upstream_factory) -> None:
    local, remote = upstream_factory("local"), upstream_factory("remote")
    port = free_port()

    def translated(token: str) -> Resources:
        backend = RemoteBackend(
            host="127.0.0.1",
            port=remote.port,
            scheme="http",
            bearer_token_secret_name="remote-oauth",
            bearer_token=token,
        )
        gateway = Gateway(
            "edge",
            Listener("127.0.0.1", port),
            (
                Model("local-model", (ep(local),)),
                Model("remote-model", (), remote=backend, split=TrafficSplit(0, 100)),
            ),
        )
        return translate(gateway)

    def messages(resources: Resources) -> list:
        return [m for items in resources.by_type_url().values() for m in items.values()]

    xds_server.set_snapshot("edge", messages(translated("first")))
    envoy = envoy_factory(build_bootstrap("translate-ads", "edge", xds_server.xds_address, admin_port=0))
    wait_until(envoy.is_ready, timeout=15, message="envoy never became ready over ADS")

    def post(model: str) -> Response:
        return request("POST", f"http://127.0.0.1:{port}{CHAT}", body={"model": model}, timeout=5)

    wait_until(lambda: post("local-model").status == 200, timeout=10, message="local model over ADS")
    assert served_by(post("remote-model")) == "remote"
    assert remote.requests[-1]["headers"]["authorization"] == "Bearer first"
    assert "authorization" not in local.requests[-1]["headers"]

    # A refreshed OAuth token is one SDS update: no listener, route or cluster change.
    first, second = translated("first").serialized(), translated("second").serialized()
    assert [t for t in first if first[t] != second[t]] == [SECRET_TYPE]
    xds_server.update("edge", messages(translated("second")))
    wait_until(
        lambda: (
            post("remote-model").status == 200
            and remote.requests[-1]["headers"]["authorization"] == "Bearer second"
        ),
        timeout=10,
        message="rotated token never injected",
    )
