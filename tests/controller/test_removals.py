"""The removal guard (pure): which changes are held, for how long, and what is served meanwhile."""

from __future__ import annotations

from spillover.controller.removals import RemovalGuard, readiness, takeovers
from spillover.policy import DesiredState, Origin
from spillover.policy.errors import PolicyError
from tests.harness.policy_docs import ok


def state(*names: str, file: str = "") -> DesiredState:
    models = {}
    for name in names:
        doc = {"apiVersion": "spillover.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
               "spec": {"model": name, "localBackend": {"endpoints": ["10.0.0.1:8000"]}}}
        models[name] = ok(doc)
    return DesiredState(models=models, origins={n: Origin(file or f"{n}.yaml", 0) for n in names}, version=1)


def test_losing_most_models_is_held_then_applied_after_the_grace() -> None:
    guard = RemovalGuard(grace=30.0)
    before = state("aaa", "bbb", "ccc")
    served = guard.apply(before, state("aaa"), now=100.0)  # 2 of 3 gone: held
    assert set(served.models) == {"aaa", "bbb", "ccc"} and served.stale == {"bbb", "ccc"}
    assert guard.held is not None and guard.held.models == ("bbb", "ccc") and guard.held.until == 130.0
    assert not guard.due(129.9) and guard.due(130.0)
    # A further change during the hold is applied, the held models stay.
    served = guard.apply(served, state("aaa", "ddd"), now=110.0)
    assert set(served.models) == {"aaa", "bbb", "ccc", "ddd"}
    applied = guard.apply(served, state("aaa", "ddd"), now=130.0)
    assert set(applied.models) == {"aaa", "ddd"} and guard.held is None


def test_the_models_coming_back_end_the_hold() -> None:
    guard = RemovalGuard(grace=30.0)
    before = state("aaa", "bbb")
    held = guard.apply(before, DesiredState(version=2), now=0.0)
    assert set(held.models) == {"aaa", "bbb"} and guard.held is not None
    back = guard.apply(held, before, now=0.6)
    assert back is before and guard.held is None


def test_removing_half_or_fewer_applies_at_once_and_a_grace_of_0_never_holds() -> None:
    guard = RemovalGuard(grace=30.0)
    assert set(guard.apply(state("aaa", "bbb"), state("aaa"), now=0.0).models) == {"aaa"}
    assert guard.held is None
    assert set(RemovalGuard(grace=0).apply(state("aaa"), DesiredState(), now=0.0).models) == set()


def test_takeovers_name_the_new_and_the_old_definition() -> None:
    before = state("aaa", file="a.yaml")
    after = state("aaa", file="b.yaml")
    assert takeovers(before, after) == [
        "model aaa: now defined by b.yaml[0]; its definition in a.yaml[0] is gone or no longer valid"
    ]
    assert takeovers(before, before) == []


def test_readiness_is_lost_only_when_an_unreadable_file_serves_nothing() -> None:
    error = PolicyError("b.yaml", None, "", "cannot read: Permission denied")
    kept = DesiredState(models=state("bbb").models, origins={"bbb": Origin("b.yaml", 0)}, errors=(error,),
                        stale=frozenset({"bbb"}), unreadable=frozenset({"b.yaml"}))
    assert readiness(kept, None) == (
        True, ["warning: b.yaml: cannot read: Permission denied; still served from the last good config: bbb"])
    lost = DesiredState(errors=(error,), unreadable=frozenset({"b.yaml"}))
    assert readiness(lost, None) == (
        False, ["b.yaml: cannot read: Permission denied; none of the models it defines is served"])
