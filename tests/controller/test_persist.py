"""The state file and the memories kept in it: written atomically, versioned, a broken or foreign file
reported and ignored; timers paused over the downtime; group sizes kept as a floor after a restart."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from spillover.controller.persist import (
    FORMAT,
    GroupReplicas,
    StateFileDecisions,
    StateStore,
    default_state_path,
)
from spillover.decide import ModelMemory, Transition
from spillover.decide.persisted import memory_document, restore_memory
from spillover.policy import DesiredState, OverflowState
from tests.harness.clock import FakeClock

OVERFLOW = ModelMemory(
    OverflowState.OVERFLOW, OverflowState.OVERFLOW, 40, since=1000.0, calm_started_at=1030.0,
    transition=Transition(OverflowState.STANDBY, OverflowState.OVERFLOW, 1000.0, "queue at 9 >= 5"),
    evaluated_at=1040.0,
)


def test_a_memory_round_trips_with_its_timers_paused_over_the_downtime() -> None:
    document = json.loads(json.dumps(memory_document(OVERFLOW)))
    # Written at 1040 (10 s of buffer run), restored at 2000: the buffer resumes with 10 s run.
    memory = restore_memory(document, now=2000.0, alive_at=1040.0)
    assert (memory.state, memory.mode, memory.share, memory.since) == (OverflowState.OVERFLOW, OverflowState.OVERFLOW, 40, 1000.0)
    assert memory.calm_started_at == 1990.0 and memory.breach_started_at is None
    assert memory.transition == OVERFLOW.transition
    assert memory.readings == ()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"state": "SOMETIMES"}, "state: not a state"),
        ({"mode": "FAILOVER"}, "mode: must be STANDBY or OVERFLOW"),
        ({"share": 140}, "share: must be an integer 0-100"),
        ({"share": True}, "share: must be an integer 0-100"),
        ({"since": "yesterday"}, "since: must be a finite number"),
        ({"buffer_started_at": float("nan")}, "buffer_started_at: must be a finite number"),
        ({"transition": {"from": "STANDBY", "to": "OVERFLOW", "at": 1, "reason": 3}}, "transition.reason"),
    ],
)
def test_a_malformed_memory_is_refused_naming_the_key(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        restore_memory({**memory_document(OVERFLOW), **change}, now=2000.0)


def test_the_state_file_is_written_atomically_with_mode_0600_and_read_back(tmp_path: Path) -> None:
    clock = FakeClock(1040.0)  # the time of the memory's last evaluation
    store = StateStore(tmp_path / "state.json", heartbeat=5.0, clock=clock)
    store.load()
    decisions = StateFileDecisions(store)
    decisions.keep({"llama": OVERFLOW})
    assert stat.S_IMODE(os.stat(tmp_path / "state.json").st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["state.json"]  # no temporary file left behind
    document = json.loads((tmp_path / "state.json").read_text())
    assert document["format"] == FORMAT and document["alive_at"] == 1040.0
    written = (tmp_path / "state.json").stat().st_mtime_ns
    decisions.keep({"llama": OVERFLOW})  # unchanged: not written again
    assert (tmp_path / "state.json").stat().st_mtime_ns == written
    clock.advance(6.0)
    decisions.tick()  # the heartbeat is due
    assert json.loads((tmp_path / "state.json").read_text())["alive_at"] == 1046.0

    again = StateStore(tmp_path / "state.json", clock=clock)
    again.load()
    assert again.problem == "" and again.alive_at == 1046.0
    state = DesiredState(models={"llama": object()})  # type: ignore[dict-item]
    recalled = StateFileDecisions(again).recall(state, ["llama", "other"], 9000.0)
    assert set(recalled) == {"llama"}
    # The buffer had run 16 s when the file was last known current (1030 -> 1046): it resumes with 16 s.
    assert recalled["llama"].calm_started_at == 9000.0 - 16.0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "not JSON"),
        (b'["a", "list"]', "format 'list'"),
        (json.dumps({"format": "someone-else/v9", "models": {}}).encode(), "format 'someone-else/v9'"),
        (json.dumps({"models": {}}).encode(), "format None"),
    ],
)
def test_a_corrupt_or_foreign_state_file_is_reported_and_ignored(tmp_path: Path, content: bytes, problem: str) -> None:
    (tmp_path / "state.json").write_bytes(content)
    store = StateStore(tmp_path / "state.json")
    store.load()
    assert problem in store.problem and "ignored" in store.problem
    assert store.loaded == {}
    StateFileDecisions(store).keep({"llama": OVERFLOW})  # and it is replaced by a good one
    assert json.loads((tmp_path / "state.json").read_text())["format"] == FORMAT


def test_a_broken_model_record_starts_that_model_afresh(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text(json.dumps({
        "format": FORMAT, "alive_at": 1.0,
        "models": {"good": memory_document(OVERFLOW), "bad": {"state": "OVERFLOW"}},
    }))
    store = StateStore(tmp_path / "state.json")
    store.load()
    recalled = StateFileDecisions(store).recall(DesiredState(), ["good", "bad"], 2000.0)
    assert set(recalled) == {"good"}
    assert "model 'bad'" in store.problem


def test_a_write_that_fails_is_reported_and_not_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    store = StateStore(blocker / "state.json")
    store.load()
    StateFileDecisions(store).keep({"llama": OVERFLOW})
    assert "cannot write" in store.problem


def test_the_default_path_is_beside_the_policies_directory(tmp_path: Path) -> None:
    assert default_state_path(tmp_path / "policies") == tmp_path / "policies.spillover-state.json"


def test_a_group_keeps_its_size_until_its_envoys_are_back_or_the_grace_ends(tmp_path: Path) -> None:
    clock = FakeClock(0.0)
    (tmp_path / "state.json").write_text(json.dumps({"format": FORMAT, "groups": {"edge": {"replicas": 3}}}))
    store = StateStore(tmp_path / "state.json")
    store.load()
    groups = GroupReplicas(store, grace=60.0, clock=clock)
    assert groups.replicas("edge", 1) == 3  # the first Envoy back gets a third, not the whole limit
    assert groups.replicas("other", 1) == 1  # a group not known before: the connected count
    assert groups.replicas("edge", 3) == 3  # all back: the floor is gone
    assert groups.replicas("edge", 2) == 2  # and an Envoy leaving counts at once
    restarted = StateStore(tmp_path / "state.json")
    restarted.load()
    late = GroupReplicas(restarted, grace=60.0, clock=clock)
    assert late.replicas("edge", 1) == 2  # what was last written (2) is the floor of the next start
    clock.advance(61.0)
    assert late.replicas("edge", 1) == 1  # the grace is over
