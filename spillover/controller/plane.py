"""The running control plane: one provider feeding the xDS server through the snapshot cache."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry

from spillover.controller.admin import AdminServer
from spillover.controller.admin_auth import AdminOptions
from spillover.controller.contracts import Companion, GroupView, Provider, SnapshotProvider
from spillover.controller.persist import GroupReplicas
from spillover.server import event_loop as event_loops
from spillover.server.bounds import printable
from spillover.server.cache import Snapshot, SnapshotCache
from spillover.server.service import XdsOptions, XdsServer, group_by_cluster
from spillover.server.workers import WorkerPool

log = logging.getLogger(__name__)


@dataclass
class ControlPlane:
    """One provider feeding the xDS server through the snapshot cache, with the admin endpoint."""

    provider: Provider
    debounce: float = 0.1
    max_delay: float = 1.0
    group_of: Callable[..., str] = group_by_cluster
    # More than 1: the streams are served by that many worker processes (snapshots are still built here).
    xds_workers: int = 1
    # The event loop of those worker processes (spillover/server/event_loop.py).
    worker_event_loop: str = event_loops.DEFAULT
    registries: list[CollectorRegistry] = field(default_factory=list)
    debug_routes: list[web.RouteDef] = field(default_factory=list)
    # Companions that live as long as the server (e.g. status publishing in Kubernetes mode).
    services: list[Companion] = field(default_factory=list)
    # mTLS, admission and bounds of the xDS port; credentials for the admin endpoint's debug views.
    xds_options: XdsOptions = field(default_factory=XdsOptions)
    admin_options: AdminOptions = field(default_factory=AdminOptions)
    # How many Envoys each group has (the rate-limit divisor); by default the connected count.
    group_replicas: GroupReplicas = field(default_factory=lambda: GroupReplicas(grace=0.0))
    # Fleet mode (controller/fleet): the group's Envoys across every replica, from the connected count here.
    count_of: Callable[[str, int], int] | None = None
    # More reasons to be (not) ready than the provider's: (ready, notes) each.
    readiness_checks: list[Callable[[], tuple[bool, list[str]]]] = field(default_factory=list)
    # More for /debug/proxies (the fleet's Envoys, with who serves them).
    proxies_extra: Callable[[], dict[str, object]] | None = None
    cache: SnapshotCache = field(init=False)
    xds: XdsServer = field(init=False)
    admin: AdminServer | None = field(init=False, default=None)
    _tasks: list[asyncio.Task[None]] = field(init=False, default_factory=list)
    _started: bool = field(init=False, default=False)
    _rebuilds: set[str] = field(init=False, default_factory=set)
    _xds_address: str | None = field(init=False, default=None)
    _suspended: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.cache = SnapshotCache(debounce=self.debounce, max_delay=self.max_delay)
        if self.xds_workers > 1:
            self.xds = WorkerPool(
                self.cache, self.xds_workers, group_of=self.group_of, options=self.xds_options,
                event_loop=self.worker_event_loop,
            )
        else:
            self.xds = XdsServer(self.cache, group_of=self.group_of, options=self.xds_options)
        self.provider.changed = self.refresh_all
        self.provider.attach(self.xds.proxies)
        self.xds.proxies.on_change.append(self._group_changed)
        self.xds.on_group_expired.append(self._group_expired)

    def _group_changed(self, group: str) -> None:
        # A group's first proxy needs its snapshot right away. Later replica changes come in storms (a
        # gateway fleet restarting): they are coalesced into one build per group, not one per Envoy.
        if self.cache.get(group) is None:
            self.cache.set_snapshot(group, self.build(group))
        elif group not in self._rebuilds:
            self._rebuilds.add(group)
            asyncio.get_running_loop().call_later(self.debounce, self._rebuild, group)

    def _group_expired(self, group: str) -> None:
        # Forgotten by the xDS server (no stream for its grace period): its size is not kept for later.
        self._rebuilds.discard(group)
        self.group_replicas.forget(group)

    def _rebuild(self, group: str) -> None:
        self._rebuilds.discard(group)
        if self.cache.get(group) is None:
            return  # forgotten in the meantime (no stream for its grace period): nothing to rebuild
        try:
            self.cache.set_snapshot(group, self.build(group))
        except Exception:
            log.exception("building resources for group %s failed; it keeps its last snapshot", group)

    def build(self, group: str) -> Snapshot:
        connected = self.xds.proxies.replicas(group)
        if self.count_of is not None:
            connected = max(connected, self.count_of(group, connected))
        view = GroupView(name=group, replicas=self.group_replicas.replicas(group, connected))
        if isinstance(self.provider, SnapshotProvider):
            # Built from the group's published snapshot: only what changed since is translated.
            return self.provider.snapshot(view, self.cache.get(group))
        return Snapshot.from_messages(self.provider.resources(view))

    def resized(self, group: str) -> None:
        """The group's Envoys elsewhere in the fleet changed: its snapshot is rebuilt (debounced) if it is served here."""
        if self.cache.get(group) is not None and group not in self._rebuilds:
            self._rebuilds.add(group)
            asyncio.get_running_loop().call_later(self.debounce, self._rebuild, group)

    async def suspend_xds(self) -> None:
        """Stops serving xDS (every stream ends, the port closes): Envoys reconnect to another replica
        and keep their configuration meanwhile. Snapshots are kept."""
        if self._xds_address is not None and not self._suspended:
            self._suspended = True
            await self.xds.stop()

    async def resume_xds(self) -> None:
        if self._suspended and self._xds_address is not None and self.xds.port is not None:
            host = self._xds_address.rsplit(":", 1)[0]
            await self.xds.start(f"{host}:{self.xds.port}")
            self._suspended = False

    def refresh_all(self, urgent: bool = False) -> None:
        for group in self.cache.groups():
            try:
                snapshot = self.build(group)
            except Exception:
                log.exception("building resources for group %s failed; it keeps its last snapshot", group)
                continue
            if urgent:
                self.cache.set_snapshot(group, snapshot)
            else:
                self.cache.update(group, snapshot)

    async def start(self, xds_address: str, admin_host: str = "127.0.0.1", admin_port: int = 0) -> None:
        await self.provider.warm_up()
        # The groups served before a restart get their snapshot before any Envoy is answered: one that
        # reconnects with the current versions must find them there, or it is sent them again. Like any
        # group they are forgotten after the grace period if no stream of theirs comes back.
        for group in sorted(self.group_replicas.known):
            if not self.xds.expect_group(group):
                log.warning("node group '%s' of the state file is not restored: at most %d groups at once",
                            printable(group, 64), self.xds.groups.max_groups)
                self.group_replicas.forget(group)
                continue
            try:
                self.cache.set_snapshot(group, self.build(group))
            except Exception:
                log.exception("building resources for group %s failed", group)
        await self.xds.start(xds_address)
        self._xds_address = xds_address
        if self.group_replicas.in_grace():
            # When the grace ends, groups that came back smaller get their own division.
            remaining = self.group_replicas.grace - (self.group_replicas.clock() - self.group_replicas.started)
            asyncio.get_running_loop().call_later(max(0.0, remaining) + 0.01, self.refresh_all)
        self.admin = AdminServer(
            self.xds,
            [self.xds.metrics_registry, *self.registries],
            ready=self.readiness,
            extra_routes=self.debug_routes,
            options=self.admin_options,
            proxies_extra=self.proxies_extra,
        )
        try:
            await self.admin.start(admin_host, admin_port)
        except BaseException:
            await self.xds.stop(0)
            raise
        self._tasks.append(asyncio.get_running_loop().create_task(self.provider.run()))
        for service in self.services:
            await service.start()
        self._started = True

    def readiness(self) -> tuple[bool, list[str]]:
        if not self._started:
            return False, ["starting"]
        ready, notes = self.provider.readiness()
        for check in self.readiness_checks:
            more_ready, more_notes = check()
            ready, notes = ready and more_ready, [*notes, *more_notes]
        return ready, notes

    async def stop(self) -> None:
        self._started = False
        for service in reversed(self.services):
            try:
                await service.stop()
            except Exception:
                log.exception("stopping %s failed", type(service).__name__)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.xds.stop()
        if self.admin is not None:
            await self.admin.stop()


async def run_until_signalled(plane: ControlPlane, xds_address: str, admin_host: str, admin_port: int) -> None:
    await plane.start(xds_address, admin_host, admin_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down: Envoys keep serving their last configuration")
        await plane.stop()
