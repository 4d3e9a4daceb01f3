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
import stat
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from spillover.policy.defaults import NO_DEFAULTS, PolicyDefaults
from spillover.policy.errors import PolicyError
from spillover.policy.state import DesiredState, Origin, frozen_mapping
from spillover.policy.validate import (
    MAX_POLICY_FILE_BYTES,
    YAML_SUFFIXES,
    FileResult,
    PolicyFileTooLarge,
    check_duplicates,
)
from spillover.sources.files.reader import FileJob, Parsed, refused, start_job
from spillover.sources.findings import kept_note, log_new_findings

log = logging.getLogger("spillover.policy")


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
    served = {(o.file, o.index) for o in origins.values()}
    warnings = tuple(w for r in results for w in r.warnings if (w.file, w.index) in served)
    state = DesiredState(
        models=frozen_mapping(dict(sorted(models.items()))),
        origins=frozen_mapping(dict(sorted(origins.items()))),
        errors=tuple(errors),
        stale=frozenset(stale),
        version=previous.version,
        warnings=warnings,
        unreadable=frozenset(r.file for r in results if r.unreadable),
    )
    if state.same_content(previous) and previous.version > 0:
        return previous
    return replace(state, version=previous.version + 1)


@dataclass
class _Cached:
    fingerprint: tuple[int, ...]
    data: bytes
    result: FileResult


Callback = Callable[[DesiredState], Awaitable[None] | None]


def _fingerprint(st: os.stat_result) -> tuple[int, ...]:
    # Mode and ctime too: a chmod that makes a file unreadable changes neither its mtime nor its size.
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_mode, st.st_ctime_ns)


class DirectorySource:
    """Watches `directory` for *.yaml / *.yml files (top level; symlinks followed, so a
    mounted ConfigMap works) and produces a DesiredState on every effective change.

    Each file is read and parsed on its own (`reader`): one over `max_file_bytes` is refused without
    being read, one that takes longer than `parse_timeout` seconds is left to finish in the background
    while the other files' changes apply; until then it counts as unreadable (last good config kept).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        poll_interval: float = 0.25,
        recheck_window: float = 2.0,
        clock: Callable[[], float] = time.time,
        defaults: PolicyDefaults = NO_DEFAULTS,
        max_file_bytes: int = MAX_POLICY_FILE_BYTES,
        parse_timeout: float = 2.0,
    ) -> None:
        self.directory = Path(directory)
        self.defaults = defaults
        self.poll_interval = poll_interval
        # Files modified this recently are re-read even when mtime and size look unchanged:
        # coarse timestamps could hide a second write of the same length.
        self.recheck_window = recheck_window
        self.max_file_bytes = max_file_bytes
        self.parse_timeout = parse_timeout
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._jobs: dict[str, FileJob] = {}
        self._overdue: dict[str, FileResult] = {}
        self._state: DesiredState | None = None
        self._lock = threading.Lock()
        self._dir_missing = False

    @property
    def state(self) -> DesiredState:
        return self._state or DesiredState()

    def _list(self) -> dict[str, os.stat_result | OSError] | None:
        """The policy files by name: their stat, or why a name that is there can't be followed (a
        dangling or looping symlink, a directory it can't search): such a file is unreadable, not gone."""
        try:
            names = os.listdir(self.directory)
        except (FileNotFoundError, NotADirectoryError):
            return None
        found: dict[str, os.stat_result | OSError] = {}
        for name in sorted(names):
            if name.startswith(".") or not name.endswith(YAML_SUFFIXES):
                continue
            path = self.directory / name
            try:
                st = os.stat(path)
            except FileNotFoundError as exc:
                if os.path.lexists(path):
                    found[name] = exc  # a symlink to nothing
                continue  # vanished between listdir and stat
            except OSError as exc:
                found[name] = exc
                continue
            if stat.S_ISREG(st.st_mode):
                found[name] = st
        return found

    def _needs_reading(self, name: str, fp: tuple[int, ...], st: os.stat_result, now: float) -> bool:
        cached = self._cache.get(name)
        recent = now - st.st_mtime_ns / 1e9 < self.recheck_window
        return cached is None or cached.fingerprint != fp or recent or name in self._jobs

    def _start(self, name: str, fp: tuple[int, ...]) -> FileJob:
        job = self._jobs.get(name)
        if job is not None and job.fingerprint == fp:
            return job  # still working on this very version of the file
        cached = self._cache.get(name)
        job = start_job(
            self.directory / name, name, str(self.directory), self.max_file_bytes, fp,
            cached.data if cached is not None else None, self.defaults,
        )
        self._jobs[name] = job
        return job

    def _outcome(self, name: str, job: FileJob) -> tuple[FileResult | None, bool]:
        """(result, changed) of a finished job; result None means the file vanished."""
        del self._jobs[name]
        self._overdue.pop(name, None)
        cached = self._cache.get(name)
        try:
            parsed = job.future.result()
        except Exception as exc:  # a bug, not the file's fault: report it as the file's problem anyway
            log.exception("reading %s failed", name)
            parsed = Parsed(b"", refused(name, f"cannot read: {type(exc).__name__}"))
        if parsed is None:
            return None, cached is not None
        if parsed.result is None:
            assert cached is not None
            cached.fingerprint = job.fingerprint
            return cached.result, False
        changed = cached is None or cached.result != parsed.result
        self._cache[name] = _Cached(job.fingerprint, parsed.data, parsed.result)
        return parsed.result, changed

    def _load_all(
        self, listing: dict[str, os.stat_result | OSError], now: float
    ) -> tuple[list[FileResult], bool]:
        """Every listed file's result; reads run in parallel and are waited for until their deadline."""
        results: dict[str, FileResult] = {}
        changed = False
        started: dict[str, FileJob] = {}
        for name, st in listing.items():
            if isinstance(st, OSError):
                self._jobs.pop(name, None)
                broken = refused(name, f"cannot read: {st.strerror or st}")
                cached = self._cache.get(name)
                changed |= cached is None or cached.result != broken
                self._cache[name] = _Cached((), b"", broken)
                results[name] = broken
                continue
            fp = _fingerprint(st)
            if st.st_size > self.max_file_bytes:
                self._jobs.pop(name, None)
                too_large = refused(name, str(PolicyFileTooLarge(st.st_size, self.max_file_bytes)))
                cached = self._cache.get(name)
                changed |= cached is None or cached.result != too_large
                self._cache[name] = _Cached(fp, b"", too_large)
                results[name] = too_large
            elif self._needs_reading(name, fp, st, now):
                started[name] = self._start(name, fp)
            else:
                results[name] = self._cache[name].result
        for name, job in sorted(started.items(), key=lambda item: item[1].started):
            if job.wait(job.started + self.parse_timeout):
                result, file_changed = self._outcome(name, job)
                changed |= file_changed
                if result is not None:
                    results[name] = result
                continue
            overdue = refused(
                name, f"still being read or parsed after {self.parse_timeout:g}s; "
                "its models keep their last good configuration until it is done",
            )
            changed |= self._overdue.get(name) != overdue
            self._overdue[name] = overdue
            results[name] = overdue
        for name in set(self._cache) - set(listing):
            del self._cache[name]
            changed = True
        for name in set(self._jobs) - set(listing):
            del self._jobs[name]
            self._overdue.pop(name, None)
        return [results[name] for name in sorted(results)], changed

    def poll(self) -> DesiredState | None:
        """Scan once. Returns the new state if anything changed (always on the first call)."""
        with self._lock:
            listing = self._list()
            previous = self._state
            if listing is None:
                err = PolicyError(str(self.directory), None, "", "policy directory not found")
                base = previous or DesiredState()
                # Probably being remounted: serve everything from its last good config.
                state = DesiredState(
                    base.models, base.origins, (err,), frozenset(base.models), base.version + 1,
                    unreadable=frozenset({str(self.directory)}),
                )
                if self._dir_missing:
                    return None
                self._dir_missing = True
                self._state = state
                log.warning("%s", err)
                return state
            now = self._clock()
            results, changed = self._load_all(listing, now)
            changed |= previous is None or self._dir_missing
            self._dir_missing = False
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
        log_new_findings(log, state, previous)
        log.info(
            "policies v%d: %d model(s), %d error(s)%s",
            state.version, len(state.models), len(state.errors), kept_note(state),
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
