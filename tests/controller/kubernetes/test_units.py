"""Pure parts of spillover.controller.kubernetes (documents, the Lease record) (no API server)."""

from __future__ import annotations

import pytest
from kubernetes.client import ApiClient

from spillover.controller.kubernetes.documents import (
    StatusInput,
    TransitionEvent,
    desired_status,
    event_body,
    routing_key,
    stored_form,
)
from spillover.controller.kubernetes.leader import LeaderElector, LeaseRecord
from tests.harness.kube_status import Model, md_doc


def _model() -> Model:
    doc = md_doc("llama", "models")
    doc["metadata"]["generation"] = 3
    return Model(doc)


def test_stored_form_drops_per_tick_fields_and_nulls() -> None:
    item = _model().step(gpu=95)
    assert item.status is not None
    assert "timeInState" in item.status and "age" in item.status["metrics"][0]
    stored = stored_form(item.status)
    assert "timeInState" not in stored
    assert "age" not in stored["metrics"][0]
    assert None not in stored.values()
    assert stored["state"] == "OVERFLOW" and stored["remoteShare"] == 40


def test_routing_key_ignores_texts_and_values_but_not_state() -> None:
    m = _model()
    a, b = stored_form(m.step(gpu=90).status or {}), stored_form(m.step(gpu=97).status or {})
    assert a != b  # values, sampledAt, reason differ
    assert routing_key(a) == routing_key(b)
    c = stored_form(m.step(gpu=10, dt=60).status or {})  # back to STANDBY after the buffer duration
    assert routing_key(c) != routing_key(b)


def test_desired_status_keeps_transition_times_of_unchanged_conditions() -> None:
    m = _model()
    first = desired_status(m.step(gpu=10), None, now="2024-01-01T00:00:00Z")
    assert {c["type"] for c in first["conditions"]} == {"Ready", "Overflowing", "BufferRunning", "ActivationPending", "Invalid"}
    assert all(c["observedGeneration"] == 3 for c in first["conditions"])
    stored = {**first, "conditions": [*first["conditions"], {"type": "Foreign", "status": "True"}]}
    for c in stored["conditions"]:
        c.setdefault("lastTransitionTime", "2000-01-01T00:00:00Z")
        if c["type"] != "Foreign":
            c["lastTransitionTime"] = "2000-01-01T00:00:00Z"
    second = desired_status(m.step(gpu=99), stored, now="2024-01-01T00:01:00Z")
    conditions = {c["type"]: c for c in second["conditions"]}
    assert conditions["Ready"]["lastTransitionTime"] == "2000-01-01T00:00:00Z"  # still True
    assert conditions["Overflowing"]["status"] == "True"
    assert conditions["Overflowing"]["lastTransitionTime"] != "2000-01-01T00:00:00Z"
    assert conditions["Foreign"] == {"type": "Foreign", "status": "True", "lastTransitionTime": "2000-01-01T00:00:00Z"}


def test_invalid_only_status() -> None:
    status = desired_status(StatusInput(4, invalid="spec.model: is required"), None, now="2024-01-01T00:00:00Z")
    assert status["observedGeneration"] == 4
    assert "state" not in status and status["offloadingStatus"] is False
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Invalid"]["status"] == "True"
    assert conditions["Invalid"]["message"] == "spec.model: is required"
    assert conditions["Ready"]["status"] == "False"


def test_invalid_with_an_older_generation_still_serving() -> None:
    item = _model().step(gpu=10)
    status = desired_status(StatusInput(4, item.status, invalid="bad"), None)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert status["state"] == "STANDBY" and status["observedGeneration"] == 4
    assert conditions["Invalid"]["status"] == "True" and conditions["Ready"]["status"] == "True"


def test_event_body() -> None:
    body = event_body(
        ("models", "llama"), TransitionEvent(("models", "llama"), "OVERFLOW", "FAILOVER", "x" * 5000, 1_700_000_000.5),
        api_version="spillover.dev/v1alpha1", kind="ModelDeployment", uid="u-1",
        controller="spillover.dev/spillover", instance="pod-1",
    )
    assert body["reason"] == "Failover" and body["type"] == "Warning"
    assert len(body["note"].encode()) <= 1024
    assert body["eventTime"] == "2023-11-14T22:13:20.500000Z"
    assert body["regarding"] == {
        "apiVersion": "spillover.dev/v1alpha1", "kind": "ModelDeployment", "namespace": "models", "name": "llama",
        "uid": "u-1",
    }


def test_lease_record_round_trip() -> None:
    spec = {"holderIdentity": "a", "leaseDurationSeconds": 15, "acquireTime": "t0", "renewTime": "t1",
            "leaseTransitions": 2}
    assert LeaseRecord.of({"spec": spec}).spec() == spec
    assert LeaseRecord.of({}).holder == ""


def test_elector_timings_are_checked() -> None:
    # The timings are checked before the client is used: an unconfigured one will do.
    with pytest.raises(ValueError):
        LeaderElector(ApiClient(), "ns", lease_duration=10, renew_deadline=10, retry_period=2)
    with pytest.raises(ValueError):
        LeaderElector(ApiClient(), "ns", lease_duration=15, renew_deadline=2, retry_period=2)


def test_inputs_from_a_kubernetes_status_report() -> None:
    from spillover.controller.contracts import StatusReport
    from spillover.controller.kubernetes.documents import inputs_from_report
    from spillover.policy.errors import PolicyError
    from spillover.sources.kube.state import CRKey, CRObject, CROrigin, KubeDesiredState

    m = _model()
    item = m.step(gpu=95)
    good = CRKey("spillover.dev", "models", "llama")
    bad = CRKey("spillover.dev", "models", "broken")
    pending = CRKey("spillover.dev", "models", "new")
    beamlit = CRKey("deployment.beamlit.com", "models", "old")
    objects = {
        k: CRObject(k, "spillover.dev/v1alpha1", gen, "uid", "1", "x")
        for k, gen in ((good, 3), (bad, 7), (pending, 1), (beamlit, 2))
    }
    state = KubeDesiredState(
        models={"llama-3": m.md},
        origins={"llama-3": CROrigin(file="models/llama", index=0, namespace="models", name="llama")},
        objects=objects,
        invalid={bad: (PolicyError("models/broken", 0, "spec.model", "is required"),)},
    )
    report = StatusReport(state, {"llama-3": item.status or {}}, (), 0.0)
    inputs = inputs_from_report(report)
    assert set(inputs) == {("models", "llama"), ("models", "broken")}
    # With what Beamlit's status fields say: the port of the local endpoints, the remote's $workspace.
    assert inputs[("models", "llama")] == StatusInput(3, item.status, serving_port=8000, workspace="models")
    assert inputs[("models", "broken")] == StatusInput(7, None, invalid="spec.model: is required")


def test_beamlit_shape_keeps_beamlit_fields_in_status_and_the_rest_in_annotations() -> None:
    from spillover.controller.kubernetes.documents import desired_status
    from spillover.controller.kubernetes.shapes import BEAMLIT_SHAPE, SPILLOVER_SHAPE

    m = _model()
    item = m.step(gpu=95)
    item = StatusInput(item.generation, item.status, previous_state=item.previous_state, serving_port=80,
                       metric_port=9090, workspace="ml")
    full = desired_status(item, {}, now="2026-01-01T00:00:00Z")
    assert SPILLOVER_SHAPE.status(full, item) == full and SPILLOVER_SHAPE.annotations(full, item) == {}
    assert BEAMLIT_SHAPE.status(full, item) == {
        "offloadingStatus": True, "servingPort": 80, "metricPort": 9090, "workspace": "ml"}
    annotations = BEAMLIT_SHAPE.annotations(full, item)
    assert annotations["spillover.dev/state"] == "OVERFLOW"
    assert annotations["spillover.dev/remote-share"] == "40"
    assert annotations["spillover.dev/reason"].startswith("gpu at 95 >= threshold 80")
    assert annotations["spillover.dev/observed-generation"] == str(item.generation)
    assert "spillover.dev/invalid" not in annotations
    invalid = StatusInput(4, None, invalid="spec.model: is required")
    assert BEAMLIT_SHAPE.annotations(desired_status(invalid, {}), invalid) == {
        "spillover.dev/invalid": "spec.model: is required", "spillover.dev/observed-generation": "4"}
    assert BEAMLIT_SHAPE.status(desired_status(invalid, {}), invalid) == {"offloadingStatus": False}


def test_pruned_fields_are_learnt_once_and_dropped() -> None:
    from spillover.controller.kubernetes.shapes import PrunedFields

    pruned = PrunedFields()
    sent = {"state": "OVERFLOW", "offloadingStatus": True,
            "conditions": [{"type": "Ready", "status": "True", "observedGeneration": 1}],
            "lastTransition": {"from": "STANDBY", "to": "OVERFLOW"}}
    kept = {"offloadingStatus": True, "conditions": [{"type": "Ready", "status": "True"}]}
    assert pruned.learn(sent, kept) == ["state", "conditions[].observedGeneration", "lastTransition"]
    assert pruned.learn(sent, kept) == []  # known: not reported again
    assert pruned.drop(sent) == kept
    # a field kept by the server is never dropped, and an empty list is not a pruned field
    assert PrunedFields().learn({"metrics": [], "offloadingStatus": False}, {"metrics": [], "offloadingStatus": False}) == []


def test_the_copys_status_texts_wait_but_its_state_does_not_and_gone_fields_are_nulled() -> None:
    from spillover.controller.kubernetes.documents import merge_patch_status

    copy = {"state": "Warming", "readyReplicas": 0, "reason": "0 of 2 ready", "holdUntil": "2025-01-01T00:00:00Z",
            "lastError": "HTTP 403 Forbidden"}
    base = stored_form({"state": "OVERFLOW", "destination": copy})
    texts = stored_form({"state": "OVERFLOW", "destination": {**copy, "reason": "still 0 of 2",
                                                               "holdUntil": "2025-01-01T00:05:00Z"}})
    assert routing_key(base) == routing_key(texts)
    ready = stored_form({"state": "OVERFLOW", "destination": {**copy, "state": "Ready", "readyReplicas": 2}})
    assert routing_key(base) != routing_key(ready)
    # The error went away: a merge patch must null it, or the stored one would stay forever.
    cleared = stored_form({"state": "OVERFLOW", "destination": {k: v for k, v in copy.items() if k != "lastError"}})
    patch = merge_patch_status(cleared, base)
    assert patch["destination"]["lastError"] is None and patch["destination"]["state"] == "Warming"
    assert "destination" not in merge_patch_status({"state": "OVERFLOW"}, {"state": "OVERFLOW"})
    assert merge_patch_status({"state": "STANDBY"}, base)["destination"] is None
