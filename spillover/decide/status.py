"""The status of a model, from its decision and memory: what `/debug/models`, `spillover status` and the
Kubernetes status subresource show.

`status_document()` builds the camelCase document; `status_of()` validates it into the policy package's
`ModelDeploymentStatus`. The document carries a few keys the status type does not declare yet
(`reason`, `wantedShare`, `stateSince`, `timeInState`, `lastTransition`, and per metric `condition`,
`sampledAt`, `age`); the status type ignores unknown keys, so they appear in the typed status as soon as
the fields are added there, with no change here.

Conditions (`observedGeneration` = `metadata.generation`):

- `Ready`: False when DISABLED (reason `Disabled`) or when nothing can serve (no ready local endpoint and
  no traffic to the remote: `NoBackend`); otherwise True with the state as reason (`Standby`,
  `Overflow`, `Failover`).
- `Overflowing`: True exactly when traffic goes remote (remote share > 0; reason `MetricBreached` or
  `Failover`). OVERFLOW with an unavailable remote is False with reason `RemoteUnhealthy` /
  `RemoteUnusable` (`DestinationUnavailable` for a destination's copy that is not ready or not seen);
  otherwise False with `Standby`, `NoRemoteBackend` or `Disabled`.
- `BufferRunning`: True while the metrics have been within their thresholds in OVERFLOW and the buffer
  runs (reason `MetricsWithinThresholds`), its `lastTransitionTime` the time the buffer started;
  `ActivationPending`: True while a breach waits for `activationDuration` (reason `MetricBreached`),
  since the breach began. They are what a restarted control plane reads back to resume the timers
  (`spillover.controller.kubernetes.recall`); False (reason `NotRunning`) otherwise.
- Other conditions already in `model.status` (`Invalid`, set by the policy source) are kept as they are.

`lastTransitionTime` of a condition is kept from `model.status` when its status did not change, else it is
the time the model entered its current state. Times are RFC 3339 from `now` and the memory's times, which
are therefore Unix seconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from spillover.decide.engine import Decision, ModelMemory
from spillover.policy import ConditionType, ModelDeployment, ModelDeploymentStatus, OverflowState

BUFFER_RUNNING = "BufferRunning"
ACTIVATION_PENDING = "ActivationPending"
_OWN_CONDITIONS = (ConditionType.READY.value, ConditionType.OVERFLOWING.value, BUFFER_RUNNING, ACTIVATION_PENDING)


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _ready(decision: Decision) -> tuple[str, str]:
    if decision.state == OverflowState.DISABLED:
        return "False", "Disabled"
    if decision.local_ready == 0 and decision.remote_share == 0:
        return "False", "NoBackend"
    return "True", decision.state.value.capitalize()


def _overflowing(decision: Decision, destination: bool = False) -> tuple[str, str]:
    if decision.remote_share > 0:
        return "True", "Failover" if decision.state == OverflowState.FAILOVER else "MetricBreached"
    if decision.state == OverflowState.DISABLED:
        return "False", "Disabled"
    if decision.remote == "none":
        return "False", "NoRemoteBackend"
    if (decision.wanted_share or 0) > 0 and decision.remote in ("unhealthy", "unusable"):
        if decision.remote == "unusable" and destination:
            return "False", "DestinationUnavailable"  # the copy is not ready, or cannot be seen
        return "False", "RemoteUnhealthy" if decision.remote == "unhealthy" else "RemoteUnusable"
    return "False", "Standby"


def _has_destination(model: ModelDeployment) -> bool:
    offloading = model.spec.offloading_config
    return offloading is not None and offloading.destination is not None


def _metric_source(model: ModelDeployment, name: str) -> str:
    offloading = model.spec.offloading_config
    for i, spec in enumerate(offloading.metrics if offloading else []):
        if spec.display_name(i) == name:
            return spec.effective_source
    return "prometheus"


def status_document(model: ModelDeployment, decision: Decision, memory: ModelMemory, now: float) -> dict[str, Any]:
    """The status as a camelCase document (see the module docstring for the keys beyond the status type)."""
    generation = model.metadata.generation
    previous = model.status
    conditions: list[dict[str, Any]] = []
    for type_, (status, reason) in (
        (ConditionType.READY.value, _ready(decision)),
        (ConditionType.OVERFLOWING.value, _overflowing(decision, _has_destination(model))),
    ):
        old = previous.condition(type_) if previous else None
        changed_at = old.last_transition_time if old and old.status == status and old.last_transition_time else None
        conditions.append({
            "type": type_,
            "status": status,
            "reason": reason,
            "message": decision.reason,
            "lastTransitionTime": changed_at or rfc3339(memory.since),
            "observedGeneration": generation,
        })
    for type_, started, reason in (
        (BUFFER_RUNNING, memory.calm_started_at, "MetricsWithinThresholds"),
        (ACTIVATION_PENDING, memory.breach_started_at, "MetricBreached"),
    ):
        status = "True" if started is not None else "False"
        old = previous.condition(type_) if previous else None
        if started is not None:
            at = rfc3339(started)
        elif old is not None and old.status == status and old.last_transition_time:
            at = old.last_transition_time
        else:
            at = rfc3339(now)
        conditions.append({
            "type": type_,
            "status": status,
            "reason": reason if started is not None else "NotRunning",
            "message": decision.reason if started is not None else "",
            "lastTransitionTime": at,
            "observedGeneration": generation,
        })
    if previous:
        conditions += [
            c.model_dump(by_alias=True, exclude_none=True) for c in previous.conditions if c.type not in _OWN_CONDITIONS
        ]
    metrics = [
        {
            "name": r.name,
            "source": _metric_source(model, r.name),
            "value": r.value,
            "threshold": r.threshold,
            "error": r.error or None,
            "condition": r.condition,
            "sampledAt": rfc3339(r.at) if r.at is not None else None,
            "age": r.age(now),
        }
        for r in memory.readings
    ]
    transition = memory.transition
    return {
        "state": decision.state.value,
        "remoteShare": decision.remote_share,
        "wantedShare": decision.wanted_share,
        "reason": decision.reason,
        "metrics": metrics,
        "observedGeneration": generation,
        "conditions": conditions,
        "stateSince": rfc3339(memory.since),
        "timeInState": max(0.0, now - memory.since),
        "lastTransitionTime": rfc3339(transition.at) if transition else None,
        "lastTransition": {
            "from": transition.from_state.value,
            "to": transition.to_state.value,
            "at": rfc3339(transition.at),
            "reason": transition.reason,
        } if transition else None,
        "offloadingStatus": decision.remote_share > 0,
    }


def status_of(model: ModelDeployment, decision: Decision, memory: ModelMemory, now: float) -> ModelDeploymentStatus:
    return ModelDeploymentStatus.model_validate(status_document(model, decision, memory, now))
