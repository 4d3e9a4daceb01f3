"""The decision table as the leader publishes it (pure): what a follower reads back, chunks that stay under
their budget, what makes it due again, entries checked field by field, timers resumed with their pause."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from spillover.controller.fleet.table import (
    BODY_ANNOTATION,
    HEADER_ANNOTATION,
    Table,
    decision_of,
    decode,
    encode,
    entry_of,
    memory_of,
    routing_fingerprint,
)
from spillover.decide import Decision, MetricReading, ModelMemory
from spillover.policy import OverflowState


def overflow(share: int = 50, reason: str = "queue_length at 9 >= threshold 5", since: float = 1000.0,
             value: float = 2.0) -> tuple[Decision, ModelMemory]:
    memory = ModelMemory(
        OverflowState.OVERFLOW, OverflowState.OVERFLOW, share, since=since, calm_started_at=since + 10,
        readings=(MetricReading("queue_length", 5.0, "calm", value, since + 11),),
    )
    return Decision(OverflowState.OVERFLOW, share, reason, wanted_share=share, local_ready=2), memory


def varied(count: int, seed: int = 1, share: int | None = None) -> dict[str, dict[str, Any]]:
    """Entries as a real fleet has them: every model its own share, times and readings."""
    rng = random.Random(seed)
    return {
        f"model-{i:05d}": entry_of(*overflow(
            share=share if share is not None else rng.randrange(5, 100, 5),
            reason=f"queue_length at {rng.uniform(5, 50):.3f} >= threshold 5", since=rng.uniform(1e9, 2e9),
            value=rng.uniform(0, 5)))
        for i in range(count)
    }


def test_an_entry_reads_back_as_the_decision_and_memory_it_was_made_of() -> None:
    decision, memory = overflow()
    entry = json.loads(json.dumps(entry_of(decision, memory, {"10.0.0.1:80": 5})))
    assert decision_of(entry) == decision
    back = memory_of(entry, now=1012.0)
    assert (back.state, back.mode, back.share, back.since, back.calm_started_at) == (
        OverflowState.OVERFLOW, OverflowState.OVERFLOW, 50, 1000.0, 1010.0)
    assert [(r.name, r.value, r.condition) for r in back.readings] == [("queue_length", 2.0, "calm")]
    assert entry["lw"] == {"10.0.0.1:80": 5}


def test_a_new_leader_resumes_the_buffer_with_what_had_run_while_the_old_one_was_alive() -> None:
    decision, memory = overflow()
    entry = entry_of(decision, memory)
    # The old leader was last seen alive at 1016 (6 s into the buffer); taken over at 1030.
    resumed = memory_of(entry, now=1030.0, alive_at=1016.0, readings=False)
    assert resumed.calm_started_at == pytest.approx(1024.0)  # 6 s run, none lost, none added
    assert resumed.readings == ()  # every metric "not sampled yet": no news, the timer keeps running


@pytest.mark.parametrize("change, problem", [
    ({"s": "FLYING"}, "s: not a state"),
    ({"r": 101}, "r: must be an integer 0-100"),
    ({"w": True}, "w: must be an integer 0-100"),
    ({"rem": "elsewhere"}, "rem: not one of"),
    ({"rdy": -1}, "rdy: must be a count or null"),
    ({"why": 5}, "why: must be a string"),
])
def test_a_broken_entry_is_refused_naming_the_key(change: dict[str, Any], problem: str) -> None:
    entry = {**entry_of(*overflow()), **change}
    with pytest.raises(ValueError, match=problem):
        decision_of(entry)


def test_only_a_routing_change_makes_the_table_due_again() -> None:
    decision, memory = overflow()
    base = {"llama": entry_of(decision, memory)}
    other_reason = {"llama": entry_of(Decision(decision.state, 50, "calm for 3s of the 12s buffer", wanted_share=50,
                                               local_ready=2), memory)}
    other_share = {"llama": entry_of(*overflow(share=30))}
    assert routing_fingerprint(base) == routing_fingerprint(other_reason)
    assert routing_fingerprint(base) != routing_fingerprint(other_share)


def test_a_large_table_is_split_into_chunks_under_the_budget_and_reads_back_whole() -> None:
    entries = varied(3000)
    table = Table("replica-a", 3, 7, 1234.5, entries)
    chunks = encode(table, budget=40_000)
    assert len(chunks) > 1 and all(len(c[BODY_ANNOTATION]) <= 40_000 for c in chunks)
    back = decode(dict(enumerate(chunks)))
    assert back is not None and (back.leader, back.term, back.seq) == ("replica-a", 3, 7)
    assert back.entries == json.loads(json.dumps(entries))
    # One model's change rewrites one chunk.
    changed = dict(entries, **{"model-00042": entry_of(*overflow(share=30))})
    again = encode(Table("replica-a", 3, 8, 1235.0, changed), budget=40_000)
    assert len(again) == len(chunks)
    assert sum(a[BODY_ANNOTATION] != b[BODY_ANNOTATION] for a, b in zip(again, chunks, strict=True)) == 1


def test_chunks_of_another_term_keep_the_previous_entries_until_they_are_rewritten() -> None:
    old = Table("replica-a", 1, 5, 100.0, varied(400, share=50))
    chunks = encode(old, budget=8_000)
    assert len(chunks) >= 2
    previous = decode(dict(enumerate(chunks)))
    new = encode(Table("replica-b", 2, 1, 200.0, varied(400, seed=2, share=30)), budget=8_000)
    assert len(new) == len(chunks)
    mixed = dict(enumerate(chunks))
    mixed[0] = new[0]  # the new leader has rewritten chunk 0 only so far
    table = decode(mixed, previous)
    assert table is not None and table.leader == "replica-b" and table.term == 2
    shares = {name: entry["r"] for name, entry in table.entries.items()}
    assert set(shares.values()) == {30, 50} and len(shares) == 400
    assert decode({0: {HEADER_ANNOTATION: "{", BODY_ANNOTATION: ""}}, previous) is previous
