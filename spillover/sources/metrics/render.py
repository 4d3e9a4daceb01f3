"""Metric specs -> concrete queries, one per metric and source. Pure functions.

`render_model(md)` turns every overflow metric of a ModelDeployment into a `RenderedMetric`
carrying the query its source runs:

- `PromQuery`  PromQL for the Prometheus HTTP API (template variables substituted),
- `KubeQuery`  a resource (cpu/memory) read from the Kubernetes resource metrics API,
- `EnvoyQuery` an Envoy stat of the proxies (gauge, counter rate or histogram percentile).

Template variables (see spillover/policy/presets.py): $model, $pod_selector, $cluster, $window,
$quantile, $percentile. Unknown `$names` are left as written.

`$cluster` is the Envoy *stat name* of the model's local clusters. A model has one local cluster per
load-balancing policy its profiles use (the naming contract, spillover/names.py `local_cluster_name`:
"<model>/local/<tag>", exposed in stats under its `alt_stat_name`, the name with every character
outside [A-Za-z0-9_-] replaced by "_"). So:

- for PromQL, `$cluster` becomes a regular expression matching all of them and an exact matcher
  `label="$cluster"` in a template is turned into `label=~"$cluster"`;
- for Envoy, the stat is read for every cluster whose stat name is `<sanitised model>_local_<tag>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from string import Template
from typing import Literal

from spillover.names import local_cluster_stat_prefix, local_cluster_stat_regex, re2_escape
from spillover.policy import (
    DEFAULT_LATENCY_PERCENTILE,
    LabelSelector,
    MetricSpec,
    ModelDeployment,
    ObjectReference,
    ServiceReference,
)
from spillover.policy.presets import DEFAULT_PRESETS, PresetTable, Reducer, Source
from spillover.policy.types import format_duration

__all__ = [
    "DescribedObject",
    "EnvoyQuery",
    "KubeQuery",
    "PodTarget",
    "PromQuery",
    "RenderError",
    "RenderedMetric",
    "parse_envoy_query",
    "pod_selector_promql",
    "pod_target",
    "render_metric",
    "render_model",
    "selector_string",
]

AIBRIX_MODEL_LABEL = "model.aibrix.ai/name"

class RenderError(ValueError):
    """A metric cannot be rendered for its source (reported as an error sample, never raised out)."""


# --- queries ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PromQuery:
    promql: str


@dataclass(frozen=True, slots=True)
class PodTarget:
    """Which pods are the model's: a namespace and a label selector, or a workload to read it from."""

    namespace: str
    label_selector: str | None = None  # resolved already (AIBrix label) ...
    workload: ObjectReference | None = None  # ... or read from this Deployment/StatefulSet's spec.selector
    service: ServiceReference | None = None  # ... or from this Service's spec.selector


@dataclass(frozen=True, slots=True)
class DescribedObject:
    """The object of an Object metric (HPA CrossVersionObjectReference), in the model's namespace."""

    kind: str
    name: str
    api_version: str | None = None


@dataclass(frozen=True, slots=True)
class KubeQuery:
    """A metric read from the Kubernetes metrics APIs, computed as the HPA does (spillover.sources.metrics.hpa).

    kind Resource: `resource` (cpu | memory) of the pods in metrics.k8s.io; Pods / Object: the custom
    metric `resource` in custom.metrics.k8s.io; External: the metric `resource` in external.metrics.k8s.io.
    """

    resource: str  # cpu | memory, or the metric's name
    target_type: Literal["Utilization", "AverageValue", "Value"]
    pods: PodTarget
    container: str | None = None  # ContainerResource: only this container
    relative_to: Literal["requests", "limits"] = "requests"  # Utilization denominator
    kind: Literal["Resource", "Pods", "Object", "External"] = "Resource"
    metric_selector: str = ""  # Pods/Object/External: the metric's label selector (API syntax)
    described_object: DescribedObject | None = None  # Object only


@dataclass(frozen=True, slots=True)
class EnvoyQuery:
    """An Envoy stat; `$cluster` in `stat`/`per` is expanded to each local cluster of `cluster_prefix`."""

    stat: str
    kind: Literal["gauge", "rate", "histogram"]
    cluster_prefix: str
    per: str | None = None  # divide by this gauge (max over clusters and proxies, at least 1)
    percentile: float | None = None  # histogram only


Query = PromQuery | KubeQuery | EnvoyQuery


@dataclass(frozen=True, slots=True)
class RenderedMetric:
    name: str  # display name, the key of the sampler's result
    source: Source
    reducer: Reducer
    threshold: float
    window: float
    query: Query | None
    error: str = ""  # why it could not be rendered (query is None then)


# --- names and selectors ----------------------------------------------------------------------------




def _promql_string(value: str) -> str:
    """Escape for the inside of a PromQL double-quoted string."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _namespace(md: ModelDeployment, ref: ObjectReference | ServiceReference | None) -> str:
    return (ref.namespace if ref is not None else None) or md.metadata.namespace or "default"


def pod_target(md: ModelDeployment) -> PodTarget:
    """The model's local pods: modelSourceRef's selector, else serviceRef's, else the AIBrix label."""
    spec = md.spec
    if spec.model_source_ref is not None:
        return PodTarget(_namespace(md, spec.model_source_ref), workload=spec.model_source_ref)
    if spec.service_ref is not None:
        return PodTarget(_namespace(md, spec.service_ref), service=spec.service_ref)
    return PodTarget(_namespace(md, None), label_selector=f"{AIBRIX_MODEL_LABEL}={spec.model}")


# Pod names of a workload: Deployment <name>-<replicaset hash>-<5 chars>, StatefulSet <name>-<ordinal>,
# ReplicaSet / DaemonSet / Job <name>-<5 chars>.
_POD_NAME_SUFFIX = {
    "Deployment": "-[a-z0-9]+-[a-z0-9]+",
    "StatefulSet": "-[0-9]+",
}


def pod_selector_promql(md: ModelDeployment) -> str:
    """PromQL label matchers for the model's pods (cAdvisor / kube-state-metrics / DCGM `pod` label)."""
    spec = md.spec
    ref: ObjectReference | ServiceReference | None = spec.model_source_ref or spec.service_ref
    namespace = _namespace(md, ref)
    if spec.model_source_ref is not None:
        base, kind = spec.model_source_ref.name, spec.model_source_ref.kind
    else:
        base, kind = (spec.service_ref.name if spec.service_ref is not None else md.name), ""
    suffix = _POD_NAME_SUFFIX.get(kind, "-[a-z0-9-]+")
    return f'namespace="{_promql_string(namespace)}",pod=~"{_promql_string(re2_escape(base))}{suffix}"'


def selector_string(selector: LabelSelector | None) -> str:
    """A label selector in the API's `labelSelector` syntax ("" selects everything)."""
    if selector is None:
        return ""
    parts = [f"{k}={v}" for k, v in sorted(selector.match_labels.items())]
    for req in selector.match_expressions:
        values = ",".join(req.values)
        parts.append({
            "In": f"{req.key} in ({values})",
            "NotIn": f"{req.key} notin ({values})",
            "Exists": req.key,
            "DoesNotExist": f"!{req.key}",
        }[req.operator])
    return ",".join(parts)


def _label_matchers(selector: LabelSelector | None) -> str:
    """A Kubernetes label selector as extra PromQL matchers (",k=\"v\"...")."""
    if selector is None:
        return ""
    out = [f'{k}="{_promql_string(v)}"' for k, v in sorted(selector.match_labels.items())]
    for req in selector.match_expressions:
        alternatives = "|".join(re2_escape(v) for v in req.values)
        if req.operator == "In":
            out.append(f'{req.key}=~"{_promql_string(alternatives)}"')
        elif req.operator == "NotIn":
            out.append(f'{req.key}!~"{_promql_string(alternatives)}"')
        elif req.operator == "Exists":
            out.append(f'{req.key}!=""')
        else:
            out.append(f'{req.key}=""')
    return "".join("," + m for m in out)


# --- template substitution ------------------------------------------------------------------------------


def _number(value: float) -> str:
    return f"{value:g}"


def _variables(md: ModelDeployment, spec: MetricSpec, source: Source) -> dict[str, str]:
    percentile = spec.effective_percentile or DEFAULT_LATENCY_PERCENTILE
    model = md.spec.model
    return {
        "model": _promql_string(model) if source == "prometheus" else model,
        "pod_selector": pod_selector_promql(md),
        "cluster": local_cluster_stat_regex(model) if source == "prometheus" else "$cluster",
        "window": format_duration(spec.window),
        "quantile": _number(percentile / 100),
        "percentile": _number(percentile),
    }


def _render_promql(template: str, md: ModelDeployment, spec: MetricSpec) -> str:
    # `$cluster` stands for several clusters: exact matchers on it become regex matchers.
    template = re.sub(r'(\w)\s*=\s*"\$(cluster|\{cluster\})"', r'\1=~"$\2"', template)
    template = re.sub(r'(\w)\s*!=\s*"\$(cluster|\{cluster\})"', r'\1!~"$\2"', template)
    return Template(template).safe_substitute(_variables(md, spec, "prometheus"))


_ENVOY_QUERY = re.compile(r"^\s*(?:(rate)\((.+)\)|p([0-9]+(?:\.[0-9]+)?)\((.+)\)|(.+?))\s*$")


def parse_envoy_query(text: str) -> tuple[str, Literal["gauge", "rate", "histogram"], float | None]:
    """A raw Envoy query: `stat` (gauge/counter value), `rate(stat)` (per second) or `p99(stat)`."""
    m = _ENVOY_QUERY.match(text)
    if not m:
        raise RenderError(f"envoy query {text!r}: expected stat, rate(stat) or pNN(stat)")
    if m.group(1):
        return m.group(2).strip(), "rate", None
    if m.group(3):
        p = float(m.group(3))
        if not 0 <= p <= 100:
            raise RenderError(f"envoy query {text!r}: percentile must be between 0 and 100")
        return m.group(4).strip(), "histogram", p
    return m.group(5).strip(), "gauge", None


def _render_envoy(md: ModelDeployment, spec: MetricSpec, stat: str, kind: str, per: str | None,
                  percentile: float | None) -> EnvoyQuery:
    variables = _variables(md, spec, "envoy")
    if re.search(r"[\s{}\"]", stat):
        raise RenderError(f"envoy stat {stat!r} is not a stat name (PromQL needs source: prometheus)")
    return EnvoyQuery(
        stat=Template(stat).safe_substitute(variables),
        kind=kind,  # type: ignore[arg-type]
        cluster_prefix=local_cluster_stat_prefix(md.spec.model),
        per=Template(per).safe_substitute(variables) if per else None,
        percentile=percentile,
    )


# --- HPA forms ------------------------------------------------------------------------------------------

_RESOURCE_PROMQL = {
    # usage per pod; the Utilization form divides the sums (HPA: sum of usage / sum of requests)
    "cpu": 'rate(container_cpu_usage_seconds_total{$pod_selector,$container}[$window])',
    "memory": "container_memory_working_set_bytes{$pod_selector,$container}",
}
_PROMQL_NAME = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*$")
_POD_COUNT = "clamp_min(count(kube_pod_info{$pod_selector}), 1)"


def _hpa_prometheus(md: ModelDeployment, spec: MetricSpec) -> str:
    assert spec.type is not None
    member = spec._member(spec.type)
    target = member.target.type
    if spec.type in ("Resource", "ContainerResource"):
        resource = member.name
        if resource not in _RESOURCE_PROMQL:
            raise RenderError(f"{spec.type} metric {resource!r}: only cpu and memory are supported")
        container = f'container="{_promql_string(member.container)}"' if spec.type == "ContainerResource" else (
            'container!=""'
        )
        usage = _RESOURCE_PROMQL[resource].replace("$container", container)
        if target == "Utilization":
            requests = (
                f'kube_pod_container_resource_requests{{$pod_selector,{container},resource="{resource}"}}'
            )
            # One series: HPA's utilisation is the sum of usage over the sum of requests.
            template = f"100 * sum({usage}) / sum({requests})"
        else:  # AverageValue: per-pod series, averaged by the reducer (= total / pods)
            template = f"sum by (pod) ({usage})"
        return _render_promql(template, md, spec)
    name = member.metric.name
    matchers = _label_matchers(member.metric.selector)
    if spec.type == "Pods":  # AverageValue only: per-pod series, averaged
        if not _PROMQL_NAME.match(name):
            raise RenderError(f"Pods metric name {name!r} is not a Prometheus metric name")
        return _render_promql(f"sum by (pod) ({name}{{$pod_selector{matchers}}})", md, spec)
    if spec.type == "Object":
        if not _PROMQL_NAME.match(name):
            raise RenderError(f"Object metric name {name!r} is not a Prometheus metric name")
        obj = member.described_object
        namespace = _namespace(md, None)
        label = re.sub(r"[^a-z0-9_]", "_", obj.kind.lower())
        query = f'{name}{{namespace="{_promql_string(namespace)}",{label}="{_promql_string(obj.name)}"{matchers}}}'
    else:  # External: a metric name, or (Beamlit) a whole PromQL query in the name
        query = f"{name}{{{matchers.lstrip(',')}}}" if _PROMQL_NAME.match(name) else name
    # Value compares the total; AverageValue the total divided by the number of pods (HPA semantics).
    template = f"sum({query})" if target == "Value" else f"sum({query}) / {_POD_COUNT}"
    return _render_promql(template, md, spec)


def _hpa_kubernetes(md: ModelDeployment, spec: MetricSpec) -> KubeQuery:
    assert spec.type is not None
    member = spec._member(spec.type)
    pods = pod_target(md)
    if spec.type in ("Resource", "ContainerResource"):
        if member.name not in ("cpu", "memory"):
            raise RenderError(f"{spec.type} metric {member.name!r}: only cpu and memory are supported")
        return KubeQuery(
            resource=member.name,
            target_type=member.target.type,
            pods=pods,
            container=member.container if spec.type == "ContainerResource" else None,
        )
    described = None
    if spec.type == "Object":
        obj = member.described_object
        described = DescribedObject(kind=obj.kind, name=obj.name, api_version=obj.api_version)
    return KubeQuery(
        resource=member.metric.name,
        target_type=member.target.type,
        pods=pods,
        kind="Pods" if spec.type == "Pods" else "Object" if spec.type == "Object" else "External",
        metric_selector=selector_string(member.metric.selector),
        described_object=described,
    )


# --- entry points ---------------------------------------------------------------------------------------


def _render_query(md: ModelDeployment, spec: MetricSpec, source: Source, presets: PresetTable) -> Query:
    if spec.form == "hpa":
        return _hpa_prometheus(md, spec) if source == "prometheus" else _hpa_kubernetes(md, spec)  # type: ignore[return-value]
    if spec.query is not None:  # raw query, or a preset whose template is replaced by `query`
        if source == "prometheus":
            return PromQuery(_render_promql(spec.query, md, spec))
        if source == "envoy":
            stat, kind, p = parse_envoy_query(spec.query)
            if kind == "histogram" and p is None:
                p = spec.effective_percentile
            return _render_envoy(md, spec, stat, kind, None, p)
        raise RenderError("a query needs source prometheus or envoy")
    assert spec.metric is not None
    if spec.metric not in presets:
        raise RenderError(f"unknown metric preset {spec.metric!r}")
    preset = presets[spec.metric]
    if source == "prometheus" and preset.prometheus:
        return PromQuery(_render_promql(preset.prometheus, md, spec))
    if source == "kubernetes" and preset.kubernetes:
        # Presets follow Simplismart: cpu relative to requests, ram relative to limits.
        return KubeQuery(
            resource=preset.kubernetes,
            target_type="Utilization",
            pods=pod_target(md),
            relative_to="limits" if spec.metric == "ram" else "requests",
        )
    if source == "envoy" and preset.envoy is not None:
        e = preset.envoy
        percentile = spec.effective_percentile if e.kind == "histogram" else None
        if e.kind == "histogram" and percentile is None:
            percentile = DEFAULT_LATENCY_PERCENTILE
        return _render_envoy(md, spec, e.stat, e.kind, e.per, percentile)
    raise RenderError(f"metric {spec.metric!r} has no {source} form (it has: {', '.join(preset.sources)})")


def render_metric(
    md: ModelDeployment, spec: MetricSpec, index: int, presets: PresetTable = DEFAULT_PRESETS
) -> RenderedMetric:
    source = spec.effective_source
    metric = spec.metric
    if spec.source is None and spec.query is None and metric is not None and metric in presets:
        source = presets[metric].default_source  # operators may override a preset's default source
    name = spec.display_name(index)
    common = dict(name=name, source=source, reducer=spec.effective_reducer,
                  threshold=spec.effective_threshold, window=spec.window)
    try:
        query = _render_query(md, spec, source, presets)
    except RenderError as exc:
        return RenderedMetric(query=None, error=f"{source}: {exc}", **common)  # type: ignore[arg-type]
    if isinstance(query, str):
        query = PromQuery(query)
    return RenderedMetric(query=query, **common)  # type: ignore[arg-type]


def render_model(md: ModelDeployment, presets: PresetTable = DEFAULT_PRESETS) -> list[RenderedMetric]:
    """Every overflow metric of the model, in spec order."""
    offloading = md.spec.offloading_config
    if offloading is None:
        return []
    return [render_metric(md, spec, i, presets) for i, spec in enumerate(offloading.metrics)]
