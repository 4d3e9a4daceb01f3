"""Wires the pipeline together: a provider of desired resources -> snapshot cache -> xDS server.

A provider turns its inputs (a file of Envoy resources, model policies, metrics) into the resources
of one node group. The connected proxies are one of those inputs — e.g. a model's rate limit is divided
among the replicas of a group — so the registry of streams is observed like any other source instead of
the xDS layer calling upstream.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import pkgutil
import signal
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

from spillover.admin import AdminServer
from spillover.server.cache import Snapshot, SnapshotCache
from spillover.server.resources import MESSAGE_CLASSES, TYPE_PREFIX
from spillover.server.service import ProxyRegistry, XdsServer, group_by_cluster

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GroupView:
    """What a provider knows about the node group it builds resources for."""

    name: str
    replicas: int


class Provider(Protocol):
    """Produces the resources of a node group. The app sets `changed`; call it on every change.

    `changed(urgent=True)` skips the debounce: for a change that is already one batch (a round of
    overflow decisions), where the 100 ms of coalescing would only delay traffic moving.
    """

    changed: Callable[..., None]

    def resources(self, group: GroupView) -> Iterable[Message]: ...

    def attach(self, proxies: ProxyRegistry) -> None:
        """Called once with the registry of connected Envoys, for providers that read them."""

    async def run(self) -> None: ...


class StaticResourcesFile:
    """Serves Envoy resources written by hand in a YAML/JSON file (each with its `@type`), watched."""

    def __init__(self, path: Path, poll_interval: float = 0.25) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self.changed: Callable[..., None] = lambda urgent=False: None
        self._messages: list[Message] = load_resources_file(path)
        self._stamp = _file_stamp(path)

    def resources(self, group: GroupView) -> Iterable[Message]:
        return self._messages

    def attach(self, proxies: ProxyRegistry) -> None:
        pass

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            stamp = _file_stamp(self.path)
            if stamp == self._stamp:
                continue
            self._stamp = stamp
            try:
                self._messages = load_resources_file(self.path)
            except (OSError, ValueError) as error:
                # Envoy keeps the last good configuration: a broken edit changes nothing.
                log.error("%s: %s (keeping the last good resources)", self.path, error)
                continue
            self.changed()


def _file_stamp(path: Path) -> tuple[float, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return (stat.st_mtime, stat.st_size)


def load_resources_file(path: Path) -> list[Message]:
    text = path.read_text()
    documents = [d for d in yaml.safe_load_all(text) if d is not None]
    items: list[Any] = []
    for document in documents:
        if isinstance(document, dict) and "resources" in document:
            items.extend(document["resources"] or [])
        elif isinstance(document, list):
            items.extend(document)
        else:
            items.append(document)
    return [parse_resource(item, f"{path.name} resources[{index}]") for index, item in enumerate(items)]


def _import_types(value: Any) -> None:
    """Loads the proto modules of every `@type` inside a resource (typed_config, typed extensions).

    json_format resolves `Any` only through the descriptor pool, which holds modules already
    imported; a hand-written file may name any Envoy extension.
    """
    if isinstance(value, dict):
        type_url = value.get("@type")
        if isinstance(type_url, str):
            _import_proto_package(type_url.rsplit("/", 1)[-1].rsplit(".", 1)[0])
        for item in value.values():
            _import_types(item)
    elif isinstance(value, list):
        for item in value:
            _import_types(item)


@functools.cache
def _import_proto_package(package: str) -> None:
    try:
        module = importlib.import_module(package)
    except ImportError:
        return  # json_format reports the unknown type with its name
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")


def parse_resource(item: Any, where: str) -> Message:
    if not isinstance(item, dict) or "@type" not in item:
        raise ValueError(f"{where}: must be a mapping with an '@type' (e.g. {TYPE_PREFIX}envoy.config.cluster.v3.Cluster)")
    body = dict(item)
    type_url = str(body.pop("@type"))
    if not type_url.startswith(TYPE_PREFIX):
        type_url = TYPE_PREFIX + type_url
    message_class = MESSAGE_CLASSES.get(type_url)
    if message_class is None:
        known = ", ".join(sorted(t.removeprefix(TYPE_PREFIX) for t in MESSAGE_CLASSES))
        raise ValueError(f"{where}.@type: unknown resource type {type_url!r}; known: {known}")
    _import_types(body)
    try:
        return json_format.ParseDict(body, message_class())
    except json_format.ParseError as error:
        raise ValueError(f"{where}: {error}") from None


@dataclass
class ControlPlane:
    """The running control plane: one provider feeding the xDS server through the snapshot cache."""

    provider: Provider
    debounce: float = 0.1
    max_delay: float = 1.0
    group_of: Callable[..., str] = group_by_cluster
    registries: list[CollectorRegistry] = field(default_factory=list)
    debug_routes: list[web.RouteDef] = field(default_factory=list)
    # Companions with `async start()` / `async stop()` that live as long as the server (e.g. status
    # publishing in Kubernetes mode).
    services: list[Any] = field(default_factory=list)
    cache: SnapshotCache = field(init=False)
    xds: XdsServer = field(init=False)
    admin: AdminServer | None = field(init=False, default=None)
    _tasks: list[asyncio.Task[None]] = field(init=False, default_factory=list)
    _started: bool = field(init=False, default=False)
    _rebuilds: set[str] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.cache = SnapshotCache(debounce=self.debounce, max_delay=self.max_delay)
        self.xds = XdsServer(self.cache, group_of=self.group_of)
        self.provider.changed = self.refresh_all
        self.provider.attach(self.xds.proxies)
        self.xds.proxies.on_change.append(self._group_changed)

    def _group_changed(self, group: str) -> None:
        # A group's first proxy needs its snapshot right away. Later replica changes come in storms (a
        # gateway fleet restarting): they are coalesced into one build per group, not one per Envoy.
        if self.cache.get(group) is None:
            self.cache.set_snapshot(group, self.build(group))
        elif group not in self._rebuilds:
            self._rebuilds.add(group)
            asyncio.get_running_loop().call_later(self.debounce, self._rebuild, group)

    def _rebuild(self, group: str) -> None:
        self._rebuilds.discard(group)
        try:
            self.cache.set_snapshot(group, self.build(group))
        except Exception:
            log.exception("building resources for group %s failed; it keeps its last snapshot", group)

    def build(self, group: str) -> Snapshot:
        view = GroupView(name=group, replicas=max(1, self.xds.proxies.replicas(group)))
        return Snapshot.from_messages(self.provider.resources(view))

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
        await self.xds.start(xds_address)
        self.admin = AdminServer(
            self.xds,
            [self.xds.metrics_registry, *self.registries],
            ready=lambda: self._started,
            extra_routes=self.debug_routes,
        )
        await self.admin.start(admin_host, admin_port)
        self._tasks.append(asyncio.get_running_loop().create_task(self.provider.run()))
        for service in self.services:
            await service.start()
        self._started = True

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
