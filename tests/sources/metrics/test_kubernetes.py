"""The HPA's arithmetic (spillover.sources.metrics.hpa), on the JSON shapes the API servers return.

The expected numbers are worked out by hand from the HPA controller's rules (replica_calculator.go):
integer milli-units, utilization as the integer part of sum(usage) * 100 / sum(requests) over the ready
pods with metrics."""

from __future__ import annotations

import time
from typing import Any

import pytest

from spillover.sources.metrics.hpa import (
    milli_value,
    object_value,
    pod_metrics_of_custom,
    pod_metrics_of_resource,
    pods_average,
    quantity,
    resource_utilization,
    sum_external,
)
from spillover.sources.metrics.kubernetes import label_selector_string
from spillover.sources.metrics.sample import MetricError
from tests.harness.kube_workloads import rfc3339

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "milli"),
    [("250m", 250), ("1Gi", 2**30 * 1000), ("500Mi", 500 * 2**20 * 1000), ("1e3", 1_000_000), ("1E3", 1_000_000),
     ("123456789n", 124), ("1500u", 2), ("2", 2000), ("1.5", 1500), ("2k", 2_000_000), ("1Ki", 1_024_000),
     (".5", 500), ("-1", -1000), (4, 4000), ("0", 0), ("150000000n", 150)],
)
def test_milli_value_rounds_up_like_quantity_milli_value(text: str | int, milli: int) -> None:
    assert milli_value(text) == milli


def test_one_exa_is_not_an_exponent() -> None:
    assert quantity("1E") == 10**18 and quantity("1E3") == 1000


@pytest.mark.parametrize("text", ["", "m", "1e", "1Gi3", "1 Gi", "1ei", "1.2.3", "abc", "1e3m", "Infinity", "1e999"])
def test_bad_quantities(text: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        milli_value(text)


def pod(name: str, requests: list[dict[str, str] | None], *, phase: str = "Running", ready: str | None = "True",
        started_ago: float = 3600, ready_changed_ago: float = 3500, deleting: bool = False,
        pod_requests: dict[str, str] | None = None, sidecar: dict[str, str] | None = None) -> dict[str, Any]:
    containers = [{"name": f"c{i}", "resources": {"requests": r} if r is not None else {}}
                  for i, r in enumerate(requests)]
    spec: dict[str, Any] = {"containers": containers}
    if pod_requests is not None:
        spec["resources"] = {"requests": pod_requests}
    if sidecar is not None:
        spec["initContainers"] = [{"name": "proxy", "restartPolicy": "Always", "resources": {"requests": sidecar}},
                                  {"name": "init", "resources": {}}]
    status: dict[str, Any] = {"phase": phase, "startTime": rfc3339(NOW - started_ago)}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": ready, "lastTransitionTime": rfc3339(NOW - ready_changed_ago)}]
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = rfc3339(NOW)
    return {"metadata": meta, "spec": spec, "status": status}


def usage(name: str, *containers: dict[str, str], age: float = 10, window: str = "15s") -> dict[str, Any]:
    return {"metadata": {"name": name}, "timestamp": rfc3339(NOW - age), "window": window,
            "containers": [{"name": f"c{i}", "usage": u} for i, u in enumerate(containers)]}


def test_utilization_is_sum_of_usage_over_sum_of_requests_truncated() -> None:
    pods = [pod("a", [{"cpu": "500m"}, {"cpu": "250m"}]), pod("b", [{"cpu": "1"}])]
    metrics = pod_metrics_of_resource([usage("a", {"cpu": "300m"}, {"cpu": "150000000n"}), usage("b", {"cpu": "1101m"})], "cpu")
    # (300 + 150 + 1101) * 100 // (750 + 1000) = 155100 // 1750 = 88 (88.6 %); the mean of the
    # per-pod ratios would be 115 %.
    assert resource_utilization(pods, metrics, "cpu", NOW) == 88
    # AverageValue: 1551 m // 2 pods = 775 m
    assert pods_average(pods, metrics, "cpu", NOW) == 775
    # ContainerResource: only c1 of pod a
    one = pod_metrics_of_resource([usage("a", {"cpu": "300m"}, {"cpu": "150m"})], "cpu", container="c1")
    assert resource_utilization(pods[:1], one, "cpu", NOW, container="c1") == 60


def test_memory_relative_to_limits_for_the_ram_preset() -> None:
    pods = [pod("a", [{"memory": "1Gi"}])]
    pods[0]["spec"]["containers"][0]["resources"]["limits"] = {"memory": "4Gi"}
    metrics = pod_metrics_of_resource([usage("a", {"memory": "1536Mi"})], "memory")
    assert resource_utilization(pods, metrics, "memory", NOW) == 150
    assert resource_utilization(pods, metrics, "memory", NOW, relative_to="limits") == 37


def test_which_pods_count() -> None:
    pods = [
        pod("a", [{"cpu": "1"}]),
        pod("pending", [{"cpu": "1"}], phase="Pending"),  # unready
        pod("failed", [{"cpu": "1"}], phase="Failed"),  # ignored
        pod("going", [{"cpu": "1"}], deleting=True),  # ignored
        pod("nometrics", [{"cpu": "1"}]),  # missing: not in the value
        pod("notready", [{"cpu": "1"}], ready="False", started_ago=60, ready_changed_ago=60),  # cpu: unready
        pod("noready", [{"cpu": "1"}], ready=None),  # cpu: unready (no Ready condition)
    ]
    metrics = pod_metrics_of_resource([usage(n, {"cpu": "500m"}) for n in ("pending", "failed", "going", "notready", "noready")]
                                      + [usage("a", {"cpu": "800m"})], "cpu")
    assert resource_utilization(pods, metrics, "cpu", NOW) == 80
    assert pods_average(pods, metrics, "cpu", NOW) == 800
    # Memory has no readiness rule: the two pods that are not ready count.
    mem = pod_metrics_of_resource([usage(n, {"memory": "1Gi"}) for n in ("a", "notready", "noready")], "memory")
    assert pods_average(pods, mem, "memory", NOW) == 2**30 * 1000


def test_cpu_readiness_rules_inside_and_after_the_initialization_period() -> None:
    sample = usage("p", {"cpu": "500m"}, age=5, window="30s")
    metrics = pod_metrics_of_resource([sample], "cpu")
    # Started 1 min ago, Ready since 20 s: the 30 s sample still covers the time before: unready.
    young = pod("p", [{"cpu": "1"}], started_ago=60, ready_changed_ago=20)
    with pytest.raises(MetricError, match="did not receive metrics for targeted pods"):
        resource_utilization([young], metrics, "cpu", NOW)
    # Ready for longer than a window: counted.
    settled = pod("p", [{"cpu": "1"}], started_ago=60, ready_changed_ago=40)
    assert resource_utilization([settled], metrics, "cpu", NOW) == 50
    # After 5 min, a pod that is not Ready now but was once (became unready later) still counts...
    flapped = pod("p", [{"cpu": "1"}], ready="False", started_ago=900, ready_changed_ago=60)
    assert resource_utilization([flapped], metrics, "cpu", NOW) == 50
    # ...one that never became ready within the 30 s initial readiness delay does not.
    never = pod("p", [{"cpu": "1"}], ready="False", started_ago=900, ready_changed_ago=890)
    with pytest.raises(MetricError, match="did not receive metrics"):
        resource_utilization([never], metrics, "cpu", NOW)


def test_a_pod_without_a_request_makes_utilization_an_error() -> None:
    pods = [pod("a", [{"cpu": "1"}]), pod("b", [{"cpu": "1"}, None])]
    metrics = pod_metrics_of_resource([usage("a", {"cpu": "1"}), usage("b", {"cpu": "1"}, {"cpu": "1"})], "cpu")
    with pytest.raises(MetricError, match="missing request for cpu in container c1 of Pod b"):
        resource_utilization(pods, metrics, "cpu", NOW)
    # even when that pod is not counted (the HPA checks every pod the selector matches)
    pods[1]["status"]["phase"] = "Failed"
    with pytest.raises(MetricError, match="missing request for cpu in container c1 of Pod b"):
        resource_utilization(pods, metrics, "cpu", NOW)
    # AverageValue needs no request
    assert pods_average(pods, metrics, "cpu", NOW) == 1000


def test_pod_level_requests_and_sidecars() -> None:
    metrics = pod_metrics_of_resource([usage("a", {"cpu": "600m"})], "cpu")
    assert resource_utilization([pod("a", [{"cpu": "100m"}], pod_requests={"cpu": "2"})], metrics, "cpu", NOW) == 30
    # a restartable init container (a sidecar) counts, a plain init container does not
    assert resource_utilization([pod("a", [{"cpu": "1"}], sidecar={"cpu": "1"})], metrics, "cpu", NOW) == 30


def test_pods_whose_metrics_miss_a_container_have_no_value() -> None:
    metrics = pod_metrics_of_resource([usage("a", {"cpu": "1"}, {"memory": "1Gi"}), usage("b")], "cpu")
    assert metrics == {}
    with pytest.raises(MetricError, match="did not receive metrics"):
        resource_utilization([pod("a", [{"cpu": "1"}, {"cpu": "1"}])], metrics, "cpu", NOW)
    with pytest.raises(MetricError, match="no pods returned by selector"):
        resource_utilization([], metrics, "cpu", NOW)


def test_custom_object_and_external_values() -> None:
    items = [{"describedObject": {"kind": "Pod", "name": n}, "value": v, "timestamp": rfc3339(NOW), "windowSeconds": 60}
             for n, v in (("a", "3"), ("b", "500m"), ("c", "9"))]
    pods = [pod("a", [None]), pod("b", [None]), pod("c", [None], phase="Pending")]
    # Pods AverageValue: (3000 + 500) // 2, the pending pod left out
    assert pods_average(pods, pod_metrics_of_custom(items), "", NOW) == 1750
    # Object: the value, or ceil(value / replicas)
    assert object_value(10_000, "Value", None) == 10_000
    assert object_value(10_000, "AverageValue", 3) == 3334
    with pytest.raises(MetricError, match="replicas"):
        object_value(10_000, "AverageValue", 0)
    # External: the sum of the series, or per replica
    series = [{"metricName": "q", "value": "7"}, {"metricName": "q", "value": "1500m"}]
    assert sum_external(series, "Value", None) == 8500
    assert sum_external(series, "AverageValue", 4) == 2125


def test_label_selector_string() -> None:
    selector = {"matchLabels": {"app": "llama", "tier": "gpu"}, "matchExpressions": [
        {"key": "zone", "operator": "In", "values": ["a", "b"]}, {"key": "canary", "operator": "DoesNotExist"},
        {"key": "gpu", "operator": "Exists"}, {"key": "env", "operator": "NotIn", "values": ["dev"]}]}
    assert label_selector_string(selector) == "app=llama,tier=gpu,zone in (a,b),!canary,gpu,env notin (dev)"
    with pytest.raises(MetricError, match="operator"):
        label_selector_string({"matchExpressions": [{"key": "a", "operator": "Near"}]})


def test_the_reference_time_is_the_callers() -> None:
    # The same inputs at a time when the pod is still initializing give another answer: no clock is read.
    p = pod("p", [{"cpu": "1"}], started_ago=60, ready_changed_ago=20)
    metrics = pod_metrics_of_resource([usage("p", {"cpu": "500m"}, age=5, window="30s")], "cpu")
    later = NOW + 3600
    assert resource_utilization([p], metrics, "cpu", later) == 50
    assert time.time() < later
