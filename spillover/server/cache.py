"""Versioned snapshots per node group, debounced publishing, and change notification to streams."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import secrets
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from google.protobuf.message import Message

from spillover.server.references import secret_references
from spillover.server.resources import PUSH_ORDER, SECRET, Resource, type_version

log = logging.getLogger(__name__)

_EMPTY: Mapping[str, Resource] = MappingProxyType({})
# Nonces only need to be unique per stream; a per-process prefix keeps them unique across restarts too.
_NONCE_PREFIX = secrets.token_hex(3)
_nonce_counter = itertools.count(1)
# Memoized encodings and subsets per snapshot: streams asking for the same thing share them, but a
# client cycling through distinct subscriptions must not grow them without end: at most this many
# entries, holding at most this many subscribed names in all (a subscription can be 50,000 names).
_MEMO_LIMIT = 1024
_MEMO_NAMES_LIMIT = 200_000


def new_nonce() -> str:
    return f"{_NONCE_PREFIX}-{next(_nonce_counter)}"


@dataclass(frozen=True, slots=True)
class SharedResponse:
    """A fully encoded response that any number of streams may send as it is."""

    nonce: str
    payload: bytes


@dataclass(eq=False)
class Snapshot:
    """An immutable set of resources by type, with a version per type.

    Encoded responses are memoized on the snapshot, so streams of one group that want the same
    resources share one encoding.
    """

    resources: Mapping[str, Mapping[str, Resource]]
    versions: Mapping[str, str]
    build_seconds: float = 0.0
    generation: int = 0
    # Set when published after another snapshot of the same group: the generation it follows and,
    # per type, the names added, changed or removed since. Streams one step behind diff only those.
    previous_generation: int | None = None
    changes: Mapping[str, frozenset[str]] | None = None
    _responses: dict[tuple[object, ...], SharedResponse] = field(default_factory=dict, repr=False)
    _subsets: dict[tuple[str, tuple[str, ...]], Mapping[str, Resource]] = field(default_factory=dict, repr=False)
    _memo_names: int = field(default=0, repr=False)
    _referenced_secrets: frozenset[str] | None = field(default=None, repr=False)
    _visible_secrets: Mapping[str, Resource] | None = field(default=None, repr=False)
    _secrets_version: str | None = field(default=None, repr=False)
    # Whatever the builder of the snapshot keeps to build the next one of its group from this one (see
    # `from_encoded`); the cache never looks at it, and it goes with the snapshot.
    basis: object = field(default=None, repr=False)
    # What changed since one earlier snapshot (a weak reference to it), as its builder knew.
    _diff: tuple[weakref.ref[Snapshot], Mapping[str, frozenset[str]]] | None = field(default=None, repr=False)

    @classmethod
    def from_resources(cls, resources: Iterable[Resource], types: Iterable[str] = PUSH_ORDER) -> Snapshot:
        """`types` lists the types served even when empty (so Envoy's initial fetch completes)."""
        by_type: dict[str, dict[str, Resource]] = {type_url: {} for type_url in types}
        for resource in resources:
            named = by_type.setdefault(resource.type_url, {})
            if resource.name in named:
                raise ValueError(f"duplicate {resource.type_url} resource named {resource.name!r}")
            named[resource.name] = resource
        frozen = {
            type_url: MappingProxyType(dict(sorted(named.items()))) for type_url, named in by_type.items()
        }
        versions = {type_url: type_version(named.values()) for type_url, named in frozen.items()}
        return cls(resources=MappingProxyType(frozen), versions=MappingProxyType(versions))

    @classmethod
    def from_encoded(
        cls,
        resources: Mapping[str, Mapping[str, Resource]],
        *,
        referenced_secrets: frozenset[str] | None = None,
        basis: object = None,
        types: Iterable[str] = PUSH_ORDER,
        build_seconds: float = 0.0,
        previous: Snapshot | None = None,
        versions: Mapping[str, str] | None = None,
        changes: Mapping[str, frozenset[str]] | None = None,
    ) -> Snapshot:
        """A snapshot of resources a builder keeps itself, by type and name, sorted by name (the builder of
        a group's next snapshot reuses the previous one's, changing only what changed). `referenced_secrets`:
        which of the secrets the other resources refer to, when the builder knows (else found on demand).
        `previous`: a snapshot whose maps this one may share; the version of a shared map is not recomputed,
        and `changes` (names changed per type, secrets aside) are this one's changes since `previous`.
        `versions`: of the types the builder already knows (`type_version`'s value)."""
        by_type: dict[str, Mapping[str, Resource]] = {type_url: _EMPTY for type_url in types}
        by_type.update(resources)
        known = dict(versions or {})
        for type_url, named in by_type.items():
            if type_url in known:
                continue
            if previous is not None and previous.resources.get(type_url) is named:
                known[type_url] = previous.versions[type_url]
            else:
                known[type_url] = type_version(named.values())
        secrets = by_type.get(SECRET, _EMPTY)
        if referenced_secrets is not None and not (
            previous is not None and referenced_secrets is previous._referenced_secrets
            and secrets is previous.resources.get(SECRET)
        ):
            # (Unless it is the previous snapshot's own for the same secrets: already within them.)
            referenced_secrets = referenced_secrets.intersection(secrets.keys())
        snapshot = cls(
            resources=MappingProxyType(by_type),
            versions=MappingProxyType(known),
            build_seconds=build_seconds,
            basis=basis,
            _referenced_secrets=referenced_secrets,
        )
        if previous is not None and changes is not None:
            snapshot._diff = (weakref.ref(previous), MappingProxyType(dict(changes)))
        return snapshot

    @classmethod
    def from_messages(cls, messages: Iterable[Message], types: Iterable[str] = PUSH_ORDER) -> Snapshot:
        started = time.perf_counter()
        snapshot = cls.from_resources((Resource.from_message(m) for m in messages), types)
        snapshot.build_seconds = time.perf_counter() - started
        return snapshot

    def get(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, _EMPTY)

    def version(self, type_url: str) -> str:
        # A type absent from the snapshot still needs a stable, non-empty version.
        if type_url == SECRET and type_url in self.resources:
            # Of what streams may be sent: a secret that becomes referenced changes what SDS serves.
            if self._secrets_version is None:
                self._secrets_version = type_version(self.visible(SECRET).values())
            return self._secrets_version
        return self.versions.get(type_url) or type_version(())

    def referenced_secrets(self) -> frozenset[str]:
        """The secrets of this snapshot that its other resources refer to (computed once)."""
        if self._referenced_secrets is None:
            secrets = self.get(SECRET)
            others = (r for type_url, named in self.resources.items() if type_url != SECRET for r in named.values())
            self._referenced_secrets = secret_references(others, secrets.keys()) if secrets else frozenset()
        return self._referenced_secrets

    def visible(self, type_url: str) -> Mapping[str, Resource]:
        """What a stream of this group may be sent: everything, except secrets no other resource uses."""
        if type_url != SECRET:
            return self.get(type_url)
        if self._visible_secrets is None:
            referenced = self.referenced_secrets()
            secrets = self.get(SECRET)
            self._visible_secrets = (
                secrets if len(referenced) == len(secrets)
                else MappingProxyType({n: r for n, r in secrets.items() if n in referenced})
            )
        return self._visible_secrets

    def subset(self, type_url: str, names: tuple[str, ...]) -> Mapping[str, Resource]:
        """The named resources that exist (and may be sent), memoized: streams subscribing to the same
        names share it."""
        key = (type_url, names)
        subset = self._subsets.get(key)
        if subset is None:
            available = self.visible(type_url)
            subset = MappingProxyType({name: available[name] for name in names if name in available})
            # Counted whether kept or not: the encodings memoized for it would hold the same names.
            self._memo_names += len(names)
            if len(self._subsets) < _MEMO_LIMIT and self._memo_names <= _MEMO_NAMES_LIMIT:
                self._subsets[key] = subset
        return subset

    def changes_since(self, previous: Snapshot) -> dict[str, frozenset[str]]:
        changes = {}
        known: Mapping[str, frozenset[str]] = {}
        if self._diff is not None and self._diff[0]() is previous:
            known = self._diff[1]
        for type_url in set(self.resources) | set(previous.resources):
            now, before = self.get(type_url), previous.get(type_url)
            if type_url in known and type_url != SECRET:
                changes[type_url] = known[type_url]  # as the builder found it: no walk over every name
                continue
            if now is before and type_url != SECRET:
                changes[type_url] = frozenset()  # the same map (a builder reused it): nothing changed
                continue
            changed = {n for n, r in now.items() if (b := before.get(n)) is not r and (b is None or b.version != r.version)}
            changed.update(n for n in before if n not in now)
            if type_url == SECRET:
                # A secret whose content stayed but that became (un)referenced changes for streams too.
                changed.update(set(self.visible(SECRET)) ^ set(previous.visible(SECRET)))
            changes[type_url] = frozenset(changed)
        return changes

    def serves(self, type_url: str) -> bool:
        return type_url in self.resources

    def shared_response(self, key: tuple[object, ...], build: Callable[[str], bytes]) -> SharedResponse:
        response = self._responses.get(key)
        if response is None:
            nonce = new_nonce()
            response = SharedResponse(nonce, build(nonce))
            # Keys hold a subscription's names (the same tuple as the subset memo's) and the bytes.
            if len(self._responses) < _MEMO_LIMIT and self._memo_names <= _MEMO_NAMES_LIMIT:
                self._responses[key] = response
        return response


@dataclass
class _Pending:
    snapshot: Snapshot
    first_change: float
    last_change: float


class Watcher(Protocol):
    """Told every snapshot published for the group it watches (an `asyncio.Queue`, a stream's writer)."""

    def put_nowait(self, item: Snapshot, /) -> None: ...


class Timer(Protocol):
    """A scheduled call that can be called off (`asyncio.TimerHandle`)."""

    def cancel(self) -> None: ...


# Calls the callback after `delay` seconds of `clock` (`loop.call_later`).
Scheduler = Callable[[float, Callable[[], None]], Timer]


class SnapshotCache:
    """Holds the published snapshot of each node group and wakes the streams watching a group.

    `set_snapshot` publishes at once; `update` debounces: a burst of changes becomes one push, published
    after `debounce` seconds of quiet or at most `max_delay` after the first change of the burst.

    The debounce reads `clock` and waits with `call_later`; by default the monotonic clock and the running
    event loop's `call_later` (which keeps the same time). Tests give a fake clock and its timers.
    """

    def __init__(
        self,
        debounce: float = 0.1,
        max_delay: float = 1.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        call_later: Scheduler | None = None,
    ) -> None:
        if debounce < 0 or max_delay < debounce:
            raise ValueError("debounce must be >= 0 and max_delay >= debounce")
        self.debounce = debounce
        self.max_delay = max_delay
        self._clock = clock
        self._call_later = call_later
        self._snapshots: dict[str, Snapshot] = {}
        self._watchers: dict[str, set[Watcher]] = {}
        self._pending: dict[str, _Pending] = {}
        self._timers: dict[str, Timer] = {}
        self._generation = itertools.count(1)
        self._published_at: dict[str, float] = {}
        self.on_publish: list[Callable[[str, Snapshot], None]] = []

    def get(self, group: str) -> Snapshot | None:
        return self._snapshots.get(group)

    def groups(self) -> list[str]:
        return sorted(self._snapshots)

    def published_at(self, group: str) -> float | None:
        """Monotonic time of the group's last publish, for push-latency measurement."""
        return self._published_at.get(group)

    def set_snapshot(self, group: str, snapshot: Snapshot) -> None:
        self._pending.pop(group, None)
        timer = self._timers.pop(group, None)
        if timer is not None:
            timer.cancel()
        if snapshot.generation:
            # Already published (here or for another group): its bookkeeping belongs to that publish.
            snapshot = dataclasses.replace(
                snapshot, generation=0, previous_generation=None, changes=None, _responses={}, _subsets={},
                _memo_names=0,
            )
        previous = self._snapshots.get(group)
        if previous is not None:
            snapshot.previous_generation = previous.generation
            snapshot.changes = MappingProxyType(snapshot.changes_since(previous))
        snapshot.generation = next(self._generation)
        self._snapshots[group] = snapshot
        self._published_at[group] = time.monotonic()
        for callback in self.on_publish:
            callback(group, snapshot)
        for queue in self._watchers.get(group, ()):
            queue.put_nowait(snapshot)

    def update(self, group: str, snapshot: Snapshot) -> None:
        """Debounced publish; the newest snapshot of a burst wins."""
        if self.debounce == 0:
            self.set_snapshot(group, snapshot)
            return
        now = self._clock()
        pending = self._pending.get(group)
        if pending is None:
            self._pending[group] = _Pending(snapshot, now, now)
            self._publish_when_quiet(group)
        else:
            pending.snapshot = snapshot
            pending.last_change = now

    def _publish_when_quiet(self, group: str) -> None:
        """Publishes the group's pending snapshot if its burst is over, else looks again when it may be."""
        self._timers.pop(group, None)
        pending = self._pending.get(group)
        if pending is None:
            return
        deadline = min(pending.last_change + self.debounce, pending.first_change + self.max_delay)
        delay = deadline - self._clock()
        if delay <= 0:
            self.set_snapshot(group, pending.snapshot)
            return
        call_later = self._call_later or asyncio.get_running_loop().call_later
        self._timers[group] = call_later(delay, lambda: self._publish_when_quiet(group))

    async def flush(self) -> None:
        """Publish every pending snapshot now (used at shutdown and by tests of the debounce)."""
        for group, pending in list(self._pending.items()):
            self.set_snapshot(group, pending.snapshot)

    def remove(self, group: str) -> None:
        """Forgets a group: its snapshot, a pending publish, its timers. Streams still watching it (there
        should be none) get nothing more until a snapshot is set again."""
        self._snapshots.pop(group, None)
        self._pending.pop(group, None)
        self._published_at.pop(group, None)
        timer = self._timers.pop(group, None)
        if timer is not None:
            timer.cancel()

    def watch(self, group: str, queue: Watcher) -> None:
        """Every snapshot published for `group` from now on is put on `queue`."""
        self._watchers.setdefault(group, set()).add(queue)

    def unwatch(self, group: str, queue: Watcher) -> None:
        watchers = self._watchers.get(group)
        if watchers is not None:
            watchers.discard(queue)
            if not watchers:
                del self._watchers[group]
