"""The copy's size (cold / warm / pre-warm / active, buffer + cooldown), with the overflow engine and a fake
clock: time is moved, never waited for."""

from __future__ import annotations

from typing import Any

from spillover.decide import Evaluator, Sample
from spillover.decide.copies import CopyPhase, CopySizer, CopySizing, size_copy
from spillover.decide.engine import Decision, MetricReading
from spillover.policy import ModelDeployment, OverflowState
from tests.harness.clock import FakeClock
from tests.harness.policy_docs import ok

QUEUE = {"metric": "queue_length", "target": 8}  # overflow at 8
BUFFER, COOLDOWN = 10.0, 30.0


def copy_model(destination: dict[str, Any] | None = None, on_error: str = "hold") -> ModelDeployment:
    return ok({
        "apiVersion": "spillover.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "llama"},
        "spec": {
            "model": "llama-3", "localBackend": {"endpoints": ["127.0.0.1:8001"]},
            "modelSourceRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama"},
            "offloadingConfig": {
                "metrics": [QUEUE],
                "behavior": {"bufferDuration": f"{BUFFER:g}s", "percentage": 50, "onMetricError": on_error},
                "destination": {"kubeconfigSecretRef": {"name": "cluster-b"}, "cooldown": f"{COOLDOWN:g}s",
                                "activeReplicas": 4, "preWarm": {"thresholds": {"queue_length": 6}},
                                **(destination or {})},
            },
        },
    })


class Timeline:
    """The engine and the sizer stepped together on a fake clock, as the controller's loop runs them."""

    def __init__(self, md: ModelDeployment, origin_replicas: int | None = 3, observed: int | None = None) -> None:
        self.md = md
        self.clock = FakeClock(1000.0)
        self.evaluator = Evaluator()
        self.sizer = CopySizer()
        self.origin = origin_replicas
        self.observed = observed

    def step(self, queue: float | None, seconds: float = 1.0) -> tuple[Decision, CopySizing]:
        self.clock.advance(seconds)
        now = self.clock()
        samples = {} if queue is None else {"queue_length": Sample(queue, now)}
        if queue is not None and queue < 0:
            samples = {"queue_length": Sample(None, now, error="Prometheus is down")}
        evaluation = self.evaluator.evaluate({"m": self.md}, now, {"m": samples})
        memory = evaluation.memories["m"]
        sizings = self.sizer.size({"m": self.md}, evaluation.decisions, {"m": memory.readings}, now,
                                  {"m": self.origin}, {"m": self.observed})
        self.observed = None  # only the first evaluation sees the copy as found on B
        return evaluation.decisions["m"], sizings["m"]

    def run(self, queue: float | None, seconds: float, step: float = 1.0) -> tuple[Decision, CopySizing]:
        result = self.step(queue, step)
        for _ in range(int(seconds / step) - 1):
            result = self.step(queue, step)
        return result


def test_cold_until_pre_warm_then_active_then_back_after_buffer_and_cooldown() -> None:
    t = Timeline(copy_model())
    decision, sizing = t.step(2)
    assert (decision.state, sizing.replicas, sizing.phase) == (OverflowState.STANDBY, 0, CopyPhase.COLD)
    assert sizing.reason == "STANDBY: cold (0 standby replicas)" and sizing.hold_until is None

    # Between the pre-warm threshold (6) and the overflow threshold (8): scaled up, nothing spills.
    decision, sizing = t.step(7)
    assert (decision.state, decision.remote_share) == (OverflowState.STANDBY, 0)
    assert (sizing.replicas, sizing.phase) == (4, CopyPhase.PRE_WARM)
    assert sizing.reason == ("pre-warm: queue_length at 7 >= pre-warm threshold 6 (overflow at 8) "
                             "(4 replicas: activeReplicas)")
    assert sizing.hold_until == t.clock() + BUFFER + COOLDOWN

    # Over the threshold: OVERFLOW, still 4.
    decision, sizing = t.step(9)
    assert (decision.state, decision.remote_share) == (OverflowState.OVERFLOW, 50)
    assert (sizing.replicas, sizing.phase) == (4, CopyPhase.ACTIVE)
    assert sizing.reason == "OVERFLOW: the copy takes the spill (4 replicas: activeReplicas)"

    # Calm (below the pre-warm threshold too): the engine leaves OVERFLOW after the buffer...
    last_pressure = t.clock()
    decision, sizing = t.run(1, BUFFER)
    assert decision.state == OverflowState.OVERFLOW
    decision, sizing = t.step(1)
    assert decision.state == OverflowState.STANDBY and t.clock() == last_pressure + BUFFER + 1
    # ...and the copy stays up for the cooldown after that: bufferDuration + cooldown after the last
    # reading over a threshold.
    assert sizing.replicas == 4 and sizing.phase == CopyPhase.ACTIVE
    assert sizing.reason.startswith("kept at 4 replicas for ")
    back_at = sizing.hold_until
    assert back_at is not None and back_at == last_pressure + BUFFER + COOLDOWN
    while t.clock() + 1 < back_at:
        _, sizing = t.step(1)
        assert sizing.replicas == 4, t.clock()
    _, sizing = t.step(1)
    assert t.clock() >= back_at
    assert (sizing.replicas, sizing.phase, sizing.hold_until) == (0, CopyPhase.COLD, None)


def test_pre_warm_alone_scales_back_after_buffer_plus_cooldown() -> None:
    t = Timeline(copy_model())
    t.step(6.5)
    last_pressure = t.clock()
    decision, sizing = t.run(3, BUFFER + COOLDOWN - 1)
    assert decision.state == OverflowState.STANDBY and decision.remote_share == 0
    assert sizing.replicas == 4 and t.clock() == last_pressure + BUFFER + COOLDOWN - 1
    _, sizing = t.step(3)
    assert sizing.replicas == 0 and sizing.phase == CopyPhase.COLD


def test_warm_standby_and_the_origins_replicas() -> None:
    md = copy_model({"standbyReplicas": 1, "activeReplicas": None})
    t = Timeline(md, origin_replicas=3)
    _, sizing = t.step(1)
    assert (sizing.replicas, sizing.phase) == (1, CopyPhase.WARM)
    assert sizing.reason == "STANDBY: warm (1 standby replica)"
    _, sizing = t.step(20)
    assert sizing.replicas == 3 and sizing.reason.endswith("(3 replicas: the origin's replicas)")
    # The origin's replicas not known yet: one, and the reason says so.
    t = Timeline(md, origin_replicas=None)
    _, sizing = t.step(20)
    assert sizing.replicas == 1 and sizing.reason.endswith("(1 replicas: the origin's replicas are not known: 1)")


def test_failover_needs_the_copy_and_disabled_does_not() -> None:
    md = copy_model()
    decision = Decision(OverflowState.FAILOVER, 100)
    result = size_copy(md, decision, (), 0.0)
    assert result is not None and (result[0].replicas, result[0].phase) == (4, CopyPhase.ACTIVE)
    disabled = size_copy(md, Decision(OverflowState.DISABLED, 0), (), 1.0, result[1])
    assert disabled is not None and disabled[0].replicas == 0 and disabled[0].hold_until is None
    # A model without a destination has no copy to size.
    plain = ok({"apiVersion": "spillover.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "plain"},
                "spec": {"model": "m", "localBackend": {"endpoints": ["127.0.0.1:1"]}}})
    assert size_copy(plain, decision, (), 0.0) is None


def test_an_unknown_metric_freezes_the_countdown_with_hold() -> None:
    t = Timeline(copy_model())
    t.step(7)
    _, sizing = t.step(1)
    hold = sizing.hold_until
    assert hold is not None
    # 20 s of an unknown metric: the countdown does not run (and the copy is not scaled up by it either).
    _, sizing = t.run(-1, 20)
    assert sizing.replicas == 4 and sizing.hold_until == hold + 20
    assert "the countdown is frozen (onMetricError: hold)" in sizing.reason
    # A cold copy is not scaled up by an unknown metric.
    cold = Timeline(copy_model())
    cold.step(1)
    _, sizing = cold.run(-1, 5)
    assert sizing.replicas == 0


def test_on_metric_error_overflow_reads_a_failed_metric_as_pressure_and_standby_as_calm() -> None:
    t = Timeline(copy_model(on_error="overflow"))
    t.step(1)
    _, sizing = t.step(-1)
    assert sizing.replicas == 4  # and the engine overflows too
    t = Timeline(copy_model(on_error="standby"))
    t.step(7)
    _, sizing = t.run(-1, BUFFER + COOLDOWN + 2)
    assert sizing.replicas == 0


def test_a_restart_never_shrinks_a_warm_copy_early() -> None:
    t = Timeline(copy_model(), observed=4)
    _, sizing = t.step(1)
    assert sizing.replicas == 4 and sizing.hold_until == t.clock() + BUFFER + COOLDOWN
    # Found at its standby size: nothing is held.
    t = Timeline(copy_model(), observed=0)
    _, sizing = t.step(1)
    assert sizing.replicas == 0


def test_the_percent_pre_warm_threshold_and_readings_without_a_value() -> None:
    md = copy_model({"preWarm": {"percent": 50}})
    reading = MetricReading("queue_length", 8.0, "calm", 4.0, 0.0)
    result = size_copy(md, Decision(OverflowState.STANDBY, 0), (reading,), 1.0)
    assert result is not None and result[0].phase == CopyPhase.PRE_WARM
    unknown = MetricReading("queue_length", 8.0, "unknown", 7.0, 0.0, "stale")
    result = size_copy(md, Decision(OverflowState.STANDBY, 0), (unknown,), 1.0)
    assert result is not None and result[0].replicas == 0


def test_the_sizer_forgets_models_without_a_decision_or_destination() -> None:
    sizer = CopySizer()
    md = copy_model()
    out = sizer.size({"m": md, "n": md}, {"m": Decision(OverflowState.OVERFLOW, 50)}, {}, 0.0)
    assert set(out) == {"m"} and sizer.sizings["m"].replicas == 4
    sizer.forget("m")
    assert dict(sizer.sizings) == {}
