"""The policy provider in fleet mode: one replica decides, every replica applies what it published.

A mixin of `PolicyProvider` (controller/policies.py), kept apart so that the provider reads as the
single-replica loop it always was. With an `authority` (`spillover.controller.fleet.Fleet`), a replica
that does not decide runs `_follow` instead of deciding: the published decision of every model that has
one, and for a model the leader has not decided yet only what is known without any reading (its policy:
DISABLED, no endpoint; a decision recalled from the status). Envoy gets `_applied()`: the published
decisions, on the deciding replica too (they are written before they are applied).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from spillover.controller.contracts import DecisionAuthority, PublishedDecisions
from spillover.controller.reporting import ReportsModels
from spillover.decide import Decision, Evaluator, ModelMemory, evaluate
from spillover.plan import needs_token
from spillover.policy import DesiredState, ModelDeployment
from spillover.sources.metrics.health import ClusterHealth
from spillover.sources.metrics.sample import Sample

log = logging.getLogger("spillover.controller.policies")

__all__ = ["FollowsTheFleet"]


class FollowsTheFleet(ReportsModels):
    # What the provider has (see PolicyProvider.__init__).
    authority: DecisionAuthority | None
    _published: PublishedDecisions | None
    state: DesiredState
    evaluator: Evaluator
    clock: Callable[[], float]
    changed: Callable[..., None]
    _latency_weights: dict[str, dict[str, int]]
    _board: dict[str, dict[str, Sample]]
    _last_samples: Mapping[str, Mapping[str, Sample]]
    _last_health: Mapping[str, ClusterHealth] | None

    def _tokens(self) -> dict[str, str | None]:
        raise NotImplementedError

    def _deciding(self) -> bool:
        return self.authority is None or self.authority.deciding()

    def _static_ready(self, name: str, md: ModelDeployment) -> int | None:
        endpoints = len(md.spec.local_backend.endpoints) if md.spec.local_backend else 0
        return 0 if endpoints == 0 or self.state.ready_replicas.get(name) == 0 else None

    def _follow(self) -> bool:
        """A round of a replica that does not decide: the published decisions, and for a model not in
        them yet what is known without any reading (its policy; a recalled or previous decision)."""
        before = self._applied_routing()
        published = self._published.models if self._published is not None else {}
        now = self.clock()
        tokens = self._tokens()
        decisions: dict[str, Decision] = {}
        memories: dict[str, ModelMemory] = {}
        for name, md in self.state.models.items():
            entry = published.get(name)
            if entry is not None:
                decisions[name], memories[name] = entry.decision, entry.memory
                continue
            usable = not needs_token(md) or tokens.get(name) is not None
            decisions[name], memories[name] = evaluate(
                md, {}, now, self.evaluator.memory(name), local_ready=self._static_ready(name, md),
                remote_usable=usable, max_age=self.evaluator.max_age,
            )
        previous = dict(self.evaluator.decisions)
        self.evaluator.adopt(decisions, memories)
        for name, decision in decisions.items():
            old = previous.get(name)
            if old is not None and old.state != decision.state:
                self.series.transition(name, old.state, decision.state)
                log.info("model %s: %s -> %s (decided by %s)", name, old.state.value, decision.state.value,
                         self._published.leader if self._published is not None and name in published else "its policy")
        self.series.retain(self.state.models)
        self._report_status()
        return self._applied_routing() != before

    def adopt(self, published: PublishedDecisions) -> None:
        """The fleet's decision table, as published: applied at once (a push when routing changed)."""
        before = self._applied_routing()
        self._published = published
        if not self._deciding():
            self._follow()
        if self._applied_routing() != before:
            self.changed(urgent=True)

    def take_over(self, memories: Mapping[str, ModelMemory]) -> None:
        """This replica decides from now: its evaluator continues from the published memories, and forgets
        what it read while it did not decide (its own Envoys only: part of the fleet)."""
        decisions = dict(self.evaluator.decisions)
        merged = dict(self.evaluator.memories)
        published = self._published.models if self._published is not None else {}
        for name, memory in memories.items():
            if name in self.state.models:
                merged[name] = memory
                if name in published:
                    decisions[name] = published[name].decision
        self.evaluator.adopt(decisions, merged)
        self._board.clear()
        self._last_samples, self._last_health = {}, None

    def _applied(self) -> tuple[dict[str, Decision], dict[str, dict[str, int]]]:
        """What Envoy gets: the published decisions (fleet mode), else this replica's own."""
        decisions = dict(self.evaluator.decisions)
        weights = dict(self._latency_weights)
        if self.authority is not None and self._published is not None:
            for name, entry in self._published.models.items():
                if name in decisions:
                    decisions[name] = entry.decision
                    weights[name] = dict(entry.latency_weights or {})
        return decisions, weights

    def _applied_routing(self) -> tuple[object, ...]:
        decisions, weights = self._applied()
        routing = sorted((name, d.state.value, d.remote_share) for name, d in decisions.items())
        return tuple(routing), tuple(sorted((name, tuple(sorted(w.items()))) for name, w in weights.items()))

    def _describe_fleet(self, models: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Adds to /debug/models' model documents who decided what Envoy has; the fleet section."""
        if self.authority is None:
            return {}
        published = self._published
        applied, _ = self._applied()
        for name, document in models.items():
            entry = published.models.get(name) if published is not None else None
            decision = applied.get(name)
            document["decided_by"] = published.leader if entry is not None and published is not None else ""
            document["published_at"] = published.published_at if entry is not None and published is not None else None
            if decision is not None:
                document["applied"] = {"state": decision.state.value, "remote_share": decision.remote_share}
        return {"fleet": self.authority.describe()}
