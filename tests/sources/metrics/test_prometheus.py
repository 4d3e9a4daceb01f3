"""Prometheus source against the real Prometheus scraping real model servers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from aiohttp import ClientSession, web

from spillover.sources.metrics.prometheus import PrometheusSource
from spillover.sources.metrics.sampler import MetricsSampler
from tests.harness.metric_deployments import deployment
from tests.harness.modelserver import ModelServer
from tests.harness.ports import free_port
from tests.harness.prometheus import Prometheus

MODEL = "llama-3.1-8b"
SECRET = "prom-bearer-s3cret"


@pytest.fixture
def stack(
    model_server_factory: Callable[..., ModelServer], prometheus_factory: Callable[..., Prometheus]
) -> tuple[Prometheus, list[ModelServer]]:
    servers = [model_server_factory(f"pod-{i}", MODEL) for i in range(3)]
    other = model_server_factory("other", "other-model")
    for s, (waiting, kv) in zip(servers, [(2, 0.5), (4, 0.25), (9, 0.75)], strict=True):
        s.set_load(waiting=waiting, kv_cache=kv, running=1)
    other.set_load(waiting=100, kv_cache=1.0)
    prom = prometheus_factory([s.address for s in [*servers, other]])
    prom.wait_for_value(f'vllm:num_requests_waiting{{model_name="{MODEL}"}}', lambda v: sorted(v) == [2, 4, 9])
    prom.wait_for_series('vllm:num_requests_waiting{model_name="other-model"}')
    return prom, servers


async def test_presets_raw_and_reducers(stack: tuple[Prometheus, list[ModelServer]]) -> None:
    prom, servers = stack
    md = deployment([
        {"metric": "queue_length", "target": 5},  # average over the pods
        {"metric": "kv_cache", "target": 90, "reducer": "max"},
        {"metric": "queue_length", "target": 5, "reducer": "sum", "name": "queue_total"},
        {"metric": "queue_length", "target": 5, "reducer": "max", "name": "queue_max"},
        {"query": 'vllm:num_requests_running{model_name="$model"}', "threshold": 3, "reducer": "sum"},
        {"query": 'vllm:num_requests_waiting{model_name="nobody"}', "threshold": 1, "name": "empty"},
        {"query": "sum(rate(", "threshold": 1, "name": "broken"},
    ], model=MODEL)
    sampler = MetricsSampler(prometheus=PrometheusSource(prom.url), timeout=5)
    try:
        samples = (await sampler.sample([md]))[MODEL]
        assert samples["queue_length"].value == pytest.approx(5.0), samples
        assert samples["queue_total"].value == pytest.approx(15.0)
        assert samples["queue_max"].value == pytest.approx(9.0)
        assert samples["kv_cache"].value == pytest.approx(75.0)
        assert samples["query[4]"].value == pytest.approx(3.0)
        assert samples["empty"].value is None and samples["empty"].error == "prometheus: empty result"
        assert samples["broken"].value is None and "prometheus: query failed (bad_data)" in samples["broken"].error
        assert all(s.at > 0 for s in samples.values())

        # load changes at run time, through the control endpoint, and the source follows
        async with ClientSession() as http, http.post(f"{servers[2].url}/control", json={"waiting": 30}) as resp:
            assert resp.status == 200
        prom.wait_for_value(f'max(vllm:num_requests_waiting{{model_name="{MODEL}"}})', lambda v: v == [30])
        samples = (await sampler.sample([md]))[MODEL]
        assert samples["queue_max"].value == pytest.approx(30.0)
        assert samples["queue_length"].value == pytest.approx(12.0)
    finally:
        await sampler.close()


async def test_unreachable_prometheus_is_an_error_sample() -> None:
    md = deployment([{"metric": "queue_length", "target": 5}], model=MODEL)
    sampler = MetricsSampler(prometheus=PrometheusSource(f"http://127.0.0.1:{free_port()}", SECRET), timeout=3)
    try:
        s = (await sampler.sample([md]))[MODEL]["queue_length"]
        assert s.value is None and s.error.startswith("prometheus: http://127.0.0.1:") and "Connect" in s.error
        assert SECRET not in s.error
    finally:
        await sampler.close()
    # no source configured at all
    s = (await MetricsSampler().sample([md]))[MODEL]["queue_length"]
    assert s.value is None and s.error == "prometheus: no Prometheus server configured"


async def test_bearer_token_sent_and_never_in_errors(stack: tuple[Prometheus, list[ModelServer]]) -> None:
    prom, _ = stack
    seen: list[str | None] = []

    async def proxy(request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        seen.append(auth)
        if auth != f"Bearer {SECRET}":  # an unkind server echoing what it got
            return web.json_response({"status": "error", "errorType": "unauthorized",
                                      "error": f"bad credentials: {auth}"}, status=401)
        form = await request.post()
        async with ClientSession() as http, http.post(prom.url + request.path, data=form) as resp:
            return web.Response(body=await resp.read(), status=resp.status, content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/v1/query", proxy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    md = deployment([{"metric": "queue_length", "target": 5}], model=MODEL)
    try:
        async with PrometheusSource(url, SECRET) as good:
            s = await good.sample('sum(vllm:num_requests_waiting{model_name="llama-3.1-8b"})', "max")
            assert s.value == pytest.approx(15.0) and seen[-1] == f"Bearer {SECRET}"
            assert SECRET not in repr(good)
        wrong = "wrong-" + SECRET
        sampler = MetricsSampler(prometheus=PrometheusSource(url, wrong))
        try:
            s = (await sampler.sample([md]))[MODEL]["queue_length"]
            assert seen[-1] == f"Bearer {wrong}"
            assert s.value is None and "unauthorized" in s.error and wrong not in s.error and "***" in s.error
        finally:
            await sampler.close()
    finally:
        await runner.cleanup()
