"""The ModelDeployment policy: pydantic v2 models, the single source of truth.

A superset of Beamlit's `deployment.beamlit.com/v1alpha1` ModelDeployment (same field
names, so their documents validate unchanged), with AIBrix-style routing profiles and
the knobs the overflow engine needs. The CRD under manifests/ is generated from these
classes (spillover/policy/crd.py).

Models are frozen and strict (no "5" -> 5 coercion) so that file mode accepts exactly
what the Kubernetes API server would accept with the generated CRD. Unknown fields are
rejected to catch typos. Fields are spelled in camelCase in YAML (the aliases); build
objects from dicts with `model_validate`.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    WithJsonSchema,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from spillover.policy.presets import DEFAULT_PRESETS, PRESET_NAMES, Reducer, Source
from spillover.policy.types import (
    Duration,
    HeaderName,
    Label,
    ModelName,
    Percentage,
    Port,
    PortOrName,
    Quantity,
    ResourceName,
    fail,
    fail_many,
    is_valid_host,
    split_host_port,
)

API_GROUP = "spillover.dev"
API_VERSION = f"{API_GROUP}/v1alpha1"
BEAMLIT_API_VERSION = "deployment.beamlit.com/v1alpha1"
ACCEPTED_API_VERSIONS = (API_VERSION, BEAMLIT_API_VERSION)
KIND = "ModelDeployment"

ROUTING_STRATEGIES = (
    "random",
    "round-robin",
    "least-request",
    "least-latency",
    "session-affinity",
    "prefix-cache",
    "throughput",
)
DEFAULT_ROUTING_STRATEGY = "least-request"
DEFAULT_SESSION_HEADER = "x-session-id"
DEFAULT_PREFIX_LENGTH = 256
DEFAULT_PROFILE_NAME = "default"
DEFAULT_LATENCY_PERCENTILE = 95.0

# Values of Envoy's x-envoy-retry-on / retry_on.
RETRY_ON = (
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
    "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
    "http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal", "resource-exhausted",
    "unavailable",
)


class Base(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        strict=True,
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,  # inputs may be secrets; never echo them
        allow_inf_nan=False,
    )


def _known(value: Any, known: tuple[str, ...], what: str) -> str:
    if not isinstance(value, str):
        raise fail("must be a string")
    if value not in known:
        raise fail(f'unknown {what} "{value}" (known: {", ".join(known)})')
    return value


def _resolve_path(path: str, info: ValidationInfo) -> str:
    """Relative file references are relative to the policy file that names them."""
    base = (info.context or {}).get("base_dir")
    if base and not os.path.isabs(path):
        return str(Path(base, path))
    return path


# --- Kubernetes object references (Beamlit shapes) ----------------------------------------


class ObjectReference(Base):
    """corev1.ObjectReference as Beamlit uses it for modelSourceRef."""

    api_version: str = Field(description="e.g. apps/v1")
    kind: str = Field(description="e.g. Deployment, StatefulSet")
    name: str
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    field_path: str | None = None


class ServiceReference(Base):
    """A Service (ObjectReference fields inline) and the port the model is served on."""

    name: str
    namespace: str | None = None
    api_version: str | None = None
    kind: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    field_path: str | None = None
    target_port: PortOrName | None = None


class PolicyRef(Base):
    """Beamlit policy reference; accepted for compatibility, not enforced by spillover."""

    ref_type: Literal["remotePolicy", "localPolicy"] = "remotePolicy"
    name: str | None = None
    api_version: str | None = None
    kind: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    field_path: str | None = None


class ServerlessConfig(Base):
    """Beamlit serverless configuration; accepted for compatibility."""

    min_num_replicas: int = Field(default=0, ge=0)
    max_num_replicas: int = Field(default=10, ge=0)
    metric: str | None = None
    target: str | None = None
    scale_up_minimum: int | None = Field(default=None, ge=2)
    scale_down_delay: str | None = None
    stable_window: str | None = None
    last_pod_retention_period: str | None = None

    @model_validator(mode="after")
    def _max_at_least_min(self) -> ServerlessConfig:
        if self.max_num_replicas < self.min_num_replicas:
            raise fail("must be >= minNumReplicas", "maxNumReplicas")
        return self


# --- health checks, outlier detection, timeouts, retries ----------------------------------


class HealthCheck(Base):
    """Active HTTP health check run by Envoy."""

    path: str = "/health"
    interval: Duration = 10.0
    timeout: Duration = 5.0
    healthy_threshold: int = Field(default=2, ge=1)
    unhealthy_threshold: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _check(self) -> HealthCheck:
        problems: list[tuple[Any, str]] = []
        if not self.path.startswith("/"):
            problems.append(("path", 'must start with "/"'))
        if self.interval <= 0:
            problems.append(("interval", "must be > 0"))
        if self.timeout <= 0:
            problems.append(("timeout", "must be > 0"))
        elif self.timeout > self.interval > 0:
            problems.append(("timeout", "must be <= interval"))
        if problems:
            raise fail_many(problems)
        return self


class OutlierDetection(Base):
    """Passive ejection of failing hosts (Envoy outlier detection)."""

    enabled: bool = True
    consecutive_5xx: int = Field(default=5, ge=1, alias="consecutive5xx")
    interval: Duration = 10.0
    base_ejection_time: Duration = 30.0
    max_ejection_percent: Percentage = 50


class Timeouts(Base):
    # LLM generations are long: the default request timeout is far above Envoy's 15 s.
    request: Duration = Field(default=300.0, description="Whole request, 0 = no limit. Default 300s.")
    connect: Duration = Field(default=5.0, description="TCP/TLS connect timeout. Default 5s.")
    idle: Duration | None = Field(default=None, description="Stream idle timeout (no bytes either way).")

    @model_validator(mode="after")
    def _check(self) -> Timeouts:
        if self.connect <= 0:
            raise fail("must be > 0", "connect")
        return self


class Retries(Base):
    attempts: int = Field(default=2, ge=0, le=10, description="Retries after the first try. Default 2.")
    per_try_timeout: Duration | None = None
    retry_on: list[str] = Field(default_factory=lambda: ["connect-failure", "refused-stream", "reset"])
    retriable_status_codes: list[Annotated[int, Field(ge=100, le=599)]] = Field(default_factory=list)

    @field_validator("retry_on", mode="after")
    @classmethod
    def _known_retry_on(cls, value: list[str]) -> list[str]:
        problems = [
            (f"[{i}]", f'unknown retry condition "{v}" (known: {", ".join(RETRY_ON)})')
            for i, v in enumerate(value)
            if v not in RETRY_ON
        ]
        if problems:
            raise fail_many(problems)
        return value

    @model_validator(mode="after")
    def _codes_need_condition(self) -> Retries:
        if self.retriable_status_codes and "retriable-status-codes" not in self.retry_on:
            raise fail('requires "retriable-status-codes" in retryOn', "retriableStatusCodes")
        return self


# --- backends ---------------------------------------------------------------------------


def _endpoint(value: Any) -> str:
    if not isinstance(value, str):
        raise fail("must be a string host:port")
    try:
        _, port = split_host_port(value)
    except ValueError as exc:
        raise fail(f"must be host:port ({exc})") from None
    if port is None:
        raise fail("must be host:port (the port is missing)")
    return value


Endpoint = Annotated[str, Field(), WithJsonSchema({"type": "string"})]


class LocalBackend(Base):
    """Local endpoints given directly, for file mode where there is no cluster to resolve serviceRef."""

    endpoints: list[Endpoint] = Field(default_factory=list, description="host:port of each local replica")
    health_check: HealthCheck | None = None
    outlier_detection: OutlierDetection = Field(default_factory=OutlierDetection)

    @field_validator("endpoints", mode="after")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        problems: list[tuple[Any, str]] = []
        seen: dict[str, int] = {}
        for i, ep in enumerate(value):
            try:
                _endpoint(ep)
            except Exception as exc:  # PydanticCustomError carries the message
                problems.append((f"[{i}]", str(exc)))
                continue
            if ep in seen:
                problems.append((f"[{i}]", f"duplicate endpoint (same as endpoints[{seen[ep]}])"))
            seen.setdefault(ep, i)
        if problems:
            raise fail_many(problems)
        return value

    def addresses(self) -> list[tuple[str, int]]:
        out = []
        for ep in self.endpoints:
            host, port = split_host_port(ep)
            out.append((host, port or 80))
        return out


class SecretRef(Base):
    """Where a secret lives: a Kubernetes Secret key ({name, key}) or a file ({file})."""

    name: str | None = None
    key: str | None = None
    namespace: str | None = None
    file: str | None = Field(default=None, description="Path of a file holding the secret (file mode)")

    @field_validator("file", mode="after")
    @classmethod
    def _abs(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _resolve_path(value, info)

    @model_validator(mode="after")
    def _one_form(self) -> SecretRef:
        k8s = self.name is not None or self.key is not None or self.namespace is not None
        if self.file is not None and k8s:
            raise fail("set either file, or name and key of a Kubernetes Secret, not both")
        if self.file is None:
            if not k8s:
                raise fail("set either file, or name and key of a Kubernetes Secret")
            if self.name is None:
                raise fail("is required", "name")
            if self.key is None:
                raise fail("is required", "key")
        elif not self.file:
            raise fail("must not be empty", "file")
        return self


class OAuthConfig(Base):
    """OAuth2 client credentials (Beamlit fields, plus clientSecretRef and scopes)."""

    client_id: str = Field(alias="clientId")
    client_secret: SecretStr | None = Field(default=None, description="Inline secret (prefer clientSecretRef)")
    client_secret_ref: SecretRef | None = None
    token_url: str = Field(alias="tokenUrl")
    scopes: list[str] = Field(default_factory=list)

    @field_serializer("client_secret", when_used="always")
    def _hide(self, value: SecretStr | None) -> str | None:
        return None if value is None else "**********"

    @model_validator(mode="after")
    def _check(self) -> OAuthConfig:
        problems: list[tuple[Any, str]] = []
        if self.client_secret is not None and self.client_secret_ref is not None:
            problems.append(("clientSecret", "set either clientSecret or clientSecretRef, not both"))
        elif self.client_secret is None and self.client_secret_ref is None:
            problems.append(("clientSecret", "set clientSecret or clientSecretRef"))
        elif self.client_secret is not None and not self.client_secret.get_secret_value():
            problems.append(("clientSecret", "must not be empty"))
        if not self.client_id:
            problems.append(("clientId", "must not be empty"))
        if not re.match(r"^https?://[^/\s]+", self.token_url):
            problems.append(("tokenUrl", "must be an http:// or https:// URL"))
        if problems:
            raise fail_many(problems)
        return self


class AuthConfig(Base):
    type: Literal["oauth"]
    oauth_config: OAuthConfig | None = Field(default=None, alias="oauthConfig")

    @model_validator(mode="after")
    def _check(self) -> AuthConfig:
        if self.oauth_config is None:
            raise fail('is required when type is "oauth"', "oauthConfig")
        return self


_TEMPLATE_VAR = re.compile(r"\$(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*|.?)")
PATH_PREFIX_VARIABLES = ("model", "workspace")


class RemoteBackend(Base):
    """The backend traffic overflows to (Beamlit fields, plus TLS, health and ejection)."""

    host: str = Field(description="Host name or IP, optionally with :port (Beamlit style)")
    scheme: Literal["http", "https"] = "http"
    port: Port | None = Field(default=None, description="Default: the port in host, else 80/443 by scheme")
    path_prefix: str = Field(default="", description="Prepended to the request path; $model and $workspace expand")
    workspace: str | None = Field(default=None, description="Value of $workspace; default: metadata.namespace")
    headers_to_add: dict[HeaderName, str] = Field(default_factory=dict)
    auth_config: AuthConfig | None = None
    ca: str | None = Field(default=None, description='"system" or a CA bundle file path (https only)')
    sni: str | None = Field(default=None, description="TLS SNI; default: the host name (https only)")
    host_rewrite: str | None = Field(default=None, description="Host/:authority sent upstream; default: host")
    health_check: HealthCheck | None = None
    outlier_detection: OutlierDetection = Field(default_factory=OutlierDetection)

    @field_validator("ca", mode="after")
    @classmethod
    def _abs_ca(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or value == "system":
            return value
        return _resolve_path(value, info)

    @model_validator(mode="after")
    def _check(self) -> RemoteBackend:
        problems: list[tuple[Any, str]] = []
        host_port: int | None = None
        if "://" in self.host:
            problems.append(("host", "must be a host name without scheme (set scheme: https instead)"))
        elif "/" in self.host:
            problems.append(("host", "must be a host name without a path (use pathPrefix)"))
        else:
            try:
                _, host_port = split_host_port(self.host)
            except ValueError as exc:
                problems.append(("host", f"must be a host name or IP, optionally with :port ({exc})"))
        if host_port is not None and self.port is not None and host_port != self.port:
            problems.append(("port", f"conflicts with the port in host ({host_port})"))
        if self.path_prefix and not self.path_prefix.startswith("/"):
            problems.append(("pathPrefix", 'must start with "/"'))
        for m in _TEMPLATE_VAR.finditer(self.path_prefix):
            name = m.group(1).strip("{}")
            if name not in PATH_PREFIX_VARIABLES:
                problems.append(("pathPrefix", f"unknown variable ${m.group(1)} (known: $model, $workspace)"))
                break
        if self.scheme == "http":
            if self.ca is not None:
                problems.append(("ca", "only applies with scheme: https"))
            if self.sni is not None:
                problems.append(("sni", "only applies with scheme: https"))
        if self.ca == "":
            problems.append(("ca", 'must be "system" or a file path'))
        if self.sni is not None and not is_valid_host(self.sni):
            problems.append(("sni", "must be a host name"))
        if self.host_rewrite is not None and not self.host_rewrite:
            problems.append(("hostRewrite", "must not be empty"))
        for name in self.headers_to_add:
            if name.startswith(":") or name == "host":
                problems.append((("headersToAdd", name), "cannot be set here (use hostRewrite for the host)"))
        if problems:
            raise fail_many(problems)
        return self

    @property
    def host_name(self) -> str:
        return split_host_port(self.host)[0]

    @property
    def effective_port(self) -> int:
        return self.port or split_host_port(self.host)[1] or (443 if self.scheme == "https" else 80)

    @property
    def effective_sni(self) -> str | None:
        return (self.sni or self.host_name) if self.scheme == "https" else None

    @property
    def effective_ca(self) -> str | None:
        return (self.ca or "system") if self.scheme == "https" else None

    @property
    def effective_host_rewrite(self) -> str:
        return self.host_rewrite or self.host_name

    def render_path_prefix(self, model: str, workspace: str) -> str:
        values = {"model": model, "workspace": self.workspace or workspace}
        return _TEMPLATE_VAR.sub(lambda m: values[m.group(1).strip("{}")], self.path_prefix)


# --- overflow metrics ---------------------------------------------------------------------


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


class OffloadingBehavior(Base):
    """How much goes remote and when. Beamlit has only percentage; the rest drives the overflow engine."""

    percentage: Percentage = Field(default=100, description="Share sent remote in OVERFLOW (max with proportional)")
    buffer_duration: Duration = Field(default=60.0, description="Metrics must stay below threshold this long")
    activation_duration: Duration = Field(default=0.0, description="Metrics must stay above threshold this long")
    strategy: Literal["fixed", "proportional"] = "fixed"
    min_step: Percentage = Field(default=10, description="proportional: smallest change of the remote share")
    on_metric_error: Literal["hold", "standby", "overflow"] = "hold"

    @model_validator(mode="after")
    def _check(self) -> OffloadingBehavior:
        if self.strategy == "proportional" and self.min_step < 1:
            raise fail("must be >= 1 with strategy proportional", "minStep")
        if self.strategy == "proportional" and self.min_step > self.percentage > 0:
            raise fail("must be <= percentage", "minStep")
        return self


class OffloadingConfig(Base):
    remote_backend: RemoteBackend | None = None
    metrics: list[MetricSpec] = Field(default_factory=list)
    behavior: OffloadingBehavior = Field(default_factory=OffloadingBehavior)

    @model_validator(mode="after")
    def _unique_metric_names(self) -> OffloadingConfig:
        seen: dict[str, int] = {}
        for i, m in enumerate(self.metrics):
            name = m.display_name(i)
            if name in seen:
                raise fail(f'duplicate metric name "{name}" (same as metrics[{seen[name]}]); set name', f"metrics[{i}]")
            seen[name] = i
        return self


# --- routing (AIBrix model.aibrix.ai/config shape) -----------------------------------------


def _strategy(value: Any) -> str:
    return _known(value, ROUTING_STRATEGIES, "routing strategy")


RoutingStrategy = Annotated[
    str,
    Field(json_schema_extra={"enum": list(ROUTING_STRATEGIES)}),
]


class Profile(Base):
    routing_strategy: RoutingStrategy | None = Field(default=None, description="Default: least-request")
    routing_config: dict[str, Any] | None = Field(default=None, description="AIBrix passthrough, not interpreted")
    requests_per_second: float | None = Field(default=None, ge=0, description="Model-wide cap; 0 = no limit")
    burst: int | None = Field(default=None, ge=1, description="Token bucket size; default: requestsPerSecond")
    session_header: HeaderName | None = Field(default=None, description="session-affinity; default x-session-id")
    prefix_length: int | None = Field(default=None, ge=1, le=1_000_000, description="prefix-cache; default 256")
    hash_balance_factor: int | None = Field(default=None, ge=100, description="Bounded load for hashing strategies")

    @field_validator("routing_strategy", mode="before")
    @classmethod
    def _known_strategy(cls, value: Any) -> Any:
        return value if value is None else _strategy(value)

    @model_validator(mode="after")
    def _check(self) -> Profile:
        problems: list[tuple[Any, str]] = []
        if self.burst is not None and self.requests_per_second and self.burst < self.requests_per_second:
            problems.append(("burst", "must be >= requestsPerSecond"))
        if self.burst is not None and not self.requests_per_second:
            problems.append(("burst", "requires requestsPerSecond > 0"))
        if problems:
            raise fail_many(problems)
        return self

    @property
    def effective_session_header(self) -> str:
        return self.session_header or DEFAULT_SESSION_HEADER

    @property
    def effective_prefix_length(self) -> int:
        return self.prefix_length or DEFAULT_PREFIX_LENGTH


class Routing(Base):
    """AIBrix `model.aibrix.ai/config` shape; profiles are chosen with the config-profile header."""

    default_profile: Label | None = Field(default=None, description='Default: "default"')
    locked_routing_strategy: RoutingStrategy | None = Field(
        default=None, description="Pins the strategy model-wide (over header and profile)"
    )
    profiles: dict[Label, Profile] = Field(default_factory=dict)

    @field_validator("locked_routing_strategy", mode="before")
    @classmethod
    def _known_strategy(cls, value: Any) -> Any:
        return value if value is None else _strategy(value)

    @model_validator(mode="after")
    def _check(self) -> Routing:
        problems: list[tuple[Any, str]] = []
        if self.profiles:
            name = self.default_profile or DEFAULT_PROFILE_NAME
            if name not in self.profiles:
                defined = ", ".join(sorted(self.profiles))
                if self.default_profile is None:
                    problems.append(("defaultProfile", f'is required: no profile is named "default" (defined: {defined})'))
                else:
                    problems.append(("defaultProfile", f'profile "{name}" is not defined in profiles (defined: {defined})'))
        elif self.default_profile is not None and self.default_profile != DEFAULT_PROFILE_NAME:
            problems.append(("defaultProfile", f'profile "{self.default_profile}" is not defined in profiles'))
        for pname, profile in self.profiles.items():
            strategy = self.strategy_for(pname)
            if profile.session_header is not None and strategy != "session-affinity":
                problems.append((f"profiles.{pname}.sessionHeader", "only applies to routingStrategy session-affinity"))
            if profile.prefix_length is not None and strategy != "prefix-cache":
                problems.append((f"profiles.{pname}.prefixLength", "only applies to routingStrategy prefix-cache"))
            if profile.hash_balance_factor is not None and strategy not in ("session-affinity", "prefix-cache"):
                problems.append((
                    f"profiles.{pname}.hashBalanceFactor",
                    "only applies to routingStrategy session-affinity or prefix-cache",
                ))
        if problems:
            raise fail_many(problems)
        return self

    @property
    def effective_default_profile(self) -> str:
        return self.default_profile or DEFAULT_PROFILE_NAME

    def effective_profiles(self) -> dict[str, Profile]:
        """Profiles with the implicit `default` one when none is declared."""
        return dict(self.profiles) if self.profiles else {DEFAULT_PROFILE_NAME: Profile()}

    def strategy_for(self, profile: str) -> str:
        p = self.effective_profiles().get(profile) or Profile()
        return self.locked_routing_strategy or p.routing_strategy or DEFAULT_ROUTING_STRATEGY


# --- the resource -------------------------------------------------------------------------


class ObjectMeta(Base):
    # Kubernetes adds many fields (uid, managedFields, ...); accept and keep them.
    model_config = ConfigDict(extra="allow")

    name: ResourceName
    namespace: Label | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    resource_version: str | None = None
    uid: str | None = None


class ModelDeploymentSpec(Base):
    model: ModelName = Field(description="The model id clients send in the request body")
    enabled: bool = True
    model_source_ref: ObjectReference | None = Field(default=None, description="Deployment/StatefulSet of the pods")
    service_ref: ServiceReference | None = None
    metric_service_ref: ServiceReference | None = None
    environment: str = "production"
    policies: list[PolicyRef] = Field(default_factory=list)
    serverless_config: ServerlessConfig | None = None
    offloading_config: OffloadingConfig | None = None
    local_backend: LocalBackend | None = None
    routing: Routing = Field(default_factory=Routing)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    retries: Retries = Field(default_factory=Retries)

    @model_validator(mode="after")
    def _check(self) -> ModelDeploymentSpec:
        problems: list[tuple[Any, str]] = []
        remote = self.offloading_config.remote_backend if self.offloading_config else None
        if not (self.local_backend or self.service_ref or self.model_source_ref or remote):
            problems.append((
                None,
                "needs a backend: set localBackend.endpoints, serviceRef, modelSourceRef "
                "or offloadingConfig.remoteBackend",
            ))
        if (
            self.retries.per_try_timeout is not None
            and self.timeouts.request > 0
            and self.retries.per_try_timeout > self.timeouts.request
        ):
            problems.append(("retries.perTryTimeout", "must be <= timeouts.request"))
        if problems:
            raise fail_many(problems)
        return self


class OverflowState(StrEnum):
    STANDBY = "STANDBY"
    OVERFLOW = "OVERFLOW"
    FAILOVER = "FAILOVER"
    DISABLED = "DISABLED"


class ConditionType(StrEnum):
    READY = "Ready"
    OVERFLOWING = "Overflowing"
    INVALID = "Invalid"


class StatusBase(BaseModel):
    # Status is written by spillover and may carry fields of other controllers (Beamlit).
    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, extra="ignore", frozen=True)


class Condition(StatusBase):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = Field(default=None, description="RFC 3339")
    observed_generation: int | None = None


class MetricStatus(StatusBase):
    name: str
    source: Source
    value: float | None = None
    threshold: float
    error: str | None = None
    condition: Literal["breached", "calm", "unknown"] | None = None
    sampled_at: str | None = Field(default=None, description="RFC 3339 time of the last good sample")
    age: float | None = Field(default=None, description="Seconds since the last good sample (not stored in the CR)")


class StateTransition(StatusBase):
    from_: OverflowState = Field(alias="from")
    to: OverflowState
    at: str = Field(description="RFC 3339")
    reason: str = ""


class ModelDeploymentStatus(StatusBase):
    state: OverflowState = OverflowState.STANDBY
    remote_share: float = Field(default=0.0, ge=0, le=100, description="Percent of traffic sent remote")
    reason: str = Field(default="", description="Why the model is in this state and share")
    wanted_share: float | None = Field(default=None, description="The share the state asks for, before remote health")
    state_since: str | None = Field(default=None, description="RFC 3339 time the state was entered")
    time_in_state: float | None = Field(default=None, description="Seconds in the state (not stored in the CR)")
    last_transition: StateTransition | None = None
    metrics: list[MetricStatus] = Field(default_factory=list)
    observed_generation: int | None = None
    conditions: list[Condition] = Field(default_factory=list)
    last_transition_time: str | None = None
    # Beamlit's status field, kept so their tooling keeps reading something sensible.
    offloading_status: bool = False

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


class ModelDeployment(Base):
    api_version: Literal["spillover.dev/v1alpha1", "deployment.beamlit.com/v1alpha1"]
    kind: Literal["ModelDeployment"]
    metadata: ObjectMeta
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def model(self) -> str:
        return self.spec.model

    @property
    def workspace(self) -> str:
        """Value of $workspace in path prefixes."""
        remote = self.spec.offloading_config.remote_backend if self.spec.offloading_config else None
        return (remote.workspace if remote and remote.workspace else None) or self.metadata.namespace or "default"

    def to_document(self) -> dict[str, Any]:
        """The YAML/JSON form (camelCase, defaults omitted, secrets masked)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)
