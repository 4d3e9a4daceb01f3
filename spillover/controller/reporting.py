"""What the policy provider tells: its Prometheus metrics, the status document of every model (for the
status sinks: the Kubernetes status writer, the state file), /debug/models and the policies' readiness.

A mixin of `PolicyProvider` (controller/policies.py), kept apart so that the provider reads as the loop
that decides; `FollowsTheFleet` (controller/following.py), which builds on it, adds the fleet's part. Nothing here decides: it
reports the provider's state, its decisions and what is held (controller/removals.py).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from spillover.controller.contracts import StatusReport, StatusSink
from spillover.controller.destination.manager import DestinationManager
from spillover.controller.model_metrics import ModelSeries
from spillover.controller.removals import RemovalGuard, kept_from, readiness
from spillover.decide import Decision, Evaluator, ModelMemory, status_document
from spillover.names import EVALUATION_SERIES, POLICY_ERRORS_SERIES
from spillover.policy import DesiredState, ModelDeployment
from spillover.sources.oauth import ClientCredentials, TokenManager

log = logging.getLogger("spillover.controller.policies")

__all__ = ["ReportsModels"]


class ReportsModels:
    # What the provider has (see PolicyProvider.__init__).
    registry: CollectorRegistry
    state: DesiredState
    evaluator: Evaluator
    destinations: DestinationManager | None
    status_sinks: list[StatusSink]
    clock: Callable[[], float]
    removals: RemovalGuard
    notices: deque[tuple[float, str]]
    tokens: TokenManager

    def _credentials(self) -> dict[str, ClientCredentials]:
        raise NotImplementedError

    def _describe_fleet(self, models: dict[str, dict[str, Any]]) -> dict[str, Any]:
        raise NotImplementedError

    def _create_metrics(self) -> None:
        self._errors = Gauge(POLICY_ERRORS_SERIES, "Current policy errors by file", ["file"], registry=self.registry)
        # Per model: state, share, time in state, each metric against its threshold, its copy
        # (controller/model_metrics.py), read from the evaluator's decisions: a follower's are the leader's.
        self.series = ModelSeries(
            self.registry, lambda: self.state.models, lambda: self.evaluator, self.clock, self._copy_status
        )
        self._held_gauge = Gauge(
            "spillover_policy_removal_held", "Models whose removal is held (still served) by the removal guard",
            registry=self.registry,
        )
        self._unreadable_gauge = Gauge(
            "spillover_policy_unreadable_files", "Policy files that can't be read or parsed now", ["file"],
            registry=self.registry,
        )
        self._takeovers = Counter(
            "spillover_policy_takeovers_total", "Models now served from another definition than before",
            registry=self.registry,
        )
        self._evaluation_seconds = Histogram(
            EVALUATION_SERIES, "One round: sampling every metric and deciding every model",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=self.registry,
        )

    def statuses(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """The status document of every model that has been decided."""
        now = self.clock() if now is None else now
        out = {}
        for name, md in self.state.models.items():
            decision = self.evaluator.decision(name)
            memory = self.evaluator.memory(name)
            if decision is not None and memory is not None:
                out[name] = self._status(name, md, decision, memory, now)
        return out

    def _status(
        self, name: str, md: ModelDeployment, decision: Decision, memory: ModelMemory, now: float
    ) -> dict[str, Any]:
        document = status_document(md, decision, memory, now)
        copy = self.destinations.status(name) if self.destinations is not None else None
        if copy is not None:
            document["destination"] = copy
        return document

    def _report_status(self) -> None:
        if not self.status_sinks:
            return
        now = self.clock()
        report = StatusReport(self.state, self.statuses(now), tuple(self.state.errors), now)
        for sink in list(self.status_sinks):
            try:
                sink(report)
            except Exception:  # a failing sink must not stop decisions
                log.exception("status sink failed")

    def _copy_status(self, model: str) -> Mapping[str, object] | None:
        """The status of the model's copy on its destination cluster, if it has one (Kubernetes mode)."""
        return self.destinations.status(model) if self.destinations is not None else None

    def _report(self, state: DesiredState) -> None:
        self._unreadable_gauge.clear()
        for file in state.unreadable:
            self._unreadable_gauge.labels(file).set(1)
        self._errors.clear()
        by_file: dict[str, int] = {}
        for error in state.errors:
            file = error.file or ""
            by_file[file] = by_file.get(file, 0) + 1
            log.error("invalid policy: %s", error)
        for file, count in by_file.items():
            self._errors.labels(file).set(count)

    def models_json(self) -> dict[str, Any]:
        credentials = self._credentials()
        now = self.clock()
        models = {}
        for name, md in sorted(self.state.models.items()):
            decision = self.evaluator.decision(name)
            memory = self.evaluator.memory(name)
            origin = self.state.origins.get(name)
            creds = credentials.get(name)
            status = self._status(name, md, decision, memory, now) if decision and memory else {}
            models[name] = {
                "name": md.name,
                "state": decision.state.value if decision else "UNKNOWN",
                "remote_share": decision.remote_share if decision else 0,
                "reason": decision.reason if decision else "",
                "origin": str(origin) if origin else "",
                "stale": name in self.state.stale,
                "errors": [str(e) for e in self.state.errors_for_model(name)],
                "token_error": self.tokens.error(creds) if creds else "",
                "warnings": [str(w) for w in self.state.warnings if w.model == name],
                "status": status,
            }
        held = self.removals.held
        for name in held.models if held else ():
            if name in models:
                models[name]["held"] = True
        fleet = self._describe_fleet(models)
        return {
            **fleet,
            "models": models,
            "errors": [str(e) for e in self.state.errors],
            "warnings": [str(w) for w in self.state.warnings],
            "unreadable_files": [
                {
                    "file": file,
                    "errors": [str(e) for e in self.state.errors_for_file(file)],
                    "kept": kept_from(self.state, file),
                }
                for file in sorted(self.state.unreadable)
            ],
            "held_removal": None if held is None else {
                "models": list(held.models), "served": held.served, "since": held.since, "until": held.until,
                "message": held.describe(),
            },
            "notices": [{"at": at, "message": message} for at, message in self.notices],
        }

    def readiness(self) -> tuple[bool, list[str]]:
        return readiness(self.state, self.removals.held)
