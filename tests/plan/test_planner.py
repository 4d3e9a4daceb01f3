"""`Planner`: the same IR as `plan_gateway`, and the same IR object for a model whose inputs did not change."""

from __future__ import annotations

from spillover.decide import Decision
from spillover.ir import Listener
from spillover.plan import Planner, plan_gateway
from spillover.policy import ModelDeployment, OverflowState
from tests.harness.policy_files import model_deployment


def _deployment(name: str, rps: float = 100.0, endpoints: tuple[str, ...] = ("10.0.0.1:8000",)) -> ModelDeployment:
    return ModelDeployment.model_validate(model_deployment(name, list(endpoints), rps=rps))


def test_the_planner_plans_what_plan_gateway_plans_and_keeps_unchanged_models_identical() -> None:
    models = [_deployment(f"model-{i}") for i in (3, 1, 2)]
    decisions = {md.model: Decision(OverflowState.STANDBY, 0) for md in models}
    planner = Planner()
    first = planner.plan("g", Listener(), models, decisions, 2, {})
    assert first == plan_gateway("g", Listener(), models, decisions, 2, {})
    # A new decision for model-2, a new policy for model-3: those two are planned again, model-1 is the same object.
    decisions = {**decisions, "model-2": Decision(OverflowState.STANDBY, 0, reason="another round")}
    models = [_deployment("model-3", rps=50.0), models[1], models[2]]
    second = planner.plan("g", Listener(), models, decisions, 2, {})
    assert second == plan_gateway("g", Listener(), models, decisions, 2, {})
    before = {m.name: m for m in first.models}
    after = {m.name: m for m in second.models}
    assert after["model-1"] is before["model-1"]
    # model-2's decision changed only in its reason, which the IR does not carry: the same value, the same object.
    assert after["model-2"] is before["model-2"]
    assert after["model-3"] is not before["model-3"] and after["model-3"] != before["model-3"]
    # Another Envoy count is another rate-limit share: planned apart, and both stay known.
    other = planner.plan("g", Listener(), models, decisions, 3, {})
    assert other == plan_gateway("g", Listener(), models, decisions, 3, {})
    assert {m.name: m for m in other.models}["model-1"] != after["model-1"]
    again = planner.plan("g", Listener(), models, decisions, 2, {})
    assert all(a is b for a, b in zip(again.models, second.models, strict=True))


def test_the_memo_is_bounded() -> None:
    planner = Planner(counts=3)
    models = [_deployment(f"model-{i}") for i in range(4)]
    for replicas in range(1, 20):
        planner.plan("g", Listener(), models, {}, replicas, {})
        assert sorted(planner._memo) == list(range(max(1, replicas - 2), replicas + 1))
    # Models that are gone leave the memo once they outnumber the planned ones.
    for i in range(200):
        planner.plan("g", Listener(), [_deployment(f"model-x{i}")], {}, 19, {})
    assert len(planner._memo[19]) <= 2 + 64 + 1
