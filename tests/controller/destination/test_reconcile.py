"""The next step for a copy, and its state and status, from what the two clusters show (pure)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from spillover.controller.destination.manifests import copy_manifests
from spillover.controller.destination.reconcile import Step, next_step
from spillover.controller.destination.status import copy_state, destination_status, unusable_reason
from spillover.decide.copies import CopyPhase, CopySizing
from spillover.policy import CopyState
from spillover.policy.destination import FINALIZER
from spillover.sources.destination.observe import CopyObservation
from spillover.sources.kube.destinations import CopyClaim, CopyLocation, SecretKey
from tests.harness.copy_claims import LOCATION, claim, observed

RECORDED: dict[str, Any] = {"finalizer": True, "recorded": LOCATION, "finalizers": (FINALIZER,)}


def step(c: CopyClaim, wanted: CopyObservation | None = None, recorded: CopyObservation | None = None,
         replicas: int = 2, written: int | None = None) -> Step:
    manifests = copy_manifests(c, c.wanted, replicas) if c.wanted is not None else None
    return next_step(c, wanted, recorded, manifests, replicas, written)


def live(c: CopyClaim, replicas: int = 2, generation: int = 1, **fields: Any) -> CopyObservation:
    assert c.wanted is not None
    made = copy_manifests(c, c.wanted, replicas)
    return observed(exists=True, replicas=replicas, generation=generation, template_hash=made.template_hash,
                    service_exists=True, service={"metadata": made.service["metadata"], "spec": made.service["spec"]},
                    **fields)


def test_the_record_and_the_finalizer_come_before_anything_on_b() -> None:
    first = step(claim(), observed())
    assert (first.kind, first.location, first.event) == ("record", LOCATION, "DestinationRecorded")
    # Recorded: now the copy.
    c = claim(**RECORDED)
    assert step(c, observed()).kind == "create" and step(c, observed()).event == "CopyCreated"
    made = step(c, observed(exists=True, replicas=2, generation=1, template_hash="old"))
    assert (made.kind, made.event) == ("replace", "CopyUpdated")


def test_scale_drift_and_restoration() -> None:
    c = claim(**RECORDED)
    steady = live(c)
    assert step(c, steady, written=1).kind == "none"
    scaled = step(c, steady, replicas=4, written=1)
    assert (scaled.kind, scaled.event, scaled.reason) == ("replace", "CopyScaled", "scaling the copy from 2 to 4 replica(s)")
    edited = step(c, replace(steady, generation=2), written=1)
    assert (edited.kind, edited.event) == ("replace", "CopyRestored")
    # After a start nothing is known of what was written: one replace makes sure (no Event).
    assert (step(c, steady).kind, step(c, steady).event) == ("replace", "")
    deleted = step(c, observed(), written=1)
    assert (deleted.kind, deleted.event) == ("create", "CopyRestored")
    no_service = step(c, replace(steady, service_exists=False, service=None), written=1)
    assert no_service.kind == "create-service"
    changed = replace(steady, service={"metadata": steady.service["metadata"],  # type: ignore[index]
                                       "spec": {**steady.service["spec"], "type": "NodePort"}})  # type: ignore[index]
    assert step(c, changed, written=1).kind == "replace-service"


def test_what_makes_it_wait() -> None:
    c = claim(**RECORDED)
    unreachable = step(c, observed(reachable=False, error="destination cluster unreachable (x): timed out"))
    assert (unreachable.kind, unreachable.event) == ("wait", "DestinationUnreachable")
    foreign = step(c, observed(exists=True, foreign="not made by spillover"))
    assert foreign.kind == "wait" and foreign.event == "CopyConflict" and "not touched" in foreign.reason
    bare = claim(template={"spec": {"containers": [{"name": "c", "image": "x"}]}}, **RECORDED)
    assert step(bare, observed()).reason == "the origin's pod template declares no container port: set " \
                                            "destination.targetPort"


def test_the_copy_goes_before_the_finalizer() -> None:
    gone = claim(wanted=False, deleting=True, **RECORDED)
    assert step(gone, recorded=live(claim())).kind == "delete"
    assert step(gone, recorded=observed()).kind == "release"
    waiting = step(gone, recorded=observed(reachable=False, error="unreachable"))
    assert waiting.kind == "wait" and waiting.event == "WaitingForDestination"
    assert 'annotate spillover.dev/abandon-destination="true"' in waiting.reason
    abandoned = step(replace(gone, abandon=True), recorded=observed(reachable=False))
    assert (abandoned.kind, abandoned.event) == ("release", "DestinationAbandoned")
    # A finalizer without a record: nothing was made, released at once.
    assert step(claim(wanted=False, finalizer=True), None).kind == "release"
    assert step(claim(wanted=False), None).kind == "none"


def test_a_moved_destination_removes_the_old_copy_first() -> None:
    new = CopyLocation(SecretKey("ml", "cluster-b", "kubeconfig"), "other", "llama")
    moved = claim(location=new, **RECORDED)
    assert step(moved, observed(location=new), recorded=live(claim())).kind == "delete"
    after = step(moved, observed(location=new), recorded=observed())
    assert (after.kind, after.location) == ("record", new)


SIZED = CopySizing(2, CopyPhase.ACTIVE, "OVERFLOW: the copy takes the spill", hold_until=1_700_000_000.0)


def test_states_and_the_reasons_traffic_waits() -> None:
    c = claim(**RECORDED)
    manifests = copy_manifests(c, c.wanted, 2)  # type: ignore[arg-type]
    assert copy_state(c, observed(), SIZED, manifests)[0] == CopyState.CREATING
    assert copy_state(c, live(c), SIZED, manifests) == (CopyState.WARMING, "0 of 2 replica(s) ready")
    assert copy_state(c, live(c, ready_replicas=2), SIZED, manifests)[0] == CopyState.READY
    cold = CopySizing(0, CopyPhase.COLD, "STANDBY: cold")
    assert copy_state(c, live(c, replicas=0), cold, manifests)[0] == CopyState.COLD
    assert copy_state(c, observed(reachable=False, error="unreachable"), SIZED, manifests) == (
        CopyState.FAILED, "unreachable")
    # Not heard from yet (connecting, a first list): not a failure.
    assert copy_state(c, observed(reachable=False, pending=True, error="connecting"), SIZED, manifests) == (
        CopyState.CREATING, "connecting")
    assert destination_status(c, observed(reachable=False, pending=True), None, manifests)["reachable"] is None
    stuck = live(c, rollout_problem="ProgressDeadlineExceeded: slow")
    assert copy_state(c, stuck, SIZED, manifests)[0] == CopyState.FAILED
    assert copy_state(claim(wanted=False, **RECORDED), None, None, None)[0] == CopyState.DELETING

    assert unusable_reason(c, live(c), SIZED) == (
        "overflowing to a copy that is not ready yet (0 of 2 replica(s) ready on the destination)")
    assert unusable_reason(c, live(c, ready_replicas=1), SIZED).startswith(
        "overflowing to a copy without an address yet")
    assert unusable_reason(c, live(c, ready_replicas=1, address=("1.2.3.4", 80)), SIZED) == ""
    assert unusable_reason(c, observed(reachable=False, error="destination cluster unreachable (k): timed out"),
                           SIZED) == "destination cluster unreachable (k): timed out: no traffic to a copy that cannot be seen"
    assert unusable_reason(replace(c, deleting=True), live(c, ready_replicas=1, address=("1.2.3.4", 80)), SIZED) == (
        "the ModelDeployment is being deleted: no traffic to its copy")


def test_the_status_document() -> None:
    c = claim(**RECORDED)
    manifests = copy_manifests(c, c.wanted, 2)  # type: ignore[arg-type]
    document = destination_status(c, live(c, ready_replicas=2, address=("1.2.3.4", 8000)), SIZED, manifests,
                                  last_error="")
    assert document == {
        "state": "Ready", "phase": "active", "namespace": "serving", "name": "llama",
        "kubeconfigSecret": "ml/cluster-b", "desiredReplicas": 2, "replicas": 2, "readyReplicas": 2,
        "updatedReplicas": 0, "address": "1.2.3.4:8000", "reachable": True,
        "reason": "2 of 2 replica(s) ready; OVERFLOW: the copy takes the spill", "lastError": None,
        "holdUntil": "2023-11-14T22:13:20Z", "warnings": [],
    }
