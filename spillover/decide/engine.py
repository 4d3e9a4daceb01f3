"""The overflow decision engine: a pure function of (policy, metric samples, clock, previous memory).

`evaluate()` takes one ModelDeployment, the latest sample of each of its overflow metrics (keyed by
`MetricSpec.display_name(i)`), the time `now` (Unix seconds, the caller's clock; the engine never reads
one), what is known of the backends, and the model's previous `ModelMemory`; it returns the
`Decision` (state and remote share) and the next memory. No I/O, no protobuf, no exceptions for bad
metrics.

States
------
- **DISABLED**: `spec.enabled` is false. All traffic local, nothing evaluated, the memory is reset (when
  the model is enabled again it starts in STANDBY).
- **STANDBY**: all traffic local. A model without a remote backend never leaves it.
- **OVERFLOW**: `behavior.percentage` (fixed) or the proportional share (see `spillover.decide.share`)
  goes to the remote backend.
- **FAILOVER**: `local_ready == 0` (no ready local endpoint; None means unknown and never fails over)
  while the remote backend is available: 100% remote, whatever the metrics say.

Underneath the shown state runs the metric state machine (`ModelMemory.mode`, STANDBY or OVERFLOW):

- Each metric reads as *breached* (value >= threshold, HPA semantics: above the target is pressure),
  *calm* (value < threshold) or *unknown* (no sample, an error, no value, not finite, or older than
  `max_age`, default 30 s = 3 x a 10 s evaluation interval).
- `behavior.onMetricError` maps unknown: `hold` leaves it unknown, `standby` reads it as calm, `overflow`
  as breached with full pressure (overshoot >= 1, i.e. `percentage` with proportional) — but only a
  metric that has been read at least once: one that never gave a value waits, as one not sampled yet.
- The verdict is *breached* if any metric is, else *indeterminate* if any is still unknown (hold only),
  else *calm* (also when the model has no metric).
- STANDBY -> OVERFLOW when the verdict has been *breached* at every evaluation for
  `activationDuration` (0: at the first breached evaluation). A calm or indeterminate evaluation
  restarts that count. The activation timer starts at the evaluation that first saw the breach.
- OVERFLOW -> STANDBY when the verdict has been *calm* at every evaluation for `bufferDuration`
  (0: at the first calm one). A breached or indeterminate evaluation restarts the count; further
  breaches while in OVERFLOW change nothing else (no new transition, `since` stays).
- Metrics not sampled yet (spillover just started, or the memory was restored after a restart) are
  no news: the timers running in the memory keep running, so a restart in OVERFLOW keeps the buffer
  that was left (see `spillover.decide.persisted`).
- `hold` therefore keeps the current state while a metric is unknown: it can neither trigger (unless
  another, known metric is breached) nor let the buffer run out, and in OVERFLOW the proportional share
  does not fall while a metric is unknown.
- `standby` reads unknown as calm, so the model goes back to STANDBY *through the buffer*, like any calm
  reading: a scrape hiccup must not drop remote traffic at once; the buffer is the flap guard.

Remote backend
--------------
The remote is *unusable* when `remote_usable` is false (e.g. its OAuth token is missing) and *unhealthy*
when `remote_healthy` is false (None = unknown = assumed healthy). Either way it gets no traffic: the
shown state stays the logical one (OVERFLOW stays OVERFLOW), `Decision.remote_share` is 0,
`Decision.wanted_share` keeps what the state machine wants, `Decision.remote` says why and the reason
starts with "remote backend unhealthy" / "remote backend unusable". The machine keeps running, so the
share comes back as soon as the remote does. With no ready local endpoint and no available remote the
state is the logical one too, with a reason saying that nothing can serve.

FAILOVER also holds while local readiness is unknown (None: no Envoy answered). FAILOVER freezes the
machine in OVERFLOW at `percentage`: when local endpoints come back the model
returns to OVERFLOW (gentle ramp-back) and goes to STANDBY once the metrics have been calm for the
buffer duration.

That OVERFLOW was reached through FAILOVER, not through a metric (`ModelMemory.via_failover`, cleared by
the first breached evaluation), and `hold` keeps only a state the metrics put the model in: with a metric
unknown (never read, or failing) and no metric breached, a model back from FAILOVER goes to STANDBY at
once instead of holding an OVERFLOW no reading ever asked for. The ramp-back needs metrics that were read
and are calm. A model already in OVERFLOW through a metric before FAILOVER keeps holding it as before.
So a metric that has never been read never, by itself, starts or keeps a spill.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from spillover.decide.share import overshoot, pressure_of, share_levels, step_share
from spillover.policy import MetricSpec, ModelDeployment, OffloadingBehavior, OverflowState

DEFAULT_MAX_AGE = 30.0  # seconds; 3 x the default 10 s evaluation interval

Remote = Literal["none", "available", "unhealthy", "unusable"]
Condition = Literal["breached", "calm", "unknown"]
Verdict = Literal["breached", "calm", "indeterminate"]


class SampleLike(Protocol):
    """What the engine reads of a sample; `spillover.sources.metrics.Sample` has the same shape."""

    @property
    def value(self) -> float | None: ...
    @property
    def at(self) -> float: ...
    @property
    def error(self) -> str: ...


@dataclass(frozen=True)
class MetricReading:
    """What the engine made of one metric at one evaluation (kept in the memory, shown in status)."""

    name: str
    threshold: float
    condition: Condition  # as read, before onMetricError
    value: float | None = None  # the last good value (kept from earlier readings while unknown)
    at: float | None = None  # when `value` was measured
    error: str = ""  # why the metric is unknown now ("" when known)
    # Never sampled yet (spillover just started, or the model was just added): no source has failed,
    # so it is not an error for onMetricError; the engine waits (holds) instead.
    pending: bool = False

    def age(self, now: float) -> float | None:
        return None if self.at is None else max(0.0, now - self.at)


@dataclass(frozen=True)
class Transition:
    from_state: OverflowState
    to_state: OverflowState
    at: float
    reason: str


@dataclass(frozen=True)
class Decision:
    """Where a model's traffic goes now."""

    state: OverflowState
    remote_share: int  # percent of requests to the remote backend, 0-100, what Envoy gets
    reason: str = ""
    wanted_share: int | None = None  # what the state would send remote if the remote were available
    remote: Remote = "available"
    local_ready: int | None = None

    def __post_init__(self) -> None:
        if self.wanted_share is None:
            object.__setattr__(self, "wanted_share", self.remote_share)

    def same_routing(self, other: Decision | None) -> bool:
        """Whether Envoy would get the same split (state and share; the reason does not matter)."""
        return other is not None and (self.state, self.remote_share) == (other.state, other.remote_share)


@dataclass(frozen=True)
class ModelMemory:
    """What the engine remembers of one model between evaluations."""

    state: OverflowState  # the state shown (last Decision.state)
    mode: OverflowState  # the metric state machine: STANDBY or OVERFLOW
    share: int  # the share the machine wants (0 in STANDBY)
    since: float  # when `state` was entered
    breach_started_at: float | None = None  # STANDBY: first of the consecutive breached evaluations
    calm_started_at: float | None = None  # OVERFLOW: first of the consecutive calm evaluations
    transition: Transition | None = None  # the last change of `state`
    readings: tuple[MetricReading, ...] = ()
    evaluated_at: float | None = None
    # The machine's OVERFLOW comes from FAILOVER, not from a breached metric (see the module docstring).
    via_failover: bool = False

    @classmethod
    def initial(cls, now: float) -> ModelMemory:
        return cls(OverflowState.STANDBY, OverflowState.STANDBY, 0, now)

    def reading(self, name: str) -> MetricReading | None:
        return next((r for r in self.readings if r.name == name), None)


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _fmt(x: float) -> str:
    return f"{x:g}"


def _dur(seconds: float) -> str:
    return f"{seconds:.3g}s" if seconds < 100 else f"{seconds:.0f}s"


def read_metric(
    spec: MetricSpec, index: int, sample: SampleLike | None, now: float, max_age: float, previous: MetricReading | None
) -> MetricReading:
    """Classify one metric's sample. Never raises."""
    name = spec.display_name(index)
    threshold = spec.effective_threshold
    last_value = previous.value if previous else None
    last_at = previous.at if previous else None
    error = ""
    if sample is None and (previous is None or previous.pending):
        return MetricReading(name, threshold, "unknown", None, None, "not sampled yet", pending=True)
    if sample is None:
        error = "no sample"
    elif sample.error:
        error = str(sample.error)
    elif sample.value is None:
        error = "no value"
    elif not _finite(sample.value):
        error = f"not a finite number ({sample.value!r})"
    elif not _finite(sample.at):
        error = f"bad sample time ({sample.at!r})"
    elif now - sample.at > max_age:
        error = f"stale: sample {_dur(now - sample.at)} old (max {_dur(max_age)})"
        # Too old to act on, but still the last value known.
        last_value, last_at = float(sample.value), float(sample.at)
    if error:
        return MetricReading(name, threshold, "unknown", last_value, last_at, error)
    assert sample is not None and sample.value is not None
    value = float(sample.value)
    return MetricReading(name, threshold, "breached" if value >= threshold else "calm", value, float(sample.at))


def read_metrics(
    model: ModelDeployment,
    samples: Mapping[str, SampleLike],
    now: float,
    max_age: float = DEFAULT_MAX_AGE,
    previous: ModelMemory | None = None,
) -> tuple[MetricReading, ...]:
    offloading = model.spec.offloading_config
    specs = offloading.metrics if offloading else []
    out = []
    for i, spec in enumerate(specs):
        name = spec.display_name(i)
        try:
            sample = samples.get(name)
        except Exception:  # a hostile mapping must not take the engine down
            sample = None
        out.append(read_metric(spec, i, sample, now, max_age, previous.reading(name) if previous else None))
    return tuple(out)


@dataclass(frozen=True)
class _Judgement:
    verdict: Verdict
    pressure: float  # [0, 1], for proportional
    breached: tuple[MetricReading, ...]
    unknown: tuple[MetricReading, ...]  # all unknown metrics, whatever the mode maps them to

    @property
    def only_pending(self) -> bool:
        """Indeterminate only because some metric was not sampled yet (just started, or restored):
        no news, so the timers running in the memory keep running."""
        return self.verdict == "indeterminate" and bool(self.unknown) and all(r.pending for r in self.unknown)


def _judge(readings: tuple[MetricReading, ...], on_error: str) -> _Judgement:
    breached = [r for r in readings if r.condition == "breached"]
    unknown = [r for r in readings if r.condition == "unknown"]
    # `overflow` reads a failing metric as breached only once it has been read: one never read (no value
    # yet) waits like one not sampled, so that it cannot start a spill by itself.
    failed = [r for r in unknown if not r.pending and (on_error != "overflow" or r.value is not None)]
    overshoots = [overshoot(r.value, r.threshold) for r in breached if r.value is not None]
    if on_error == "overflow" and failed:
        overshoots.append(1.0)
    if breached or (on_error == "overflow" and failed):
        verdict: Verdict = "breached"
    elif (unknown and on_error == "hold") or len(failed) < len(unknown):
        verdict = "indeterminate"
    else:
        verdict = "calm"
    return _Judgement(verdict, pressure_of(overshoots), tuple(breached), tuple(unknown))


def _share_for(behavior: OffloadingBehavior, current: int, pressure: float, hold: bool) -> int:
    if behavior.strategy == "fixed":
        return int(behavior.percentage)
    new = step_share(current, pressure, behavior.percentage, behavior.min_step)
    if hold and current in share_levels(behavior.percentage, behavior.min_step):
        return max(new, current)
    return new


def _breach_text(j: _Judgement, on_error: str) -> str:
    parts = [f"{r.name} at {_fmt(r.value or 0.0)} >= threshold {_fmt(r.threshold)}" for r in j.breached]
    if on_error == "overflow":
        parts += [
            f"{r.name} unknown ({r.error}), read as breached (onMetricError: overflow)"
            for r in j.unknown
            if not r.pending and r.value is not None
        ]
    return "; ".join(parts)


def _unknown_text(j: _Judgement) -> str:
    return ", ".join(f"{r.name} unknown ({r.error})" for r in j.unknown)


def _calm_text(readings: tuple[MetricReading, ...], j: _Judgement, on_error: str) -> str:
    if not readings:
        return "no overflow metric"
    if j.unknown and on_error == "standby":
        return f"all metrics within thresholds ({_unknown_text(j)}, read as within: onMetricError standby)"
    return "all metrics within thresholds"


@dataclass(frozen=True)
class _Machine:
    mode: OverflowState
    share: int
    breach_started_at: float | None
    calm_started_at: float | None
    reason: str
    via_failover: bool = False


def _step_machine(
    memory: ModelMemory, behavior: OffloadingBehavior, readings: tuple[MetricReading, ...], now: float
) -> _Machine:
    on_error = behavior.on_metric_error
    j = _judge(readings, on_error)
    hold = on_error == "hold" and bool(j.unknown)
    if memory.mode != OverflowState.OVERFLOW:
        if j.verdict == "breached":
            started = memory.breach_started_at if memory.breach_started_at is not None else now
            held = now - started
            if held >= behavior.activation_duration:
                share = _share_for(behavior, 0, j.pressure, hold=False)
                return _Machine(OverflowState.OVERFLOW, share, None, None, _breach_text(j, on_error))
            reason = (
                f"{_breach_text(j, on_error)} for {_dur(held)} of the "
                f"{_dur(behavior.activation_duration)} activation duration"
            )
            return _Machine(OverflowState.STANDBY, 0, started, None, reason)
        if j.verdict == "indeterminate":
            kept = memory.breach_started_at if j.only_pending else None
            return _Machine(OverflowState.STANDBY, 0, kept, None, f"{_unknown_text(j)}: holding STANDBY")
        return _Machine(OverflowState.STANDBY, 0, None, None, _calm_text(readings, j, on_error))
    # OVERFLOW
    if j.verdict == "breached":
        share = _share_for(behavior, memory.share, j.pressure, hold)
        reason = _breach_text(j, on_error)
        if hold:
            reason += f"; {_unknown_text(j)}"
        return _Machine(OverflowState.OVERFLOW, share, None, None, reason)
    if j.verdict == "indeterminate":
        if memory.via_failover:
            return _Machine(
                OverflowState.STANDBY, 0, None, None,
                f"{_unknown_text(j)}: OVERFLOW came from FAILOVER, not from a metric, so it is not held "
                "(onMetricError: hold keeps only what a metric decided)",
            )
        kept = memory.calm_started_at if j.only_pending else None
        return _Machine(OverflowState.OVERFLOW, memory.share, None, kept, f"{_unknown_text(j)}: holding OVERFLOW")
    started = memory.calm_started_at if memory.calm_started_at is not None else now
    calm_for = now - started
    calm = _calm_text(readings, j, on_error)
    if calm_for >= behavior.buffer_duration:
        return _Machine(
            OverflowState.STANDBY, 0, None, None, f"{calm} for the {_dur(behavior.buffer_duration)} buffer duration"
        )
    share = _share_for(behavior, memory.share, 0.0, hold=False)
    reason = f"{calm} for {_dur(calm_for)} of the {_dur(behavior.buffer_duration)} buffer duration"
    return _Machine(OverflowState.OVERFLOW, share, None, started, reason, via_failover=memory.via_failover)


def _finish(
    previous: ModelMemory,
    now: float,
    decision: Decision,
    machine: _Machine,
    readings: tuple[MetricReading, ...],
) -> tuple[Decision, ModelMemory]:
    since, transition = previous.since, previous.transition
    if decision.state != previous.state:
        since = now
        transition = Transition(previous.state, decision.state, now, decision.reason)
    memory = ModelMemory(
        state=decision.state,
        mode=machine.mode,
        share=machine.share,
        since=since,
        breach_started_at=machine.breach_started_at,
        calm_started_at=machine.calm_started_at,
        transition=transition,
        readings=readings,
        evaluated_at=now,
        via_failover=machine.via_failover and machine.mode == OverflowState.OVERFLOW,
    )
    return decision, memory


def evaluate(
    model: ModelDeployment,
    samples: Mapping[str, SampleLike],
    now: float,
    memory: ModelMemory | None = None,
    local_ready: int | None = None,
    remote_healthy: bool | None = None,
    remote_usable: bool = True,
    *,
    max_age: float = DEFAULT_MAX_AGE,
    unusable_reason: str = "",
) -> tuple[Decision, ModelMemory]:
    """One evaluation of one model. Pure: same arguments, same result; the inputs are not modified.

    `unusable_reason` says why an unusable remote is unusable (default: no credentials/token), e.g. a
    destination's copy that has no ready replica yet."""
    previous = memory if memory is not None else ModelMemory.initial(now)
    readings = read_metrics(model, samples, now, max_age, previous)
    offloading = model.spec.offloading_config
    has_remote = offloading is not None and offloading.has_remote
    remote: Remote = (
        "none" if not has_remote
        else "unusable" if not remote_usable
        else "unhealthy" if remote_healthy is False
        else "available"
    )

    if not model.spec.enabled:
        reset = _Machine(OverflowState.STANDBY, 0, None, None, "")
        decision = Decision(
            OverflowState.DISABLED, 0, "spec.enabled is false: all traffic local, no evaluation",
            remote=remote, local_ready=local_ready,
        )
        return _finish(previous, now, decision, reset, readings)

    if not has_remote or offloading is None:
        idle = _Machine(OverflowState.STANDBY, 0, None, None, "")
        decision = Decision(
            OverflowState.STANDBY, 0, "no remote backend: all traffic stays local", remote="none",
            local_ready=local_ready,
        )
        return _finish(previous, now, decision, idle, readings)

    behavior = offloading.behavior
    why_not = {
        "unusable": unusable_reason or "remote backend unusable (no credentials/token)",
        "unhealthy": "remote backend unhealthy",
    }.get(remote, "")

    # No Envoy has told how the local side is (just restarted, every Envoy away): a model in FAILOVER
    # stays there until one does, rather than sending half its traffic to pods that were down.
    holding_failover = local_ready is None and previous.state == OverflowState.FAILOVER
    if (local_ready == 0 or holding_failover) and remote == "available":
        reason = (
            "local readiness unknown (no Envoy answered yet): holding FAILOVER" if holding_failover
            else "no ready local endpoint: all traffic to the remote backend"
        )
        # An OVERFLOW the metrics had decided before stays theirs; any other is FAILOVER's.
        metric_overflow = previous.mode == OverflowState.OVERFLOW and not previous.via_failover
        frozen = _Machine(
            OverflowState.OVERFLOW, int(behavior.percentage), None, None, "", via_failover=not metric_overflow
        )
        decision = Decision(
            OverflowState.FAILOVER, 100, reason, wanted_share=100, remote=remote, local_ready=local_ready
        )
        return _finish(previous, now, decision, frozen, readings)

    machine = _step_machine(previous, behavior, readings, now)
    state = machine.mode
    wanted = machine.share if state == OverflowState.OVERFLOW else 0
    reason = machine.reason
    if local_ready == 0:
        reason = f"no ready local endpoint and {why_not}: nothing can serve; {reason}"
    elif why_not and wanted > 0:
        reason = f"{why_not}: it gets no traffic ({state.value} wants {wanted}%); {reason}"
    applied = wanted if remote == "available" else 0
    decision = Decision(state, applied, reason, wanted_share=wanted, remote=remote, local_ready=local_ready)
    return _finish(previous, now, decision, machine, readings)
