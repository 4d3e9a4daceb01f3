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

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterHealth:
    healthy: int
    total: int


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

    async def read(self) -> dict[str, ClusterHealth] | None:
        """Merged cluster health, or None when no Envoy answered (health unknown)."""
        urls = list(self.admin_urls())
        if not urls:
            return None
        if self._session is None:
            self._session = aiohttp.ClientSession()
        results = await asyncio.gather(*(self._read_one(url) for url in urls))
        views = [view for view in results if view is not None]
        return merge(views) if views else None

    async def _read_one(self, url: str) -> dict[str, ClusterHealth] | None:
        assert self._session is not None
        try:
            async with self._session.get(
                f"{url}/clusters?format=json", timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as response:
                if response.status != 200:
                    return None
                return parse_clusters(await response.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            log.debug("cannot read cluster health from %s: %s", url, error)
            return None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def local_ready(health: Mapping[str, ClusterHealth] | None, local_prefix: str) -> int | None:
    """Ready local endpoints of a model: the best of its local clusters (they share endpoints)."""
    if health is None:
        return None
    counts = [h.healthy for name, h in health.items() if name.startswith(local_prefix)]
    return max(counts) if counts else None


def remote_healthy(health: Mapping[str, ClusterHealth] | None, remote_cluster: str) -> bool | None:
    if health is None or remote_cluster not in health:
        return None
    cluster = health[remote_cluster]
    return None if cluster.total == 0 else cluster.healthy > 0
