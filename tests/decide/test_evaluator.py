"""Evaluator: all models at one `now`, change detection, dropped models."""

from __future__ import annotations

from spillover.decide import Evaluator, Sample
from spillover.policy import OverflowState
from tests.harness.overflow_engine import model

A = model(percentage=50, bufferDuration="10s")
B = model(percentage=20)


def gpu(value: float, at: float) -> dict[str, Sample]:
    return {"gpu": Sample(value, at)}


def test_first_evaluation_reports_every_model_as_changed() -> None:
    ev = Evaluator()
    out = ev.evaluate({"a": A, "b": B}, 0.0, {"a": gpu(10, 0.0), "b": gpu(10, 0.0)})
    assert out.changed == {"a", "b"} and out.updated == {"a", "b"} and out.removed == frozenset()
    assert out.needs_push
    assert {k: d.state for k, d in out.decisions.items()} == {"a": OverflowState.STANDBY, "b": OverflowState.STANDBY}


def test_only_models_whose_routing_changed_are_reported() -> None:
    ev = Evaluator()
    ev.evaluate({"a": A, "b": B}, 0.0, {"a": gpu(10, 0.0), "b": gpu(10, 0.0)})
    out = ev.evaluate({"a": A, "b": B}, 1.0, {"a": gpu(11, 1.0), "b": gpu(12, 1.0)})
    assert out.changed == frozenset() and not out.needs_push
    out = ev.evaluate({"a": A, "b": B}, 2.0, {"a": gpu(90, 2.0), "b": gpu(12, 2.0)})
    assert out.changed == {"a"}
    assert (out.decisions["a"].state, out.decisions["a"].remote_share) == (OverflowState.OVERFLOW, 50)
    # the reason changes (value, buffer count) but not the routing: updated, not changed
    out = ev.evaluate({"a": A, "b": B}, 3.0, {"a": gpu(10, 3.0), "b": gpu(12, 3.0)})
    assert out.changed == frozenset() and out.updated == {"a"}
    out = ev.evaluate({"a": A, "b": B}, 13.0, {"a": gpu(10, 13.0), "b": gpu(12, 13.0)})
    assert out.changed == {"a"} and out.decisions["a"].state == OverflowState.STANDBY


def test_per_model_inputs() -> None:
    ev = Evaluator()
    out = ev.evaluate(
        {"a": A, "b": B},
        0.0,
        {"a": gpu(90, 0.0), "b": gpu(90, 0.0)},
        local_ready={"b": 0},
        remote_healthy={"a": False},
        remote_usable={"b": True},
    )
    assert (out.decisions["a"].state, out.decisions["a"].remote_share) == (OverflowState.OVERFLOW, 0)
    assert (out.decisions["b"].state, out.decisions["b"].remote_share) == (OverflowState.FAILOVER, 100)
    # Local readiness unknown (no Envoy answered): FAILOVER holds rather than sending traffic back.
    out = ev.evaluate({"a": A, "b": B}, 1.0, {"a": gpu(90, 1.0), "b": gpu(90, 1.0)}, remote_usable={"a": False})
    assert out.decisions["a"].remote == "unusable"
    assert (out.decisions["b"].state, out.decisions["b"].remote_share) == (OverflowState.FAILOVER, 100)
    assert out.decisions["b"].reason.startswith("local readiness unknown")
    out = ev.evaluate({"a": A, "b": B}, 2.0, {"a": gpu(90, 2.0), "b": gpu(90, 2.0)}, local_ready={"b": 2})
    assert (out.decisions["b"].state, out.decisions["b"].remote_share) == (OverflowState.OVERFLOW, 20)


def test_missing_samples_and_max_age() -> None:
    ev = Evaluator(max_age=5.0)
    ev.evaluate({"a": A}, 0.0, {"a": gpu(90, 0.0)})
    out = ev.evaluate({"a": A}, 100.0, {"a": gpu(10, 90.0)})  # stale: hold
    memory = ev.memory("a")
    assert memory is not None and memory.readings[0].error.startswith("stale")
    assert out.decisions["a"].state == OverflowState.OVERFLOW
    out = ev.evaluate({"a": A}, 200.0)  # no samples at all
    assert out.decisions["a"].state == OverflowState.OVERFLOW
    memory = ev.memory("a")
    assert memory is not None and memory.readings[0].error == "no sample"


def test_models_that_disappear_are_dropped_and_come_back_fresh() -> None:
    ev = Evaluator()
    ev.evaluate({"a": A, "b": B}, 0.0, {"a": gpu(90, 0.0), "b": gpu(10, 0.0)})
    out = ev.evaluate({"b": B}, 1.0, {"b": gpu(10, 1.0)})
    assert out.removed == {"a"} and out.changed == frozenset() and out.needs_push
    assert ev.memory("a") is None and ev.decision("a") is None and set(ev.decisions) == {"b"}
    out = ev.evaluate({"a": A, "b": B}, 2.0, {"a": gpu(10, 2.0), "b": gpu(10, 2.0)})
    assert out.changed == {"a"} and out.removed == frozenset()
    assert out.decisions["a"].state == OverflowState.STANDBY  # not held in OVERFLOW by an old memory


def test_status_of_a_known_model() -> None:
    ev = Evaluator()
    assert ev.status("a", A, 0.0) is None
    ev.evaluate({"a": A}, 1_700_000_000.0, {"a": gpu(90, 1_700_000_000.0)})
    status = ev.status("a", A, 1_700_000_001.0)
    assert status is not None and status.state == OverflowState.OVERFLOW and status.remote_share == 50
