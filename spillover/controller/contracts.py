"""The typed contracts between the stages the controller chains, and between it and the xDS layer.

A provider turns its inputs (a file of Envoy resources, model policies, metrics) into the resources
of one node group. The connected proxies are one of those inputs — e.g. a model's rate limit is divided
among the replicas of a group — so the registry of streams is observed like any other source instead of
the xDS layer calling upstream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from google.protobuf.message import Message

from spillover.decide import Decision, ModelMemory
from spillover.policy import DesiredState, PolicyError
from spillover.server.cache import Snapshot


@dataclass(frozen=True)
class GroupView:
    """What a provider knows about the node group it builds resources for."""

    name: str
    replicas: int


class Provider(Protocol):
    """Produces the resources of a node group. The control plane sets `changed`; call it on every change.

    `changed(urgent=True)` skips the debounce: for a change that is already one batch (a round of
    overflow decisions), where the 100 ms of coalescing would only delay traffic moving.
    """

    changed: Callable[..., None]

    def resources(self, group: GroupView) -> Iterable[Message]: ...

    def attach(self, proxies: AdminDirectory) -> None:
        """Called once with the registry of connected Envoys, for providers that read them."""

    async def warm_up(self) -> None:
        """Awaited before the xDS server answers anyone: gather what the first snapshot needs."""

    def readiness(self) -> tuple[bool, list[str]]:
        """Whether what is served is what the inputs say (False: /readyz answers 503), and notes for
        /readyz (warnings, or why not ready)."""

    async def run(self) -> None: ...


@runtime_checkable
class SnapshotProvider(Protocol):
    """A provider that builds the group's snapshot itself, from the group's previous one: what changed
    since then is all it translates (the policy provider, see controller/encoding.py)."""

    def snapshot(self, group: GroupView, previous: Snapshot | None) -> Snapshot: ...


class Companion(Protocol):
    """Something that runs beside the xDS server, started after it and stopped before it."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class AdminDirectory(Protocol):
    """The connected Envoys as the providers see them (the xDS server's proxy registry): where their
    admin endpoints are."""

    def admin_urls(self, group: str | None = None) -> list[str]: ...


@runtime_checkable
class PolicySource(Protocol):
    """Where policies come from (`DirectorySource`, `spillover.sources.kube.KubernetesPolicySource`).

    `poll()` returns a new state when something changed (None otherwise), `state` the current one, and
    `run(callback)` calls `callback` with the initial state and every new one until cancelled. A state may
    carry `ready_replicas` (model -> ready replicas of its workload, None when unknown), which the
    failover decision honours.
    """

    @property
    def state(self) -> DesiredState: ...

    def poll(self) -> DesiredState | None: ...

    async def run(self, callback: Callable[[DesiredState], Awaitable[None] | None]) -> None: ...


@dataclass(frozen=True)
class StatusReport:
    """What a status sink receives after each evaluation.

    statuses: per model (spec.model), `spillover.decide.status_document(md, decision, memory, now)`.
    errors:   the current policy errors (invalid documents, unresolvable references).
    state:    the desired state the statuses were computed from (its `origins` tell where each model is
              defined; a Kubernetes state also carries the objects and the errors per object).
    """

    state: DesiredState
    statuses: Mapping[str, Mapping[str, Any]]
    errors: tuple[PolicyError, ...]
    now: float


StatusSink = Callable[[StatusReport], None]


Recalled = Mapping[str, ModelMemory]


class DecisionRecall(Protocol):
    """Where the decisions of an earlier run are read back from: the state file (file mode), the status
    the leader wrote (Kubernetes mode). Asked once per model, when the model first appears after a start;
    what it can't vouch for (a broken or foreign record) it leaves out, and the model starts afresh."""

    def recall(self, state: DesiredState, models: list[str], now: float) -> Recalled | Awaitable[Recalled]: ...


class DecisionStore(Protocol):
    """Where the durable part of each decision is kept for the next run (the state file)."""

    def keep(self, memories: Mapping[str, ModelMemory]) -> None: ...

    def tick(self) -> None:
        """Called every evaluation round (a heartbeat, if the store needs one)."""

    def close(self) -> None:
        """At shutdown: make what is kept current (a last heartbeat)."""


@dataclass(frozen=True)
class PublishedModel:
    """One model's decision as the fleet's leader published it."""

    decision: Decision
    memory: ModelMemory  # with the readings the leader had, for status views
    latency_weights: Mapping[str, int] | None = None


@dataclass(frozen=True)
class PublishedDecisions:
    """The fleet's decision table: what every replica pushes to its Envoys (`spillover.controller.fleet`)."""

    leader: str  # who decided
    term: int  # the leader's term (a new leader, a higher term)
    seq: int  # its publications, in order
    published_at: float  # wall clock
    models: Mapping[str, PublishedModel]


class DecisionAuthority(Protocol):
    """Who decides, when several replicas serve one fleet: the policy provider decides only while
    `deciding()`, offers each round's outcome to `propose`, and otherwise applies what it is handed
    (`PolicyProvider.adopt`), as the deciding replica does with its own once published."""

    def deciding(self) -> bool: ...

    def propose(
        self,
        decisions: Mapping[str, Decision],
        memories: Mapping[str, ModelMemory],
        latency_weights: Mapping[str, Mapping[str, int]],
    ) -> None: ...

    def describe(self) -> dict[str, Any]:
        """The fleet as /debug/models shows it (leader, term, this replica's role)."""
