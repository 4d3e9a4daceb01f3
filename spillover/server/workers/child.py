"""One xDS worker process: the single-process server (service.py, the stream classes) serving the
snapshots the main process ships, on a port it shares with the other workers (SO_REUSEPORT).

What must hold across workers is decided by the main process, asked over the channel: whether an
identity may open another stream (its bound counts every worker's streams), whether an admitted stream
may join its group (the bound on groups) and so count as a replica. The worker reports every admitted
stream that ends, and answers the main process's dumps (stream states for the debug views and the sync
metric, its counters, the resources a node was sent). It exits when the main process goes away (the
channel ends), so no worker outlives it.

Run as `python -m spillover.server.workers.child FD INDEX` with FD one end of a socketpair.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from envoy.config.core.v3 import base_pb2

from spillover.server import event_loop
from spillover.server.admission import Refusal
from spillover.server.cache import Snapshot, SnapshotCache
from spillover.server.grpc_options import grpc_server_options
from spillover.server.registry import GroupTracker, IdentityStreams, ProxyRegistry
from spillover.server.resources import Resource
from spillover.server.service import XdsOptions, XdsServer
from spillover.server.streams import BaseStream, DeltaStream, SotwStream
from spillover.server.workers.wire import (
    Channel,
    Family,
    ShippedSnapshot,
    StreamInfo,
    StreamStates,
    worker_metrics,
)

log = logging.getLogger("spillover.server.workers")

@dataclass(eq=False)
class _ShippedSnapshot(Snapshot):
    """A snapshot rebuilt from the main process's changes: what changed since the one it follows is
    known already, so publishing it costs O(changes), not a comparison of every resource."""

    follows: Snapshot | None = field(default=None, repr=False)
    shipped_changes: dict[str, frozenset[str]] | None = field(default=None, repr=False)

    def changes_since(self, previous: Snapshot) -> dict[str, frozenset[str]]:
        if self.shipped_changes is not None and previous is self.follows:
            return dict(self.shipped_changes)
        return super().changes_since(previous)


class _Identities(IdentityStreams):
    """Counted in the main process: a stream's end is reported there."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self.channel = channel

    def close(self, key: tuple[bool, str]) -> None:
        self.channel.send(("closed", key))


class _Registry(ProxyRegistry):
    """This worker's admitted streams; each one's end is reported to the main process."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self.channel = channel
        self.streams_by_id: dict[int, BaseStream] = {}

    def remove(self, stream: BaseStream) -> None:
        if self.streams_by_id.get(id(stream)) is stream:
            del self.streams_by_id[id(stream)]
            self.channel.send(("left", id(stream)))
        super().remove(stream)

    def add(self, stream: BaseStream) -> None:
        self.streams_by_id[id(stream)] = stream
        super().add(stream)


class WorkerXdsServer(XdsServer):
    """The xDS server of one worker process; see the module docstring."""

    grpc_options = grpc_server_options([("grpc.so_reuseport", 1)])

    def __init__(
        self,
        channel: Channel,
        group_of: Callable[[base_pb2.Node], str],
        warm_timeout: float,
        options: XdsOptions,
    ) -> None:
        # Snapshots arrive published; the main process debounced them already.
        super().__init__(SnapshotCache(debounce=0.0, max_delay=0.0), group_of, None, warm_timeout, options)
        self.channel = channel
        self.proxies = _Registry(channel)
        self.identities = _Identities(channel)
        # The bound on groups and their grace are the main process's; here a group is only counted while it
        # has streams, and its snapshot stays until the main process forgets the group ("forget").
        self.groups = GroupTracker(sys.maxsize, 0.0, lambda group: None)
        self._requests = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        # The main process's generation of each group's snapshot held here (the worker's cache numbers its own).
        self._generations: dict[str, int] = {}

    async def _ask(self, message: tuple[Any, ...], undo: Callable[[Any], None]) -> Any:
        """The main process's answer. A stream that ends while waiting (its client went away) still gets
        its answer, and `undo` hands back what it was granted, so the main process's counts stay exact."""
        request_id = next(self._requests)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self.channel.send((message[0], request_id, *message[1:]))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            future.add_done_callback(lambda done: undo(done.result()) if not done.cancelled() else None)
            raise

    def answered(self, request_id: int, value: Any) -> None:
        future = self._waiting.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(value)

    def abandon_questions(self) -> None:
        for future in self._waiting.values():
            future.cancel()
        self._waiting.clear()

    async def _open_identity(self, key: tuple[bool, str], limit: int) -> bool:
        def undo(granted: Any) -> None:
            if granted:
                self.channel.send(("closed", key))

        return bool(await self._ask(("open", key, limit), undo))

    async def _confirm_admission(self, stream: SotwStream | DeltaStream) -> Refusal | None:
        assert stream.node is not None
        info = StreamInfo(
            node=stream.node.SerializeToString(),
            group=stream.group,
            peer=stream.peer,
            identity=stream.identity,
            admitted_by=stream.admitted_by,
            mode=stream.mode,
            connected_at=stream.connected_at,
        )
        def undo(refused: Any) -> None:
            if refused is None:
                self.channel.send(("left", id(stream)))

        answer = await self._ask(("join", id(stream), info), undo)
        if answer is None:
            return None
        self.groups.leave(stream.group)
        reason, message, kind = answer
        return Refusal(reason, message, kind)

    # -- what the main process ships and asks ------------------------------------------------------------

    def apply(self, group: str, shipped: ShippedSnapshot) -> None:
        previous = self.cache.get(group)
        if shipped.follows is not None and (previous is None or self._generations.get(group) != shipped.follows):
            # The main process sends changes only to a worker holding what they follow: the channel lost a
            # message. Exiting makes the main process restart this worker with whole snapshots.
            raise RuntimeError(
                f"xDS worker: changes to snapshot {shipped.follows} of a group, holding {self._generations.get(group)}"
            )
        base = previous if shipped.follows is not None else None
        frozen: dict[str, Mapping[str, Resource]] = {}
        for type_url in shipped.types:
            before = base.get(type_url) if base is not None else None
            upserts = shipped.upserts.get(type_url, ())
            removed = shipped.removed.get(type_url, ())
            if before is not None and not upserts and not removed:
                frozen[type_url] = before  # unchanged: the same read-only mapping
                continue
            named = dict(before) if before is not None else {}
            for name in removed:
                named.pop(name, None)
            added = False
            for name, body, version in upserts:
                added = added or name not in named
                named[name] = Resource.from_bytes(type_url, name, body, version)
            # Names stay sorted; a changed resource keeps its place, so only new names need a sort.
            frozen[type_url] = MappingProxyType(dict(sorted(named.items())) if added or before is None else named)
        snapshot = _ShippedSnapshot(
            resources=MappingProxyType(frozen),
            versions=MappingProxyType(dict(shipped.versions)),
            build_seconds=shipped.build_seconds,
        )
        if shipped.follows is not None and previous is not None:
            names = {type_url: {name for name, _, _ in upserts} for type_url, upserts in shipped.upserts.items()}
            for type_url, removed in shipped.removed.items():
                names.setdefault(type_url, set()).update(removed)
            snapshot.follows = previous
            snapshot.shipped_changes = {
                type_url: frozenset(names.get(type_url, ())) for type_url in set(frozen) | set(previous.resources)
            }
        self._generations[group] = shipped.generation
        self.cache.set_snapshot(group, snapshot)
        # Only this publish needed them; the previous snapshot must not be kept alive by the new one.
        snapshot.follows = snapshot.shipped_changes = None

    def forget(self, group: str) -> None:
        self.cache.remove(group)
        self.metrics.forget_group(group)
        self._generations.pop(group, None)

    def dump(self, what: str, node_id: str | None) -> dict[str, Any]:
        """`what`: "metrics" (type states, counters), "describe" (and every stream's description);
        with `node_id`, the resources sent to that node's streams too."""
        assert isinstance(self.proxies, _Registry)
        streams = self.proxies.streams_by_id
        states: dict[int, StreamStates] = {
            sid: {t: state.status().value for t, state in stream.types.items()} for sid, stream in streams.items()
        }
        out: dict[str, Any] = {
            "states": states,
            "families": self._families(),
            # Decided here, where the stream's requests are seen: the main process counts them.
            "without_split_layer": [sid for sid, stream in streams.items() if stream.without_split_layer],
            "without_internal_listener": [sid for sid, stream in streams.items() if stream.without_internal_listener],
        }
        if what == "describe":
            out["described"] = {sid: stream.describe() for sid, stream in streams.items()}
        if node_id is not None:
            out["sent"] = {
                sid: {
                    type_url: [(r.name, r.version, r.body) for r in resources]
                    for type_url, resources in stream.sent_resources().items()
                }
                for sid, stream in streams.items()
                if stream.node_id == node_id
            }
        return out

    def _families(self) -> list[Family]:
        families: list[Family] = []
        for metric in worker_metrics(self.metrics):
            for family in metric.collect():
                samples = [(s.name, dict(s.labels), float(s.value)) for s in family.samples]
                families.append((family.name, family.type, family.documentation, samples))
        return families


async def run(fd: int, index: int) -> None:
    sock = socket.socket(fileno=fd)
    channel = await Channel.open(sock)
    first = await channel.receive()
    if first is None or first[0] != "config":
        raise SystemExit(f"xDS worker {index}: no configuration from the main process")
    _, group_of, warm_timeout, options, log_level = first
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s [xds-worker-{index}] %(name)s: %(message)s")
    server = WorkerXdsServer(channel, group_of, warm_timeout, options)
    try:
        while True:
            message = await channel.receive()
            if message is None:
                return  # the main process is gone: so is this worker
            kind = message[0]
            if kind == "snapshot":
                server.apply(message[1], message[2])
            elif kind == "reply":
                server.answered(message[1], message[2])
            elif kind == "dump":
                channel.send(("reply", message[1], server.dump(message[2], message[3])))
            elif kind == "forget":
                server.forget(message[1])
            elif kind == "serve":
                try:
                    port = await server.start(message[1])
                except Exception as error:  # told to the main process, which fails loudly
                    channel.send(("failed", f"{type(error).__name__}: {error}"))
                    await channel.drain()
                    return
                # Start-up garbage (imports, the first snapshots) is never collected again: collections
                # then scan only what the streams make.
                gc.collect()
                gc.freeze()
                channel.send(("ready", port))
            elif kind == "stop":
                await server.stop(float(message[1]))
                channel.send(("stopped",))
                await channel.drain()
                return
    finally:
        server.abandon_questions()
        with contextlib.suppress(Exception):
            await server.stop(0)
        channel.close()


def main() -> None:
    fd, index = int(sys.argv[1]), int(sys.argv[2])
    # The loop is chosen before it runs, so it comes on the command line, not with the configuration.
    loop = sys.argv[3] if len(sys.argv) > 3 else event_loop.DEFAULT
    # SIGINT goes to the whole process group (a Ctrl-C at `spillover serve`): the main process stops the
    # workers in order, so a worker does not end on its own.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(KeyboardInterrupt):
        event_loop.run(run(fd, index), loop)
    os._exit(0)


if __name__ == "__main__":
    main()
