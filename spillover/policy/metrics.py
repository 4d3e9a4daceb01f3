"""The overflow metrics: the HPA-style MetricSpec family (Beamlit), presets and raw queries."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, model_validator

from spillover.policy.defaults import defaults_of
from spillover.policy.meta import Base
from spillover.policy.presets import DEFAULT_PRESETS, PRESET_NAMES, Reducer, Source
from spillover.policy.types import Duration, Quantity, fail, fail_many

DEFAULT_LATENCY_PERCENTILE = 95.0


class LabelSelectorRequirement(Base):
    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class LabelSelector(Base):
    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)


class MetricIdentifier(Base):
    name: str = Field(description="Metric name (External: also a PromQL query, as in Beamlit)")
    selector: LabelSelector | None = None


class MetricTarget(Base):
    """autoscaling/v2 MetricTarget, with HPA semantics."""

    type: Literal["Utilization", "Value", "AverageValue"]
    value: Quantity | None = None
    average_value: Quantity | None = None
    average_utilization: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _matching_field(self) -> MetricTarget:
        needed = {"Utilization": "averageUtilization", "Value": "value", "AverageValue": "averageValue"}[self.type]
        present = {
            "averageUtilization": self.average_utilization is not None,
            "value": self.value is not None,
            "averageValue": self.average_value is not None,
        }
        problems: list[tuple[Any, str]] = []
        if not present[needed]:
            problems.append((needed, f"is required when type is {self.type}"))
        for other, is_set in present.items():
            if is_set and other != needed:
                problems.append((other, f"must not be set when type is {self.type}"))
        if problems:
            raise fail_many(problems)
        return self

    @property
    def threshold(self) -> float:
        value = {"Utilization": self.average_utilization, "Value": self.value, "AverageValue": self.average_value}[
            self.type
        ]
        assert value is not None  # guaranteed by _matching_field
        return float(value)


class ResourceMetricSource(Base):
    name: str = Field(description="cpu or memory")
    target: MetricTarget


class ContainerResourceMetricSource(Base):
    name: str
    container: str
    target: MetricTarget


class PodsMetricSource(Base):
    metric: MetricIdentifier
    target: MetricTarget


class CrossVersionObjectReference(Base):
    api_version: str | None = None
    kind: str
    name: str


class ObjectMetricSource(Base):
    described_object: CrossVersionObjectReference
    metric: MetricIdentifier
    target: MetricTarget


class ExternalMetricSource(Base):
    metric: MetricIdentifier
    target: MetricTarget


HPA_TYPES = ("Resource", "ContainerResource", "Pods", "Object", "External")
_HPA_FIELD = {
    "Resource": "resource",
    "ContainerResource": "containerResource",
    "Pods": "pods",
    "Object": "object",
    "External": "external",
}
# Which MetricTarget types HPA allows per metric type.
_HPA_TARGET_TYPES = {
    "Resource": ("Utilization", "AverageValue"),
    "ContainerResource": ("Utilization", "AverageValue"),
    "Pods": ("AverageValue",),
    "Object": ("Value", "AverageValue"),
    "External": ("Value", "AverageValue"),
}
_HPA_SOURCES: dict[str, tuple[Source, ...]] = {
    "Resource": ("kubernetes", "prometheus"),
    "ContainerResource": ("kubernetes", "prometheus"),
    "Pods": ("prometheus", "kubernetes"),
    "Object": ("prometheus", "kubernetes"),
    "External": ("prometheus", "kubernetes"),
}
_QUERY_SOURCES: tuple[Source, ...] = ("prometheus", "envoy")


class MetricSpec(Base):
    """One overflow metric, in one of three forms.

    - HPA form (Beamlit): `type: Resource|ContainerResource|Pods|Object|External` plus the
      matching member, e.g. `resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}`.
    - Preset form (Simplismart vocabulary): `metric: gpu`, `target: 80` (and `percentile` for latency).
    - Raw form: `query: <PromQL or Envoy stat>`, `threshold: 10`.

    Overflow triggers when the reduced value reaches the threshold.
    """

    type: Literal["Resource", "ContainerResource", "Pods", "Object", "External"] | None = None
    resource: ResourceMetricSource | None = None
    container_resource: ContainerResourceMetricSource | None = None
    pods: PodsMetricSource | None = None
    object: ObjectMetricSource | None = None
    external: ExternalMetricSource | None = None

    metric: str | None = Field(
        default=None, description="Preset metric", json_schema_extra={"enum": list(PRESET_NAMES)}
    )
    target: float | None = Field(default=None, ge=0, description="Preset threshold in the preset's unit")
    percentile: float | None = Field(default=None, gt=0, lt=100, description="latency only; default 95")

    query: str | None = Field(default=None, description="PromQL (prometheus) or stat name (envoy)")
    threshold: float | None = None

    name: str | None = Field(default=None, description="Label in status; default derived from the metric")
    source: Source | None = Field(default=None, description="Default: per form / preset")
    reducer: Reducer | None = Field(default=None, description="Combines series/pods; default per form")
    window: Duration = Field(default=60.0, description="Range for rates and quantiles; default 1m")

    @model_validator(mode="before")
    @classmethod
    def _default_source(cls, data: Any, info: ValidationInfo) -> Any:
        source = defaults_of(info).metric_source
        if source is None or not isinstance(data, dict) or data.get("source") is not None:
            return data
        if data.get("type") in _HPA_SOURCES and source in _HPA_SOURCES[data["type"]]:
            return {**data, "source": source}
        return data

    @model_validator(mode="after")
    def _one_form(self) -> MetricSpec:
        problems: list[tuple[Any, str]] = []
        forms = [f for f, v in (("type", self.type), ("metric", self.metric), ("query", self.query)) if v is not None]
        hpa_members = [alias for t, alias in _HPA_FIELD.items() if self._member(t) is not None]
        if not forms:
            hint = f" (found {hpa_members[0]}, add type)" if hpa_members else ""
            raise fail(f"set one of type (HPA metric), metric (preset) or query{hint}")
        if self.type is not None:
            wanted = _HPA_FIELD[self.type]
            member = self._member(self.type)
            if member is None:
                problems.append((wanted, f"is required when type is {self.type}"))
            elif member.target.type not in _HPA_TARGET_TYPES[self.type]:
                allowed = " or ".join(_HPA_TARGET_TYPES[self.type])
                problems.append((f"{wanted}.target.type", f"must be {allowed} for a {self.type} metric"))
            for alias in hpa_members:
                if alias != wanted:
                    problems.append((alias, f"must not be set when type is {self.type}"))
            for alias, value in (("metric", self.metric), ("query", self.query), ("target", self.target),
                                 ("percentile", self.percentile), ("threshold", self.threshold)):
                if value is not None:
                    problems.append((alias, "must not be set with type (HPA form)"))
            if self.source is not None and self.source not in _HPA_SOURCES[self.type]:
                problems.append(("source", f"must be {' or '.join(_HPA_SOURCES[self.type])} for a {self.type} metric"))
        else:
            for alias in hpa_members:
                problems.append((alias, "requires type"))
        if self.metric is not None and self.type is None:
            if self.metric not in DEFAULT_PRESETS:
                problems.append(("metric", f'unknown metric "{self.metric}" (known: {", ".join(PRESET_NAMES)})'))
            else:
                preset = DEFAULT_PRESETS[self.metric]
                if self.target is None:
                    problems.append(("target", "is required with metric"))
                if self.threshold is not None:
                    problems.append(("threshold", "use target with a preset metric"))
                if self.percentile is not None and self.metric != "latency":
                    problems.append(("percentile", "only applies to metric latency"))
                sources = preset.sources if self.query is None else _QUERY_SOURCES
                if self.source is not None and self.source not in sources:
                    problems.append(("source", f"must be {' or '.join(sources)} for metric {self.metric}"))
        elif self.query is not None and self.type is None:
            if not self.query.strip():
                problems.append(("query", "must not be empty"))
            if self.threshold is None:
                problems.append(("threshold", "is required with query"))
            for alias, value in (("target", self.target), ("percentile", self.percentile)):
                if value is not None:
                    problems.append((alias, "only applies to a preset metric"))
            if self.source is not None and self.source not in _QUERY_SOURCES:
                problems.append(("source", "must be prometheus or envoy for a query"))
        if problems:
            raise fail_many(problems)
        return self

    def _member(self, hpa_type: str) -> Any:
        return getattr(self, {"ContainerResource": "container_resource"}.get(hpa_type, hpa_type.lower()))

    @property
    def form(self) -> Literal["hpa", "preset", "query"]:
        return "hpa" if self.type is not None else "preset" if self.metric is not None else "query"

    @property
    def effective_threshold(self) -> float:
        if self.type is not None:
            return self._member(self.type).target.threshold
        return float(self.target if self.metric is not None else self.threshold)  # type: ignore[arg-type]

    @property
    def effective_source(self) -> Source:
        if self.source is not None:
            return self.source
        if self.type is not None:
            return _HPA_SOURCES[self.type][0]
        if self.metric is not None and self.query is None:
            return DEFAULT_PRESETS[self.metric].default_source
        return "prometheus"

    @property
    def effective_reducer(self) -> Reducer:
        if self.reducer is not None:
            return self.reducer
        if self.type is not None:
            # HPA: Value compares the total, AverageValue/Utilization a per-pod average.
            return "sum" if self._member(self.type).target.type == "Value" else "average"
        if self.metric is not None:
            return DEFAULT_PRESETS[self.metric].default_reducer
        return "max"

    @property
    def effective_percentile(self) -> float | None:
        if self.metric == "latency":
            return self.percentile or DEFAULT_LATENCY_PERCENTILE
        return None

    def display_name(self, index: int) -> str:
        if self.name:
            return self.name
        if self.type is not None:
            member = self._member(self.type)
            ident = member.name if hasattr(member, "name") else member.metric.name
            return f"{self.type.lower()}:{ident}"
        if self.metric is not None:
            return f"latency_p{self.effective_percentile:g}" if self.metric == "latency" else self.metric
        return f"query[{index}]"
