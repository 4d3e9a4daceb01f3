"""Metric specs -> queries (pure): every preset for every source it has, HPA forms, raw queries."""

from __future__ import annotations

import re
from typing import Any

import pytest

from spillover.ir import Endpoint, Gateway, Model, Profile, RemoteBackend, StrategyParams
from spillover.names import is_local_cluster_stat_name, local_cluster_stat_prefix, local_cluster_stat_regex
from spillover.policy.presets import DEFAULT_PRESETS
from spillover.sources.metrics.render import (
    DescribedObject,
    EnvoyQuery,
    KubeQuery,
    PromQuery,
    RenderedMetric,
    parse_envoy_query,
    pod_selector_promql,
    render_model,
)
from spillover.translate import translate
from tests.harness.metric_deployments import deployment

SOURCE_REF = {"modelSourceRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama", "namespace": "ai"}}


def one(metric: dict[str, Any], **spec: Any) -> RenderedMetric:
    [rendered] = render_model(deployment([metric], **spec))
    assert rendered.error == "", rendered.error
    return rendered


def promql(rendered: RenderedMetric) -> str:
    assert isinstance(rendered.query, PromQuery), rendered
    return rendered.query.promql


def kube_query(rendered: RenderedMetric) -> KubeQuery:
    assert isinstance(rendered.query, KubeQuery), rendered
    return rendered.query


def envoy_query(rendered: RenderedMetric) -> EnvoyQuery:
    assert isinstance(rendered.query, EnvoyQuery), rendered
    return rendered.query


PRESET_SOURCES = [(name, src) for name in DEFAULT_PRESETS.names() for src in DEFAULT_PRESETS[name].sources]


@pytest.mark.parametrize(("preset", "source"), PRESET_SOURCES)
def test_every_preset_renders_for_every_source_it_has(preset: str, source: str) -> None:
    r = one({"metric": preset, "target": 50, "source": source}, **SOURCE_REF)
    assert r.source == source
    assert r.reducer == DEFAULT_PRESETS[preset].default_reducer
    assert r.threshold == 50
    if source == "prometheus":
        assert isinstance(r.query, PromQuery)
        assert "$" not in r.query.promql, r.query.promql  # every variable substituted
        assert r.query.promql.count("(") == r.query.promql.count(")")
    elif source == "kubernetes":
        assert isinstance(r.query, KubeQuery)
        assert r.query.resource == DEFAULT_PRESETS[preset].kubernetes
        assert r.query.pods.namespace == "ai" and r.query.pods.workload is not None
    else:
        assert isinstance(r.query, EnvoyQuery)
        assert r.query.stat.startswith("cluster.$cluster.")
        assert r.query.cluster_prefix == "llama-3_1-8b_local_"


def test_preset_without_the_source_is_an_error_not_an_exception() -> None:
    # gpu has no Envoy form; validation refuses it, so build the case through presets with overrides.
    table = DEFAULT_PRESETS.with_overrides({"gpu": {"default_source": "envoy"}})
    [r] = render_model(deployment([{"metric": "gpu", "target": 80}]), table)
    assert r.query is None and "has no envoy form" in r.error


def test_prometheus_preset_texts() -> None:
    q = one({"metric": "queue_length", "target": 5}).query
    assert q == PromQuery('sum by (pod, instance) (vllm:num_requests_waiting{model_name="llama-3.1-8b"})')
    lat = promql(one({"metric": "latency", "target": 500, "percentile": 90, "source": "prometheus", "window": "30s"}))
    regex = "llama-3_1-8b_local(-first)?_"  # the local clusters and their local-first aggregates
    assert lat.startswith("histogram_quantile(0.9, sum by (le) (rate(envoy_cluster_upstream_rq_time_bucket")
    assert f'envoy_cluster_name=~"{regex}' in lat and "[30s]" in lat
    cpu = promql(one({"metric": "cpu", "target": 80, "window": "2m"}, **SOURCE_REF))
    assert 'namespace="ai",pod=~"llama-[a-z0-9]+-[a-z0-9]+"' in cpu and "[2m]" in cpu


def test_latency_defaults() -> None:
    r = one({"metric": "latency", "target": 500})
    assert r.name == "latency_p95" and r.source == "envoy" and r.reducer == "max"
    assert r.query == EnvoyQuery("cluster.$cluster.upstream_rq_time", "histogram", "llama-3_1-8b_local_", None, 95.0)
    assert envoy_query(one({"metric": "latency", "target": 500, "percentile": 50})).percentile == 50
    conc = envoy_query(one({"metric": "concurrency", "target": 4}))
    assert conc.per == "cluster.$cluster.membership_healthy" and conc.kind == "gauge"


def test_ram_preset_is_relative_to_limits_and_hpa_memory_to_requests() -> None:
    assert kube_query(one({"metric": "ram", "target": 80, "source": "kubernetes"})).relative_to == "limits"
    hpa = one({"type": "Resource", "resource": {"name": "memory",
                                                "target": {"type": "Utilization", "averageUtilization": 70}}})
    assert hpa.source == "kubernetes" and kube_query(hpa).relative_to == "requests" and hpa.threshold == 70


def test_hpa_resource_prometheus() -> None:
    util = one({"type": "Resource", "source": "prometheus",
                "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}, **SOURCE_REF)
    assert promql(util).startswith("100 * sum(rate(container_cpu_usage_seconds_total{")
    assert 'kube_pod_container_resource_requests{namespace="ai",pod=~"llama-' in promql(util)
    avg = one({"type": "ContainerResource", "source": "prometheus",
               "containerResource": {"name": "memory", "container": "vllm",
                                     "target": {"type": "AverageValue", "averageValue": "8Gi"}}}, **SOURCE_REF)
    assert promql(avg).startswith("sum by (pod) (container_memory_working_set_bytes{")
    assert 'container="vllm"' in promql(avg)
    assert avg.reducer == "average" and avg.threshold == 8 * 2**30


def test_hpa_pods_object_external() -> None:
    pods = one({"type": "Pods", "pods": {"metric": {"name": "vllm:num_requests_running",
                                                   "selector": {"matchLabels": {"tier": "gpu"}}},
                                        "target": {"type": "AverageValue", "averageValue": 4}}}, **SOURCE_REF)
    assert promql(pods) == (
        'sum by (pod) (vllm:num_requests_running{namespace="ai",pod=~"llama-[a-z0-9]+-[a-z0-9]+",tier="gpu"})'
    )
    assert pods.reducer == "average"
    ext_value = one({"type": "External", "external": {
        "metric": {"name": 'sum(rate(http_requests_total{service="x"}[1m]))'},
        "target": {"type": "Value", "value": 100}}})
    # Beamlit: a PromQL query in the metric name
    assert promql(ext_value) == 'sum(sum(rate(http_requests_total{service="x"}[1m])))'
    assert ext_value.reducer == "sum"
    ext_avg = one({"type": "External", "external": {"metric": {"name": "queue_messages"},
                                                    "target": {"type": "AverageValue", "averageValue": 10}}},
                  **SOURCE_REF)
    assert promql(ext_avg).startswith("sum(queue_messages{}) / clamp_min(count(kube_pod_info{namespace=\"ai\"")
    obj = one({"type": "Object", "object": {"describedObject": {"kind": "Ingress", "name": "main"},
                                           "metric": {"name": "requests_per_second"},
                                           "target": {"type": "Value", "value": 2000}}})
    assert promql(obj) == 'sum(requests_per_second{namespace="ai",ingress="main"})'
    kube = one({"type": "Pods", "source": "kubernetes", "pods": {
        "metric": {"name": "x", "selector": {"matchLabels": {"tier": "gpu"}, "matchExpressions": [
            {"key": "zone", "operator": "In", "values": ["a", "b"]}]}},
        "target": {"type": "AverageValue", "averageValue": 1}}}, **SOURCE_REF)
    assert isinstance(kube.query, KubeQuery)
    assert (kube.query.kind, kube.query.resource, kube.query.metric_selector) == ("Pods", "x", "tier=gpu,zone in (a,b)")
    assert kube.query.pods.workload is not None and kube.query.pods.workload.name == "llama"
    kube_obj = one({"type": "Object", "source": "kubernetes", "object": {
        "describedObject": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": "main"},
        "metric": {"name": "requests_per_second"}, "target": {"type": "AverageValue", "averageValue": 20}}})
    assert isinstance(kube_obj.query, KubeQuery) and kube_obj.query.kind == "Object"
    assert kube_obj.query.described_object == DescribedObject("Ingress", "main", "networking.k8s.io/v1")
    kube_ext = one({"type": "External", "source": "kubernetes", "external": {
        "metric": {"name": "queue_messages"}, "target": {"type": "Value", "value": 10}}})
    assert isinstance(kube_ext.query, KubeQuery) and (kube_ext.query.kind, kube_ext.query.metric_selector) == (
        "External", "")


def test_raw_queries() -> None:
    prom = one({"query": 'max(vllm:num_requests_waiting{model_name="$model"})', "threshold": 3})
    assert prom.query == PromQuery('max(vllm:num_requests_waiting{model_name="llama-3.1-8b"})')
    assert prom.name == "query[0]" and prom.reducer == "max" and prom.source == "prometheus"
    env = one({"query": "rate(cluster.$cluster.upstream_rq_5xx)", "threshold": 1, "source": "envoy", "name": "err"})
    assert env.name == "err" and envoy_query(env).kind == "rate" and envoy_query(env).stat == "cluster.$cluster.upstream_rq_5xx"
    assert parse_envoy_query("p99.9(cluster.x.upstream_rq_time)") == ("cluster.x.upstream_rq_time", "histogram", 99.9)
    assert parse_envoy_query(" http.ingress.downstream_rq_active ") == ("http.ingress.downstream_rq_active", "gauge", None)
    [bad] = render_model(deployment([{"query": "sum(x{a=\"b\"})", "threshold": 1, "source": "envoy"}]))
    assert bad.query is None and bad.error.startswith("envoy: ") and "not a stat name" in bad.error
    # a preset whose template is replaced by `query`
    over = one({"metric": "kv_cache", "target": 90, "query": '100 * max(vllm:kv_cache_usage_perc{model_name="$model"})'})
    assert promql(over) == '100 * max(vllm:kv_cache_usage_perc{model_name="llama-3.1-8b"})' and over.name == "kv_cache"


def test_pod_selector_forms() -> None:
    sts = deployment([], modelSourceRef={"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "vllm.a"})
    assert pod_selector_promql(sts) == 'namespace="ai",pod=~"vllm\\\\.a-[0-9]+"'
    svc = deployment([], namespace=None, serviceRef={"name": "llama-svc"})
    assert pod_selector_promql(svc) == 'namespace="default",pod=~"llama-svc-[a-z0-9-]+"'
    [r] = render_model(deployment([{"metric": "cpu", "target": 1, "source": "kubernetes"}]))
    assert kube_query(r).pods.label_selector == "model.aibrix.ai/name=llama-3.1-8b"


def test_cluster_names_match_the_translator() -> None:
    """The $cluster regex and prefix test must accept exactly the local clusters translate() makes."""
    strategies = ["random", "round-robin", "least-request", "least-latency", "session-affinity", "prefix-cache",
                  "throughput"]
    profiles = tuple(Profile(f"p{i}", s) for i, s in enumerate(strategies))
    profiles += (Profile("default", "prefix-cache", params=StrategyParams(consistent_hash="maglev")),
                 Profile("tp", "throughput", params=StrategyParams(active_request_bias=1.5, choice_count=3)))
    models = (
        Model("llama-3.1-8b", (Endpoint("10.0.0.1", 8000),), profiles=profiles),
        Model("llama-3.1-8b/local/x", (Endpoint("10.0.0.2", 8000),)),  # a name that looks like a prefix
    )
    resources = translate(Gateway("edge", models=models))
    mine = {c.alt_stat_name for name, c in resources.clusters.items() if name.startswith("llama-3.1-8b/local/")
            and "/local/x/" not in name}
    others = {c.alt_stat_name for c in resources.clusters.values()} - mine
    assert len(mine) >= 6
    prefix, regex = local_cluster_stat_prefix("llama-3.1-8b"), re.compile(local_cluster_stat_regex("llama-3.1-8b"))
    for name in mine:
        assert is_local_cluster_stat_name(name, prefix) and regex.fullmatch(name), name
    for name in others:
        assert not is_local_cluster_stat_name(name, prefix) and not regex.fullmatch(name), name


def test_local_side_stats_include_the_local_first_aggregates() -> None:
    """With failover the router's stats (upstream_rq_time: the latency preset) are counted on the
    route's cluster, the local-first aggregate; the readers take it as the local side."""
    model = Model(
        "llama-3.1-8b", (Endpoint("10.0.0.1", 8000),), remote=RemoteBackend("10.9.0.1", 80, scheme="http"),
        failover=True,
    )
    names = {c.alt_stat_name for c in translate(Gateway("edge", models=(model,))).clusters.values()}
    assert names == {
        "llama-3_1-8b_local_random",
        "llama-3_1-8b_local-first_random",
        "llama-3_1-8b_remote-first_random",
        "llama-3_1-8b_remote",
        # The local-first aggregates' way to the remote (an internal listener, failover.py): not local.
        "llama-3_1-8b_remote-member",
    }
    prefix, regex = local_cluster_stat_prefix("llama-3.1-8b"), re.compile(local_cluster_stat_regex("llama-3.1-8b"))
    local_side = {n for n in names if is_local_cluster_stat_name(n, prefix)}
    assert local_side == {n for n in names if regex.fullmatch(n)}
    assert local_side == {"llama-3_1-8b_local_random", "llama-3_1-8b_local-first_random"}
