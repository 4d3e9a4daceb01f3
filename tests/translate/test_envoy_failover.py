"""Failover inside Envoy (`Model.failover`): the translator's aggregates on a real Envoy 1.40 with real
upstreams, no control plane. A side that dies costs no request: its attempts are retried on the other
side, and once its health check or outlier detection says so, its share goes to the other side.
Requests that land on the local side never carry what is meant for the remote, even when they are a
retry of an attempt that went there."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable

import pytest

from spillover.cli.status import format_status
from spillover.ir import (
    Endpoint,
    Gateway,
    HealthCheck,
    Listener,
    Model,
    Profile,
    RemoteBackend,
    Retries,
    TrafficSplit,
)
from spillover.translate import translate
from spillover.translate.bootstrap import build_bootstrap
from tests.harness.client import Response, request
from tests.harness.envoy import Envoy
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.static_bootstrap import to_static_bootstrap
from tests.harness.upstream import HttpUpstream
from tests.harness.xds import XdsThread

CHAT = "/v1/chat/completions"
FAST_CHECK = HealthCheck(path="/health", interval_s=0.5, timeout_s=0.25, healthy_threshold=1, unhealthy_threshold=2)

Start = Callable[..., tuple[Envoy, int]]


@pytest.fixture
def gateway(envoy_factory: Callable[..., Envoy]) -> Start:
    def start(*models: Model, failover_remote: str = "internal-listener") -> tuple[Envoy, int]:
        port = free_port()
        resources = translate(Gateway("test", Listener("127.0.0.1", port), models, failover_remote=failover_remote))
        envoy = envoy_factory(to_static_bootstrap(resources), name="failover")
        wait_until(envoy.is_ready, timeout=15, message="envoy never became ready")
        wait_until(lambda: post(port, "__probe__").status == 404, timeout=15, message="listener")
        return envoy, port

    return start


def post(port: int, model: str, headers: dict[str, str] | None = None) -> Response:
    return request(
        "POST",
        f"http://127.0.0.1:{port}{CHAT}",
        body={"model": model},
        headers={"content-type": "application/json", "authorization": "Bearer client-key", **(headers or {})},
        timeout=10,
    )


def served(response: Response) -> str:
    return response.headers.get("x-upstream-name", "") if response.status == 200 else f"HTTP {response.status}"


def remote_backend(upstream: HttpUpstream, **options: object) -> RemoteBackend:
    defaults: dict[str, object] = {
        "host": "127.0.0.1",
        "port": upstream.port,
        "scheme": "http",
        "host_rewrite": "api.remote.example",
        "path_prefix": "/ws-1/models/m",
        "headers": (("x-spillover-origin", "edge-1"),),
        "bearer_token_secret_name": "remote-oauth",
        "bearer_token": "tok-123",
    }
    return RemoteBackend(**{**defaults, **options})  # type: ignore[arg-type]


def model(local: list[HttpUpstream], remote: RemoteBackend, split: TrafficSplit, **options: object) -> Model:
    endpoints = tuple(Endpoint("127.0.0.1", u.port) for u in local)
    return Model(
        "m", endpoints, profiles=(Profile("default", "round-robin"),), remote=remote, split=split, failover=True,
        **options,  # type: ignore[arg-type]
    )


def assert_remote_only_toward_remote(remote: HttpUpstream, local: list[HttpUpstream], port: int) -> None:
    records = [r for r in remote.requests if r["path"] != "/health"]
    for record in records:
        assert record["path"] == "/ws-1/models/m" + CHAT
        assert record["headers"]["host"] == "api.remote.example"
        assert record["headers"]["x-spillover-origin"] == "edge-1"
        assert record["headers"]["authorization"] == "Bearer tok-123"
        assert "x-spillover-upstream" not in record["headers"]
    for upstream in local:
        for record in (r for r in upstream.requests if r["path"] != "/health"):
            assert record["path"] == CHAT
            assert record["headers"]["host"] == f"127.0.0.1:{port}"
            assert "x-spillover-origin" not in record["headers"]
            assert "x-spillover-upstream" not in record["headers"]
            assert record["headers"]["authorization"] == "Bearer client-key"


def test_split_through_aggregates_changes_only_the_requests_that_reach_the_remote(
    gateway: Start, upstream_factory: Callable[..., HttpUpstream]
) -> None:
    local = [upstream_factory("local-0"), upstream_factory("local-1")]
    remote = upstream_factory("remote")
    envoy, port = gateway(model(local, remote_backend(remote), TrafficSplit(60, 40)))
    n = 200
    # A client can't make a local request look remote (and get the token sent to a pod).
    spoof = {"x-spillover-upstream": "remote"}
    counts = Counter(served(post(port, "m", spoof)) for _ in range(n))
    assert counts["remote"] + counts["local-0"] + counts["local-1"] == n, counts
    assert 0.28 * n <= counts["remote"] <= 0.52 * n, counts
    assert_remote_only_toward_remote(remote, local, port)
    # The router's stats land on the aggregates, the connection pool's on the members.
    stats = envoy.stats()
    assert stats["cluster.m_local-first_round_robin.upstream_rq_200"] == counts["local-0"] + counts["local-1"]
    assert stats["cluster.m_local_round_robin.upstream_rq_total"] == counts["local-0"] + counts["local-1"]


@pytest.mark.parametrize("failover_remote", ["internal-listener", "in-place"])
@pytest.mark.parametrize("client_auth", [True, False], ids=["client-auth", "no-client-auth"])
@pytest.mark.parametrize("token", [True, False], ids=["token", "no-token"])
@pytest.mark.parametrize("first", ["local", "remote"], ids=["local-then-remote", "remote-then-local"])
def test_a_retry_on_the_other_side_gets_that_sides_request(
    gateway: Start, upstream_factory: Callable[..., HttpUpstream], first: str, token: bool, client_auth: bool,
    failover_remote: str,
) -> None:
    """Each request fails on the side it goes to first (HTTP 503, retried) and is served by the other:
    every attempt carries what its own side expects, whatever the attempt before it was given (the
    attempts share one header map; a local attempt that no remote attempt preceded skips the Lua)."""
    local = upstream_factory("local-0", status=503 if first == "local" else 200)
    remote = upstream_factory("remote", status=503 if first == "remote" else 200)
    options: dict[str, object] = {} if token else {"bearer_token_secret_name": None, "bearer_token": None}
    split = TrafficSplit(100, 0) if first == "local" else TrafficSplit(0, 100)
    retries = Retries(2, ("5xx", "reset", "connect-failure"))
    _, port = gateway(model([local], remote_backend(remote, **options), split, retries=retries),
                      failover_remote=failover_remote)
    # A client's copy of the side header must not make a local attempt look remote.
    headers = {"x-spillover-upstream": "remote"}
    n = 5
    for _ in range(n):
        response = request(
            "POST",
            f"http://127.0.0.1:{port}{CHAT}",
            body={"model": "m"},
            headers={
                "content-type": "application/json",
                **({"authorization": "Bearer client-key"} if client_auth else {}),
                **headers,
            },
            timeout=10,
        )
        assert served(response) == ("remote" if first == "local" else "local-0"), response
    assert len(local.requests) == len(remote.requests) == n, (local.requests, remote.requests)
    client_authorization = "Bearer client-key" if client_auth else None
    for record in remote.requests:
        assert record["path"] == "/ws-1/models/m" + CHAT
        assert record["headers"]["host"] == "api.remote.example"
        assert record["headers"]["x-spillover-origin"] == "edge-1"
        assert record["headers"].get("authorization") == ("Bearer tok-123" if token else client_authorization)
        assert "x-spillover-upstream" not in record["headers"]
    for record in local.requests:
        assert record["path"] == CHAT
        assert record["headers"]["host"] == f"127.0.0.1:{port}"
        assert "x-spillover-origin" not in record["headers"]
        assert "x-spillover-upstream" not in record["headers"]
        assert record["headers"].get("authorization") == client_authorization


HOST_ONLY = {"path_prefix": "", "headers": (), "bearer_token_secret_name": None, "bearer_token": None}


@pytest.mark.parametrize("failover_remote", ["internal-listener", "in-place"])
@pytest.mark.parametrize("original_host", [None, "edge.example"], ids=["plain", "client-original-host"])
@pytest.mark.parametrize("first", ["local", "remote"], ids=["local-then-remote", "remote-then-local"])
def test_a_remote_that_only_rewrites_the_host_gets_it_on_each_of_its_attempts_and_only_there(
    gateway: Start, upstream_factory: Callable[..., HttpUpstream], first: str, original_host: str | None,
    failover_remote: str,
) -> None:
    """A remote with no path prefix, headers or token has its host set by Envoy (auto_host_rewrite),
    which stays in the header map the attempts share: every local attempt after a remote one (each
    request here fails on both sides, 4 attempts alternating) still carries the client's host and its
    own x-envoy-original-host, or none. The client's host is saved before the first attempt: with a
    warm connection pool Envoy rewrites it before the upstream filters run."""
    local = upstream_factory("local-0", status=503)
    remote = upstream_factory("remote", status=503)
    split = TrafficSplit(100, 0) if first == "local" else TrafficSplit(0, 100)
    retries = Retries(3, ("5xx",))
    _, port = gateway(model([local], remote_backend(remote, **HOST_ONLY), split, retries=retries),
                      failover_remote=failover_remote)
    headers = {
        "x-spillover-upstream": "remote",
        **({"x-envoy-original-host": original_host} if original_host else {}),
    }
    n = 3
    for i in range(n):
        # Body-routed and header-routed (a route with no Lua downstream) alike.
        routed = {"x-model": "m"} if i % 2 else {}
        response = post(port, "m", {**headers, **routed, "x-request-n": str(i)})
        assert response.status == 503, response
    assert len(local.requests) == len(remote.requests) == 2 * n, (local.requests, remote.requests)
    for record in remote.requests:
        assert record["path"] == CHAT
        assert record["headers"]["host"] == "api.remote.example"
        assert record["headers"]["authorization"] == "Bearer client-key"
        assert "x-spillover-upstream" not in record["headers"]
    for record in local.requests:
        assert record["path"] == CHAT
        assert record["headers"]["host"] == f"127.0.0.1:{port}"
        assert record["headers"].get("x-envoy-original-host") == original_host
        assert "x-spillover-upstream" not in record["headers"]
        assert record["headers"]["authorization"] == "Bearer client-key"


@pytest.mark.parametrize("share", [0, 50, 100], ids=["standby", "overflow", "all-remote"])
def test_a_dead_remote_costs_no_request(
    gateway: Start, upstream_factory: Callable[..., HttpUpstream], share: int
) -> None:
    local = [upstream_factory("local-0"), upstream_factory("local-1")]
    remote = upstream_factory("remote")
    backend = remote_backend(remote, health_check=FAST_CHECK)
    envoy, port = gateway(model(local, backend, TrafficSplit(100 - share, share), health_check=FAST_CHECK))
    wait_until(lambda: served(post(port, "m")) != "", timeout=5)
    remote.stop()
    # Before the health check notices: each attempt at the dead remote is retried on the local side.
    before = Counter(served(post(port, "m")) for _ in range(60))
    assert set(before) <= {"local-0", "local-1"}, before
    wait_until(
        lambda: all(h["health_status"].get("failed_active_health_check") for h in envoy.cluster_endpoints("m/remote")),
        timeout=5, message="the remote's health check never failed",
    )
    after = Counter(served(post(port, "m")) for _ in range(60))
    assert set(after) <= {"local-0", "local-1"}, after
    assert_remote_only_toward_remote(remote, local, port)
    if share:
        assert envoy.stats().get("cluster.m_remote-first_round_robin.upstream_rq_retry", 0) >= 1


@pytest.mark.parametrize("share", [0, 50], ids=["standby", "overflow"])
def test_dead_local_pods_cost_no_request(
    gateway: Start, upstream_factory: Callable[..., HttpUpstream], share: int
) -> None:
    local = [upstream_factory("local-0"), upstream_factory("local-1")]
    remote = upstream_factory("remote")
    backend = remote_backend(remote, health_check=FAST_CHECK)
    _, port = gateway(model(local, backend, TrafficSplit(100 - share, share), health_check=FAST_CHECK))
    wait_until(lambda: served(post(port, "m")) != "", timeout=5)
    for upstream in local:
        upstream.stop()
    counts = Counter(served(post(port, "m")) for _ in range(100))
    assert counts == Counter({"remote": 100}), counts
    assert_remote_only_toward_remote(remote, local, port)


def test_one_healthy_local_pod_keeps_a_standby_model_local(
    gateway: Start, upstream_factory: Callable[..., HttpUpstream]
) -> None:
    """Envoy's default overprovisioning (140%) would move 30% to the remote with one of two pods down;
    spillover's STANDBY means all local until no local pod is ready."""
    local = [upstream_factory("local-0"), upstream_factory("local-1")]
    remote = upstream_factory("remote")
    backend = remote_backend(remote, health_check=FAST_CHECK)
    envoy, port = gateway(model(local, backend, TrafficSplit(100, 0), health_check=FAST_CHECK))
    local[1].stop()
    wait_until(
        lambda: sum(1 for h in envoy.cluster_endpoints("m/local/round_robin")
                    if h["health_status"].get("failed_active_health_check")) == 1,
        timeout=5, message="the stopped pod never failed its health check",
    )
    counts = Counter(served(post(port, "m")) for _ in range(60))
    assert counts == Counter({"local-0": 60}), counts


def test_without_failover_a_dead_remote_fails_its_share(
    gateway: Start, upstream_factory: Callable[..., HttpUpstream]
) -> None:
    """Today's shape, for comparison: the remote's share is lost for as long as the remote is down."""
    local = [upstream_factory("local-0")]
    remote = upstream_factory("remote")
    backend = remote_backend(remote, health_check=FAST_CHECK)
    envoy, port = gateway(dataclasses.replace(model(local, backend, TrafficSplit(50, 50)), failover=False))
    remote.stop()
    wait_until(
        lambda: all(h["health_status"].get("failed_active_health_check") for h in envoy.cluster_endpoints("m/remote")),
        timeout=5,
    )
    counts = Counter(served(post(port, "m")) for _ in range(100))
    assert counts["HTTP 503"] >= 25, counts


def test_a_remote_the_internal_listener_cannot_reach_is_retried_as_a_connect_failure(
    gateway: Start, upstream_factory: Callable[..., HttpUpstream]
) -> None:
    """The local-first aggregates reach the remote through the model's internal listener, which answers
    503 when it can't connect: the retry policy takes its failure header for the connect failure it
    stands for (retry_on has nothing else here), and the header never reaches the client."""
    dead, alive = upstream_factory("local-0"), upstream_factory("local-1")
    remote = upstream_factory("remote")
    dead.stop()
    remote.stop()
    retries = Retries(3, ("connect-failure",))
    envoy, port = gateway(model([dead, alive], remote_backend(remote), TrafficSplit(100, 0), retries=retries))
    # Each request that starts on the dead pod goes on to the remote (the other priority), then back to
    # the live pod: the remote's 503 must be retried for the request to be served.
    counts = Counter(served(post(port, "m")) for _ in range(20))
    assert counts == Counter({"local-1": 20}), counts
    # The pool's stats are the member's, the router's the aggregate's.
    stats = envoy.stats()
    assert stats["cluster.m_remote-member.upstream_rq_total"] >= 1, stats["cluster.m_remote-member.upstream_rq_total"]
    assert stats["cluster.m_local-first_round_robin.retry.upstream_rq_503"] >= 1
    # Nothing left to retry on: the client gets the 503, not the internal listener's reason.
    alive.stop()
    response = post(port, "m")
    assert response.status == 503, response
    assert "x-spillover-upstream" not in response.headers


@pytest.mark.parametrize("extension", [True, False], ids=["spillover-bootstrap", "bootstrap-without-extension"])
def test_over_ads_an_envoy_without_the_internal_listener_extension_refuses_only_those_listeners(
    xds_server: XdsThread, envoy_factory: Callable[..., Envoy], upstream_factory: Callable[..., HttpUpstream],
    extension: bool,
) -> None:
    """spillover's bootstrap has `envoy.bootstrap.internal_listener`; a bootstrap without it gets the
    internal listeners NACKed (Envoy's reason in the proxy's state) and keeps the rest: the model's
    traffic is served, locally and spilled to the remote."""
    local, remote = upstream_factory("local-0"), upstream_factory("remote")
    port = free_port()
    failover_model = model([local], remote_backend(remote), TrafficSplit(50, 50))
    xds_server.set_snapshot("failover", translate(Gateway("failover", Listener("127.0.0.1", port), (failover_model,))).messages())
    bootstrap = build_bootstrap("n1", "failover", xds_server.xds_address, admin_port=0)
    if not extension:
        del bootstrap["bootstrap_extensions"]
    envoy = envoy_factory(bootstrap, name="n1")
    wait_until(envoy.is_ready, timeout=15, message="envoy never became ready")

    def lds() -> dict[str, object]:
        proxy = xds_server.proxy("n1") or {"types": {}}
        return next((s for s in proxy["types"].values() if s["type"] == "LDS" and s["status"] != "PENDING"), {})

    state = wait_until(lds, timeout=10, message="LDS never answered")
    if extension:
        assert state["status"] == "SYNCED", state
        assert sorted(envoy.listener_names()) == ["m/remote", "spillover_http"]
    else:
        state = wait_until(lambda: (s := lds()).get("status") == "NACKED" and s, timeout=10, message="no NACK")
        assert "InternalListener bootstrap extension is mandatory" in str(state["nack_error"]), state
        assert envoy.listener_names() == ["spillover_http"]
    # Told apart from any other NACK: the operator is pointed at the bootstrap or failoverRemote: in-place.
    assert xds_server.proxy("n1")["without_internal_listener"] is (not extension)  # type: ignore[index]
    assert xds_server.metric("spillover_xds_streams_without_internal_listener") == (0 if extension else 1)
    warned = [line for line in format_status(xds_server.proxies()).splitlines() if "internal_listener" in line]
    assert len(warned) == (0 if extension else 1), warned
    assert extension or "--failover-remote in-place" in warned[0], warned
    counts = Counter(served(post(port, "m")) for _ in range(40))
    assert counts["local-0"] + counts["remote"] == 40 and counts["remote"] > 0, counts
    assert_remote_only_toward_remote(remote, [local], port)


@pytest.mark.parametrize("failover_remote", ["in-place", "internal-listener"])
def test_over_ads_an_envoy_without_the_extension_served_in_place_fails_over_to_the_remote(
    xds_server: XdsThread, envoy_factory: Callable[..., Envoy], upstream_factory: Callable[..., HttpUpstream],
    failover_remote: str,
) -> None:
    """An Envoy whose bootstrap lacks `envoy.bootstrap.internal_listener`, served `failover_remote:
    in-place`, gets no internal listener to refuse and keeps the failover of a STANDBY model: attempts
    at dead local pods are retried on the remote, and once their health check fails every request goes
    there, with the remote's request. Served the default, it refuses the internal listener and its
    local-first aggregate has no remote to go to: what the setting is for."""
    local = [upstream_factory("local-0"), upstream_factory("local-1")]
    remote = upstream_factory("remote")
    port = free_port()
    standby = model(local, remote_backend(remote, health_check=FAST_CHECK), TrafficSplit(100, 0), health_check=FAST_CHECK)
    gateway = Gateway("failover", Listener("127.0.0.1", port), (standby,), failover_remote=failover_remote)
    xds_server.set_snapshot("failover", translate(gateway).messages())
    bootstrap = build_bootstrap("n1", "failover", xds_server.xds_address, admin_port=0)
    del bootstrap["bootstrap_extensions"]
    envoy = envoy_factory(bootstrap, name="n1")
    wait_until(envoy.is_ready, timeout=15, message="envoy never became ready")

    def lds() -> dict[str, object]:
        proxy = xds_server.proxy("n1") or {"types": {}}
        return next((s for s in proxy["types"].values() if s["type"] == "LDS" and s["status"] != "PENDING"), {})

    wait_until(lambda: served(post(port, "m")) in ("local-0", "local-1"), timeout=10, message="never served")
    assert envoy.listener_names() == ["spillover_http"]
    for upstream in local:
        upstream.stop()
    # Before the health check notices: each attempt at a dead pod is retried on the remote.
    before = Counter(served(post(port, "m")) for _ in range(40))
    wait_until(
        lambda: all(h["health_status"].get("failed_active_health_check")
                    for h in envoy.cluster_endpoints("m/local/round_robin")),
        timeout=5, message="the local pods' health check never failed",
    )
    after = Counter(served(post(port, "m")) for _ in range(40))
    assert xds_server.proxy("n1")["without_internal_listener"] is (failover_remote != "in-place")  # type: ignore[index]
    if failover_remote == "in-place":
        assert lds()["status"] == "SYNCED", lds()
        assert before == after == Counter({"remote": 40}), (before, after)
        assert_remote_only_toward_remote(remote, local, port)
    else:
        assert lds()["status"] == "NACKED", lds()
        assert "remote" not in before and "remote" not in after, (before, after)
