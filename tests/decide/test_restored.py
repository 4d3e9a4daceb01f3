"""The engine with a memory restored after a restart (`spillover.decide.persisted`): metrics not sampled
yet are no news, so the timers in the memory keep running; unknown local readiness holds FAILOVER."""

from __future__ import annotations

from spillover.decide.persisted import memory_document, restore_memory
from spillover.policy import OverflowState
from tests.harness.overflow_engine import Run, model

T0 = 1_000_000.0


def test_a_restart_in_overflow_keeps_the_remaining_buffer() -> None:
    run = Run(model(percentage=30, bufferDuration="20s"), now=T0)
    run.gpu(0, 95)
    run.gpu(1, 10)  # calm: the buffer starts at T0 + 1
    run.gpu(9, 10)  # 8 s of it have run
    assert run.memory is not None
    document = memory_document(run.memory)

    # Restarted 100 s later; the file was current at T0 + 9.
    restarted = Run(run.md, now=T0 + 109, memory=restore_memory(document, T0 + 109, alive_at=T0 + 9))
    first = restarted.at(0, {})  # no sample yet: holding OVERFLOW, the buffer not reset
    assert (first.state, first.remote_share) == (OverflowState.OVERFLOW, 30)
    assert "not sampled yet" in first.reason
    assert restarted.gpu(0.5, 10).state == OverflowState.OVERFLOW
    assert restarted.gpu(11.5, 10).state == OverflowState.OVERFLOW  # 19.5 s of calm in all
    assert restarted.gpu(12.1, 10).state == OverflowState.STANDBY  # 20.1 s: the buffer is over


def test_without_memory_the_same_restart_snaps_to_standby() -> None:
    fresh = Run(model(percentage=30, bufferDuration="20s"), now=T0 + 109)
    assert fresh.at(0, {}).state == OverflowState.STANDBY
    assert fresh.gpu(0.5, 10).state == OverflowState.STANDBY


def test_a_breach_on_the_first_sample_after_a_restart_restarts_the_buffer() -> None:
    run = Run(model(percentage=30, bufferDuration="20s"), now=T0)
    run.gpu(0, 95)
    run.gpu(1, 10)
    assert run.memory is not None
    restarted = Run(run.md, now=T0 + 50, memory=restore_memory(memory_document(run.memory), T0 + 50, T0 + 1))
    restarted.gpu(0, 95)
    assert restarted.memory is not None and restarted.memory.calm_started_at is None


def test_failover_holds_while_local_readiness_is_unknown() -> None:
    run = Run(model(percentage=30), now=T0)
    assert run.gpu(0, 10, local_ready=0).state == OverflowState.FAILOVER
    assert run.memory is not None
    restarted = Run(run.md, now=T0 + 5, memory=restore_memory(memory_document(run.memory), T0 + 5, T0))
    held = restarted.at(0, {})  # no Envoy has answered yet
    assert (held.state, held.remote_share) == (OverflowState.FAILOVER, 100)
    assert held.reason.startswith("local readiness unknown")
    back = restarted.gpu(1, 10, local_ready=2)
    assert (back.state, back.remote_share) == (OverflowState.OVERFLOW, 30)


def test_an_overflow_reached_through_failover_stays_unheld_after_a_restart() -> None:
    run = Run(model(percentage=30), now=T0)
    run.gpu(0, 10, local_ready=0)  # FAILOVER
    run.gpu(1, 10, local_ready=2)  # local back: OVERFLOW, reached through FAILOVER
    assert run.memory is not None and run.memory.via_failover
    restored = restore_memory(memory_document(run.memory), T0 + 5, T0 + 1)
    assert restored.via_failover
    restarted = Run(run.md, now=T0 + 5, memory=restored)
    # The metric fails to read: hold keeps only what a metric decided, so this is no reason to spill.
    assert restarted.at(0, {"gpu": None}, local_ready=2).state == OverflowState.STANDBY
