"""The status spillover writes: overflow state, share, metric readings, conditions."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from spillover.policy.presets import Source


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


class CopyState(StrEnum):
    """The copy on the destination cluster, as read from there."""

    CREATING = "Creating"  # wanted, not (yet) on the destination
    COLD = "Cold"  # no replica wanted, none running
    WARMING = "Warming"  # fewer ready replicas than wanted
    READY = "Ready"  # as many ready replicas as wanted (or more, while scaling down)
    FAILED = "Failed"  # cannot be made: the destination refuses, is unreachable, or the rollout is stuck
    DELETING = "Deleting"  # being removed (the ModelDeployment or its destination is going)


class DestinationStatus(StatusBase):
    """The model's copy on the destination cluster."""

    state: CopyState = CopyState.CREATING
    phase: Literal["cold", "warm", "pre-warm", "active"] | None = Field(
        default=None, description="Why the copy has its size: cold/warm in STANDBY, pre-warm, active in OVERFLOW"
    )
    namespace: str = ""
    name: str = ""
    kubeconfig_secret: str = Field(default="", description="namespace/name of the kubeconfig Secret")
    desired_replicas: int | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    updated_replicas: int | None = None
    address: str | None = Field(default=None, description="host:port Envoy sends the copy's share to")
    reachable: bool | None = Field(default=None, description="Whether the destination's API server answers")
    reason: str = ""
    last_error: str | None = None
    hold_until: str | None = Field(default=None, description="RFC 3339: the copy stays scaled up until then")
    warnings: list[str] = Field(default_factory=list, description="What the copy needs from the destination")


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
    destination: DestinationStatus | None = None

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)
