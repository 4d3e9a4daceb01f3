"""The state file: what the control plane remembers across a restart.

One JSON document (`"format": "spillover.state/v1"`) with a section per owner: `models` (each model's
durable decision memory, `spillover.decide.persisted`), `groups` (the last known number of Envoys of each
node group, for the rate-limit division), and `alive_at`, when the file was last known current (a
heartbeat every `heartbeat` seconds; timers are paused from then until the restart).

Written atomically (a temporary file in the same directory, fsync, rename, fsync of the directory), with
mode 0600, and only when a section changed or the heartbeat is due. A missing file is a first start; a
file that can't be read, is not JSON, is too large, or is of another format is reported (`problem`, the
log) and ignored, never a crash: a restart without memory starts as spillover always did. A write that
fails is reported the same way and retried on the next change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from spillover.decide import ModelMemory
from spillover.decide.persisted import memory_document, restore_memory
from spillover.policy import DesiredState

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "GroupReplicas", "StateFileDecisions", "StateStore", "default_state_path"]

FORMAT = "spillover.state/v1"
MAX_STATE_BYTES = 16 << 20


def default_state_path(policies: Path) -> Path:
    """Beside the policies directory (not in it: it may be a read-only ConfigMap, and it is watched)."""
    policies = Path(policies).absolute()
    return policies.with_name(f"{policies.name}.spillover-state.json")


class StateStore:
    def __init__(self, path: Path, *, heartbeat: float = 5.0, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.heartbeat = heartbeat
        self.clock = clock
        self.problem = ""  # the last load or write problem, "" when all is well
        self._sections: dict[str, Any] = {}
        self._written: dict[str, Any] | None = None
        self._written_at = 0.0
        self.loaded: dict[str, Any] = {}  # what the file held at start (its sections), {} when nothing
        self.alive_at: float | None = None  # the file's `alive_at` at start

    def load(self) -> None:
        """Reads the file once, at start; any problem is reported and leaves `loaded` empty."""
        try:
            with open(self.path, "rb") as handle:
                data = handle.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as exc:
            self._report(f"state file {self.path}: cannot read ({exc.strerror or exc}); starting without it")
            return
        if len(data) > MAX_STATE_BYTES:
            self._report(f"state file {self.path}: over {MAX_STATE_BYTES} bytes; ignored")
            return
        try:
            document = json.loads(data)
        except ValueError as exc:
            self._report(f"state file {self.path}: not JSON ({exc}); ignored")
            return
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            found = document.get("format") if isinstance(document, dict) else type(document).__name__
            self._report(f"state file {self.path}: format {found!r}, not {FORMAT!r}; ignored")
            return
        alive = document.get("alive_at")
        if isinstance(alive, int | float) and not isinstance(alive, bool):
            self.alive_at = float(alive)
        self.loaded = {k: v for k, v in document.items() if k not in ("format", "alive_at")}
        log.info("state file %s: read (%s)", self.path, ", ".join(sorted(self.loaded)) or "empty")

    def section(self, name: str) -> Mapping[str, Any]:
        value = self.loaded.get(name)
        return value if isinstance(value, dict) else {}

    def update(self, name: str, value: Any) -> None:
        """Sets a section; written at once if it changed."""
        if self._sections.get(name) == value:
            return
        self._sections[name] = value
        self._write()

    def tick(self) -> None:
        """The heartbeat: rewrites `alive_at` when it is due (called from the evaluation loop)."""
        if self._written is not None and self.clock() - self._written_at >= self.heartbeat:
            self._write()

    def flush(self) -> None:
        """Writes now if anything was ever written (at shutdown: `alive_at` is then exact)."""
        if self._written is not None:
            self._write()

    def _write(self) -> None:
        now = self.clock()
        document = {"format": FORMAT, "alive_at": now, **dict(sorted(self._sections.items()))}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, json.dumps(document, sort_keys=True, separators=(",", ":")).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            self._report(f"state file {self.path}: cannot write ({exc.strerror or exc}); decisions are not persisted")
            return
        if self.problem.startswith(f"state file {self.path}: cannot write"):
            log.info("state file %s: written again", self.path)
            self.problem = ""
        self._written = document
        self._written_at = now

    def _report(self, problem: str) -> None:
        if problem != self.problem:
            log.warning("%s", problem)
        self.problem = problem


class StateFileDecisions:
    """The `models` section of the state file as a DecisionRecall and a DecisionStore (file mode)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._unrecalled = dict(store.section("models"))

    def recall(self, state: DesiredState, models: list[str], now: float) -> dict[str, ModelMemory]:
        recalled = {}
        for name in models:
            document = self._unrecalled.pop(name, None)
            if document is None:
                continue
            try:
                recalled[name] = restore_memory(document, now, self.store.alive_at)
            except ValueError as exc:
                self.store._report(f"state file {self.store.path}: model {name!r}: {exc}; it starts afresh")
        if recalled:
            log.info("decisions recalled from %s: %s", self.store.path, ", ".join(
                f"{name} {memory.state.value}" for name, memory in sorted(recalled.items())))
        return recalled

    def keep(self, memories: Mapping[str, ModelMemory]) -> None:
        documents = {name: memory_document(memory) for name, memory in sorted(memories.items())}
        # A model whose file can't be read right now (so it is not decided) keeps its record meanwhile.
        documents.update({name: doc for name, doc in self._unrecalled.items() if name not in documents})
        self.store.update("models", documents)

    def tick(self) -> None:
        self.store.tick()

    def close(self) -> None:
        self.store.flush()


class GroupReplicas:
    """How many Envoys a node group has, for dividing model-wide rate limits among them.

    After a start the Envoys reconnect one by one: dividing by the connected count would give the first
    one back the whole group's limit (and change every Envoy's routes as the others return). So the
    count the group had before the restart (the state file's `groups` section) is a floor until that
    many are back or `grace` seconds have passed; then, and for everything learned in this run, it is
    the connected count.
    """

    def __init__(
        self, store: StateStore | None = None, grace: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.grace = grace
        self.clock = clock
        self.started = clock()
        self.floors: dict[str, int] = {}
        for group, entry in (store.section("groups") if store is not None else {}).items():
            replicas = entry.get("replicas") if isinstance(entry, dict) else None
            if isinstance(replicas, int) and not isinstance(replicas, bool) and 0 < replicas < 1_000_000:
                self.floors[str(group)] = replicas
        self.known: dict[str, int] = dict(self.floors)

    def in_grace(self) -> bool:
        return bool(self.floors) and self.clock() - self.started < self.grace

    def forget(self, group: str) -> None:
        """The group is gone (the xDS server forgot it after its grace without streams): it is not kept
        for the next start either."""
        self.floors.pop(group, None)
        if self.known.pop(group, None) is not None and self.store is not None:
            self.store.update("groups", {g: {"replicas": n} for g, n in sorted(self.known.items())})

    def replicas(self, group: str, connected: int) -> int:
        floor = self.floors.get(group, 0)
        if floor and (connected >= floor or not self.in_grace()):
            del self.floors[group]
            floor = 0
        count = max(connected, floor)
        if count > 0 and self.known.get(group) != count:
            self.known[group] = count
            if self.store is not None:
                self.store.update("groups", {g: {"replicas": n} for g, n in sorted(self.known.items())})
        return max(1, count)
