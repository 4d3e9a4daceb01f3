"""Envoy source against real Envoys under real traffic: concurrency, rate from deltas, latency percentile."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from spillover.names import local_cluster_name, remote_cluster_name, stat_name
from spillover.sources.metrics.envoy import EnvoySource
from spillover.sources.metrics.sampler import MetricsSampler
from spillover.translate.bootstrap import static_bootstrap
from tests.harness.envoy import Envoy
from tests.harness.metric_deployments import deployment
from tests.harness.polling import async_wait_until
from tests.harness.ports import free_port
from tests.harness.upstream import DELAY_HEADER, HttpUpstream

MODEL = "llama-3.1-8b"
# Two local clusters (two LB policies, as two profiles would make) and the remote one.
LOCAL_A = local_cluster_name(MODEL, "least_request_c2")
LOCAL_B = local_cluster_name(MODEL, "round_robin")
REMOTE = remote_cluster_name(MODEL)


def _cluster(name: str, upstreams: list[HttpUpstream]) -> dict[str, Any]:
    return {
        "name": name,
        "alt_stat_name": stat_name(name),  # as the translator names local clusters in stats
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": u.port}}}}
            for u in upstreams]}]},
    }


def _bootstrap(port: int, local: list[HttpUpstream], remote: HttpUpstream) -> dict[str, Any]:
    routes = [
        {"match": {"prefix": "/", "headers": [{"name": "x-profile", "string_match": {"exact": "b"}}]},
         "route": {"cluster": LOCAL_B, "timeout": "30s"}},
        {"match": {"prefix": "/", "headers": [{"name": "x-profile", "string_match": {"exact": "remote"}}]},
         "route": {"cluster": REMOTE, "timeout": "30s"}},
        {"match": {"prefix": "/"}, "route": {"cluster": LOCAL_A, "timeout": "30s"}},
    ]
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ingress",
        "route_config": {"name": "r", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    resources = {
        "listeners": [{"name": "ingress", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                       "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                       "typed_config": hcm}]}]}],
        "clusters": [_cluster(LOCAL_A, local), _cluster(LOCAL_B, local), _cluster(REMOTE, [remote])],
    }
    bootstrap = static_bootstrap("metrics-test", "edge", 0, resources)
    bootstrap["stats_flush_interval"] = "1s"  # histogram interval quantiles every second
    return bootstrap


@pytest.fixture
def envoys(
    envoy_factory: Callable[..., Envoy], upstream_factory: Callable[..., HttpUpstream]
) -> tuple[list[Envoy], list[int]]:
    local = [upstream_factory("pod-a"), upstream_factory("pod-b")]
    remote = upstream_factory("remote")
    ports = [free_port(), free_port()]
    started = [envoy_factory(_bootstrap(p, local, remote), name=f"envoy{i}") for i, p in enumerate(ports)]
    return started, ports


async def _requests(http: aiohttp.ClientSession, port: int, n: int, delay: float = 0.0, profile: str = "") -> None:
    headers = {DELAY_HEADER: str(delay)}
    if profile:
        headers["x-profile"] = profile

    async def one() -> None:
        async with http.post(f"http://127.0.0.1:{port}/v1/completions", json={"model": MODEL}, headers=headers) as r:
            assert r.status == 200, await r.text()
            await r.read()

    await asyncio.gather(*(one() for _ in range(n)))


def _admin_urls(envoys: list[Envoy]) -> list[str]:
    return [f"http://127.0.0.1:{e.admin_port}" for e in envoys]


async def test_concurrency_sums_clusters_and_envoys(envoys: tuple[list[Envoy], list[int]]) -> None:
    proxies, ports = envoys
    md = deployment([
        {"metric": "concurrency", "target": 4},  # per healthy pod: 2 pods
        {"query": "cluster.$cluster.upstream_rq_active", "source": "envoy", "threshold": 1, "reducer": "sum",
         "name": "in_flight"},
        {"query": "http.ingress.downstream_rq_active", "source": "envoy", "threshold": 1, "reducer": "max",
         "name": "downstream_max"},
    ], model=MODEL)
    sampler = MetricsSampler(envoy=EnvoySource(_admin_urls(proxies)), timeout=3)
    try:
        idle = (await sampler.sample([md]))[MODEL]
        assert idle["concurrency"].value == 0 and idle["in_flight"].value == 0, idle
        async with aiohttp.ClientSession() as http:
            # 3 slow requests on envoy0/cluster A, 2 on envoy0/cluster B, 3 on envoy1/cluster A; 1 remote
            load = asyncio.gather(
                _requests(http, ports[0], 3, delay=3), _requests(http, ports[0], 2, delay=3, profile="b"),
                _requests(http, ports[1], 3, delay=3), _requests(http, ports[1], 1, delay=3, profile="remote"),
            )

            async def busy() -> dict | None:
                s = (await sampler.sample([md]))[MODEL]
                return s if s["in_flight"].value == 8 else None

            try:
                samples = await async_wait_until(busy, timeout=2.5, interval=0.05)
            finally:
                await load
        assert samples["concurrency"].value == pytest.approx(4.0)  # 8 in flight / 2 healthy pods
        assert samples["downstream_max"].value == 5  # envoy0 holds 5 (the remote one is on envoy1: 4)
        assert samples["concurrency"].error == ""
    finally:
        await sampler.close()


async def test_rate_from_deltas_and_latency(envoys: tuple[list[Envoy], list[int]]) -> None:
    proxies, ports = envoys
    now = [100.0]
    md = deployment([
        {"metric": "throughput", "target": 100},
        {"metric": "latency", "target": 500, "percentile": 90},
    ], model=MODEL)
    sampler = MetricsSampler(envoy=EnvoySource(_admin_urls(proxies), monotonic=lambda: now[0]), timeout=3)
    try:
        first = (await sampler.sample([md]))[MODEL]
        assert first["throughput"].value is None and "needs a second scrape" in first["throughput"].error
        assert first["latency_p90"].value is None and first["latency_p90"].error.startswith("envoy: ")
        async with aiohttp.ClientSession() as http:
            await _requests(http, ports[0], 6, delay=0.25)
            await _requests(http, ports[0], 4, delay=0.25, profile="b")
            await _requests(http, ports[1], 10, delay=0.25)
            await _requests(http, ports[1], 7, profile="remote")  # not the model's local traffic
        now[0] += 4.0
        second = (await sampler.sample([md]))[MODEL]
        assert second["throughput"].value == pytest.approx(20 / 4.0)  # 20 local requests in 4 s

        async def latency() -> float | None:
            s = (await sampler.sample([md]))[MODEL]["latency_p90"]
            return s.value

        # histograms are published at each stats flush (1 s here)
        value = await async_wait_until(latency, timeout=5, interval=0.2)
        assert 240 <= value < 2000, value
    finally:
        await sampler.close()


async def test_unreachable_envoy_is_an_error_sample() -> None:
    md = deployment([{"metric": "concurrency", "target": 4}], model=MODEL)
    sampler = MetricsSampler(envoy=EnvoySource([f"http://127.0.0.1:{free_port()}"], timeout=1), timeout=3)
    try:
        s = (await sampler.sample([md]))[MODEL]["concurrency"]
        assert s.value is None and s.error.startswith("envoy: no proxy answered (1 tried;"), s
    finally:
        await sampler.close()
    s = (await MetricsSampler(envoy=EnvoySource([])).sample([md]))[MODEL]["concurrency"]
    assert s.value is None and s.error == "envoy: no proxy admin endpoint to read"
