"""`Evaluator`: the engine over all models at one `now`, holding their memories. Still no I/O, no clock.

Models are keyed by whatever key the caller uses (the controller uses `spec.model`). A model that disappears
from `models` is dropped with its memory; one that comes back starts afresh in STANDBY.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from spillover.decide.engine import DEFAULT_MAX_AGE, Decision, ModelMemory, SampleLike, evaluate
from spillover.decide.status import status_of
from spillover.policy import ModelDeployment, ModelDeploymentStatus

_NO_SAMPLES: Mapping[str, SampleLike] = MappingProxyType({})


@dataclass(frozen=True)
class Evaluation:
    """The outcome of one `Evaluator.evaluate` call."""

    decisions: Mapping[str, Decision]
    # Models whose routing changed (state or remote share), including models seen for the first time:
    # the ones Envoy must hear about.
    changed: frozenset[str] = frozenset()
    # Models whose decision changed at all (routing or reason): the ones whose status must be rewritten.
    updated: frozenset[str] = frozenset()
    # Models that were known before and are gone now (their memory has been dropped).
    removed: frozenset[str] = frozenset()
    memories: Mapping[str, ModelMemory] = field(default_factory=dict)

    @property
    def needs_push(self) -> bool:
        return bool(self.changed or self.removed)


class Evaluator:
    def __init__(self, max_age: float = DEFAULT_MAX_AGE) -> None:
        self.max_age = max_age
        self._memories: dict[str, ModelMemory] = {}
        self._decisions: dict[str, Decision] = {}

    def evaluate(
        self,
        models: Mapping[str, ModelDeployment],
        now: float,
        samples: Mapping[str, Mapping[str, SampleLike]] | None = None,
        local_ready: Mapping[str, int | None] | None = None,
        remote_healthy: Mapping[str, bool | None] | None = None,
        remote_usable: Mapping[str, bool] | None = None,
        unusable_reasons: Mapping[str, str] | None = None,
    ) -> Evaluation:
        """Evaluate every model at `now`. Missing entries in the per-model mappings mean: no samples,
        local readiness unknown, remote health unknown, remote usable (and why not: no token)."""
        unusable_reasons = unusable_reasons or {}
        samples = samples or {}
        local_ready = local_ready or {}
        remote_healthy = remote_healthy or {}
        remote_usable = remote_usable or {}
        memories: dict[str, ModelMemory] = {}
        decisions: dict[str, Decision] = {}
        changed, updated = set(), set()
        for key, model in models.items():
            decision, memory = evaluate(
                model,
                samples.get(key, _NO_SAMPLES),
                now,
                self._memories.get(key),
                local_ready=local_ready.get(key),
                remote_healthy=remote_healthy.get(key),
                remote_usable=remote_usable.get(key, True),
                max_age=self.max_age,
                unusable_reason=unusable_reasons.get(key, ""),
            )
            previous = self._decisions.get(key)
            if not decision.same_routing(previous):
                changed.add(key)
            if decision != previous:
                updated.add(key)
            memories[key] = memory
            decisions[key] = decision
        removed = frozenset(self._decisions.keys() - decisions.keys())
        self._memories, self._decisions = memories, decisions
        return Evaluation(
            MappingProxyType(dict(decisions)),
            frozenset(changed),
            frozenset(updated),
            removed,
            MappingProxyType(dict(memories)),
        )

    def restore(self, memories: Mapping[str, ModelMemory]) -> None:
        """Memories of an earlier run (see `spillover.decide.persisted`); used by the next `evaluate` of
        the models they belong to. Models that already have a memory keep it."""
        for key, memory in memories.items():
            self._memories.setdefault(key, memory)

    def adopt(self, decisions: Mapping[str, Decision], memories: Mapping[str, ModelMemory]) -> None:
        """Decisions made elsewhere (the fleet's leader) replace this evaluator's, memories included: the
        next `evaluate` starts from them, so that taking over continues their states and timers."""
        self._decisions = {key: decision for key, decision in decisions.items() if key in memories}
        self._memories = {key: memories[key] for key in self._decisions}

    @property
    def decisions(self) -> Mapping[str, Decision]:
        return MappingProxyType(self._decisions)

    @property
    def memories(self) -> Mapping[str, ModelMemory]:
        return MappingProxyType(self._memories)

    def decision(self, key: str) -> Decision | None:
        return self._decisions.get(key)

    def memory(self, key: str) -> ModelMemory | None:
        return self._memories.get(key)

    def status(self, key: str, model: ModelDeployment, now: float) -> ModelDeploymentStatus | None:
        decision, memory = self._decisions.get(key), self._memories.get(key)
        if decision is None or memory is None:
            return None
        return status_of(model, decision, memory, now)
