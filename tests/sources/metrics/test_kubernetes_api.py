"""The Kubernetes metrics source through a real kube-apiserver's aggregation layer.

The API server (etcd + kube-apiserver from tests/apiserver) has its aggregation layer configured
(front-proxy CA and client certificate, --requestheader-* flags). metrics.k8s.io, custom.metrics.k8s.io and
external.metrics.k8s.io are APIServices served by tests/harness/metrics_api.py over TLS, which checks the
aggregator's client certificate and reads the user it forwards. The source talks only to the API server,
with the `kubernetes` ApiClient as the informers make it: a ServiceAccount token under manifests/rbac.yaml,
a kubeconfig with an exec credential plugin.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spillover.sources.kube.api import api_client
from spillover.sources.metrics.kubernetes import KubernetesSource
from spillover.sources.metrics.sample import Sample
from spillover.sources.metrics.sampler import MetricsSampler
from tests.harness.kube import KubeCluster
from tests.harness.kube_fixtures import Crds
from tests.harness.kube_status import MANIFESTS, load_docs
from tests.harness.kube_workloads import PodState, run_pods
from tests.harness.metric_deployments import deployment
from tests.harness.metrics_api import CUSTOM, EXTERNAL, RESOURCE, VERSIONS, MetricsApiServer
from tests.harness.polling import wait_until

pytestmark = pytest.mark.timeout(120)

SYSTEM = "spillover-system"
SA_USER = f"system:serviceaccount:{SYSTEM}:spillover"


@pytest.fixture(scope="module")
def kube_crds() -> Crds:
    return Crds.NONE


@pytest.fixture(scope="module")
def kube_aggregation() -> bool:
    return True


@pytest.fixture(scope="module")
def metrics_api(cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsApiServer]:
    """The three metrics APIs, registered as APIServices of the module's API server."""
    server = MetricsApiServer(tmp_path_factory.mktemp("metrics-api"), cluster.front_proxy_ca_path).start()
    names = [cluster.register_api_service(group, VERSIONS[group], server.port, server.ca_bundle)
             for group in (RESOURCE, CUSTOM, EXTERNAL)]
    try:
        for name in names:
            cluster.wait_api_service_available(name)
        yield server
    finally:
        for name in names:
            cluster.request("DELETE", f"/apis/apiregistration.k8s.io/v1/apiservices/{name}")
        server.stop()


@pytest.fixture(scope="module")
def sa_token(cluster: KubeCluster) -> str:
    for manifest in ("namespace.yaml", "serviceaccount.yaml", "rbac.yaml"):
        cluster.apply(load_docs(MANIFESTS / manifest))
    return cluster.service_account_token(SYSTEM, "spillover", expiration_s=3600)


def llama(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "llama", "namespace": namespace},
        "spec": {"selector": {"matchLabels": {"app": "llama"}},
                 "template": {"metadata": {"labels": {"app": "llama"}}, "spec": {"containers": [
                     {"name": "vllm", "image": "vllm", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}]}}},
    }


DEPLOY_REF = {"modelSourceRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama"}}


def cpu(target: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    return {"type": "Resource", **({"name": name} if name else {}), "resource": {"name": "cpu", "target": target}}


def sampler_for(api: Any, **options: Any) -> MetricsSampler:
    return MetricsSampler(kubernetes=KubernetesSource(api, **{"min_interval": 0, **options}), timeout=10)


async def sample(sampler: MetricsSampler, metrics: list[dict[str, Any]], namespace: str, **spec: Any) -> dict[str, Sample]:
    md = deployment(metrics, namespace=namespace, **(spec or DEPLOY_REF))
    return (await sampler.sample([md]))["llama-3.1-8b"]


@pytest.fixture
def pods(cluster: KubeCluster, namespace: str, metrics_api: MetricsApiServer) -> Callable[..., None]:
    """``pods(usages, states=None)``: the llama Deployment with one pod per usage (cpu), and what the
    metrics server reports for each."""

    def make(usages: dict[str, str], states: list[PodState] | None = None) -> None:
        (workload,) = cluster.apply(llama(namespace))
        states = states or [PodState(name, f"198.51.100.{i + 10}") for i, name in enumerate(usages)]
        run_pods(cluster, workload, states)
        for name, used in usages.items():
            metrics_api.set_pod(namespace, name, {"app": "llama"}, {"vllm": {"cpu": used, "memory": "512Mi"}})

    return make


async def test_cpu_utilization_through_the_aggregation_layer(
    cluster: KubeCluster, namespace: str, metrics_api: MetricsApiServer, sa_token: str, pods: Callable[..., None]
) -> None:
    pods({"llama-a": "400m", "llama-b": "151m"})
    sampler = sampler_for(cluster.api_client(sa_token))
    try:
        samples = await sample(sampler, [
            cpu({"type": "Utilization", "averageUtilization": 50}),
            cpu({"type": "AverageValue", "averageValue": "250m"}, name="cpu-avg"),
            {"type": "Resource", "name": "mem", "resource": {"name": "memory", "target": {
                "type": "Utilization", "averageUtilization": 80}}},
        ], namespace)
    finally:
        await sampler.close()
    # (400 + 151) * 100 // (500 + 500) = 55 %: above the tutorial's 50.
    assert samples["resource:cpu"] == Sample(55.0, samples["resource:cpu"].at), samples
    assert samples["cpu-avg"].value == pytest.approx(0.275)  # 551 m // 2 pods
    assert samples["mem"].value == 50.0  # 512 Mi of 1 Gi
    # It went through the aggregator, as the ServiceAccount.
    seen = [r for r in metrics_api.requests if r.path == f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods"]
    assert seen and all(r.user == SA_USER and r.client == "front-proxy-client" for r in seen), seen
    assert {r.query.get("labelSelector") for r in seen} == {"app=llama"}


async def test_hpa_rules_on_real_pods(
    cluster: KubeCluster, namespace: str, metrics_api: MetricsApiServer, sa_token: str, pods: Callable[..., None]
) -> None:
    pods({"llama-a": "300m", "llama-b": "450m", "llama-c": "1"}, [
        PodState("llama-a", "198.51.100.10"),
        PodState("llama-b", "198.51.100.11"),
        # Started a minute ago and not Ready: the HPA leaves its cpu out.
        PodState("llama-c", "198.51.100.12", ready=False, started_ago=60, ready_changed_ago=60),
    ])
    metrics_api.remove_pod(namespace, "llama-b")  # no metrics yet: not in the value either
    sampler = sampler_for(cluster.api_client(sa_token))
    try:
        samples = await sample(sampler, [cpu({"type": "Utilization", "averageUtilization": 50})], namespace)
        assert samples["resource:cpu"].value == 60.0  # 300 m of 500 m
        # A pod of the workload without a cpu request: utilization is undefined, and said so.
        cluster.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "llama-d", "namespace": namespace, "labels": {"app": "llama"}},
            "spec": {"containers": [{"name": "vllm", "image": "vllm"}]}})
        samples = await sample(sampler, [cpu({"type": "Utilization", "averageUtilization": 50})], namespace)
        error = samples["resource:cpu"].error
        assert samples["resource:cpu"].value is None
        assert error == "kubernetes: missing request for cpu in container vllm of Pod llama-d", error
    finally:
        await sampler.close()


async def test_custom_and_external_metrics(
    cluster: KubeCluster, namespace: str, metrics_api: MetricsApiServer, sa_token: str, pods: Callable[..., None]
) -> None:
    pods({"llama-a": "100m", "llama-b": "100m", "llama-c": "100m"})
    for pod, value in (("llama-a", "6"), ("llama-b", "3"), ("llama-c", "1500m")):
        metrics_api.set_pod_metric(namespace, "vllm_requests_waiting", pod, {"app": "llama"}, value)
    metrics_api.set_pod_metric(namespace, "vllm_requests_waiting", "other", {"app": "other"}, "100")
    metrics_api.set_object_metric(namespace, "services", "llama", "requests_per_second", "900")
    metrics_api.set_external_metric(namespace, "queue_messages", [({"queue": "llm"}, "30"), ({"queue": "llm"}, "15"),
                                                                 ({"queue": "batch"}, "1000")])
    sampler = sampler_for(cluster.api_client(sa_token))
    try:
        samples = await sample(sampler, [
            {"type": "Pods", "source": "kubernetes", "pods": {"metric": {"name": "vllm_requests_waiting"},
                                                              "target": {"type": "AverageValue", "averageValue": 4}}},
            {"type": "Object", "source": "kubernetes", "object": {
                "describedObject": {"apiVersion": "v1", "kind": "Service", "name": "llama"},
                "metric": {"name": "requests_per_second"}, "target": {"type": "Value", "value": 1000}}},
            {"type": "Object", "name": "rps-per-pod", "source": "kubernetes", "object": {
                "describedObject": {"apiVersion": "v1", "kind": "Service", "name": "llama"},
                "metric": {"name": "requests_per_second"}, "target": {"type": "AverageValue", "averageValue": 200}}},
            {"type": "External", "source": "kubernetes", "external": {
                "metric": {"name": "queue_messages", "selector": {"matchLabels": {"queue": "llm"}}},
                "target": {"type": "Value", "value": 40}}},
            {"type": "External", "name": "queue-per-pod", "source": "kubernetes", "external": {
                "metric": {"name": "queue_messages", "selector": {"matchLabels": {"queue": "llm"}}},
                "target": {"type": "AverageValue", "averageValue": 10}}},
        ], namespace)
    finally:
        await sampler.close()
    values = {name: s.value for name, s in samples.items()}
    assert values == {
        "pods:vllm_requests_waiting": 3.5,  # (6000 + 3000 + 1500) // 3 pods, the other app's pod not selected
        "object:requests_per_second": 900.0,
        "rps-per-pod": 300.0,  # ceil(900 / 3 replicas of the Deployment)
        "external:queue_messages": 45.0,  # 30 + 15: the selector leaves the batch series out
        "queue-per-pod": 15.0,
    }, samples
    asked = {(r.path, r.query.get("labelSelector", ""), r.query.get("metricLabelSelector", ""))
             for r in metrics_api.requests if r.user == SA_USER}
    assert (f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/pods/*/vllm_requests_waiting",
            "app=llama", "") in asked
    assert (f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{namespace}/services/llama/requests_per_second",
            "", "") in asked
    assert (f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/queue_messages", "queue=llm", "") in asked


async def test_an_api_that_is_not_registered_is_said_so_and_picked_up_later(
    cluster: KubeCluster, namespace: str, metrics_api: MetricsApiServer, sa_token: str, pods: Callable[..., None]
) -> None:
    pods({"llama-a": "100m"})
    metrics_api.set_external_metric(namespace, "queue_messages", [({}, "7")])
    external = [{"type": "External", "source": "kubernetes", "external": {
        "metric": {"name": "queue_messages"}, "target": {"type": "Value", "value": 10}}}]
    name = f"{VERSIONS[EXTERNAL]}.{EXTERNAL}"
    cluster.request("DELETE", f"/apis/apiregistration.k8s.io/v1/apiservices/{name}")
    sampler = sampler_for(cluster.api_client(sa_token), discovery_interval=0.5)
    try:
        def unregistered() -> bool:
            return cluster.request("GET", f"/apis/{EXTERNAL}")[0] == 404

        wait_until(unregistered, timeout=15, message="the external metrics API never went away")
        gone = (await sample(sampler, external, namespace))["external:queue_messages"]
        assert gone.value is None
        assert gone.error == (
            "kubernetes: external.metrics.k8s.io is not registered in this cluster (no APIService serves it): "
            "install a metrics adapter for it, or read this metric with source: prometheus"
        )
        cluster.register_api_service(EXTERNAL, VERSIONS[EXTERNAL], metrics_api.port, metrics_api.ca_bundle)
        cluster.wait_api_service_available(name)

        deadline = time.monotonic() + 15  # discovery is asked again every 0.5 s here
        while (value := (await sample(sampler, external, namespace))["external:queue_messages"].value) is None:
            assert time.monotonic() < deadline, "the external API never came back"
            await asyncio.sleep(0.1)
        assert value == 7.0
    finally:
        await sampler.close()


async def test_rbac_is_what_the_source_needs(
    cluster: KubeCluster, namespace: str, metrics_api: MetricsApiServer, sa_token: str, pods: Callable[..., None]
) -> None:
    """manifests/rbac.yaml allows the reads above (the tests before use its token); a ServiceAccount
    without it is refused by the API server itself, before the aggregator proxies anything."""
    pods({"llama-a": "100m"})
    stranger = cluster.service_account_token(namespace, "stranger")
    # The stranger has the role's rules but the metrics ones: reading the Deployment and the pods works,
    # the metrics API is refused.
    (role,) = [d for d in load_docs(MANIFESTS / "rbac.yaml") if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "spillover"]
    metrics_groups = {"metrics.k8s.io", "custom.metrics.k8s.io", "external.metrics.k8s.io"}
    assert any(metrics_groups & set(rule["apiGroups"]) for rule in role["rules"])
    rules = [r for r in role["rules"] if not metrics_groups & set(r["apiGroups"])]
    cluster.apply([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": f"without-metrics-{namespace}"}, "rules": rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": f"without-metrics-{namespace}"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"without-metrics-{namespace}"},
         "subjects": [{"kind": "ServiceAccount", "name": "stranger", "namespace": namespace}]},
    ])
    # RBAC changes apply within a moment (the authorizer's informer).
    wait_until(lambda: cluster.request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/llama",
                                       token=stranger)[0] == 200, timeout=15, message="the binding never applied")
    before = len(metrics_api.requests)
    sampler = sampler_for(cluster.api_client(stranger))
    try:
        s = (await sample(sampler, [cpu({"type": "Utilization", "averageUtilization": 50})], namespace))["resource:cpu"]
    finally:
        await sampler.close()
    assert s.value is None and "HTTP 403" in s.error and "pods.metrics.k8s.io is forbidden" in s.error, s
    assert stranger not in s.error
    assert not [r for r in metrics_api.requests[before:] if r.user and r.user.endswith(":stranger")]
    # The role grants reads only: a write to the metrics API is refused as well.
    status, _ = cluster.request("DELETE", f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/llama-a",
                                token=sa_token)
    assert status == 403


async def test_the_informers_client_with_an_exec_credential_plugin(
    cluster: KubeCluster, namespace: str, metrics_api: MetricsApiServer, sa_token: str, pods: Callable[..., None],
    tmp_path: Path,
) -> None:
    """The source uses the ApiClient of `serve --kubernetes` (spillover.sources.kube.api): a kubeconfig whose
    user is an exec plugin (as EKS, GKE and AKS write them) works as the informers' does."""
    pods({"llama-a": "250m"})
    plugin = tmp_path / "credential-plugin"
    credential = {"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                  "status": {"token": sa_token}}
    plugin.write_text(f"#!/bin/sh\ncat <<'EOF'\n{json.dumps(credential)}\nEOF\n")
    plugin.chmod(plugin.stat().st_mode | stat.S_IXUSR)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": cluster.server_url, "certificate-authority": str(cluster.ca_path)}}],
        "users": [{"name": "exec", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1",
                                                      "command": str(plugin), "interactiveMode": "Never"}}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "exec"}}],
    }))
    api = api_client(str(kubeconfig))
    sampler = sampler_for(api)
    try:
        s = (await sample(sampler, [cpu({"type": "Utilization", "averageUtilization": 50})], namespace))["resource:cpu"]
    finally:
        await sampler.close()
        api.close()
    assert s.value == 50.0, s
    assert os.access(plugin, os.X_OK)
