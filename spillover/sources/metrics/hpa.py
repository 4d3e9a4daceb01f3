"""The Horizontal Pod Autoscaler's arithmetic, so that a metric reads here what `kubectl get hpa` would show.

Pure functions over the API servers' JSON (core/v1 Pods, metrics.k8s.io PodMetrics, custom.metrics.k8s.io
MetricValues, external.metrics.k8s.io ExternalMetricValues), following the HPA controller
(k8s.io/kubernetes pkg/controller/podautoscaler, replica_calculator.go and metrics/): values are integer
milli-units (a Quantity's MilliValue, rounded up), and the value reported is the controller's "current"
one:

- Resource, Utilization: `sum(usage) * 100 / sum(requests)` (integer division) over the pods that have
  metrics and are neither ignored nor unready; every pod the selector matches must have a request for
  the resource (else "missing request"), pod-level requests win when set.
- Resource, AverageValue (and Pods, AverageValue): `sum(usage) / n` over those same pods.
- Object, Value: the object's value; Object, AverageValue: `ceil(value / replicas)`.
- External, Value: the sum of the series; External, AverageValue: `ceil(sum / replicas)`.

Pods are *ignored* when being deleted or Failed, *unready* when Pending and, for cpu only, when not
Ready or still within the cpu initialization period (5 min after start: unready while Ready is False, or
while the sample is older than Ready's last transition plus its window; after it: unready only if it never
became Ready within the initial readiness delay of 30 s). Pods without metrics are left out of the value
(the HPA only uses them to damp its replica count). For cpu/memory the value is in cores / bytes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any

from spillover.sources.metrics.sample import MetricError

__all__ = [
    "CPU_INITIALIZATION_PERIOD",
    "INITIAL_READINESS_DELAY",
    "PodMetric",
    "milli_value",
    "object_value",
    "pod_metrics_of_custom",
    "pod_metrics_of_resource",
    "pods_average",
    "resource_utilization",
    "sum_external",
]

# The controller's defaults (--horizontal-pod-autoscaler-cpu-initialization-period / -initial-readiness-delay).
CPU_INITIALIZATION_PERIOD = 300.0
INITIAL_READINESS_DELAY = 30.0
DEFAULT_WINDOW = 60.0  # custom metrics without windowSeconds

_SUFFIX = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}
_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))(?:(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE]([+-]?[0-9]+))?$"
)
_MAX_MILLI = 2**63 - 1


def quantity(value: Any) -> Decimal:
    """A resource.Quantity ("250m", "1Gi", "1e3", 4) as an exact Decimal. Raises ValueError.

    Grammar (k8s.io/apimachinery resource.Quantity): sign? digits[.digits] then a binary suffix (Ki..Ei),
    a decimal suffix (n u m k M G T P E) or a decimal exponent; "1E" is one exa, "1E3" a thousand."""
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite quantity: {value!r}")
        return Decimal(repr(value))
    text = str(value).strip()
    m = _QUANTITY.match(text)
    if not m:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix, exponent = m.groups()
    if exponent is not None and abs(int(exponent)) > 64:  # bound the work; far beyond any real quantity
        raise ValueError(f"not a quantity: {text!r}")
    try:
        scale = _SUFFIX[suffix or ""] if exponent is None else Decimal(10) ** int(exponent)
        return Decimal(number) * scale
    except (InvalidOperation, OverflowError, ValueError):
        raise ValueError(f"not a quantity: {text!r}") from None


def milli_value(value: Any) -> int:
    """Quantity.MilliValue(): the value in thousandths, rounded up."""
    milli = (quantity(value) * 1000).to_integral_value(rounding=ROUND_CEILING)
    return max(-_MAX_MILLI, min(_MAX_MILLI, int(milli)))


def _time(text: Any) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _duration(text: Any) -> float:
    """A metav1.Duration as the metrics API writes it ("15s", "1m0s", "500ms")."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        return float(text)
    if not isinstance(text, str):
        return 0.0
    total, number = 0.0, ""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    i = 0
    while i < len(text):
        c = text[i]
        if c.isdigit() or c == ".":
            number += c
            i += 1
            continue
        unit = text[i:i + 2] if text[i:i + 2] in units else c
        if unit not in units or not number:
            return 0.0
        total += float(number) * units[unit]
        number, i = "", i + len(unit)
    return total


@dataclass(frozen=True, slots=True)
class PodMetric:
    value: int  # milli-units
    timestamp: float | None = None  # Unix seconds of the sample
    window: float = 0.0  # seconds the sample covers


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def pod_metrics_of_resource(
    items: Iterable[Mapping[str, Any]], resource: str, container: str | None = None
) -> dict[str, PodMetric]:
    """PodMetrics items -> usage of `resource` per pod (all containers, or only `container`).

    A pod with no containers, or one of whose containers lacks the resource, has no value (the HPA's
    `getPodMetrics`); with `container`, a pod without that container or its usage has none."""
    out: dict[str, PodMetric] = {}
    for item in items:
        containers = item.get("containers") or []
        if container is not None:
            chosen = [c for c in containers if c.get("name") == container]
            containers = chosen[:1]
        if not containers:
            continue
        total = 0
        for c in containers:
            raw = (c.get("usage") or {}).get(resource)
            if raw is None:
                break
            try:
                total += milli_value(raw)
            except ValueError as exc:
                raise MetricError(f"pod {_name(item)}: {exc}") from None
        else:
            out[_name(item)] = PodMetric(total, _time(item.get("timestamp")), _duration(item.get("window")))
    return out


def pod_metrics_of_custom(items: Iterable[Mapping[str, Any]]) -> dict[str, PodMetric]:
    """custom.metrics.k8s.io MetricValues (v1beta1 or v1beta2) of pods -> value per pod."""
    out: dict[str, PodMetric] = {}
    for item in items:
        name = str((item.get("describedObject") or {}).get("name") or "")
        window = item.get("windowSeconds")
        seconds = float(window) if isinstance(window, int) else _duration(item.get("window")) or DEFAULT_WINDOW
        try:
            out[name] = PodMetric(milli_value(item.get("value")), _time(item.get("timestamp")), seconds)
        except ValueError as exc:
            raise MetricError(f"pod {name}: {exc}") from None
    return out


def _condition(pod: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return None


@dataclass(frozen=True)
class _Groups:
    ready: int
    unready: frozenset[str]
    missing: frozenset[str]
    ignored: frozenset[str]


def _group(pods: Sequence[Mapping[str, Any]], metrics: Mapping[str, PodMetric], resource: str, now: float) -> _Groups:
    ready = 0
    unready: set[str] = set()
    missing: set[str] = set()
    ignored: set[str] = set()
    for pod in pods:
        name = _name(pod)
        status = pod.get("status") or {}
        phase = status.get("phase")
        if (pod.get("metadata") or {}).get("deletionTimestamp") or phase == "Failed":
            ignored.add(name)
            continue
        if phase == "Pending":
            unready.add(name)
            continue
        metric = metrics.get(name)
        if metric is None:
            missing.add(name)
            continue
        if resource == "cpu":
            condition = _condition(pod, "Ready")
            started = _time(status.get("startTime"))
            changed = _time(condition.get("lastTransitionTime")) if condition else None
            if condition is None or started is None:
                is_unready = True
            elif started + CPU_INITIALIZATION_PERIOD > now:
                stale = metric.timestamp is not None and changed is not None and metric.timestamp < changed + metric.window
                is_unready = condition.get("status") == "False" or stale
            else:
                never_ready = changed is not None and started + INITIAL_READINESS_DELAY > changed
                is_unready = condition.get("status") == "False" and never_ready
            if is_unready:
                unready.add(name)
                continue
        ready += 1
    return _Groups(ready, frozenset(unready), frozenset(missing), frozenset(ignored))


def _counted(
    pods: Sequence[Mapping[str, Any]], metrics: Mapping[str, PodMetric], resource: str, now: float
) -> dict[str, PodMetric]:
    if not pods:
        raise MetricError("no pods returned by selector")
    groups = _group(pods, metrics, resource, now)
    counted = {n: m for n, m in metrics.items() if n not in groups.ignored and n not in groups.unready}
    if not counted:
        raise MetricError(
            f"did not receive metrics for targeted pods (pods might be unready): {len(pods)} pod(s), "
            f"{len(metrics)} with metrics, {len(groups.unready)} unready, {len(groups.ignored)} ignored"
        )
    return counted


def _requests(pod: Mapping[str, Any], resource: str, container: str | None, relative_to: str) -> int:
    spec = pod.get("spec") or {}
    what = "request" if relative_to == "requests" else "limit"
    pod_level = ((spec.get("resources") or {}).get(relative_to) or {}).get(resource)
    if container is None and pod_level is not None:
        return milli_value(pod_level)
    containers = list(spec.get("containers") or [])
    # Sidecars (restartable init containers) count like containers.
    containers += [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    total = 0
    for c in containers:
        if container is not None and c.get("name") != container:
            continue
        raw = ((c.get("resources") or {}).get(relative_to) or {}).get(resource)
        if raw is None:
            raise MetricError(f"missing {what} for {resource} in container {c.get('name')} of Pod {_name(pod)}")
        total += milli_value(raw)
        if container is not None:
            return total
    if container is not None:
        raise MetricError(f"container {container} not found in Pod {_name(pod)}")
    return total


def resource_utilization(
    pods: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, PodMetric],
    resource: str,
    now: float,
    *,
    container: str | None = None,
    relative_to: str = "requests",
) -> int:
    """The HPA's current utilization in percent (an integer), relative to requests (or limits)."""
    counted = _counted(pods, metrics, resource, now)
    try:
        requests = {_name(p): _requests(p, resource, container, relative_to) for p in pods}
    except ValueError as exc:
        raise MetricError(str(exc)) from None
    usage = total = 0
    for name, metric in counted.items():
        if name in requests:
            usage += metric.value
            total += requests[name]
    if total == 0:
        raise MetricError("no metrics returned matched known pods")
    return (usage * 100) // total


def pods_average(pods: Sequence[Mapping[str, Any]], metrics: Mapping[str, PodMetric], resource: str, now: float) -> int:
    """The HPA's average value (milli-units) of a per-pod metric: Resource or Pods AverageValue."""
    counted = _counted(pods, metrics, resource, now)
    return sum(m.value for m in counted.values()) // len(counted)


def object_value(value: int, target_type: str, replicas: int | None) -> int:
    """An Object metric's value (milli-units): the value itself, or per replica for AverageValue."""
    if target_type != "AverageValue":
        return value
    return _per_replica(value, replicas)


def sum_external(items: Iterable[Mapping[str, Any]], target_type: str, replicas: int | None) -> int:
    """An External metric (milli-units): the sum of its series, or per replica for AverageValue."""
    total = 0
    for item in items:
        try:
            total += milli_value(item.get("value"))
        except ValueError as exc:
            raise MetricError(f"external metric {item.get('metricName')}: {exc}") from None
    total = min(total, _MAX_MILLI)
    return total if target_type != "AverageValue" else _per_replica(total, replicas)


def _per_replica(value: int, replicas: int | None) -> int:
    if not replicas:
        raise MetricError("AverageValue needs the workload's replicas, and it has none")
    return math.ceil(value / replicas)
