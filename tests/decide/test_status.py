"""status_of / status_document: what /debug/models, `spillover status` and the CR status show."""

from __future__ import annotations

from typing import Any

from spillover.decide import Sample, status_document, status_of
from spillover.decide.status import rfc3339
from spillover.policy import ModelDeploymentStatus, OverflowState
from tests.harness.overflow_engine import GPU, QUEUE, Run, model

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def test_rfc3339() -> None:
    assert rfc3339(T0) == "2023-11-14T22:13:20.000Z"
    assert rfc3339(T0 + 0.25) == "2023-11-14T22:13:20.250Z"


def test_status_in_overflow() -> None:
    run = Run(model([GPU, QUEUE], percentage=50, generation=7), now=T0)
    run.at(0, {"gpu": 10, "queue": 1})
    run.at(10, {"gpu": 95, "queue": 1})
    run.at(25, samples={"gpu": Sample(96.0, T0 + 20), "queue": Sample(None, T0 + 25, error="timeout")})
    assert run.decision is not None and run.memory is not None
    status = status_of(run.md, run.decision, run.memory, T0 + 40)

    assert isinstance(status, ModelDeploymentStatus)
    assert status.state == OverflowState.OVERFLOW
    assert status.remote_share == 50
    assert status.observed_generation == 7
    assert status.offloading_status is True
    assert status.last_transition_time == "2023-11-14T22:13:30.000Z"
    gpu, queue = status.metrics
    assert (gpu.name, gpu.source, gpu.value, gpu.threshold, gpu.error) == ("gpu", "prometheus", 96.0, 80.0, None)
    assert (queue.name, queue.value, queue.threshold, queue.error) == ("queue", 1.0, 10.0, "timeout")

    ready, overflowing = status.condition("Ready"), status.condition("Overflowing")
    assert ready is not None and overflowing is not None
    assert (ready.status, ready.reason, ready.observed_generation) == ("True", "Overflow", 7)
    assert (overflowing.status, overflowing.reason) == ("True", "MetricBreached")
    assert "gpu at 96 >= threshold 80" in overflowing.message
    assert overflowing.last_transition_time == "2023-11-14T22:13:30.000Z"


def test_status_document_carries_time_in_state_age_and_the_last_transition() -> None:
    run = Run(model([GPU, QUEUE], percentage=50), now=T0)
    run.at(10, {"gpu": 95, "queue": 1})
    run.at(25, samples={"gpu": Sample(96.0, T0 + 20), "queue": Sample(2.0, T0 + 25)})
    assert run.decision is not None and run.memory is not None
    doc = status_document(run.md, run.decision, run.memory, T0 + 40)
    assert doc["timeInState"] == 30.0
    assert doc["stateSince"] == "2023-11-14T22:13:30.000Z"
    assert doc["reason"] == run.decision.reason
    assert doc["wantedShare"] == 50
    assert doc["lastTransition"] == {
        "from": "STANDBY",
        "to": "OVERFLOW",
        "at": "2023-11-14T22:13:30.000Z",
        "reason": "gpu at 95 >= threshold 80",
    }
    gpu, queue = doc["metrics"]
    assert (gpu["age"], gpu["sampledAt"], gpu["condition"]) == (20.0, "2023-11-14T22:13:40.000Z", "breached")
    assert (queue["age"], queue["condition"]) == (15.0, "calm")


def test_status_with_an_unhealthy_remote() -> None:
    run = Run(model(percentage=50), now=T0)
    d = run.gpu(0, 95, remote_healthy=False)
    assert run.memory is not None
    status = status_of(run.md, d, run.memory, T0)
    assert (status.state, status.remote_share, status.offloading_status) == (OverflowState.OVERFLOW, 0, False)
    overflowing = status.condition("Overflowing")
    assert overflowing is not None
    assert (overflowing.status, overflowing.reason) == ("False", "RemoteUnhealthy")
    assert overflowing.message.startswith("remote backend unhealthy")
    unusable = Run(model(percentage=50), now=T0)
    d = unusable.gpu(0, 95, remote_usable=False)
    assert unusable.memory is not None
    cond = status_of(unusable.md, d, unusable.memory, T0).condition("Overflowing")
    assert cond is not None and cond.reason == "RemoteUnusable"


def test_status_standby_failover_disabled_and_no_backend() -> None:
    cases: list[tuple[dict[str, Any], dict[str, Any], tuple[str, str], tuple[str, str]]] = [
        (dict(), dict(), ("True", "Standby"), ("False", "Standby")),
        (dict(remote=False), dict(), ("True", "Standby"), ("False", "NoRemoteBackend")),
        (dict(), dict(local_ready=0), ("True", "Failover"), ("True", "Failover")),
        (dict(), dict(local_ready=0, remote_healthy=False), ("False", "NoBackend"), ("False", "Standby")),
        (dict(enabled=False), dict(), ("False", "Disabled"), ("False", "Disabled")),
    ]
    for build, inputs, ready, overflowing in cases:
        run = Run(model(**build), now=T0)
        d = run.gpu(0, 10, **inputs)
        assert run.memory is not None
        status = status_of(run.md, d, run.memory, T0)
        r, o = status.condition("Ready"), status.condition("Overflowing")
        assert r is not None and o is not None
        assert ((r.status, r.reason), (o.status, o.reason)) == (ready, overflowing), (build, inputs)


def test_conditions_of_others_and_unchanged_transition_times_are_kept() -> None:
    previous = {
        "state": "STANDBY",
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Standby", "lastTransitionTime": "2020-01-01T00:00:00Z"},
            {"type": "Overflowing", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"},
            {"type": "Invalid", "status": "False", "reason": "Valid", "lastTransitionTime": "2020-01-02T00:00:00Z"},
        ],
    }
    run = Run(model(status=previous), now=T0)
    d = run.gpu(0, 10)
    assert run.memory is not None
    status = status_of(run.md, d, run.memory, T0 + 5)
    assert [c.type for c in status.conditions] == ["Ready", "Overflowing", "BufferRunning", "ActivationPending", "Invalid"]
    ready, overflowing, buffer, activation, invalid = status.conditions
    assert (buffer.status, activation.status) == ("False", "False")  # STANDBY and calm: no timer runs
    assert ready.last_transition_time == "2020-01-01T00:00:00Z"  # still True
    assert overflowing.status == "False"
    assert overflowing.last_transition_time == rfc3339(T0)  # changed: since the state was entered
    assert (invalid.status, invalid.reason, invalid.last_transition_time) == ("False", "Valid", "2020-01-02T00:00:00Z")


def test_metric_source_follows_the_spec() -> None:
    latency = {"metric": "latency", "target": 500}
    run = Run(model([latency, QUEUE | {"source": "envoy"}]), now=T0)
    d = run.at(0, {"latency_p95": 100, "queue": 1})
    assert run.memory is not None
    status = status_of(run.md, d, run.memory, T0)
    assert [(m.name, m.source) for m in status.metrics] == [("latency_p95", "envoy"), ("queue", "envoy")]
