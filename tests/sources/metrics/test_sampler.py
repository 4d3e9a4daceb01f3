"""The sampler: per-source deadlines, all models at once, reducers, result shape."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from aiohttp import web

from spillover.sources.metrics.prometheus import PrometheusSource, parse_query_result
from spillover.sources.metrics.sample import MetricError, Sample, reduce_values
from spillover.sources.metrics.sampler import MetricsSampler
from tests.harness.metric_deployments import deployment


def test_reduce_values() -> None:
    assert reduce_values([1, 5, 3], "max") == 5
    assert reduce_values([1, 5, 3], "sum") == 9
    assert reduce_values([1, 5, 3], "average") == 3
    assert reduce_values([1, math.nan, 3], "average") == 2  # NaN series (0/0 in PromQL) are left out
    with pytest.raises(MetricError, match="empty"):
        reduce_values([math.nan], "max")


def test_parse_query_result_shapes() -> None:
    vector = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"pod": "a"}, "value": [1, "1.5"]}, {"metric": {}, "value": [1, "+Inf"]}]}}
    assert parse_query_result(vector) == [1.5, math.inf]
    assert parse_query_result({"status": "success", "data": {"resultType": "scalar", "result": [1, "2"]}}) == [2.0]
    with pytest.raises(MetricError, match="unsupported result type 'string'"):
        parse_query_result({"status": "success", "data": {"resultType": "string", "result": [1, "x"]}})


async def test_slow_source_times_out_and_models_are_sampled_concurrently() -> None:
    calls: list[float] = []

    async def slow(request: web.Request) -> web.Response:
        calls.append(time.monotonic())
        await asyncio.sleep(5)
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})

    app = web.Application()
    app.router.add_post("/api/v1/query", slow)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    models = [deployment([{"metric": "queue_length", "target": 1}, {"metric": "kv_cache", "target": 1}], model=m)
              for m in ("mod-a", "mod-b", "mod-c")]
    sampler = MetricsSampler(prometheus=PrometheusSource(url, timeout=30), timeout={"prometheus": 0.5})
    try:
        start = time.monotonic()
        result = await sampler.sample(models)
        elapsed = time.monotonic() - start
        assert set(result) == {"mod-a", "mod-b", "mod-c"} and all(set(r) == {"queue_length", "kv_cache"} for r in result.values())
        for per_model in result.values():
            for s in per_model.values():
                assert s.value is None and s.error == "prometheus: timed out after 0.5s"
        assert len(calls) == 6 and elapsed < 2.0  # six queries in flight at once, one deadline
    finally:
        await sampler.close()
        await runner.cleanup()


async def test_models_without_metrics_and_missing_sources() -> None:
    bare = deployment([], model="bare-model")
    kube = deployment([{"metric": "cpu", "target": 80, "source": "kubernetes"},
                       {"metric": "latency", "target": 100}], model="kube-model")
    result = await MetricsSampler(clock=lambda: 42.0).sample(iter([bare, kube]))
    assert result == {
        "bare-model": {},
        "kube-model": {"cpu": Sample(None, 42.0, "kubernetes: no Kubernetes API configured"),
              "latency_p95": Sample(None, 42.0, "envoy: no Envoy admin endpoints configured")},
    }
