"""The ModelDeployment policy: pydantic v2 models, the single source of truth.

A superset of Beamlit's `deployment.beamlit.com/v1alpha1` ModelDeployment (same field
names, so their documents validate unchanged), with AIBrix-style routing profiles and
the knobs the overflow engine needs. The CRD under manifests/ is generated from these
classes (spillover/policy/crd.py).

The resource and its spec live here; the parts they are built from are in the sibling
modules: meta (the strict base, API identity, object references), backends, auth,
metrics, routing and status.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, model_validator

from spillover.policy.backends import LocalBackend, RemoteBackend, Retries, ServerlessConfig, Timeouts
from spillover.policy.defaults import defaults_of
from spillover.policy.destination import Destination
from spillover.policy.meta import Base, ObjectMeta, ObjectReference, PolicyRef, ServiceReference
from spillover.policy.metrics import MetricSpec
from spillover.policy.routing import Routing
from spillover.policy.status import ModelDeploymentStatus
from spillover.policy.types import Duration, ModelName, Percentage, fail, fail_many

# --- offloading ---------------------------------------------------------------------------


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
    destination: Destination | None = Field(
        default=None, description="A cluster spillover keeps a copy of the model on; its copy is the remote backend"
    )
    metrics: list[MetricSpec] = Field(default_factory=list)
    behavior: OffloadingBehavior = Field(default_factory=OffloadingBehavior)

    @property
    def has_remote(self) -> bool:
        """Whether the model can overflow anywhere: a remote backend, or the copy on a destination."""
        return self.remote_backend is not None or self.destination is not None

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        defaults = defaults_of(info)
        if not isinstance(data, dict) or not defaults:
            return data
        data = dict(data)
        # A destination's copy is the remote backend: the default one would contradict it.
        if data.get("remoteBackend") is None and defaults.remote_backend is not None and data.get("destination") is None:
            data["remoteBackend"] = defaults.remote_backend
        if defaults.behavior:
            behavior = data.get("behavior")
            if behavior is None or isinstance(behavior, dict):
                data["behavior"] = {**defaults.behavior, **(behavior or {})}
        return data

    @model_validator(mode="after")
    def _metrics_need_a_remote(self) -> OffloadingConfig:
        if self.metrics and not self.has_remote:
            raise fail(
                "is required with metrics (or a destination, or a defaultRemoteBackend in the controller config, "
                "--config): without it the model can never overflow",
                "remoteBackend",
            )
        return self

    @model_validator(mode="after")
    def _destination(self) -> OffloadingConfig:
        destination = self.destination
        if destination is None:
            return self
        problems: list[tuple[Any, str]] = []
        if self.remote_backend is not None:
            problems.append(("remoteBackend", "must not be set with destination: the copy on the destination "
                                              "cluster is the remote backend"))
        names = {m.display_name(i): m.effective_threshold for i, m in enumerate(self.metrics)}
        pre_warm = destination.pre_warm
        for name, value in (pre_warm.thresholds.items() if pre_warm else ()):
            where = ("destination", "preWarm", "thresholds", name)
            if name not in names:
                known = ", ".join(names) or "none"
                problems.append((where, f'no overflow metric is named "{name}" (metrics: {known})'))
            elif not value < names[name]:
                problems.append((where, f"must be below the metric's overflow threshold ({names[name]:g})"))
        if pre_warm is not None and not self.metrics:
            problems.append((("destination", "preWarm"), "needs metrics: a pre-warm threshold is a metric's"))
        if problems:
            raise fail_many(problems)
        return self

    @model_validator(mode="after")
    def _unique_metric_names(self) -> OffloadingConfig:
        seen: dict[str, int] = {}
        for i, m in enumerate(self.metrics):
            name = m.display_name(i)
            if name in seen:
                raise fail(f'duplicate metric name "{name}" (same as metrics[{seen[name]}]); set name', f"metrics[{i}]")
            seen[name] = i
        return self


# --- the resource -------------------------------------------------------------------------


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
        destination = self.offloading_config.destination if self.offloading_config else None
        if destination is not None and self.model_source_ref is None:
            problems.append(("offloadingConfig.destination",
                             "requires modelSourceRef: the copy is made of that workload's pod template"))
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
