"""Kubernetes source: quantities, the HPA computation, and the client against a wire-level fake API server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from spillover.metrics.kubernetes import (
    KubernetesClient,
    KubernetesSource,
    label_selector_string,
    parse_quantity,
    resource_usage,
    resource_value,
)
from spillover.metrics.sample import MetricError
from spillover.metrics.sampler import MetricsSampler
from tests.metrics.helpers import deployment

TOKEN = "kube-secret-token-123"


@pytest.mark.parametrize(
    ("text", "value"),
    [("250m", 0.25), ("1Gi", 2**30), ("500Mi", 500 * 2**20), ("1e3", 1000.0), ("1E3", 1000.0), ("1E", 1e18),
     ("123456789n", 0.123456789), ("1500u", 0.0015), ("2", 2.0), ("1.5", 1.5), ("2k", 2000.0), ("3M", 3e6),
     ("1Ki", 1024.0), (".5", 0.5), ("-1", -1.0), ("+2Ti", 2.0 * 2**40), (4, 4.0)],
)
def test_parse_quantity(text: str | int, value: float) -> None:
    assert parse_quantity(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "m", "1e", "1Gi3", "1 Gi", "1ei", "1.2.3", "abc", "1e3m", "Infinity"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        parse_quantity(text)


def pod(name: str, requests: dict[str, str] | list[dict[str, str] | None], *, phase: str = "Running",
        labels: dict[str, str] | None = None, limits: dict[str, str] | None = None, deleting: bool = False) -> dict:
    per_container = requests if isinstance(requests, list) else [requests]
    containers = []
    for i, req in enumerate(per_container):
        resources: dict[str, Any] = {}
        if req is not None:
            resources["requests"] = req
        if limits is not None:
            resources["limits"] = limits
        containers.append({"name": f"c{i}", "image": "vllm", "resources": resources})
    meta: dict[str, Any] = {"name": name, "namespace": "ai", "labels": labels or {"app": "llama"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"containers": containers}, "status": {"phase": phase}}


def pod_metrics(name: str, *usages: dict[str, str], labels: dict[str, str] | None = None) -> dict:
    return {
        "kind": "PodMetrics", "apiVersion": "metrics.k8s.io/v1beta1",
        "metadata": {"name": name, "namespace": "ai", "labels": labels or {"app": "llama"}},
        "timestamp": "2026-01-01T00:00:00Z", "window": "15s",
        "containers": [{"name": f"c{i}", "usage": u} for i, u in enumerate(usages)],
    }


def test_utilization_is_sum_of_usage_over_sum_of_requests() -> None:
    pods = [pod("a", [{"cpu": "500m"}, {"cpu": "250m"}]), pod("b", {"cpu": "1"})]
    metrics = [pod_metrics("a", {"cpu": "300m"}, {"cpu": "150000000n"}), pod_metrics("b", {"cpu": "1100m"})]
    # (0.3 + 0.15 + 1.1) / (0.5 + 0.25 + 1) = 88.57 %; the average of per-pod ratios would be 115 %
    assert resource_value(pods, metrics, "cpu", "Utilization") == pytest.approx(100 * 1.55 / 1.75)
    assert resource_value(pods, metrics, "cpu", "AverageValue") == pytest.approx(1.55 / 2)
    assert resource_value(pods, metrics, "cpu", "Value") == pytest.approx(1.55)
    assert resource_value(pods[:1], metrics[:1], "cpu", "Utilization", container="c1") == pytest.approx(60.0)
    with pytest.raises(MetricError, match="pod b: no metrics for container c1"):
        resource_value(pods, metrics, "cpu", "Utilization", container="c1")
    usage = resource_usage(pods, metrics, "cpu")
    assert usage.pods == 2 and usage.requests == pytest.approx(1.75)


def test_memory_relative_to_limits() -> None:
    pods = [pod("a", {"memory": "1Gi"}, limits={"memory": "4Gi"})]
    metrics = [pod_metrics("a", {"memory": "1536Mi"})]
    assert resource_value(pods, metrics, "memory", "Utilization") == pytest.approx(150.0)
    assert resource_value(pods, metrics, "memory", "Utilization", relative_to="limits") == pytest.approx(37.5)


def test_pods_not_counted() -> None:
    pods = [pod("a", {"cpu": "1"}), pod("pending", {"cpu": "1"}, phase="Pending"),
            pod("going", {"cpu": "1"}, deleting=True), pod("nometrics", {"cpu": "1"})]
    metrics = [pod_metrics(n, {"cpu": "500m"}) for n in ("a", "pending", "going")]
    assert resource_value(pods, metrics, "cpu", "Utilization") == pytest.approx(50.0)
    assert resource_value(pods, metrics, "cpu", "AverageValue") == pytest.approx(0.5)


def test_missing_request_makes_utilization_undefined() -> None:
    pods = [pod("a", {"cpu": "1"}), pod("b", [{"cpu": "1"}, None])]
    metrics = [pod_metrics("a", {"cpu": "1"}), pod_metrics("b", {"cpu": "1"}, {"cpu": "1"})]
    with pytest.raises(MetricError, match="pod b container c1 has no cpu request: utilization is undefined"):
        resource_value(pods, metrics, "cpu", "Utilization")
    # AverageValue does not need requests
    assert resource_value(pods, metrics, "cpu", "AverageValue") == pytest.approx(1.5)
    with pytest.raises(MetricError, match="no metrics for any of the 1 running pods"):
        resource_value([pod("a", {"cpu": "1"})], [], "cpu", "Utilization")


def test_label_selector_string() -> None:
    selector = {"matchLabels": {"app": "llama", "tier": "gpu"}, "matchExpressions": [
        {"key": "zone", "operator": "In", "values": ["a", "b"]}, {"key": "canary", "operator": "DoesNotExist"},
        {"key": "gpu", "operator": "Exists"}, {"key": "env", "operator": "NotIn", "values": ["dev"]}]}
    assert label_selector_string(selector) == "app=llama,tier=gpu,zone in (a,b),!canary,gpu,env notin (dev)"


# --- the fake API server: real HTTP, the real JSON shapes ------------------------------------------------


class FakeApiServer:
    def __init__(self) -> None:
        self.pods: list[dict] = []
        self.metrics: list[dict] = []
        self.deployments = {("ai", "llama"): {"matchLabels": {"app": "llama"}}}
        self.services = {("ai", "llama-svc"): {"app": "llama"}}
        self.requests: list[tuple[str, str, str | None]] = []  # (path, labelSelector, Authorization)
        self.metrics_status = 200
        self.url = ""

    @staticmethod
    def _matches(labels: dict[str, str], selector: str) -> bool:
        for term in filter(None, selector.split(",")):
            key, _, value = term.partition("=")
            if labels.get(key) != value:
                return False
        return True

    @staticmethod
    def _status(code: int, reason: str, message: str) -> web.Response:
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}
        return web.json_response(body, status=code)

    @web.middleware
    async def auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        self.requests.append((request.path, request.query.get("labelSelector", ""), auth))
        if auth != f"Bearer {TOKEN}":
            return self._status(401, "Unauthorized", "Unauthorized")
        return await handler(request)

    async def list_pods(self, request: web.Request) -> web.Response:
        sel = request.query.get("labelSelector", "")
        items = [p for p in self.pods if p["metadata"]["namespace"] == request.match_info["ns"]
                 and self._matches(p["metadata"]["labels"], sel)]
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                                  "items": items})

    async def list_pod_metrics(self, request: web.Request) -> web.Response:
        if self.metrics_status != 200:
            return self._status(self.metrics_status, "ServiceUnavailable", "the server is currently unable to handle"
                                " the request (get pods.metrics.k8s.io)")
        sel = request.query.get("labelSelector", "")
        items = [m for m in self.metrics if m["metadata"]["namespace"] == request.match_info["ns"]
                 and self._matches(m["metadata"]["labels"], sel)]
        return web.json_response({"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1",
                                  "metadata": {}, "items": items})

    async def get_deployment(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.deployments:
            return self._status(404, "NotFound", f'deployments.apps "{key[1]}" not found')
        return web.json_response({"kind": "Deployment", "apiVersion": "apps/v1",
                                  "metadata": {"name": key[1], "namespace": key[0]},
                                  "spec": {"replicas": 2, "selector": self.deployments[key]}})

    async def get_service(self, request: web.Request) -> web.Response:
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.services:
            return self._status(404, "NotFound", f'services "{key[1]}" not found')
        return web.json_response({"kind": "Service", "apiVersion": "v1", "metadata": {"name": key[1]},
                                  "spec": {"selector": self.services[key]}})

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.auth])
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self.list_pods)
        app.router.add_get("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods", self.list_pod_metrics)
        app.router.add_get("/apis/apps/v1/namespaces/{ns}/deployments/{name}", self.get_deployment)
        app.router.add_get("/api/v1/namespaces/{ns}/services/{name}", self.get_service)
        return app


@pytest.fixture
async def fake_api() -> AsyncIterator[FakeApiServer]:
    fake = FakeApiServer()
    runner = web.AppRunner(fake.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fake.url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        await runner.cleanup()


def kubeconfig(tmp_path: Path, server: str, token: str = TOKEN) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps({  # JSON is YAML
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "fake", "user": "me", "namespace": "ai"}}],
    }))
    return path


CPU = {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}}
DEPLOY_REF = {"modelSourceRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama"}}


async def test_source_against_fake_api(fake_api: FakeApiServer, tmp_path: Path) -> None:
    fake_api.pods = [pod("llama-1", {"cpu": "2"}), pod("llama-2", {"cpu": "2"}),
                     pod("other", {"cpu": "1"}, labels={"app": "other"})]
    fake_api.metrics = [pod_metrics("llama-1", {"cpu": "1500m"}), pod_metrics("llama-2", {"cpu": "500m"}),
                        pod_metrics("other", {"cpu": "1"}, labels={"app": "other"})]
    client = KubernetesClient.from_kubeconfig(kubeconfig(tmp_path, fake_api.url))
    sampler = MetricsSampler(kubernetes=KubernetesSource(client), timeout=5)
    try:
        md = deployment([CPU, {"metric": "cpu", "target": 80, "source": "kubernetes", "name": "cpu-preset"},
                         {"type": "Resource", "name": "cpu-avg", "resource": {"name": "cpu", "target": {
                             "type": "AverageValue", "averageValue": "500m"}}}], **DEPLOY_REF)
        result = await sampler.sample([md])
        samples = result["llama-3.1-8b"]
        assert samples["resource:cpu"].value == pytest.approx(50.0), samples
        assert samples["cpu-preset"].value == pytest.approx(50.0)
        assert samples["resource:cpu"].error == ""
        # AverageValue: total usage / pods = 2 cores / 2 pods
        assert samples["cpu-avg"].value == pytest.approx(1.0)
        paths = {p for p, _, _ in fake_api.requests}
        assert "/apis/apps/v1/namespaces/ai/deployments/llama" in paths
        assert ("/apis/metrics.k8s.io/v1beta1/namespaces/ai/pods", "app=llama", f"Bearer {TOKEN}") in fake_api.requests

        # serviceRef selector, and the metrics API going away
        svc = deployment([CPU], serviceRef={"name": "llama-svc"})
        assert (await sampler.sample([svc]))["llama-3.1-8b"]["resource:cpu"].value == pytest.approx(50.0)
        fake_api.metrics_status = 503
        down = (await sampler.sample([svc]))["llama-3.1-8b"]["resource:cpu"]
        assert down.value is None
        assert "kubernetes: GET /apis/metrics.k8s.io/v1beta1/namespaces/ai/pods answered HTTP 503" in down.error

        # a pod without a request: undefined, said so
        fake_api.metrics_status = 200
        fake_api.pods[1] = pod("llama-2", [None])
        undefined = (await sampler.sample([md]))["llama-3.1-8b"]["resource:cpu"]
        assert undefined.value is None and "llama-2 container c0 has no cpu request" in undefined.error

        missing = deployment([CPU], modelSourceRef={"apiVersion": "apps/v1", "kind": "Deployment", "name": "nope"})
        gone = (await sampler.sample([missing]))["llama-3.1-8b"]["resource:cpu"]
        assert "HTTP 404" in gone.error and 'deployments.apps "nope" not found' in gone.error
    finally:
        await sampler.close()


async def test_wrong_token_and_unreachable_server(fake_api: FakeApiServer, tmp_path: Path) -> None:
    bad = "wrong-token-456"
    source = KubernetesSource(KubernetesClient.from_kubeconfig(kubeconfig(tmp_path, fake_api.url, token=bad)))
    sampler = MetricsSampler(kubernetes=source)
    try:
        s = (await sampler.sample([deployment([CPU], **DEPLOY_REF)]))["llama-3.1-8b"]["resource:cpu"]
        assert s.value is None and "HTTP 401" in s.error and bad not in s.error
        assert fake_api.requests[-1][2] == f"Bearer {bad}"
    finally:
        await sampler.close()
    # nothing listens there any more once the fake is gone: a closed port on loopback
    from tests.harness.ports import free_port

    dead = KubernetesSource(KubernetesClient(f"http://127.0.0.1:{free_port()}", token=TOKEN, timeout=2))
    sampler = MetricsSampler(kubernetes=dead)
    try:
        s = (await sampler.sample([deployment([CPU], **DEPLOY_REF)]))["llama-3.1-8b"]["resource:cpu"]
        assert s.value is None and s.error.startswith("kubernetes: GET /apis/apps/v1/") and "Connect" in s.error
        assert TOKEN not in s.error
    finally:
        await sampler.close()


async def test_token_file_is_reread(fake_api: FakeApiServer, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("old\n")
    client = KubernetesClient(fake_api.url, token_file=token_file)
    try:
        with pytest.raises(MetricError, match="HTTP 401"):
            await client.pods("ai", "app=llama")
        token_file.write_text(TOKEN + "\n")
        assert await client.pods("ai", "app=llama") == []
    finally:
        await client.close()
