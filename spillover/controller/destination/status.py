"""`status.destination` of a ModelDeployment, and whether traffic may go to its copy (pure).

The copy's state, from what cluster B shows and what spillover wants of it:

- `Deleting`: no copy is wanted any more (the ModelDeployment is being deleted, or lost its destination)
  while one is recorded;
- `Failed`: it cannot be made or seen: the destination is unreachable or refuses (credentials, RBAC, an
  object of that name that is not the copy), the origin cannot be copied (no template, no port), or the
  Deployment controller of B reports the rollout stuck (ProgressDeadlineExceeded, ReplicaFailure);
- `Creating`: wanted, not on the destination yet (or the destination not heard from yet: connecting, listing);
- `Cold`: no replica wanted, none ready; `Warming`: fewer ready replicas than wanted; `Ready`: as many.

Traffic goes to the copy only while it is *serving*: the destination answers, the copy is this model's,
has at least one ready replica and an address. Otherwise the overflow engine gets the copy as an
unusable remote, with the reason (e.g. "overflowing to a copy that is not ready yet").
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from spillover.controller.destination.manifests import CopyManifests
from spillover.decide.copies import CopySizing
from spillover.policy import CopyState
from spillover.sources.destination.observe import CopyObservation
from spillover.sources.kube.destinations import CopyClaim

__all__ = ["copy_state", "destination_status", "unusable_reason"]


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def unusable_reason(claim: CopyClaim, observed: CopyObservation | None, sizing: CopySizing | None) -> str:
    """Why no traffic may go to the copy now ("" when it may)."""
    if claim.deleting:
        return "the ModelDeployment is being deleted: no traffic to its copy"
    wanted = claim.wanted
    if wanted is None:
        return f"no copy: {claim.problem}" if claim.problem else "no copy on a destination"
    if observed is None:
        return "the destination is not read yet"
    where = wanted.location
    if not observed.reachable:
        return f"{observed.error}: no traffic to a copy that cannot be seen"
    if observed.foreign:
        return f"the Deployment {where} on the destination is {observed.foreign}"
    if not observed.exists:
        return f"overflowing to a copy that does not exist yet ({where} is being created)"
    if observed.ready_replicas == 0:
        desired = sizing.replicas if sizing is not None else observed.replicas
        if desired:
            return f"overflowing to a copy that is not ready yet (0 of {desired} replica(s) ready on the destination)"
        return "overflowing to a copy that is not ready yet (no replica on the destination yet: scaling up)"
    if observed.address is None:
        return f"overflowing to a copy without an address yet: {observed.address_problem}"
    return ""


def copy_state(
    claim: CopyClaim,
    observed: CopyObservation | None,
    sizing: CopySizing | None,
    manifests: CopyManifests | None,
    blocked: str = "",
) -> tuple[CopyState, str]:
    """(state, why) of the copy; `blocked`: what the actuator is waiting for, if anything."""
    if claim.wanted is None:
        if claim.recorded is not None or claim.finalizer:
            return CopyState.DELETING, blocked or "removing the copy from the destination"
        return CopyState.FAILED, claim.problem or "no copy can be made"
    if claim.problem:
        return CopyState.FAILED, claim.problem
    if manifests is not None and manifests.error:
        return CopyState.FAILED, manifests.error
    if observed is None or (not observed.reachable and observed.pending):
        return CopyState.CREATING, observed.error if observed is not None else "the destination is not read yet"
    if not observed.reachable:
        return CopyState.FAILED, observed.error
    if observed.foreign or observed.service_foreign:
        return CopyState.FAILED, blocked or "an object of the copy's name on the destination is not the copy"
    if observed.rollout_problem:
        return CopyState.FAILED, f"the destination's Deployment controller reports {observed.rollout_problem}"
    if not observed.exists:
        return CopyState.CREATING, blocked or f"creating {claim.wanted.location} on the destination"
    desired = sizing.replicas if sizing is not None else (observed.replicas or 0)
    if desired == 0:
        if observed.ready_replicas == 0:
            return CopyState.COLD, "no replica wanted"
        return CopyState.READY, f"scaling down to 0 ({observed.ready_replicas} still ready)"
    if observed.ready_replicas < desired:
        return CopyState.WARMING, f"{observed.ready_replicas} of {desired} replica(s) ready"
    return CopyState.READY, f"{observed.ready_replicas} of {desired} replica(s) ready"


def destination_status(
    claim: CopyClaim,
    observed: CopyObservation | None,
    sizing: CopySizing | None,
    manifests: CopyManifests | None,
    *,
    blocked: str = "",
    last_error: str = "",
) -> dict[str, Any]:
    """The `status.destination` document (camelCase, None values dropped by the status writer)."""
    state, why = copy_state(claim, observed, sizing, manifests, blocked)
    location = claim.wanted.location if claim.wanted is not None else claim.recorded
    reason = why
    if sizing is not None and state not in (CopyState.FAILED, CopyState.DELETING):
        reason = f"{why}; {sizing.reason}"
    address = observed.address if observed is not None else None
    return {
        "state": state.value,
        "phase": sizing.phase.value if sizing is not None and claim.wanted is not None else None,
        "namespace": location.namespace if location else "",
        "name": location.name if location else "",
        "kubeconfigSecret": f"{location.kubeconfig.namespace}/{location.kubeconfig.name}" if location else "",
        "desiredReplicas": sizing.replicas if sizing is not None and claim.wanted is not None else None,
        "replicas": observed.replicas if observed is not None and observed.exists else None,
        "readyReplicas": observed.ready_replicas if observed is not None and observed.exists else None,
        "updatedReplicas": observed.updated_replicas if observed is not None and observed.exists else None,
        "address": f"{address[0]}:{address[1]}" if address else None,
        "reachable": observed.reachable if observed is not None and not observed.pending else None,
        "reason": reason,
        "lastError": last_error or None,
        "holdUntil": _rfc3339(sizing.hold_until) if sizing is not None and sizing.hold_until else None,
        "warnings": list(manifests.warnings) if manifests is not None else [],
    }
