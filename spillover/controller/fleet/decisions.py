"""The one decision: the leader publishes its decision table in Leases, every replica applies it.

Publish, then apply: the leader's own Envoys get a decision when its table is written (the API server
acknowledged it), at the same moment as every follower sees it on its watch (milliseconds later). A
leader that cannot write (cut off from the API server) therefore changes nothing anywhere, and when it
steps down the next leader starts from exactly what every Envoy has. Written only when something
routing-relevant changed (`routing_fingerprint`) or every `refresh` seconds (reasons, readings), never
per evaluation; retried at most once a second while the API server fails.

Adoption: a table is applied when its (term, sequence) is newer than the one applied. A follower keeps
the last table while no leader publishes (the leader died and no one holds the Lease yet). Taking over
(`begin_term`): the new leader's memories are the table's, timers paused from the last moment the old
leader was seen alive (as after a restart: a buffer may last longer, never shorter), its term above the
table's, and it publishes under that term after its first round.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from spillover.controller.contracts import PublishedDecisions, PublishedModel
from spillover.controller.fleet.leases import LeaseApi
from spillover.controller.fleet.table import (
    BODY_ANNOTATION,
    DEFAULT_BUDGET,
    HEADER_ANNOTATION,
    Table,
    decision_of,
    decode,
    encode,
    entry_of,
    memory_of,
    routing_fingerprint,
)
from spillover.decide import Decision, ModelMemory

log = logging.getLogger(__name__)

__all__ = ["FleetDecisions"]

_MAX_WEIGHTS = 10_000


def micro_time(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _weights(value: object) -> dict[str, int] | None:
    if not isinstance(value, dict) or not value or len(value) > _MAX_WEIGHTS:
        return None
    out = {}
    for endpoint, weight in value.items():
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 < weight <= 1_000_000:
            return None
        out[str(endpoint)] = weight
    return out


class FleetDecisions:
    def __init__(
        self,
        leases: LeaseApi,
        fleet: str,
        identity: str,
        labels: Mapping[str, str],
        *,
        apply: Callable[[PublishedDecisions], None],
        take_over: Callable[[Mapping[str, ModelMemory]], None],
        deciding: Callable[[], bool],
        lease_duration: float = 15.0,
        budget: int = DEFAULT_BUDGET,
        refresh: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.leases = leases
        self.prefix = f"{fleet}-decisions"
        self.identity = identity
        self.labels = dict(labels)
        self._apply = apply
        self._take_over = take_over
        self._deciding = deciding
        self.lease_duration = lease_duration
        self.budget = budget
        self.refresh = refresh
        self.clock = clock
        self.wall = wall
        self.table: Table | None = None  # the table applied
        self.applied_at: float | None = None  # monotonic
        self._applied_key: tuple[int, int] | None = None
        self._chunks: dict[int, dict[str, Any]] = {}  # chunk index -> annotations, as watched
        self._versions: dict[str, str] = {}  # chunk Lease name -> resourceVersion
        self._written: dict[str, tuple[Any, ...]] = {}  # chunk Lease name -> what it holds
        self.term = 0
        self._seq = 0
        self._pending: dict[str, dict[str, Any]] | None = None
        self._published: tuple[str, int] | None = None  # (fingerprint, term) last written
        self._published_mono = -1e9
        self._wake = asyncio.Event()
        self.problems: dict[str, str] = {}  # model -> why its entry could not be read
        self.writes = 0
        self.write_errors = 0
        self.last_error = ""

    # -- names -------------------------------------------------------------------------------------

    def chunk_name(self, index: int) -> str:
        return self.prefix if index == 0 else f"{self.prefix}-{index}"

    def chunk_index(self, name: str) -> int | None:
        if name == self.prefix:
            return 0
        head, _, tail = name.rpartition("-")
        return int(tail) if head == self.prefix and tail.isdigit() and 0 < int(tail) < 64 else None

    # -- following ---------------------------------------------------------------------------------

    def observe(self, deleted: bool, lease: Mapping[str, Any]) -> None:
        """A decision Lease was added, changed or deleted (the watch)."""
        metadata = lease.get("metadata") or {}
        name = str(metadata.get("name") or "")
        index = self.chunk_index(name)
        if index is None:
            return
        if deleted:
            self._chunks.pop(index, None)
            self._versions.pop(name, None)
            return
        self._chunks[index] = dict(metadata.get("annotations") or {})
        self._versions[name] = str(metadata.get("resourceVersion") or "")
        table = decode(self._chunks, self.table)
        if table is None or table is self.table:
            return
        seq = max([table.seq, *self._chunk_seqs(table)])
        if self._applied_key is not None and (table.term, seq) <= self._applied_key:
            return
        self._adopt(Table(table.leader, table.term, seq, table.published_at, table.entries))

    def _chunk_seqs(self, table: Table) -> list[int]:
        seqs = []
        for chunk in self._chunks.values():
            try:
                header = json.loads(str(chunk.get(HEADER_ANNOTATION) or "{}"))
            except ValueError:
                continue
            if isinstance(header, dict) and header.get("leader") == table.leader and header.get("term") == table.term:
                seq = header.get("seq")
                if isinstance(seq, int) and not isinstance(seq, bool):
                    seqs.append(seq)
        return seqs

    def _adopt(self, table: Table) -> None:
        now = self.wall()
        models: dict[str, PublishedModel] = {}
        problems: dict[str, str] = {}
        for name, entry in table.entries.items():
            try:
                models[name] = PublishedModel(decision_of(entry), memory_of(entry, now), _weights(entry.get("lw")))
            except (ValueError, TypeError) as exc:
                problems[name] = str(exc)[:200]
        for name, problem in problems.items():
            if self.problems.get(name) != problem:
                log.warning("fleet: the published decision of model %s can't be read: %s", name, problem)
        self.problems = problems
        self.table = table
        self._applied_key = (table.term, table.seq)
        self.applied_at = self.clock()
        self._apply(PublishedDecisions(table.leader, table.term, table.seq, table.published_at, models))

    # -- leading -----------------------------------------------------------------------------------

    def begin_term(self, elector_term: int, alive_at: float | None) -> None:
        """This replica leads from now: continue from the table (see the module docstring)."""
        table = self.table
        term = elector_term
        if table is not None:
            term = max(term, table.term + (0 if table.leader == self.identity else 1))
        self.term = term
        self._seq = table.seq if table is not None and table.term == term else 0
        self._published = None  # the first round is published under the new term
        memories: dict[str, ModelMemory] = {}
        if table is not None:
            now = self.wall()
            paused_from = max(alive_at or 0.0, table.published_at)
            for name, entry in table.entries.items():
                try:
                    memories[name] = memory_of(entry, now, min(paused_from, now), readings=False)
                except (ValueError, TypeError):
                    continue
        log.info("fleet: %s decides from now (term %d), from the table of %s (term %d, %d models)",
                 self.identity, term, table.leader if table else "nobody", table.term if table else 0, len(memories))
        self._take_over(memories)

    def propose(
        self,
        decisions: Mapping[str, Decision],
        memories: Mapping[str, ModelMemory],
        latency_weights: Mapping[str, Mapping[str, int]],
    ) -> None:
        self._pending = {
            name: entry_of(decision, memories[name], latency_weights.get(name))
            for name, decision in decisions.items() if name in memories
        }
        self._wake.set()

    def _due(self, entries: Mapping[str, Any]) -> bool:
        if self._published != (routing_fingerprint(entries), self.term):
            return True
        return self.clock() - self._published_mono >= self.refresh

    async def run(self) -> None:
        """The publisher: writes the newest proposal when it is due, while this replica decides."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            entries = self._pending
            if entries is None or not self._deciding() or not self._due(entries):
                continue
            table = Table(self.identity, self.term, self._seq + 1, self.wall(), entries)
            try:
                async with asyncio.timeout(self.leases.timeout * 2):
                    await asyncio.to_thread(self._write, table)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.write_errors += 1
                text = _describe(exc)
                if text != self.last_error:
                    log.warning("fleet: publishing the decisions failed (%s); nothing is applied until it is", text)
                self.last_error = text
                await asyncio.sleep(1.0)
                self._wake.set()
                continue
            self.last_error = ""
            self._seq = table.seq
            self._published = (routing_fingerprint(entries), table.term)
            self._published_mono = self.clock()
            if self._deciding():
                self._adopt(table)

    def _write(self, table: Table) -> None:
        chunks = encode(table, self.budget)
        for index, chunk in enumerate(chunks):
            name = self.chunk_name(index)
            content = (chunk.get(BODY_ANNOTATION), table.leader, table.term, len(chunks))
            if self._written.get(name) == content and name in self._versions:
                continue
            self._put(name, chunk)
            self._written[name] = content
            self.writes += 1

    def _put(self, name: str, annotations: Mapping[str, str]) -> None:
        for attempt in range(3):
            version = self._versions.get(name)
            if version is None:
                current = self.leases.get(name)
                version = str((current.get("metadata") or {}).get("resourceVersion") or "") if current else ""
            metadata: dict[str, Any] = {"name": name, "namespace": self.leases.namespace, "labels": self.labels,
                                        "annotations": dict(annotations)}
            body = {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata,
                "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, round(self.lease_duration)),
                         "renewTime": micro_time()},
            }
            try:
                if version:
                    metadata["resourceVersion"] = version
                    written = self.leases.replace(name, body)
                    if written is None:  # deleted meanwhile
                        self._versions.pop(name, None)
                        continue
                else:
                    written = self.leases.create(body)
            except ApiException as exc:
                if exc.status == 409 and attempt < 2:  # written (or created) by someone else meanwhile
                    self._versions.pop(name, None)
                    continue
                raise
            self._versions[name] = str((written.get("metadata") or {}).get("resourceVersion") or "")
            return
        raise RuntimeError(f"Lease {name} kept conflicting")

    def wake(self) -> None:
        self._wake.set()

    def describe(self) -> dict[str, Any]:
        table = self.table
        return {
            "leader": table.leader if table else "",
            "term": table.term if table else 0,
            "seq": table.seq if table else 0,
            "published_at": table.published_at if table else None,
            "models": len(table.entries) if table else 0,
            "applied_ago": None if self.applied_at is None else round(self.clock() - self.applied_at, 3),
            "unreadable": dict(sorted(self.problems.items())),
            "writes": self.writes,
            "write_errors": self.write_errors,
            "last_error": self.last_error,
        }


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason or ''}".strip()
    with contextlib.suppress(Exception):
        return f"{type(error).__name__}: {error}"[:300]
    return type(error).__name__
