"""Metric presets: the Simplismart vocabulary (plus kv_cache) mapped to queries.

This is data, kept apart from the models so the metrics layer can substitute the
variables and operators can override any entry (see `PresetTable.with_overrides`)
without touching the schema.

Template variables (string.Template syntax, `$name` or `${name}`), filled by the
metrics layer for one model:

  $model         spec.model, as vLLM labels its metrics (`model_name`)
  $pod_selector  PromQL label matchers selecting the model's local pods,
                 e.g. namespace="ai",pod=~"llama-.*" (cAdvisor / kube-state-metrics / DCGM)
  $cluster       the Envoy cluster name of the model's local backend
  $window        the metric's `window` (PromQL range, e.g. 1m)
  $quantile      latency percentile as a fraction (0.95)
  $percentile    latency percentile as a number (95)

Units follow Simplismart: utilisations in percent (0-100), latency in ms, throughput in
requests per second, concurrency and queue length per pod. KV-cache usage is a percent too.

Envoy templates are not PromQL: they name an Envoy stat of the proxies and how to read
it (see `EnvoyStat`), so overflow works with no Prometheus at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

Source = Literal["prometheus", "kubernetes", "envoy"]
Reducer = Literal["max", "average", "sum"]


@dataclass(frozen=True)
class EnvoyStat:
    stat: str
    # gauge: current value; rate: per-second increase of a counter;
    # histogram: the $percentile of a histogram (ms).
    kind: Literal["gauge", "rate", "histogram"]
    # Divide by this gauge (e.g. healthy hosts) to get a per-pod figure.
    per: str | None = None


@dataclass(frozen=True)
class Preset:
    name: str
    unit: str
    description: str
    default_source: Source
    default_reducer: Reducer
    prometheus: str | None = None
    # For the Kubernetes metrics API: the resource name (cpu, memory) read per pod.
    kubernetes: str | None = None
    envoy: EnvoyStat | None = None
    sources: tuple[Source, ...] = field(init=False)

    def __post_init__(self) -> None:
        srcs = tuple(
            s for s, t in (("prometheus", self.prometheus), ("kubernetes", self.kubernetes), ("envoy", self.envoy)) if t
        )
        object.__setattr__(self, "sources", srcs)


_PRESETS = (
    Preset(
        "cpu", "%", "Average CPU utilisation of the local pods, relative to their CPU requests",
        "prometheus", "average",
        prometheus=(
            '100 * sum by (pod) (rate(container_cpu_usage_seconds_total{$pod_selector,container!=""}[$window]))'
            ' / sum by (pod) (kube_pod_container_resource_requests{$pod_selector,resource="cpu"})'
        ),
        kubernetes="cpu",
    ),
    Preset(
        "ram", "%", "Average memory utilisation of the local pods, relative to their memory limits",
        "prometheus", "average",
        prometheus=(
            '100 * sum by (pod) (container_memory_working_set_bytes{$pod_selector,container!=""})'
            ' / sum by (pod) (kube_pod_container_resource_limits{$pod_selector,resource="memory"})'
        ),
        kubernetes="memory",
    ),
    Preset(
        "gpu", "%", "Average GPU utilisation (NVIDIA DCGM exporter)",
        "prometheus", "average",
        prometheus="avg by (pod) (DCGM_FI_DEV_GPU_UTIL{$pod_selector})",
    ),
    Preset(
        "gram", "%", "Average GPU memory utilisation (NVIDIA DCGM exporter)",
        "prometheus", "average",
        prometheus=(
            "100 * sum by (pod) (DCGM_FI_DEV_FB_USED{$pod_selector})"
            " / (sum by (pod) (DCGM_FI_DEV_FB_USED{$pod_selector}) + sum by (pod) (DCGM_FI_DEV_FB_FREE{$pod_selector}))"
        ),
    ),
    Preset(
        "latency", "ms", "Request latency percentile seen by Envoy towards the local backend",
        "envoy", "max",
        prometheus=(
            "histogram_quantile($quantile, sum by (le) "
            '(rate(envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="$cluster"}[$window])))'
        ),
        envoy=EnvoyStat("cluster.$cluster.upstream_rq_time", "histogram"),
    ),
    Preset(
        "throughput", "req/s", "Requests per second sent to the local backend",
        "envoy", "sum",
        prometheus='sum(rate(envoy_cluster_upstream_rq_total{envoy_cluster_name="$cluster"}[$window]))',
        envoy=EnvoyStat("cluster.$cluster.upstream_rq_total", "rate"),
    ),
    Preset(
        "concurrency", "requests/pod", "In-flight requests per healthy local pod",
        "envoy", "sum",
        prometheus=(
            'sum(envoy_cluster_upstream_rq_active{envoy_cluster_name="$cluster"})'
            ' / clamp_min(sum(envoy_cluster_membership_healthy{envoy_cluster_name="$cluster"}), 1)'
        ),
        envoy=EnvoyStat("cluster.$cluster.upstream_rq_active", "gauge", per="cluster.$cluster.membership_healthy"),
    ),
    Preset(
        "queue_length", "requests/pod", "Requests waiting in the vLLM scheduler queue, per pod",
        "prometheus", "average",
        prometheus='sum by (pod, instance) (vllm:num_requests_waiting{model_name="$model"})',
    ),
    Preset(
        "kv_cache", "%", "vLLM KV-cache usage, per pod",
        "prometheus", "average",
        prometheus='100 * max by (pod, instance) (vllm:gpu_cache_usage_perc{model_name="$model"})',
    ),
)


@dataclass(frozen=True)
class PresetTable:
    presets: Mapping[str, Preset]

    def __getitem__(self, name: str) -> Preset:
        return self.presets[name]

    def __contains__(self, name: object) -> bool:
        return name in self.presets

    def names(self) -> tuple[str, ...]:
        return tuple(self.presets)

    def with_overrides(self, overrides: Mapping[str, Mapping[str, object]]) -> PresetTable:
        """Replace templates, e.g. {"kv_cache": {"prometheus": "100 * vllm:kv_cache_usage_perc{...}"}}.

        Only existing presets and the keys prometheus / kubernetes / envoy / default_source
        can be overridden: presets are the vocabulary the schema validates against.
        """
        table = dict(self.presets)
        for name, changes in overrides.items():
            if name not in table:
                raise KeyError(f"unknown metric preset {name!r}")
            allowed = {"prometheus", "kubernetes", "envoy", "default_source"}
            bad = set(changes) - allowed
            if bad:
                raise KeyError(f"cannot override {sorted(bad)} of preset {name!r}")
            table[name] = replace(table[name], **changes)  # type: ignore[arg-type]
        return PresetTable(MappingProxyType(table))


DEFAULT_PRESETS = PresetTable(MappingProxyType({p.name: p for p in _PRESETS}))
PRESET_NAMES: tuple[str, ...] = DEFAULT_PRESETS.names()
