"""Who serves which Envoy, fleet-wide (pure: no I/O; clocks are arguments or injected).

Each replica publishes a `Summary` of the Envoys connected to it in its own Lease (`annotations()`):
per node group, every Envoy's node id and since when it is connected (wall clock), within a byte
budget; Envoys beyond the budget are counted, not named (`more`). Every replica reads every other
replica's Lease (`FleetView.observe`) and counts a group's Envoys as the union of the node ids of
the live members and its own, plus the unnamed ones (which may be counted twice: too many, never too
few, is the safe direction for a rate limit divided by that count).

Liveness, as client-go judges a Lease: a member is alive while its Lease keeps changing (each renewal
changes it) within its `leaseDurationSeconds`, measured on this replica's monotonic clock from when it
saw the change, so clocks of different nodes never matter. One addition: only a replica whose own view
is *current* (its own Lease renewed, and its renewals seen coming back on its watch) lets others
expire. A replica cut off from the API server sees no renewal of anyone, and would otherwise count
every other replica's Envoys as gone and divide the limit among too few; it keeps counting them
instead, and when its view is current again every member gets a full lease duration from then.

`LocalMembers` is this replica's side: the connected Envoys, and Envoys that just left (kept for a
short `linger`, so that an Envoy moving to another replica is counted by one of the two all along),
and those of this identity's previous run (its old Lease, kept for one lease duration after a
restart, the time in which they reconnect to it or to another replica).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from spillover.controller.fleet.codec import pack, unpack

__all__ = [
    "ENVOYS_ANNOTATION",
    "MEMBER_ANNOTATION",
    "FleetEnvoy",
    "FleetView",
    "LocalMembers",
    "Member",
    "Summary",
]

MEMBER_ANNOTATION = "spillover.dev/member"
ENVOYS_ANNOTATION = "spillover.dev/envoys"
DEFAULT_BUDGET = 160_000  # bytes of the packed Envoy list: annotations are limited to 256 KiB in total
_MAX_ID = 512  # a node id longer than this is cut (Envoys get theirs from pod names: 63 at most)
_MAX_GROUPS = 4096
_MAX_ENVOYS = 500_000
_MAX_MORE = 10_000_000
_ANCIENT = 10  # lease durations: a Lease older than this when first seen is a dead replica's


@dataclass(frozen=True)
class Summary:
    """One replica's Envoys: group -> node id -> since (wall clock), and the unnamed ones per group."""

    identity: str
    peer: str = ""  # where its peer endpoint is ("" when it has none)
    started: float = 0.0  # when the replica started (wall clock)
    envoys: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    more: Mapping[str, int] = field(default_factory=dict)

    def count(self, group: str) -> int:
        return len(self.envoys.get(group, {})) + self.more.get(group, 0)

    def groups(self) -> set[str]:
        return {g for g in self.envoys if self.envoys[g]} | {g for g, n in self.more.items() if n}

    def total(self) -> int:
        return sum(self.count(group) for group in self.groups())

    def annotations(self, budget: int = DEFAULT_BUDGET) -> dict[str, str]:
        """The Lease annotations of this summary. Envoys are listed oldest first while the packed list
        fits `budget` bytes; the others are counted in `more`."""
        member = json.dumps(
            {"v": 1, "identity": self.identity, "peer": self.peer, "started": round(self.started, 3)},
            separators=(",", ":"), sort_keys=True,
        )
        entries = sorted(
            (since, group, node) for group, nodes in self.envoys.items() for node, since in nodes.items()
        )

        def packed(listed: int) -> str:
            groups: dict[str, list[list[Any]]] = {}
            more = {g: n for g, n in self.more.items() if n}
            for since, group, node in entries[:listed]:
                groups.setdefault(group, []).append([node, round(since, 3)])
            for _since, group, _node in entries[listed:]:
                more[group] = more.get(group, 0) + 1
            return pack({"v": 1, "groups": groups, "more": more})

        text = packed(len(entries))
        if len(text) > budget:
            low, high = 0, len(entries)  # the largest number of listed Envoys that fits
            while low < high:
                middle = (low + high + 1) // 2
                if len(packed(middle)) <= budget:
                    low = middle
                else:
                    high = middle - 1
            text = packed(low)
        return {MEMBER_ANNOTATION: member, ENVOYS_ANNOTATION: text}

    @classmethod
    def from_annotations(cls, annotations: Mapping[str, Any], holder: str) -> Summary:
        """The summary another replica published; ValueError (naming the problem) when it is not one."""
        try:
            member = json.loads(str(annotations.get(MEMBER_ANNOTATION) or "{}"))
        except ValueError:
            raise ValueError(f"{MEMBER_ANNOTATION}: not JSON") from None
        if not isinstance(member, dict):
            raise ValueError(f"{MEMBER_ANNOTATION}: not an object")
        peer = member.get("peer") or ""
        started = member.get("started") or 0.0
        if not isinstance(peer, str) or len(peer) > 512 or not _finite(started):
            raise ValueError(f"{MEMBER_ANNOTATION}: bad peer or started")
        document = unpack(annotations.get(ENVOYS_ANNOTATION) or "")
        if not isinstance(document, dict) or document.get("v") != 1:
            raise ValueError(f"{ENVOYS_ANNOTATION}: not a version 1 document")
        groups, more = document.get("groups") or {}, document.get("more") or {}
        if not isinstance(groups, dict) or not isinstance(more, dict) or len(groups) + len(more) > _MAX_GROUPS:
            raise ValueError(f"{ENVOYS_ANNOTATION}: groups must be a bounded object")
        envoys: dict[str, dict[str, float]] = {}
        seen = 0
        for group, nodes in groups.items():
            if not isinstance(nodes, list):
                raise ValueError(f"{ENVOYS_ANNOTATION}: group {group[:64]!r} is not a list")
            seen += len(nodes)
            if seen > _MAX_ENVOYS:
                raise ValueError(f"{ENVOYS_ANNOTATION}: more than {_MAX_ENVOYS} Envoys")
            into = envoys.setdefault(str(group)[:_MAX_ID], {})
            for item in nodes:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and _finite(item[1])):
                    raise ValueError(f"{ENVOYS_ANNOTATION}: an entry of {group[:64]!r} is not [node, since]")
                into[item[0][:_MAX_ID]] = float(item[1])
        counted: dict[str, int] = {}
        for group, n in more.items():
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= _MAX_MORE:
                raise ValueError(f"{ENVOYS_ANNOTATION}: more of {group[:64]!r} is not a count")
            counted[str(group)[:_MAX_ID]] = n
        return cls(holder, peer, float(started), envoys, counted)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _wall(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass
class Member:
    """Another replica, as its Lease says."""

    name: str  # the Lease's name
    identity: str
    summary: Summary
    duration: float
    changed_at: float  # this replica's monotonic time when the Lease last changed
    resource_version: str
    renewed: float | None = None  # the Lease's renewTime (the writer's wall clock), for display
    problem: str = ""  # why its summary could not be read (the last good one is kept)
    forgotten: bool = False  # renewed long before this replica first saw it: a dead replica's


@dataclass(frozen=True)
class FleetEnvoy:
    node_id: str
    group: str
    replicas: tuple[str, ...]  # who serves it (two while it moves)
    since: float


class FleetView:
    """Every other replica's Lease, and which of them are alive (see the module docstring)."""

    def __init__(self, identity: str, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.identity = identity
        self.clock = clock
        self.wall = wall
        self.members: dict[str, Member] = {}
        self.current = False
        self.current_since = clock()

    def set_current(self, current: bool) -> bool:
        """Whether this replica's own view is current; True when that changed."""
        if current == self.current:
            return False
        self.current = current
        if current:
            self.current_since = self.clock()  # everyone gets a full lease duration from now
        return True

    def observe(self, lease: Mapping[str, Any]) -> bool:
        """A member Lease was added or changed; True when what it says changed."""
        metadata = lease.get("metadata") or {}
        spec = lease.get("spec") or {}
        name = str(metadata.get("name") or "")
        holder = str(spec.get("holderIdentity") or "")
        if not name or holder == self.identity:
            return False
        if not holder:  # released: the replica left gracefully
            return self.remove(name)
        version = str(metadata.get("resourceVersion") or "")
        known = self.members.get(name)
        if known is not None and known.resource_version == version:
            return False
        raw_duration = spec.get("leaseDurationSeconds")
        duration = float(raw_duration) if isinstance(raw_duration, int | float) and 1 <= raw_duration <= 3600 else 15.0
        renewed = _wall(spec.get("renewTime"))
        forgotten = known.forgotten if known is not None else (
            renewed is not None and renewed + _ANCIENT * duration < self.wall())
        changed_at = self.clock()
        problem = ""
        try:
            summary = Summary.from_annotations(metadata.get("annotations") or {}, holder)
        except ValueError as exc:
            problem = str(exc)
            summary = known.summary if known is not None else Summary(holder)
        if known is not None and known.forgotten:
            forgotten = False  # it changed: whoever holds it renews it
        self.members[name] = Member(name, holder, summary, duration, changed_at, version, renewed, problem, forgotten)
        return known is None or known.summary != summary or problem != known.problem

    def remove(self, name: str) -> bool:
        return self.members.pop(name, None) is not None

    def alive(self, member: Member) -> bool:
        if not self.current:
            return True
        if member.forgotten:
            return False
        return self.clock() - max(member.changed_at, self.current_since) < member.duration

    def live(self) -> list[Member]:
        return [m for _, m in sorted(self.members.items()) if self.alive(m)]

    def expired(self) -> list[Member]:
        return [m for _, m in sorted(self.members.items()) if not self.alive(m)]

    def next_expiry(self) -> float | None:
        """The monotonic time the next live member expires if it does not renew (None: none)."""
        if not self.current:
            return None
        times = [max(m.changed_at, self.current_since) + m.duration for m in self.live()]
        return min(times) if times else None

    def count(self, group: str, local: Summary) -> int:
        """The Envoys of `group` across the fleet: named ones once each, unnamed ones all."""
        names = set(local.envoys.get(group, {}))
        more = local.more.get(group, 0)
        for member in self.live():
            names.update(member.summary.envoys.get(group, {}))
            more += member.summary.more.get(group, 0)
        return len(names) + more

    def groups(self, local: Summary) -> set[str]:
        found = local.groups()
        for member in self.live():
            found |= member.summary.groups()
        return found

    def envoys(self, local: Summary) -> list[FleetEnvoy]:
        """Every named Envoy of the fleet, with the replicas that serve it."""
        seen: dict[tuple[str, str], tuple[list[str], float]] = {}
        for summary in [local, *(m.summary for m in self.live())]:
            for group, nodes in summary.envoys.items():
                for node, since in nodes.items():
                    replicas, first = seen.setdefault((group, node), ([], since))
                    replicas.append(summary.identity)
                    seen[(group, node)] = (replicas, min(first, since))
        return [
            FleetEnvoy(node, group, tuple(sorted(replicas)), since)
            for (group, node), (replicas, since) in sorted(seen.items())
        ]


@dataclass
class _Kept:
    group: str
    since: float
    until: float  # monotonic


class LocalMembers:
    """This replica's Envoys as it publishes them (see the module docstring)."""

    def __init__(self, linger: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.linger = linger
        self.clock = clock
        self.connected: dict[tuple[str, str], float] = {}  # (group, node) -> since
        self.kept: dict[tuple[str, str], _Kept] = {}  # left, or of the previous run: counted until `until`

    def adopt(self, previous: Summary, until: float) -> None:
        """The Envoys this identity published before a restart, counted until `until` (monotonic)."""
        for group, nodes in previous.envoys.items():
            for node, since in nodes.items():
                self.kept[(group, node)] = _Kept(group, since, until)

    def update(self, connected: Iterable[tuple[str, str, float]]) -> bool:
        """The connected Envoys now, as (node id, group, since); True when the set changed."""
        now = self.clock()
        current: dict[tuple[str, str], float] = {}
        for node, group, since in connected:
            key = (group, node)
            current[key] = min(since, current.get(key, since))
        if current.keys() == self.connected.keys():
            self.connected = current
            return False
        for key, since in self.connected.items():
            if key not in current:
                self.kept[key] = _Kept(key[0], since, now + self.linger)
        for key in current:
            self.kept.pop(key, None)
        self.connected = current
        return True

    def expire(self) -> bool:
        """Drops what was kept long enough; True when something was dropped."""
        now = self.clock()
        due = [key for key, kept in self.kept.items() if kept.until <= now]
        for key in due:
            del self.kept[key]
        return bool(due)

    def next_expiry(self) -> float | None:
        return min((kept.until for kept in self.kept.values()), default=None)

    def summary(self, identity: str, peer: str = "", started: float = 0.0) -> Summary:
        envoys: dict[str, dict[str, float]] = {}
        for (group, node), since in self.connected.items():
            envoys.setdefault(group, {})[node] = since
        for (group, node), kept in self.kept.items():
            envoys.setdefault(group, {}).setdefault(node, kept.since)
        return Summary(identity, peer, started, envoys, {})
