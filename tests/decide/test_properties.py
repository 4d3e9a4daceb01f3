"""Property tests of the share: bounded, on the step grid, monotonic, never a change smaller than a step."""

from __future__ import annotations

import itertools
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from spillover.decide import Sample, evaluate, proportional_share, share_levels, step_share
from spillover.decide.share import effective_step, overshoot, pressure_of
from spillover.policy import OverflowState
from tests.harness.overflow_engine import GPU, QUEUE, model


@st.composite
def grids(draw: st.DrawFn) -> tuple[int, int]:
    percentage = draw(st.integers(1, 100))
    return percentage, draw(st.integers(1, percentage))


def on_grid(share: int, percentage: int, step: int) -> bool:
    return share == percentage or share % step == 0


@given(grids())
def test_levels(grid: tuple[int, int]) -> None:
    percentage, step = grid
    levels = share_levels(percentage, step)
    assert levels[-1] == percentage
    assert levels[0] >= step
    assert all(on_grid(level, percentage, step) for level in levels)
    assert all(b - a >= step for a, b in itertools.pairwise(levels))


@given(grids(), st.floats(0, 10), st.floats(0, 10))
def test_memoryless_share_is_monotonic_bounded_and_on_the_grid(grid: tuple[int, int], a: float, b: float) -> None:
    percentage, step = grid
    lo, hi = sorted((a, b))
    s_lo, s_hi = proportional_share(lo, percentage, step), proportional_share(hi, percentage, step)
    assert s_lo <= s_hi
    for s in (s_lo, s_hi):
        assert step <= s <= percentage and on_grid(s, percentage, step)
    assert proportional_share(1.0, percentage, step) == percentage
    assert s_lo >= percentage * min(1.0, lo) - 1e-6  # covers the pressure


@given(grids(), st.lists(st.floats(0, 2), min_size=1, max_size=40))
def test_step_share_changes_by_at_least_a_step(grid: tuple[int, int], pressures: list[float]) -> None:
    percentage, step = grid
    share = 0
    for i, p in enumerate(pressures):
        new = step_share(share, p, percentage, step)
        assert new in share_levels(percentage, step)
        if i:
            assert new == share or abs(new - share) >= step
        # never below what the pressure needs, never more than one step above it on the way down
        assert new >= proportional_share(p, percentage, step)
        share = new


@given(grids(), st.floats(0, 1), st.lists(st.floats(0, 0.999), min_size=2, max_size=30))
def test_a_wobble_smaller_than_a_step_changes_the_share_at_most_once(
    grid: tuple[int, int], base: float, wobble: list[float]
) -> None:
    percentage, step = grid
    amplitude = effective_step(percentage, step) / percentage  # one step, in pressure
    pressures = [base + w * amplitude for w in wobble]
    share = step_share(0, pressures[0], percentage, step)  # entering OVERFLOW
    shares = [share]
    for p in pressures[1:]:
        share = step_share(share, p, percentage, step)
        shares.append(share)
    changes = sum(1 for a, b in itertools.pairwise(shares) if a != b)
    assert changes <= 1


values = st.one_of(
    st.floats(0, 400),
    st.sampled_from([79.0, 80.0, 81.0, 160.0]),
    st.none(),
    st.just(math.nan),
)
events = st.tuples(
    st.floats(0.0, 40.0),  # seconds since the previous evaluation
    values,  # gpu
    values,  # queue
    st.sampled_from(["", "", "", "scrape failed"]),  # error on gpu
    st.floats(0.0, 60.0),  # age of the samples
)


@settings(max_examples=300, deadline=None)
@given(
    grids(),
    st.sampled_from(["hold", "standby", "overflow"]),
    st.sampled_from(["fixed", "proportional"]),
    st.sampled_from([0.0, 5.0, 30.0]),
    st.sampled_from([0.0, 10.0, 60.0]),
    st.lists(events, max_size=40),
)
def test_any_sample_sequence_keeps_the_share_valid(
    grid: tuple[int, int],
    on_error: str,
    strategy: str,
    activation: float,
    buffer: float,
    sequence: list[tuple[float, float | None, float | None, str, float]],
) -> None:
    percentage, step = grid
    md = model(
        [GPU, QUEUE],
        percentage=percentage,
        minStep=step,
        strategy=strategy,
        onMetricError=on_error,
        activationDuration=activation,
        bufferDuration=buffer,
    )
    now, memory, previous = 0.0, None, 0
    for dt, gpu, queue, error, age in sequence:
        now += dt
        samples = {"gpu": Sample(gpu, now - age, error), "queue": Sample(queue, now - age)}
        decision, memory = evaluate(md, samples, now, memory)
        share = decision.remote_share
        assert decision.state in (OverflowState.STANDBY, OverflowState.OVERFLOW)
        assert 0 <= share <= percentage
        assert (share == 0) == (decision.state == OverflowState.STANDBY)
        if share:
            assert on_grid(share, percentage, step) and share >= step
        if strategy == "fixed" and share:
            assert share == percentage
        assert share == previous or abs(share - previous) >= step
        assert len(memory.readings) == 2
        previous = share


def test_overshoot_and_pressure() -> None:
    assert overshoot(80, 80) == 0 and overshoot(120, 80) == 0.5 and overshoot(10, 80) == 0
    assert overshoot(1, 0) == math.inf and overshoot(0, 0) == 0
    assert pressure_of([]) == 0 and pressure_of([0.2, 0.5]) == 0.5 and pressure_of([3.0, math.inf]) == 1.0
