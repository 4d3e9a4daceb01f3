"""What to do next for one ModelDeployment's copy (pure): the actuator runs the step this returns.

Level-triggered, one step at a time, from what the informers show (cluster A's ModelDeployment, cluster B's
copy) and what the actuator last wrote:

1. A copy is wanted: first the finalizer and the record of where the copy lives go on the ModelDeployment
   (`record`), so nothing is ever created on B that spillover could not find and remove again. A record of
   another place (the destination was changed) means that copy goes first (`delete`).
2. Then the Deployment and the Service on B: created when missing (also after someone deleted them),
   replaced when the template hash differs (the origin's pod template changed, or the copy's was edited),
   the replica count differs (a scale), or its `metadata.generation` is not the one spillover wrote (its
   spec was edited on B) — and once after each start, since what was written before is not known.
3. No copy wanted (the ModelDeployment is being deleted, or its destination was removed): the copy and
   its Service are deleted on B, then the record and the finalizer are removed (`release`). With
   `spillover.dev/abandon-destination: "true"` they are released without touching B.

Whatever cannot be done now is a `wait` with a message for the status and a Warning Event: the destination
unreachable (the deletion waits: the finalizer stays), an object of that name on B that is not this copy,
an origin without a port.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from spillover.controller.destination.manifests import CopyManifests, service_differs
from spillover.policy.destination import ABANDON_ANNOTATION
from spillover.sources.destination.observe import CopyObservation
from spillover.sources.kube.destinations import CopyClaim, CopyLocation

__all__ = ["Step", "next_step"]

Kind = Literal[
    "record", "release", "create", "replace", "create-service", "replace-service", "delete", "wait", "none"
]


@dataclass(frozen=True)
class Step:
    kind: Kind
    reason: str = ""
    location: CopyLocation | None = None
    # Event reason of a successful step (or of the warning of a wait).
    event: str = ""


NONE = Step("none")


def _removal(claim: CopyClaim, location: CopyLocation, observed: CopyObservation | None, then: Step) -> Step:
    """Delete the copy at `location`; once it is gone, `then`."""
    if observed is None or not observed.reachable:
        why = observed.error if observed is not None else "not observed yet"
        hint = f'; annotate {ABANDON_ANNOTATION}="true" to leave it there' if claim.deleting or claim.wanted is None \
            else ""
        return Step("wait", f"waiting to delete the copy {location} on the destination: {why}{hint}", location,
                    event="WaitingForDestination")
    ours = (observed.exists and not observed.foreign) or (observed.service_exists and not observed.service_foreign)
    if ours:
        return Step("delete", f"deleting the copy {location} on the destination", location, event="CopyDeleted")
    return then


def next_step(
    claim: CopyClaim,
    wanted_obs: CopyObservation | None,
    recorded_obs: CopyObservation | None,
    manifests: CopyManifests | None,
    replicas: int,
    written_generation: int | None,
) -> Step:
    wanted = claim.wanted
    recorded = claim.recorded
    if wanted is None:
        if not claim.finalizer and recorded is None:
            return NONE
        if claim.abandon:
            return Step("release", f"{ABANDON_ANNOTATION}: the copy on the destination is left as it is",
                        recorded, event="DestinationAbandoned")
        release = Step("release", "the copy is gone from the destination", recorded, event="DestinationReleased")
        if recorded is None:
            return release
        return _removal(claim, recorded, recorded_obs, release)
    location = wanted.location
    if recorded is not None and recorded != location:
        return _removal(claim, recorded, recorded_obs,
                        Step("record", f"the copy moves to {location}", location, event="DestinationRecorded"))
    if not claim.finalizer or recorded != location:
        return Step("record", f"recording where the copy lives ({location}) before creating it", location,
                    event="DestinationRecorded")
    if manifests is None or manifests.error:
        return Step("wait", manifests.error if manifests is not None else "no copy to make", location,
                    event="CopyFailed")
    observed = wanted_obs
    if observed is None or not observed.reachable:
        return Step("wait", observed.error if observed is not None else "not observed yet", location,
                    event="DestinationUnreachable")
    if observed.foreign:
        return Step("wait", f"a Deployment named {location.name} in {location.namespace} on the destination is "
                            f"{observed.foreign}: not touched", location, event="CopyConflict")
    if observed.service_foreign:
        return Step("wait", f"a Service named {location.name} in {location.namespace} on the destination is "
                            f"{observed.service_foreign}: not touched", location, event="CopyConflict")
    if not observed.exists:
        if written_generation is not None:
            return Step("create", f"the copy {location} was deleted on the destination: created again", location,
                        event="CopyRestored")
        return Step("create", f"creating the copy {location} with {replicas} replica(s)", location,
                    event="CopyCreated")
    if observed.template_hash != manifests.template_hash:
        return Step("replace", "the origin's pod template changed (or the copy's was edited on the destination)",
                    location, event="CopyUpdated")
    if observed.replicas != replicas:
        return Step("replace", f"scaling the copy from {observed.replicas} to {replicas} replica(s)", location,
                    event="CopyScaled")
    if written_generation is None:
        return Step("replace", "making sure the copy is as spillover keeps it (first sight since start)",
                    location, event="")
    if observed.generation is not None and observed.generation != written_generation:
        return Step("replace", f"the copy's spec was edited on the destination (generation {observed.generation}, "
                               f"spillover wrote {written_generation}): restored", location, event="CopyRestored")
    if not observed.service_exists:
        return Step("create-service", f"creating the copy's Service {location}", location, event="CopyServiceCreated")
    differs = service_differs(observed.service or {}, manifests.service)
    if differs:
        return Step("replace-service", f"the copy's Service {differs}: restored", location, event="CopyRestored")
    return NONE
