"""The destination cluster: a copy of the model that spillover creates, sizes and removes on cluster B.

`offloadingConfig.destination` names a Secret (on this cluster, in the ModelDeployment's namespace)
holding a kubeconfig for cluster B, the namespace there, and how the copy is sized:

- `standbyReplicas` (0 = cold) while the model is in STANDBY;
- `activeReplicas` (default: the origin workload's replicas) while it is in OVERFLOW or FAILOVER, and
  from the moment a metric reaches its `preWarm` threshold (below the overflow threshold), so that the
  copy is warm before any traffic spills;
- back to `standbyReplicas` only after the buffer duration plus `cooldown` (Simplismart's
  `cooldown_period`) without pressure.

The copy's address (the remote backend) is its Service's load balancer ingress, or `address` for a
cluster without load balancers. The copy is spillover's own: its labels and annotations below say of
which ModelDeployment it is the copy, and spillover never touches an object on B that does not carry them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from spillover.policy.backends import HealthCheck
from spillover.policy.meta import Base
from spillover.policy.types import (
    DNS1123_LABEL,
    Duration,
    Label,
    Port,
    PortOrName,
    ResourceName,
    fail,
    fail_many,
    split_host_port,
)

__all__ = [
    "ABANDON_ANNOTATION",
    "COPY_LABEL",
    "FINALIZER",
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "ORIGIN_NAMESPACE_LABEL",
    "ORIGIN_NAME_LABEL",
    "ORIGIN_UID_LABEL",
    "RECORD_ANNOTATION",
    "TEMPLATE_HASH_ANNOTATION",
    "Destination",
    "KubeconfigSecretRef",
    "PreWarm",
]

# On the ModelDeployment (cluster A).
FINALIZER = "spillover.dev/destination"
# Where the copy lives (kubeconfig Secret, namespace, name), written with the finalizer before anything is
# created on B: the copy can be found and removed even after the spec changed or became invalid.
RECORD_ANNOTATION = "spillover.dev/destination-copy"
# "true": deleting the ModelDeployment (or removing its destination) leaves the copy on B alone.
ABANDON_ANNOTATION = "spillover.dev/abandon-destination"

# On the copy's Deployment and Service (cluster B).
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "spillover"
COPY_LABEL = "spillover.dev/copy"  # the copy's pods: the Deployment's selector and the Service's
ORIGIN_NAMESPACE_LABEL = "spillover.dev/origin-namespace"
ORIGIN_NAME_LABEL = "spillover.dev/origin-name"
ORIGIN_UID_LABEL = "spillover.dev/origin-uid"
TEMPLATE_HASH_ANNOTATION = "spillover.dev/template-hash"

MAX_REPLICAS = 10_000


class KubeconfigSecretRef(Base):
    """A key of a Secret holding a kubeconfig for the destination cluster."""

    name: ResourceName = Field(description="Secret in the ModelDeployment's namespace")
    key: str = Field(default="kubeconfig", description='Key of the kubeconfig in the Secret; default "kubeconfig"')
    namespace: Label | None = Field(default=None, description="Must be the ModelDeployment's own namespace")

    @field_validator("key", mode="after")
    @classmethod
    def _key(cls, value: str) -> str:
        if not value or len(value) > 253 or not all(c.isalnum() or c in "-._" for c in value):
            raise fail("must be a Secret key (1-253 letters, digits, '-', '_' or '.')")
        return value


class PreWarm(Base):
    """When to scale the copy up before traffic spills: a metric at or above its pre-warm threshold.

    `percent` sets every metric's pre-warm threshold to that share of its overflow threshold;
    `thresholds` sets it per metric (by the metric's name in status, e.g. `queue_length`)."""

    percent: int | None = Field(default=None, ge=1, le=99, description="Share of each metric's overflow threshold")
    thresholds: dict[str, float] = Field(default_factory=dict, description="Per metric name: its pre-warm value")

    @model_validator(mode="after")
    def _something(self) -> PreWarm:
        if self.percent is None and not self.thresholds:
            raise fail("set percent or thresholds")
        return self


ServiceType = Literal["LoadBalancer", "NodePort", "ClusterIP"]


class Destination(Base):
    """Cluster B, where spillover keeps a copy of the workload of `modelSourceRef` for overflow."""

    kubeconfig_secret_ref: KubeconfigSecretRef = Field(description="Secret holding a kubeconfig for cluster B")
    namespace: Label | None = Field(default=None, description="Namespace on cluster B; default: the same as here")
    name: ResourceName | None = Field(
        default=None, description="Name of the copy's Deployment and Service; default: the origin workload's name"
    )
    standby_replicas: int = Field(default=0, ge=0, le=MAX_REPLICAS, description="Replicas in STANDBY (0 = cold)")
    active_replicas: int | None = Field(
        default=None, ge=1, le=MAX_REPLICAS,
        description="Replicas in OVERFLOW/FAILOVER and when pre-warmed; default: the origin's replicas",
    )
    pre_warm: PreWarm | None = Field(default=None, description="Scale the copy up below the overflow threshold")
    cooldown: Duration = Field(
        default=300.0, description="After the buffer duration, how long the copy stays scaled up; default 5m"
    )
    address: str | None = Field(
        default=None,
        description="host or host:port the copy is reached at, for a cluster without load balancers "
        "(default port: the Service port; the node port with serviceType NodePort)",
    )
    service_type: ServiceType = Field(default="LoadBalancer", description="Type of the copy's Service")
    port: Port | None = Field(default=None, description="Port of the copy's Service; default: the serving port")
    target_port: PortOrName | None = Field(
        default=None, description="Container port of the copy; default: serviceRef.targetPort or the first port"
    )
    service_account_name: str | None = Field(
        default=None, description="ServiceAccount of the copy's pods on B; default: none (the namespace's default)"
    )
    node_selector: dict[str, str] | None = Field(
        default=None, description="nodeSelector of the copy's pods on B; default: the origin's"
    )
    health_check: HealthCheck | None = Field(default=None, description="Envoy's active health check of the copy")

    @field_validator("address", mode="after")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if "/" in value:
            raise fail("must be host or host:port, without a scheme or a path")
        try:
            split_host_port(value)
        except ValueError as exc:
            raise fail(f"must be host or host:port ({exc})") from None
        return value

    @field_validator("service_account_name", mode="after")
    @classmethod
    def _service_account(cls, value: str | None) -> str | None:
        if value is not None and (len(value) > 253 or not all(DNS1123_LABEL.match(p) for p in value.split("."))):
            raise fail("must be a DNS-1123 subdomain")
        return value

    @model_validator(mode="after")
    def _check(self) -> Destination:
        problems: list[tuple[Any, str]] = []
        if self.active_replicas is not None and self.standby_replicas > self.active_replicas:
            problems.append(("standbyReplicas", "must be <= activeReplicas"))
        if self.address is None and self.service_type != "LoadBalancer":
            problems.append(("address", f"is required with serviceType {self.service_type} (no load balancer "
                                        "ingress to read the copy's address from)"))
        if problems:
            raise fail_many(problems)
        return self

    @property
    def address_host_port(self) -> tuple[str, int | None] | None:
        return split_host_port(self.address) if self.address else None

    def pre_warm_threshold(self, metric_name: str, overflow_threshold: float) -> float | None:
        """The value at which `metric_name` pre-warms the copy (None: it does not)."""
        if self.pre_warm is None:
            return None
        if metric_name in self.pre_warm.thresholds:
            return self.pre_warm.thresholds[metric_name]
        if self.pre_warm.percent is not None:
            return overflow_threshold * self.pre_warm.percent / 100
        return None
