"""Endpoint health as the Envoys see it (`/clusters?format=json`): how many local endpoints of a model
are ready, and whether its remote backend is healthy.

Envoy's active health checks and outlier detection do the probing; spillover only reads their verdict,
so failover needs no probe of its own and agrees with what Envoy will route to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from spillover.names import is_local_cluster, remote_cluster_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterHealth:
    healthy: int
    total: int


@dataclass(frozen=True)
class HostLoad:
    """One endpoint's request counters in one cluster, summed over the Envoys that read it."""

    rq_total: int
    rq_active: int


def _stat(host: Mapping[str, Any], name: str) -> int:
    for stat in host.get("stats") or []:
        if stat.get("name") == name:
            try:
                return int(stat.get("value", 0))
            except (TypeError, ValueError):
                return 0
    return 0


def _address(host: Mapping[str, Any]) -> str:
    socket = (host.get("address") or {}).get("socket_address") or {}
    return f"{socket.get('address', '')}:{socket.get('port_value', 0)}"


def parse_loads(document: Mapping[str, Any]) -> dict[str, dict[str, HostLoad]]:
    return {
        str(cluster.get("name", "")): {
            _address(host): HostLoad(_stat(host, "rq_total"), _stat(host, "rq_active"))
            for host in cluster.get("host_statuses") or []
        }
        for cluster in document.get("cluster_statuses") or []
    }


def sum_loads(views: Iterable[Mapping[str, Mapping[str, HostLoad]]]) -> dict[str, dict[str, HostLoad]]:
    total: dict[str, dict[str, HostLoad]] = {}
    for view in views:
        for cluster, hosts in view.items():
            into = total.setdefault(cluster, {})
            for address, load in hosts.items():
                seen = into.get(address)
                into[address] = load if seen is None else HostLoad(
                    seen.rq_total + load.rq_total, seen.rq_active + load.rq_active
                )
    return total


def host_is_healthy(host: Mapping[str, Any]) -> bool:
    status = host.get("health_status") or {}
    if any(key.startswith("failed_") and value for key, value in status.items()):
        return False
    if status.get("pending_dynamic_removal"):
        return False
    return status.get("eds_health_status", "HEALTHY") in ("HEALTHY", "UNKNOWN")


def parse_clusters(document: Mapping[str, Any]) -> dict[str, ClusterHealth]:
    out: dict[str, ClusterHealth] = {}
    for cluster in document.get("cluster_statuses") or []:
        hosts = cluster.get("host_statuses") or []
        out[str(cluster.get("name", ""))] = ClusterHealth(
            healthy=sum(1 for host in hosts if host_is_healthy(host)), total=len(hosts)
        )
    return out


def merge(views: Iterable[Mapping[str, ClusterHealth]]) -> dict[str, ClusterHealth]:
    """Across Envoys, a cluster is as healthy as the most optimistic Envoy sees it: their checks run
    independently, and one Envoy lagging must not declare a failover the others don't see."""
    merged: dict[str, ClusterHealth] = {}
    for view in views:
        for name, health in view.items():
            current = merged.get(name)
            if current is None or health.healthy > current.healthy:
                merged[name] = health
    return merged


class HealthReader:
    def __init__(self, admin_urls: Callable[[], Iterable[str]], timeout: float = 2.0) -> None:
        self.admin_urls = admin_urls
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        # Per-endpoint request counters of the last read, summed over the Envoys that answered.
        self.loads: dict[str, dict[str, HostLoad]] = {}

    async def read(self) -> dict[str, ClusterHealth] | None:
        """Merged cluster health, or None when no Envoy answered (health unknown)."""
        urls = list(self.admin_urls())
        if not urls:
            self.loads = {}
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        results = await asyncio.gather(*(self._read_one(url) for url in urls))
        documents = [document for document in results if document is not None]
        self.loads = sum_loads(parse_loads(document) for document in documents)
        return merge(parse_clusters(document) for document in documents) if documents else None

    async def _read_one(self, url: str) -> Mapping[str, Any] | None:
        assert self._session is not None
        try:
            async with self._session.get(
                f"{url}/clusters?format=json", timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as response:
                if response.status != 200:
                    return None
                document = await response.json(content_type=None)
                return document if isinstance(document, dict) else None
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            log.debug("cannot read cluster health from %s: %s", url, error)
            return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def local_ready(health: Mapping[str, ClusterHealth] | None, model: str) -> int | None:
    """Ready local endpoints of a model: the best of its local clusters (they share endpoints)."""
    if health is None:
        return None
    counts = [h.healthy for name, h in health.items() if is_local_cluster(name, model)]
    return max(counts) if counts else None


def remote_healthy(health: Mapping[str, ClusterHealth] | None, model: str) -> bool | None:
    """Whether the model's remote backend passes Envoy's health checks (None: not known)."""
    remote_cluster = remote_cluster_name(model)
    if health is None or remote_cluster not in health:
        return None
    cluster = health[remote_cluster]
    return None if cluster.total == 0 else cluster.healthy > 0
