"""The overflow state machine on a fake clock: edges, strategies, backends, metric errors."""

from __future__ import annotations

import math
import time

import pytest

from spillover.decide import Decision, ModelMemory, Sample, evaluate
from spillover.policy import OverflowState
from tests.harness.overflow_engine import GPU, QUEUE, Run, model

STANDBY, OVERFLOW, FAILOVER, DISABLED = (
    OverflowState.STANDBY,
    OverflowState.OVERFLOW,
    OverflowState.FAILOVER,
    OverflowState.DISABLED,
)


# --- entering OVERFLOW --------------------------------------------------------------------


def test_starts_in_standby_with_calm_metrics() -> None:
    run = Run(model(percentage=50))
    d = run.gpu(0, 40)
    assert (d.state, d.remote_share) == (STANDBY, 0)
    assert d.reason == "all metrics within thresholds"
    assert run.memory is not None and run.memory.transition is None


def test_threshold_is_reached_at_equality_hpa_semantics() -> None:
    assert Run(model(percentage=50)).gpu(0, 79.999).state == STANDBY
    d = Run(model(percentage=50)).gpu(0, 80)
    assert (d.state, d.remote_share) == (OVERFLOW, 50)
    assert "gpu at 80 >= threshold 80" in d.reason


def test_activation_zero_enters_at_first_breach_and_records_the_transition() -> None:
    run = Run(model(percentage=30))
    run.gpu(0, 10)
    d = run.gpu(5, 95)
    assert (d.state, d.remote_share) == (OVERFLOW, 30)
    m = run.memory
    assert m is not None
    assert m.since == run.now + 5
    assert m.transition is not None
    assert (m.transition.from_state, m.transition.to_state, m.transition.at) == (STANDBY, OVERFLOW, run.now + 5)
    assert "gpu at 95" in m.transition.reason


def test_activation_duration_requires_a_continuous_breach() -> None:
    run = Run(model(percentage=50, activationDuration="10s"))
    assert run.gpu(0, 90).state == STANDBY
    assert "activation duration" in run.gpu(5, 90).reason
    assert run.gpu(9.9, 90).state == STANDBY
    assert run.gpu(10, 90).state == OVERFLOW


def test_a_dip_below_threshold_restarts_the_activation_timer() -> None:
    run = Run(model(percentage=50, activationDuration="10s"))
    run.gpu(0, 90)
    run.gpu(5, 70)  # dip: the breach must start again
    assert run.memory is not None and run.memory.breach_started_at is None
    run.gpu(8, 90)
    assert run.gpu(12, 90).state == STANDBY  # 4 s of breach, not 12
    assert run.gpu(17.9, 90).state == STANDBY
    assert run.gpu(18, 90).state == OVERFLOW


# --- leaving OVERFLOW ---------------------------------------------------------------------


def test_buffer_duration_default_60s() -> None:
    run = Run(model(percentage=50))
    run.gpu(0, 90)
    assert run.gpu(10, 50).state == OVERFLOW  # calm from t=10
    assert run.gpu(69.9, 50).state == OVERFLOW
    d = run.gpu(70, 50)
    assert (d.state, d.remote_share) == (STANDBY, 0)
    assert "buffer duration" in d.reason
    assert run.memory is not None and run.memory.transition is not None
    assert run.memory.transition.from_state == OVERFLOW and run.memory.transition.to_state == STANDBY


def test_a_breach_inside_the_buffer_restarts_the_calm_timer() -> None:
    run = Run(model(percentage=50, bufferDuration="30s"))
    run.gpu(0, 90)
    run.gpu(10, 50)
    run.gpu(25, 85)  # back over the threshold: the calm count starts again
    assert run.memory is not None and run.memory.calm_started_at is None
    run.gpu(30, 50)
    assert run.gpu(45, 50).state == OVERFLOW  # would have been over with the first calm timer
    assert run.gpu(59.9, 50).state == OVERFLOW
    assert run.gpu(60, 50).state == STANDBY


def test_a_spike_once_in_overflow_resets_nothing() -> None:
    run = Run(model(percentage=50))
    run.gpu(0, 90)
    assert run.memory is not None
    since, transition = run.memory.since, run.memory.transition
    for t, v in ((5, 99), (10, 150), (15, 1000), (20, 81)):
        d = run.gpu(t, v)
        assert (d.state, d.remote_share) == (OVERFLOW, 50)
        assert run.memory.since == since
        assert run.memory.transition == transition


def test_buffer_duration_is_per_model() -> None:
    short, long_ = Run(model(bufferDuration="5s")), Run(model(bufferDuration="2m"))
    for run in (short, long_):
        run.gpu(0, 90)
        run.gpu(1, 10)
    assert short.gpu(6, 10).state == STANDBY
    assert long_.gpu(6, 10).state == OVERFLOW
    assert long_.gpu(120.9, 10).state == OVERFLOW
    assert long_.gpu(121, 10).state == STANDBY


def test_zero_buffer_returns_at_the_first_calm_evaluation() -> None:
    run = Run(model(bufferDuration=0))
    run.gpu(0, 90)
    assert run.gpu(1, 79).state == STANDBY


# --- strategies ---------------------------------------------------------------------------


def test_fixed_share_ignores_the_overshoot() -> None:
    run = Run(model(percentage=40, strategy="fixed"))
    assert [run.gpu(t, v).remote_share for t, v in enumerate((80, 100, 500, 81))] == [40, 40, 40, 40]


def test_fixed_share_stays_during_the_buffer() -> None:
    run = Run(model(percentage=40))
    run.gpu(0, 90)
    assert run.gpu(1, 0).remote_share == 40


@pytest.mark.parametrize(
    ("value", "share"),
    [
        (80, 10),  # at the threshold: the minimum step
        (84, 10),  # overshoot 5% -> 2.5 -> 10
        (96, 10),  # 20% -> 10
        (97, 20),  # 21.25% -> 10.6 -> 20
        (120, 30),  # 50% -> 25 -> 30
        (152, 50),  # 90% -> 45 -> 50
        (160, 50),  # twice the threshold: the percentage
        (10_000, 50),
    ],
)
def test_proportional_share_on_entry(value: float, share: int) -> None:
    d = Run(model(percentage=50, strategy="proportional", minStep=10)).gpu(0, value)
    assert (d.state, d.remote_share) == (OVERFLOW, share)


def test_proportional_goes_up_at_once_and_down_one_step_above_the_pressure() -> None:
    run = Run(model(percentage=100, strategy="proportional", minStep=10))
    # raw = 100 x (value/80 - 1); up: smallest level >= raw; down: smallest level >= raw + 10, if lower
    assert run.gpu(0, 88).remote_share == 10  # raw 10
    assert run.gpu(1, 120).remote_share == 50  # raw 50: up at once
    assert run.gpu(2, 115).remote_share == 50  # raw 43.75
    assert run.gpu(3, 105).remote_share == 50  # raw 31.25 (+10 -> 50): held
    assert run.gpu(4, 104).remote_share == 40  # raw 30 (+10 -> 40)
    assert run.gpu(5, 100).remote_share == 40  # raw 25 (+10 -> 40)
    assert run.gpu(6, 96).remote_share == 30  # raw 20 (+10 -> 30)
    assert run.gpu(7, 80).remote_share == 10  # raw 0 (+10 -> 10)
    assert run.gpu(8, 97).remote_share == 30  # raw 21.25: up at once
    assert run.gpu(9, 70).remote_share == 10  # calm, inside the buffer: the minimum step
    assert run.memory is not None and run.memory.transition is not None
    assert run.memory.transition.at == run.now  # share changes are not state transitions


def test_proportional_does_not_flap_on_a_wobble_smaller_than_a_step() -> None:
    run = Run(model(percentage=100, strategy="proportional", minStep=10))
    shares = [run.gpu(t, 95 if t % 2 == 0 else 102).remote_share for t in range(20)]  # raw 18.75 / 27.5
    assert shares == [20] + [30] * 19


def test_proportional_with_a_percentage_off_the_step_grid() -> None:
    run = Run(model(percentage=55, strategy="proportional", minStep=10))
    assert run.gpu(0, 80).remote_share == 10
    assert run.gpu(1, 140).remote_share == 55  # raw 41.25: 50 is not a level (55 - 50 < 10)
    assert run.gpu(2, 160).remote_share == 55


def test_proportional_with_threshold_zero() -> None:
    md = model([{"query": "errors", "threshold": 0, "name": "errors"}], percentage=60, strategy="proportional")
    d, _ = evaluate(md, {"errors": Sample(0.0, 0.0)}, 0.0)
    assert (d.state, d.remote_share) == (OVERFLOW, 10)  # at the threshold
    d, _ = evaluate(md, {"errors": Sample(0.5, 0.0)}, 0.0)
    assert (d.state, d.remote_share) == (OVERFLOW, 60)  # any overshoot of 0 is infinite


# --- the remote backend and the local endpoints ----------------------------------------------


def test_no_remote_backend_never_leaves_standby() -> None:
    run = Run(model(remote=False, percentage=50))
    for t, v in enumerate((90, 1000, 90)):
        d = run.gpu(t, v, local_ready=0)
        assert (d.state, d.remote_share, d.remote) == (STANDBY, 0, "none")
        assert "no remote backend" in d.reason
    assert run.memory is not None and run.memory.transition is None
    assert run.memory.readings[0].condition == "breached"  # still read, for status


def test_no_offloading_config_is_standby() -> None:
    d, memory = evaluate(model(offloading=False), {}, 0.0, local_ready=0)
    assert (d.state, d.remote_share) == (STANDBY, 0)
    assert memory.readings == ()


def test_no_metric_with_a_remote_stays_standby() -> None:
    run = Run(model([], percentage=50))
    d = run.at(0)
    assert (d.state, d.remote_share, d.reason) == (STANDBY, 0, "no overflow metric")


def test_failover_when_no_local_endpoint_is_ready() -> None:
    run = Run(model(percentage=30))
    d = run.gpu(0, 10, local_ready=0)
    assert (d.state, d.remote_share, d.local_ready) == (FAILOVER, 100, 0)
    assert "no ready local endpoint" in d.reason
    assert run.memory is not None and run.memory.transition is not None
    assert run.memory.transition.to_state == FAILOVER


def test_unknown_local_readiness_is_not_failover() -> None:
    assert Run(model()).gpu(0, 10, local_ready=None).state == STANDBY
    assert Run(model()).gpu(0, 10, local_ready=2).state == STANDBY


def test_leaving_failover_ramps_back_through_overflow_and_the_buffer() -> None:
    run = Run(model(percentage=30, bufferDuration="20s"))
    run.gpu(0, 10, local_ready=0)
    d = run.gpu(5, 10, local_ready=1)
    assert (d.state, d.remote_share) == (OVERFLOW, 30)
    assert run.gpu(24.9, 10, local_ready=1).state == OVERFLOW
    assert run.gpu(25, 10, local_ready=1).state == STANDBY


def test_after_failover_hold_does_not_keep_an_overflow_no_metric_asked_for() -> None:
    """The issue's case: FAILOVER at start (no endpoint yet), the CPU metric never read (no source):
    when endpoints come back the model goes to STANDBY, it does not hold OVERFLOW at `percentage`."""
    run = Run(model(percentage=50))
    d = run.at(0, {}, local_ready=0)  # no sample at all: pending
    assert d.state == FAILOVER
    d = run.at(1, samples={"gpu": Sample(None, run.now + 1, "kubernetes: no Kubernetes API configured")},
               local_ready=2)
    assert (d.state, d.remote_share) == (STANDBY, 0), d.reason
    assert "OVERFLOW came from FAILOVER, not from a metric" in d.reason
    assert run.memory is not None and not run.memory.via_failover
    # and it stays there while the metric is unknown
    d = run.at(2, samples={"gpu": Sample(None, run.now + 2, "still down")}, local_ready=2)
    assert (d.state, d.remote_share) == (STANDBY, 0)


def test_after_failover_a_metric_never_sampled_does_not_keep_the_spill() -> None:
    run = Run(model(percentage=50))
    run.at(0, {}, local_ready=0)
    assert run.at(1, {}, local_ready=1).state == STANDBY


def test_after_failover_a_breach_makes_the_overflow_the_metrics_own() -> None:
    run = Run(model(percentage=50, bufferDuration="20s"))
    run.gpu(0, 10, local_ready=0)
    d = run.gpu(1, 95, local_ready=1)  # read and breached: now a metric's OVERFLOW
    assert (d.state, d.remote_share) == (OVERFLOW, 50)
    assert run.memory is not None and not run.memory.via_failover
    d = run.at(2, samples={"gpu": Sample(None, run.now + 2, "scrape failed")}, local_ready=1)
    assert (d.state, d.remote_share) == (OVERFLOW, 50)  # held: a metric decided it
    assert "holding OVERFLOW" in d.reason


def test_a_metric_overflow_interrupted_by_failover_is_still_held() -> None:
    run = Run(model(percentage=50))
    assert run.gpu(0, 95, local_ready=1).state == OVERFLOW
    assert run.gpu(1, 95, local_ready=0).state == FAILOVER
    d = run.at(2, samples={"gpu": Sample(None, run.now + 2, "down")}, local_ready=1)
    assert (d.state, d.remote_share) == (OVERFLOW, 50), d.reason


def test_after_failover_calm_readings_still_ramp_back_through_the_buffer() -> None:
    run = Run(model(percentage=30, bufferDuration="20s"))
    run.gpu(0, 10, local_ready=0)
    assert run.gpu(1, 10, local_ready=1).state == OVERFLOW
    assert run.memory is not None and run.memory.via_failover
    # a metric failing during the ramp-back: not held, STANDBY at once
    d = run.at(2, samples={"gpu": Sample(None, run.now + 2, "down")}, local_ready=1)
    assert (d.state, d.remote_share) == (STANDBY, 0)


@pytest.mark.parametrize(
    ("healthy", "usable", "remote", "prefix"),
    [
        (False, True, "unhealthy", "remote backend unhealthy"),
        (True, False, "unusable", "remote backend unusable"),
        (None, False, "unusable", "remote backend unusable"),
    ],
)
def test_unavailable_remote_gets_no_traffic_but_keeps_the_logical_state(
    healthy: bool | None, usable: bool, remote: str, prefix: str
) -> None:
    run = Run(model(percentage=50))
    d = run.gpu(0, 90, remote_healthy=healthy, remote_usable=usable)
    assert (d.state, d.remote_share, d.wanted_share, d.remote) == (OVERFLOW, 0, 50, remote)
    assert d.reason.startswith(prefix)
    assert "gets no traffic (OVERFLOW wants 50%)" in d.reason
    # back to health: the share returns, with no state transition
    d = run.gpu(1, 90)
    assert (d.state, d.remote_share, d.remote) == (OVERFLOW, 50, "available")
    assert run.memory is not None and run.memory.since == run.now


def test_unknown_remote_health_is_assumed_healthy() -> None:
    d = Run(model(percentage=50)).gpu(0, 90, remote_healthy=None)
    assert (d.remote_share, d.remote) == (50, "available")


def test_unavailable_remote_in_standby_is_quiet() -> None:
    d = Run(model(percentage=50)).gpu(0, 10, remote_healthy=False)
    assert (d.state, d.remote_share, d.remote) == (STANDBY, 0, "unhealthy")
    assert d.reason == "all metrics within thresholds"


def test_no_failover_to_an_unhealthy_remote() -> None:
    run = Run(model(percentage=50))
    d = run.gpu(0, 10, local_ready=0, remote_healthy=False)
    assert (d.state, d.remote_share) == (STANDBY, 0)
    assert d.reason.startswith("no ready local endpoint and remote backend unhealthy: nothing can serve")
    d = run.gpu(1, 10, local_ready=0, remote_usable=False)
    assert (d.state, d.remote_share) == (STANDBY, 0)
    assert "remote backend unusable" in d.reason
    assert run.gpu(2, 10, local_ready=0).state == FAILOVER


def test_the_machine_keeps_running_while_the_remote_is_down() -> None:
    run = Run(model(percentage=50, bufferDuration="10s"))
    run.gpu(0, 90, remote_healthy=False)
    run.gpu(1, 10, remote_healthy=False)
    assert run.gpu(11, 10, remote_healthy=False).state == STANDBY


# --- DISABLED -------------------------------------------------------------------------------


def test_disabled_sends_everything_local_and_evaluates_nothing() -> None:
    run = Run(model(enabled=False, percentage=50))
    d = run.gpu(0, 1000, local_ready=0)
    assert (d.state, d.remote_share) == (DISABLED, 0)
    assert "spec.enabled is false" in d.reason
    assert run.memory is not None
    assert (run.memory.mode, run.memory.breach_started_at, run.memory.calm_started_at) == (STANDBY, None, None)


def test_disabling_resets_and_reenabling_starts_in_standby() -> None:
    on, off = model(percentage=50, bufferDuration="1h"), model(enabled=False, percentage=50, bufferDuration="1h")
    run = Run(on)
    assert run.gpu(0, 90).state == OVERFLOW
    run.md = off
    assert run.gpu(1, 90).state == DISABLED
    assert run.memory is not None and run.memory.transition is not None
    assert (run.memory.transition.from_state, run.memory.transition.to_state) == (OVERFLOW, DISABLED)
    run.md = on
    d = run.gpu(2, 10)
    assert (d.state, d.remote_share) == (STANDBY, 0)  # not OVERFLOW held by the 1h buffer


# --- metric errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sample", "error"),
    [
        (None, "not sampled yet"),
        (Sample(None, 0.0), "no value"),
        (Sample(90.0, 0.0, error="prometheus: 503"), "prometheus: 503"),
        (Sample(math.nan, 0.0), "not a finite number"),
        (Sample(math.inf, 0.0), "not a finite number"),
        (Sample(90.0, -31.0), "stale: sample 31s old (max 30s)"),
        (Sample(90.0, math.nan), "bad sample time"),
    ],
)
def test_unknown_samples_never_crash_and_are_reported(sample: Sample | None, error: str) -> None:
    md = model(percentage=50)
    d, memory = evaluate(md, {"gpu": sample} if sample else {}, 0.0)
    assert d.state == STANDBY  # hold
    (reading,) = memory.readings
    assert reading.condition == "unknown"
    assert reading.error.startswith(error)
    assert "gpu unknown" in d.reason and "holding STANDBY" in d.reason


def test_stale_age_is_strictly_older_than_max_age() -> None:
    md = model(percentage=50)
    assert evaluate(md, {"gpu": Sample(90.0, 70.0)}, 100.0)[0].state == OVERFLOW  # exactly 30 s
    assert evaluate(md, {"gpu": Sample(90.0, 69.0)}, 100.0)[0].state == STANDBY
    assert evaluate(md, {"gpu": Sample(90.0, 69.0)}, 100.0, max_age=60)[0].state == OVERFLOW
    _, memory = evaluate(md, {"gpu": Sample(90.0, 0.0)}, 100.0, max_age=60)
    assert memory.readings[0].error == "stale: sample 100s old (max 60s)"


def test_the_last_good_value_is_kept_while_unknown() -> None:
    run = Run(model(percentage=50))
    run.gpu(0, 42)
    run.at(5, samples={"gpu": Sample(None, run.now + 5, error="timeout")})
    assert run.memory is not None
    r = run.memory.readings[0]
    assert (r.value, r.at, r.error, r.condition) == (42.0, run.now, "timeout", "unknown")
    assert r.age(run.now + 5) == 5


def test_samples_of_unknown_names_are_ignored() -> None:
    d, memory = evaluate(model(percentage=50), {"gpu": Sample(10.0, 0.0), "other": Sample(1e9, 0.0)}, 0.0)
    assert d.state == STANDBY and [r.name for r in memory.readings] == ["gpu"]


def test_hold_keeps_overflow_past_the_buffer_while_unknown() -> None:
    run = Run(model(percentage=50, bufferDuration="10s"))
    run.gpu(0, 90)
    run.gpu(1, 10)
    for t in (5, 20, 100):
        d = run.at(t)  # no sample at all
        assert (d.state, d.remote_share) == (OVERFLOW, 50)
        assert "holding OVERFLOW" in d.reason
    # known and calm again: the buffer counts from here, not from t=1
    run.gpu(101, 10)
    assert run.gpu(110.9, 10).state == OVERFLOW
    assert run.gpu(111, 10).state == STANDBY


def test_hold_lets_a_known_breach_trigger() -> None:
    run = Run(model([GPU, QUEUE], percentage=50))
    d = run.at(0, {"queue": 12})  # gpu unknown, queue breached
    assert d.state == OVERFLOW


def test_hold_does_not_lower_the_proportional_share() -> None:
    run = Run(model([GPU, QUEUE], percentage=100, strategy="proportional", minStep=10))
    assert run.at(0, {"gpu": 160, "queue": 0}).remote_share == 100
    d = run.at(1, {"queue": 10})  # gpu unknown, queue just at threshold (raw 0)
    assert (d.state, d.remote_share) == (OVERFLOW, 100)
    assert "gpu unknown" in d.reason
    assert run.at(2, {"gpu": 80, "queue": 10}).remote_share == 10  # both known: down


def test_on_error_standby_reads_unknown_as_calm_through_the_buffer() -> None:
    run = Run(model(percentage=50, bufferDuration="30s", onMetricError="standby"))
    assert run.at(0).state == STANDBY  # unknown does not trigger
    run.gpu(1, 90)
    d = run.at(2)
    assert d.state == OVERFLOW  # not at once
    assert "onMetricError standby" in d.reason
    assert run.at(31.9).state == OVERFLOW
    assert run.at(32).state == STANDBY


def test_on_error_overflow_reads_unknown_as_breached_at_full_pressure() -> None:
    run = Run(model(percentage=70, strategy="proportional", minStep=10, onMetricError="overflow"))
    assert run.gpu(0, 10).state == STANDBY  # read once
    d = run.at(1, samples={"gpu": Sample(None, run.now + 1, error="connection refused")})
    assert (d.state, d.remote_share) == (OVERFLOW, 70)
    assert "read as breached (onMetricError: overflow)" in d.reason


def test_on_error_overflow_never_starts_a_spill_on_a_metric_never_read() -> None:
    """A source that never answered (a wrong query, Prometheus down since the start) is not a reading:
    onMetricError: overflow applies once the metric has given a value."""
    run = Run(model(percentage=70, onMetricError="overflow"))
    for t in range(3):
        d = run.at(t, samples={"gpu": Sample(None, run.now + t, error="connection refused")})
        assert (d.state, d.remote_share) == (STANDBY, 0), d.reason
    assert "gpu unknown (connection refused): holding STANDBY" in d.reason
    assert run.gpu(3, 10).state == STANDBY
    assert run.at(4, samples={"gpu": Sample(None, run.now + 4, error="down")}).state == OVERFLOW


def test_on_error_overflow_respects_activation() -> None:
    run = Run(model(percentage=70, onMetricError="overflow", activationDuration="5s"))
    run.gpu(-1, 10)
    down = {"gpu": Sample(None, run.now, error="prometheus: connection refused")}
    assert run.at(0, samples=down).state == STANDBY
    assert run.at(5, samples=down).state == OVERFLOW


def test_a_metric_never_sampled_is_pending_not_an_error() -> None:
    # Right after start nothing has been sampled: no source failed, so onMetricError does not apply.
    run = Run(model(percentage=70, onMetricError="overflow"))
    d = run.at(0)
    assert d.state == STANDBY and "not sampled yet" in d.reason
    assert run.at(1).state == STANDBY
    # Once sampled, a missing sample is an error like any other.
    assert run.at(2, {"gpu": 10}).state == STANDBY
    assert run.at(3).state == OVERFLOW


# --- several metrics ----------------------------------------------------------------------


def test_any_breached_metric_overflows_and_all_must_be_calm_to_return() -> None:
    run = Run(model([GPU, QUEUE], percentage=50, bufferDuration="10s"))
    assert run.at(0, {"gpu": 10, "queue": 1}).state == STANDBY
    d = run.at(1, {"gpu": 10, "queue": 11})
    assert d.state == OVERFLOW and "queue at 11 >= threshold 10" in d.reason and "gpu" not in d.reason
    run.at(2, {"gpu": 10, "queue": 1})  # calm from t=2
    run.at(8, {"gpu": 85, "queue": 1})  # the other metric breaches: restart
    run.at(9, {"gpu": 10, "queue": 1})  # calm from t=9
    assert run.at(18.9, {"gpu": 10, "queue": 1}).state == OVERFLOW
    assert run.at(19, {"gpu": 10, "queue": 1}).state == STANDBY


def test_proportional_takes_the_largest_overshoot() -> None:
    run = Run(model([GPU, QUEUE], percentage=100, strategy="proportional", minStep=10))
    assert run.at(0, {"gpu": 88, "queue": 15}).remote_share == 50  # 10% vs 50%


def test_hpa_metric_display_name_and_threshold() -> None:
    hpa = {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}
    d, memory = evaluate(model([hpa], percentage=50), {"resource:cpu": Sample(55.0, 0.0)}, 0.0)
    assert d.state == OVERFLOW and memory.readings[0].threshold == 50


# --- purity ---------------------------------------------------------------------------------


def test_evaluate_is_pure_and_reads_no_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> float:
        raise AssertionError("the engine read the clock")

    monkeypatch.setattr(time, "time", boom)
    monkeypatch.setattr(time, "monotonic", boom)
    md = model(percentage=50, activationDuration="5s")
    samples = {"gpu": Sample(90.0, 100.0)}
    memory = ModelMemory.initial(90.0)
    first = evaluate(md, samples, 100.0, memory, 3, True)
    assert first == evaluate(md, samples, 100.0, memory, 3, True)
    assert memory == ModelMemory.initial(90.0)
    assert first[1].breach_started_at == 100.0


def test_decision_defaults_and_routing_equality() -> None:
    d = Decision(STANDBY, 0)
    assert d.wanted_share == 0 and d.remote == "available"
    assert Decision(OVERFLOW, 50, "a").same_routing(Decision(OVERFLOW, 50, "b"))
    assert not Decision(OVERFLOW, 50).same_routing(Decision(OVERFLOW, 40))
    assert not Decision(OVERFLOW, 50).same_routing(None)


def test_hold_in_standby_interrupts_the_activation_timer() -> None:
    run = Run(model(percentage=50, activationDuration="10s"))
    run.gpu(0, 90)
    d = run.at(5)  # unknown: the breach was not seen continuously
    assert d.state == STANDBY and "holding STANDBY" in d.reason
    run.gpu(8, 90)
    assert run.gpu(10, 90).state == STANDBY
    assert run.gpu(18, 90).state == OVERFLOW


def test_a_stale_value_is_kept_as_the_last_value() -> None:
    _, memory = evaluate(model(percentage=50), {"gpu": Sample(91.0, 10.0)}, 100.0)
    r = memory.readings[0]
    assert (r.condition, r.value, r.at) == ("unknown", 91.0, 10.0)


def test_percentage_zero_overflows_with_no_traffic() -> None:
    d = Run(model(percentage=0)).gpu(0, 90)
    assert (d.state, d.remote_share) == (OVERFLOW, 0)


def test_accepts_the_metrics_layer_sample() -> None:
    metrics_sample = pytest.importorskip("spillover.sources.metrics.sample")
    d, memory = evaluate(model(percentage=50), {"gpu": metrics_sample.Sample(90.0, 0.0)}, 0.0)
    assert d.state == OVERFLOW and memory.readings[0].value == 90.0
