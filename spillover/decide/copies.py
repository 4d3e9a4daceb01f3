"""How many replicas a model's copy on its destination cluster should have: pure, on the caller's clock.

`size_copy()` takes the model's destination, the overflow decision of this evaluation, the same metric
readings the overflow engine classified (`ModelMemory.readings`), `now` and the previous `CopyMemory`; it
returns the `CopySizing` (replicas, phase, why) and the next memory. No I/O, no clock.

Phases
------
- **cold** / **warm**: STANDBY with nothing pressing: `standbyReplicas` (0 = cold).
- **pre-warm**: a metric is at or above its pre-warm threshold (`destination.preWarm`, below the overflow
  threshold): `activeReplicas`, while no traffic spills yet — the copy is warm before it is needed.
- **active**: OVERFLOW or FAILOVER: `activeReplicas` (default: the origin workload's replicas).

Scaling back
------------
The copy stays scaled up until `hold_until`: every evaluation under pressure pushes it to at least
`now + cooldown` (OVERFLOW/FAILOVER: the engine itself returns to STANDBY only after the buffer duration
of calm) or `now + bufferDuration + cooldown` (pre-warm: nothing else has waited for the buffer yet). So
the copy scales back only after the buffer duration plus the cooldown without pressure (Simplismart's
`cooldown_period`), whichever pressure it was.

A metric that cannot be read follows `onMetricError`: `hold` (the default) freezes the countdown (the
copy neither scales up nor back on an unknown reading), `standby` reads it as calm, `overflow` as
pressure once it has been read. DISABLED keeps the standby size.

Restarts: a copy found scaled up above its standby size on the first evaluation (`observed_replicas`) is
held for a fresh buffer + cooldown, so a restart of spillover never shrinks a warm copy early.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from spillover.decide.engine import Decision, MetricReading
from spillover.policy import ModelDeployment, OverflowState
from spillover.policy.destination import Destination

__all__ = ["CopyMemory", "CopyPhase", "CopyRoute", "CopySizer", "CopySizing", "size_copy"]


class CopyPhase(StrEnum):
    COLD = "cold"
    WARM = "warm"
    PRE_WARM = "pre-warm"
    ACTIVE = "active"


@dataclass(frozen=True)
class CopySizing:
    replicas: int
    phase: CopyPhase
    reason: str
    hold_until: float | None = None  # Unix time; a scaled-up copy scales back only after it


@dataclass(frozen=True)
class CopyMemory:
    replicas: int
    phase: CopyPhase
    hold_until: float | None
    evaluated_at: float


@dataclass(frozen=True)
class CopyRoute:
    """Where Envoy reaches a model's copy (its Service's address): the plan's input for the remote."""

    host: str
    port: int


def _fmt(x: float) -> str:
    return f"{x:g}"


def _dur(seconds: float) -> str:
    return f"{seconds:.3g}s" if seconds < 100 else f"{seconds:.0f}s"


def _pre_warm(destination: Destination, readings: tuple[MetricReading, ...]) -> list[str]:
    """The readings at or above their pre-warm threshold, described."""
    out = []
    for r in readings:
        if r.condition == "unknown" or r.value is None:
            continue
        threshold = destination.pre_warm_threshold(r.name, r.threshold)
        if threshold is not None and r.value >= threshold:
            out.append(f"{r.name} at {_fmt(r.value)} >= pre-warm threshold {_fmt(threshold)} "
                       f"(overflow at {_fmt(r.threshold)})")
    return out


def _unknown_pressure(readings: tuple[MetricReading, ...], on_error: str) -> tuple[bool, bool]:
    """(freeze, press): whether unknown readings freeze the countdown (hold) or count as pressure."""
    failed = [r for r in readings if r.condition == "unknown" and not r.pending]
    if on_error == "hold":
        return bool([r for r in readings if r.condition == "unknown"]), False
    if on_error == "overflow":
        return False, any(r.value is not None for r in failed)
    return False, False


def size_copy(
    model: ModelDeployment,
    decision: Decision,
    readings: tuple[MetricReading, ...],
    now: float,
    memory: CopyMemory | None = None,
    *,
    origin_replicas: int | None = None,
    observed_replicas: int | None = None,
) -> tuple[CopySizing, CopyMemory] | None:
    """The copy's size for one evaluation of one model; None when the model has no destination."""
    offloading = model.spec.offloading_config
    destination = offloading.destination if offloading is not None else None
    if offloading is None or destination is None:
        return None
    behavior = offloading.behavior
    standby = destination.standby_replicas
    if destination.active_replicas is not None:
        active, active_why = destination.active_replicas, "activeReplicas"
    elif origin_replicas:
        active, active_why = origin_replicas, "the origin's replicas"
    else:
        active, active_why = 1, "the origin's replicas are not known: 1"
    active = max(active, standby)
    idle = CopyPhase.WARM if standby > 0 else CopyPhase.COLD
    if memory is None:
        restored = observed_replicas is not None and observed_replicas > standby
        hold = now + behavior.buffer_duration + destination.cooldown if restored else None
        memory = CopyMemory(active if restored else standby, CopyPhase.ACTIVE if restored else idle, hold, now)

    hold_until = memory.hold_until
    reason = ""
    phase: CopyPhase | None = None
    freeze, unknown_presses = _unknown_pressure(readings, behavior.on_metric_error)
    pre_warming = _pre_warm(destination, readings)
    if decision.state in (OverflowState.OVERFLOW, OverflowState.FAILOVER):
        phase = CopyPhase.ACTIVE
        reason = f"{decision.state.value}: the copy takes the spill ({active} replicas: {active_why})"
        hold_until = max(hold_until or 0.0, now + destination.cooldown)
    elif decision.state == OverflowState.DISABLED:
        hold_until = None
    elif pre_warming or unknown_presses:
        phase = CopyPhase.PRE_WARM
        what = "; ".join(pre_warming) or "a metric unknown, read as pressure (onMetricError: overflow)"
        reason = f"pre-warm: {what} ({active} replicas: {active_why})"
        hold_until = max(hold_until or 0.0, now + behavior.buffer_duration + destination.cooldown)
    elif freeze and hold_until is not None and memory.replicas > standby:
        # onMetricError hold: the countdown stops while a metric is unknown.
        hold_until += max(0.0, now - memory.evaluated_at)

    if phase is None and hold_until is not None and now < hold_until:
        phase = memory.phase if memory.phase in (CopyPhase.ACTIVE, CopyPhase.PRE_WARM) else CopyPhase.PRE_WARM
        held = "a metric unknown: the countdown is frozen (onMetricError: hold); " if freeze else ""
        reason = (f"{held}kept at {active} replicas for {_dur(hold_until - now)} more (bufferDuration "
                  f"{_dur(behavior.buffer_duration)} + cooldown {_dur(destination.cooldown)} after the last pressure)")
    if phase is None:
        hold_until = None
        phase = idle
        reason = (f"{decision.state.value}: {'warm' if standby else 'cold'} ({standby} standby "
                  f"replica{'' if standby == 1 else 's'})")
        replicas = standby
    else:
        replicas = active
    sizing = CopySizing(replicas, phase, reason, hold_until)
    return sizing, CopyMemory(replicas, phase, hold_until, now)


class CopySizer:
    """`size_copy` over all models at one `now`, holding their memories (keyed like the Evaluator's)."""

    def __init__(self) -> None:
        self._memories: dict[str, CopyMemory] = {}
        self._sizings: dict[str, CopySizing] = {}

    def size(
        self,
        models: Mapping[str, ModelDeployment],
        decisions: Mapping[str, Decision],
        readings: Mapping[str, tuple[MetricReading, ...]],
        now: float,
        origin_replicas: Mapping[str, int | None] | None = None,
        observed_replicas: Mapping[str, int | None] | None = None,
    ) -> Mapping[str, CopySizing]:
        memories: dict[str, CopyMemory] = {}
        sizings: dict[str, CopySizing] = {}
        for key, model in models.items():
            decision = decisions.get(key)
            if decision is None:
                continue
            result = size_copy(
                model, decision, readings.get(key, ()), now, self._memories.get(key),
                origin_replicas=(origin_replicas or {}).get(key),
                observed_replicas=(observed_replicas or {}).get(key),
            )
            if result is not None:
                sizings[key], memories[key] = result
        self._memories, self._sizings = memories, sizings
        return MappingProxyType(dict(sizings))

    @property
    def sizings(self) -> Mapping[str, CopySizing]:
        return MappingProxyType(self._sizings)

    def forget(self, key: str) -> None:
        self._memories.pop(key, None)
        self._sizings.pop(key, None)
