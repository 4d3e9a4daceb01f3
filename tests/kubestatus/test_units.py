"""Pure parts of spillover.kube.status and spillover.kube.leader (no API server)."""

from __future__ import annotations

import pytest

from spillover.kube.leader import LeaderElector, LeaseRecord
from spillover.kube.status import StatusInput, _Event, desired_status, event_body, routing_key, stored_form
from tests.kubestatus.helpers import Model, md_doc


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
    assert {c["type"] for c in first["conditions"]} == {"Ready", "Overflowing", "Invalid"}
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
        ("models", "llama"), _Event(("models", "llama"), "OVERFLOW", "FAILOVER", "x" * 5000, 1_700_000_000.5),
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
    with pytest.raises(ValueError):
        LeaderElector(None, "ns", lease_duration=10, renew_deadline=10, retry_period=2)
    with pytest.raises(ValueError):
        LeaderElector(None, "ns", lease_duration=15, renew_deadline=2, retry_period=2)


def test_inputs_from_a_kubernetes_status_report() -> None:
    from spillover.kube.source import CRKey, CRObject, CROrigin, KubeDesiredState
    from spillover.kube.status import inputs_from_report
    from spillover.policies import StatusReport
    from spillover.policy.errors import PolicyError

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
    assert inputs[("models", "llama")] == StatusInput(3, item.status)
    assert inputs[("models", "broken")] == StatusInput(7, None, invalid="spec.model: is required")
