"""What the Envoys report, fleet-wide: each replica reads its own, the leader gathers them all.

Every replica keeps reading its own Envoys every round (their stats, their `/clusters`), whether it
decides or not, and keeps the result as its *inputs*: per Envoy metric an `EnvoyPartial`, the endpoint
health its Envoys see (merged: the most optimistic), their per-endpoint request counters, and which
Envoys (node ids) it read. The leader fetches every other replica's inputs once per round over the
peer channel and combines them with its own (`FleetEnvoySource`, `FleetHealthReader`), so that it
decides on every Envoy of the fleet.

A view with a hole is not a view: when an Envoy the fleet knows of (connected for more than
`join_grace`, by the clock of the replica it connected to) is read by no replica whose inputs are fresh (a replica that does not answer, a peer
channel that is off), the leader's Envoy metrics are unknown ("not every Envoy reported") and endpoint
health is unknown: the engine holds its states (onMetricError), never deciding on part of the fleet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spillover.controller.fleet.membership import FleetEnvoy
from spillover.controller.fleet.peers import INPUTS_PATH, PeerClient
from spillover.policy.presets import Reducer
from spillover.sources.metrics.envoy import EnvoyPartial, EnvoyScrape, EnvoySource, combine_partials
from spillover.sources.metrics.health import ClusterHealth, HealthReader, HostLoad, merge, sum_loads
from spillover.sources.metrics.render import EnvoyQuery
from spillover.sources.metrics.sample import Sample

log = logging.getLogger(__name__)

__all__ = ["FleetEnvoySource", "FleetHealthReader", "FleetInputs", "PeerInputs", "metric_key"]

_MAX_KEYS = 100_000
_MAX_CLUSTERS = 100_000
_KEY_TTL = 30.0  # a metric no longer read for this long leaves the inputs


def metric_key(query: EnvoyQuery, window: float) -> str:
    return json.dumps([query.stat, query.kind, query.cluster_prefix, query.per, query.percentile, window])


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass
class PeerInputs:
    """One other replica's inputs, as the leader last received them."""

    identity: str
    received: float  # the leader's monotonic time
    age: float  # how old the replica said they were
    envoys: frozenset[str] = frozenset()
    metrics: dict[str, EnvoyPartial] = field(default_factory=dict)
    health: dict[str, ClusterHealth] | None = None
    loads: dict[str, dict[str, HostLoad]] = field(default_factory=dict)


def parse_inputs(document: Mapping[str, Any], identity: str, received: float) -> PeerInputs:
    """A peer's inputs document, checked; ValueError on anything malformed or out of bounds."""
    if document.get("v") != 1 or document.get("identity") != identity:
        raise ValueError("not a version 1 inputs document of that replica")
    age = document.get("age")
    envoys = document.get("envoys") or []
    metrics = document.get("metrics") or {}
    if not isinstance(age, int | float) or not _finite(age) or not isinstance(envoys, list) or not isinstance(metrics, dict) or len(metrics) > _MAX_KEYS:
        raise ValueError("age, envoys or metrics malformed")
    parsed: dict[str, EnvoyPartial] = {}
    for key, item in metrics.items():
        if not (isinstance(item, list) and len(item) == 8 and _count(item[0]) and all(_finite(x) for x in item[1:4])
                and _count(item[4]) and _count(item[5]) and isinstance(item[6], str) and isinstance(item[7], str)):
            raise ValueError(f"metric {str(key)[:80]!r} malformed")
        parsed[str(key)] = EnvoyPartial(item[0], float(item[1]), float(item[2]), float(item[3]), item[4], item[5],
                                        item[6][:200], item[7][:200])
    health: dict[str, ClusterHealth] | None = None
    raw_health = document.get("health")
    if raw_health is not None:
        if not isinstance(raw_health, dict) or len(raw_health) > _MAX_CLUSTERS:
            raise ValueError("health malformed")
        health = {}
        for cluster, pair in raw_health.items():
            if not (isinstance(pair, list) and len(pair) == 2 and _count(pair[0]) and _count(pair[1])):
                raise ValueError("health malformed")
            health[str(cluster)] = ClusterHealth(pair[0], pair[1])
    loads: dict[str, dict[str, HostLoad]] = {}
    raw_loads = document.get("loads") or {}
    if not isinstance(raw_loads, dict) or len(raw_loads) > _MAX_CLUSTERS:
        raise ValueError("loads malformed")
    for cluster, hosts in raw_loads.items():
        if not isinstance(hosts, dict):
            raise ValueError("loads malformed")
        for address, pair in hosts.items():
            if not (isinstance(pair, list) and len(pair) == 2 and _count(pair[0]) and _count(pair[1])):
                raise ValueError("loads malformed")
            loads.setdefault(str(cluster), {})[str(address)] = HostLoad(pair[0], pair[1])
    return PeerInputs(identity, received, float(age), frozenset(str(e) for e in envoys), parsed, health, loads)


class FleetInputs:
    """This replica's inputs (served to the leader) and, when it decides, everyone else's."""

    def __init__(
        self,
        identity: str,
        *,
        local_envoys: Callable[[], Iterable[str]],
        peers: Callable[[], list[tuple[str, str]]],
        fleet_envoys: Callable[[], list[FleetEnvoy]],
        unnamed: Callable[[], Mapping[str, int]],
        deciding: Callable[[], bool],
        client: PeerClient | None,
        max_age: float = 2.0,
        join_grace: float = 2.0,
        min_interval: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self._local_envoys = local_envoys
        self._peers = peers
        self._fleet_envoys = fleet_envoys
        self._unnamed = unnamed
        self.deciding = deciding
        self.client = client
        self.max_age = max_age
        self.join_grace = join_grace
        self.min_interval = min_interval
        self.clock = clock
        self.wall = wall
        self._metrics: dict[str, tuple[float, EnvoyPartial]] = {}
        self._health: dict[str, ClusterHealth] | None = None
        self._loads: dict[str, dict[str, HostLoad]] = {}
        self._envoys: frozenset[str] = frozenset()
        self._read_at: float | None = None
        self.received: dict[str, PeerInputs] = {}
        self.errors: dict[str, str] = {}  # identity -> why its last fetch failed
        self._fetch: asyncio.Task[None] | None = None
        self._fetched_at = -1e9
        self._retry_at: dict[str, float] = {}

    # -- this replica's own readings ---------------------------------------------------------------

    def record_metric(self, key: str, partial: EnvoyPartial) -> None:
        self._metrics[key] = (self.clock(), partial)

    def record_health(self, health: Mapping[str, ClusterHealth] | None, loads: Mapping[str, Mapping[str, HostLoad]]) -> None:
        self._health = None if health is None else dict(health)
        self._loads = {cluster: dict(hosts) for cluster, hosts in loads.items()}
        self._envoys = frozenset(self._local_envoys())
        self._read_at = self.clock()

    def document(self) -> dict[str, Any]:
        """The inputs as the peer channel serves them."""
        now = self.clock()
        for key in [k for k, (at, _) in self._metrics.items() if now - at > _KEY_TTL]:
            del self._metrics[key]
        return {
            "v": 1,
            "identity": self.identity,
            "age": round(now - self._read_at, 3) if self._read_at is not None else 1e9,
            "envoys": sorted(self._envoys),
            "metrics": {
                key: [p.count, p.total, p.highest, p.per, p.tried, p.answered, p.why, p.error]
                for key, (_, p) in self._metrics.items()
            },
            "health": None if self._health is None else {c: [h.healthy, h.total] for c, h in self._health.items()},
            "loads": {c: {a: [load.rq_total, load.rq_active] for a, load in hosts.items()} for c, hosts in self._loads.items()},
        }

    # -- the leader's gathering --------------------------------------------------------------------

    async def refresh(self) -> None:
        """Fetches every live peer's inputs, at most once per `min_interval` (callers of one round share it)."""
        if self._fetch is not None and not self._fetch.done():
            await asyncio.shield(self._fetch)
            return
        if self.clock() - self._fetched_at < self.min_interval:
            return
        self._fetched_at = self.clock()
        self._fetch = asyncio.get_running_loop().create_task(self._fetch_all())
        await asyncio.shield(self._fetch)

    async def _fetch_all(self) -> None:
        now = self.clock()
        live = self._peers()
        known = {identity for identity, _ in live}
        for identity in [i for i in self.received if i not in known]:  # replicas gone: forget them
            del self.received[identity]
        for identity in [i for i in self.errors if i not in known]:
            del self.errors[identity]
        # A replica that did not answer is asked again a second later, not every round: its inputs are
        # missing either way, and a round should not wait on it.
        peers = [(identity, url) for identity, url in live
                 if identity != self.identity and url and self._retry_at.get(identity, 0.0) <= now]
        if self.client is None or not peers:
            return
        results = await asyncio.gather(
            *(self.client.get(url, INPUTS_PATH) for _, url in peers), return_exceptions=True
        )
        for (identity, _url), result in zip(peers, results, strict=True):
            if isinstance(result, BaseException):
                self._note_error(identity, f"{type(result).__name__}: {result}" if str(result) else type(result).__name__)
                continue
            try:
                self.received[identity] = parse_inputs(result, identity, self.clock())
                self.errors.pop(identity, None)
                self._retry_at.pop(identity, None)
            except ValueError as exc:
                self._note_error(identity, f"malformed inputs: {exc}")

    def _note_error(self, identity: str, error: str) -> None:
        self._retry_at[identity] = self.clock() + 1.0
        if self.errors.get(identity) != error:
            log.warning("fleet: the inputs of replica %s: %s", identity, error[:300])
        self.errors[identity] = error[:300]

    def fresh(self) -> list[PeerInputs]:
        live = {identity for identity, _ in self._peers()}
        now = self.clock()
        return [
            p for identity, p in sorted(self.received.items())
            if identity in live and now - p.received + p.age <= self.max_age
        ]

    def missing(self) -> str:
        """Why the fleet's view has a hole this round ("" when every Envoy is read by someone)."""
        fresh = self.fresh()
        covered = set(self._local_envoys()).union(*(p.envoys for p in fresh))
        now = self.wall()
        holes: dict[str, int] = {}
        for envoy in self._fleet_envoys():
            if envoy.node_id not in covered and now - envoy.since >= self.join_grace:
                for replica in envoy.replicas:
                    holes[replica] = holes.get(replica, 0) + 1
        answered = {p.identity for p in fresh}
        for identity, count in self._unnamed().items():
            if count and identity != self.identity and identity not in answered:
                holes[identity] = holes.get(identity, 0) + count
        if not holes:
            return ""
        parts = []
        for identity, count in sorted(holes.items()):
            why = self.errors.get(identity) or ("no peer channel" if self.client is None else "no fresh inputs")
            parts.append(f"{count} Envoy(s) of replica {identity}: {why}")
        return "; ".join(parts)

    def remote_partials(self, key: str) -> list[EnvoyPartial] | None:
        """Every fresh peer's partial of a metric; None when a peer with Envoys has not read it yet."""
        out = []
        for peer in self.fresh():
            partial = peer.metrics.get(key)
            if partial is None:
                if peer.envoys:
                    return None
                continue
            out.append(partial)
        return out


class FleetEnvoySource(EnvoySource):
    """The Envoy metric source of a fleet replica: its own Envoys' partials, combined on the leader with
    every other replica's."""

    def __init__(self, admin_urls: Callable[[], Iterable[str]], inputs: FleetInputs, **options: Any) -> None:
        super().__init__(admin_urls, **options)
        self.inputs = inputs

    async def scrape(self) -> EnvoyScrape:
        if not self.inputs.deciding():
            return await super().scrape()
        scrape, _ = await asyncio.gather(super().scrape(), self.inputs.refresh())
        return scrape

    def evaluate(self, scrape: EnvoyScrape, query: EnvoyQuery, reducer: Reducer, window: float = 60.0) -> Sample:
        local = self.partial(scrape, query, window)
        key = metric_key(query, window)
        self.inputs.record_metric(key, local)
        if not self.inputs.deciding():
            return combine_partials([local], query, reducer, scrape.at)
        hole = self.inputs.missing()
        if hole:
            return Sample(None, scrape.at, f"envoy: not every Envoy of the fleet reported ({hole})")
        remote = self.inputs.remote_partials(key)
        if remote is None:
            return Sample(None, scrape.at, "envoy: a replica has not read this metric yet")
        return combine_partials([local, *remote], query, reducer, scrape.at)


class FleetHealthReader(HealthReader):
    """Endpoint health and per-endpoint load as every Envoy of the fleet sees them (on the leader)."""

    def __init__(self, admin_urls: Callable[[], Iterable[str]], inputs: FleetInputs, timeout: float = 2.0) -> None:
        super().__init__(admin_urls, timeout)
        self.inputs = inputs

    async def read(self) -> dict[str, ClusterHealth] | None:
        if not self.inputs.deciding():
            local = await super().read()
            self.inputs.record_health(local, self.loads)
            return local
        local, _ = await asyncio.gather(super().read(), self.inputs.refresh())
        own_loads = self.loads
        self.inputs.record_health(local, own_loads)
        if self.inputs.missing():
            return None  # unknown: no FAILOVER is entered (or left) on part of the fleet
        peers = self.inputs.fresh()
        views = ([local] if local is not None else []) + [p.health for p in peers if p.health is not None]
        self.loads = sum_loads([own_loads, *(p.loads for p in peers)])
        return merge(views) if views else None
