"""The file source: a directory of ModelDeployment YAML files, watched by polling.

Two layers, so the rules can be tested without a file system or a clock:

- `build_desired_state(results, previous)`: pure. Per-file load results (see
  `validate.load_file`) + the previous state -> the next `DesiredState`. An invalid
  document keeps its model's last good config; a model whose file is gone disappears.
- `DirectorySource`: polls mtimes/sizes (portable, no inotify) and hands each new state
  to an async iterator or a callback.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from spillover.policy.errors import PolicyError
from spillover.policy.model import ModelDeployment
from spillover.policy.validate import YAML_SUFFIXES, FileResult, check_duplicates, load_file

log = logging.getLogger("spillover.policy")


@dataclass(frozen=True, order=True)
class Origin:
    file: str
    index: int

    def __str__(self) -> str:
        return f"{self.file}[{self.index}]"


def _frozen(d: Mapping) -> Mapping:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class DesiredState:
    """What the policies ask for right now. Immutable; a new one is built on every change.

    models:  valid models by model name (spec.model), including those kept from their last
             good config while their current document is invalid (listed in `stale`).
    origins: where each model is defined (file and document index).
    errors:  every current problem, each naming file, document and field.
    version: increases by one with every change.
    """

    models: Mapping[str, ModelDeployment] = field(default_factory=lambda: MappingProxyType({}))
    origins: Mapping[str, Origin] = field(default_factory=lambda: MappingProxyType({}))
    errors: tuple[PolicyError, ...] = ()
    stale: frozenset[str] = frozenset()
    version: int = 0

    def errors_for_file(self, file: str) -> tuple[PolicyError, ...]:
        return tuple(e for e in self.errors if e.file == file)

    def errors_for_model(self, model: str) -> tuple[PolicyError, ...]:
        return tuple(e for e in self.errors if e.model == model)

    def same_content(self, other: DesiredState | None) -> bool:
        return (
            other is not None
            and dict(self.models) == dict(other.models)
            and dict(self.origins) == dict(other.origins)
            and self.errors == other.errors
            and self.stale == other.stale
        )


def build_desired_state(results: Iterable[FileResult], previous: DesiredState | None = None) -> DesiredState:
    """Pure: file results + previous state -> next state (version bumped only on change)."""
    previous = previous or DesiredState()
    results = sorted(results, key=lambda r: r.file)
    incumbents = {name: o.file for name, o in previous.origins.items()}
    kept, dup_errors = check_duplicates((d for r in results for d in r.documents), incumbents=incumbents)

    models = {d.model.model: d.model for d in kept}
    origins = {d.model.model: Origin(d.file, d.index) for d in kept}
    stale: set[str] = set()

    # Keep the last good config of models whose document is now invalid. Only the file that
    # served a model can hold it back: a model that moved or was deleted is not resurrected.
    for r in results:
        claims: list[str | None]
        if r.unreadable:
            claims = [n for n, o in previous.origins.items() if o.file == r.file]
        else:
            by_index = {o.index: n for n, o in previous.origins.items() if o.file == r.file}
            claims = [name or by_index.get(index) for index, name in r.claimed]
        for name in claims:
            if name and name not in models and name in previous.models and previous.origins[name].file == r.file:
                models[name] = previous.models[name]
                origins[name] = previous.origins[name]
                stale.add(name)

    errors = [e for r in results for e in r.errors] + dup_errors
    errors.sort(key=lambda e: (e.file or "", e.index if e.index is not None else -1, e.line or 0, e.path, e.message))
    state = DesiredState(
        models=_frozen(dict(sorted(models.items()))),
        origins=_frozen(dict(sorted(origins.items()))),
        errors=tuple(errors),
        stale=frozenset(stale),
        version=previous.version,
    )
    if state.same_content(previous) and previous.version > 0:
        return previous
    return DesiredState(state.models, state.origins, state.errors, state.stale, previous.version + 1)


@dataclass
class _Cached:
    fingerprint: tuple[int, int, int]
    data: bytes
    result: FileResult


Callback = Callable[[DesiredState], Awaitable[None] | None]


class DirectorySource:
    """Watches `directory` for *.yaml / *.yml files (top level; symlinks followed, so a
    mounted ConfigMap works) and produces a DesiredState on every effective change."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        poll_interval: float = 0.25,
        recheck_window: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = Path(directory)
        self.poll_interval = poll_interval
        # Files modified this recently are re-read even when mtime and size look unchanged:
        # coarse timestamps could hide a second write of the same length.
        self.recheck_window = recheck_window
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._state: DesiredState | None = None
        self._lock = threading.Lock()
        self._dir_missing = False

    @property
    def state(self) -> DesiredState:
        return self._state or DesiredState()

    def _list(self) -> dict[str, os.stat_result] | None:
        try:
            names = os.listdir(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return None
        found = {}
        for name in sorted(names):
            if name.startswith(".") or not name.endswith(YAML_SUFFIXES):
                continue
            try:
                st = os.stat(self.directory / name)
            except OSError:
                continue  # vanished, or a dangling symlink: not a policy file
            if os.path.isfile(self.directory / name):
                found[name] = st
        return found

    def _load(self, name: str, st: os.stat_result, now: float) -> tuple[FileResult | None, bool]:
        """(result, changed); result None means the file vanished."""
        fp = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._cache.get(name)
        recent = now - st.st_mtime_ns / 1e9 < self.recheck_window
        if cached is not None and cached.fingerprint == fp and not recent:
            return cached.result, False
        try:
            data = (self.directory / name).read_bytes()
        except FileNotFoundError:
            return None, cached is not None
        except OSError as exc:
            result = FileResult(name, (), (PolicyError(name, None, "", f"cannot read: {exc.strerror}"),), unreadable=True)
            self._cache[name] = _Cached(fp, b"", result)
            return result, True
        if cached is not None and cached.data == data:
            cached.fingerprint = fp
            return cached.result, False
        result = load_file(data, name, base_dir=str(self.directory))
        self._cache[name] = _Cached(fp, data, result)
        return result, True

    def poll(self) -> DesiredState | None:
        """Scan once. Returns the new state if anything changed (always on the first call)."""
        with self._lock:
            listing = self._list()
            previous = self._state
            if listing is None:
                err = PolicyError(str(self.directory), None, "", "policy directory not found")
                base = previous or DesiredState()
                # Probably being remounted: serve everything from its last good config.
                state = DesiredState(base.models, base.origins, (err,), frozenset(base.models), base.version + 1)
                if self._dir_missing:
                    return None
                self._dir_missing = True
                self._state = state
                log.warning("%s", err)
                return state
            now = self._clock()
            changed = previous is None or self._dir_missing or set(listing) != set(self._cache)
            self._dir_missing = False
            results = []
            for name, st in listing.items():
                result, file_changed = self._load(name, st, now)
                changed |= file_changed
                if result is not None:
                    results.append(result)
            for name in set(self._cache) - {r.file for r in results}:
                del self._cache[name]
            if not changed:
                return None
            state = build_desired_state(results, previous)
            if state is previous:
                return None
            self._state = state
            self._log(state, previous)
            return state

    @staticmethod
    def _log(state: DesiredState, previous: DesiredState | None) -> None:
        old_errors = set(previous.errors) if previous else set()
        for e in state.errors:
            if e not in old_errors:
                log.warning("invalid policy: %s", e)
        log.info(
            "policies v%d: %d model(s), %d error(s)%s",
            state.version, len(state.models), len(state.errors),
            f", kept last good config of {', '.join(sorted(state.stale))}" if state.stale else "",
        )

    async def watch(self) -> AsyncIterator[DesiredState]:
        """Yields the initial state, then every new one (a change shows within ~poll_interval)."""
        state = await asyncio.to_thread(self.poll)
        yield state or self.state
        while True:
            await asyncio.sleep(self.poll_interval)
            state = await asyncio.to_thread(self.poll)
            if state is not None:
                yield state

    async def run(self, callback: Callback) -> None:
        """Calls `callback` (sync or async) with every state, forever."""
        async for state in self.watch():
            result = callback(state)
            if inspect.isawaitable(result):
                await result
