"""The main process of a multi-process xDS server: N worker processes serve the streams on one port
(SO_REUSEPORT; the kernel spreads connections over them), this process keeps everything that must be
one for the whole server.

- Snapshots are built and published here (the SnapshotCache, its debounce, the generations); each publish
  is encoded once and the same bytes go to every worker: the changed resources only when the worker holds
  the snapshot it follows, else the whole snapshot. Versions are this process's, so streams of a group
  see one version sequence whichever worker serves them.
- The registry (ProxyRegistry) holds every worker's admitted streams: replica counts per group (the
  rate-limit divisor), Envoy admin addresses for the metric sources, the providers' observers.
- The bounds that count: streams per identity (IdentityStreams) and node groups at once (GroupTracker,
  with its grace period) are decided here; workers ask before admitting.
- Metrics: pushes, snapshot sizes, groups and connected streams are counted here, and so are the reloads
  of the certificate files: this process looks at the files every check interval as each worker does at
  its handshakes, so that one change counts once, not once per worker that took it. The workers' own
  counters (responses, ACKs, NACKs, refusals, ...) are summed from their reports, asked for with the
  stream states right before /metrics or a debug view is read (`refresh_views`).
- A worker that dies is restarted on the same port; its streams leave the registry at once (their
  Envoys reconnect, to any worker). Each death in a row waits longer before the restart; a worker that
  served for `healthy_after` seconds before it died starts the sequence again. `stop` stops every worker
  and waits for each, by pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3 import base_pb2
from prometheus_client import CollectorRegistry, Counter, Gauge

from spillover.server import event_loop as event_loops
from spillover.server.cache import Snapshot, SnapshotCache
from spillover.server.service import (
    InsecureAddressError,
    XdsOptions,
    XdsServer,
    group_by_cluster,
    is_loopback,
)
from spillover.server.tls import CertificateReloader
from spillover.server.workers.views import RemoteStream, WorkerFamilies, resources_of
from spillover.server.workers.wire import Channel, ShippedSnapshot, StreamInfo, encode, worker_metrics

__all__ = ["WorkerError", "WorkerPool"]

log = logging.getLogger("spillover.server.workers")

# A worker that keeps dying is restarted at most this often; the failures are logged each time.
_RESTART_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)
# A worker that served this long before it died was not crash-looping: its next restart is quick again
# (otherwise five crashes over a week would leave every later restart at the longest delay).
_HEALTHY_AFTER_S = 60.0
_START_TIMEOUT_S = 30.0
_DUMP_TIMEOUT_S = 10.0


class WorkerError(RuntimeError):
    """A worker could not start (its port, its certificate files) or did not answer."""


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    channel: Channel | None = None
    reader: asyncio.Task[None] | None = None
    # Stream id (the worker's) -> the stream in the registry.
    streams: dict[int, RemoteStream] = field(default_factory=dict)
    identities: dict[tuple[bool, str], int] = field(default_factory=dict)
    # The generation of each group's snapshot the worker holds (the changes of the next one suffice).
    shipped: dict[str, int] = field(default_factory=dict)
    waiting: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    # Deaths in a row (each one served less than the healthy period): the index into the back-off.
    restarts: int = 0
    serving_since: float | None = None  # monotonic, when it last said it serves

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None


class WorkerPool(XdsServer):
    """An XdsServer whose streams are served by `workers` processes; see the module docstring."""

    def __init__(
        self,
        cache: SnapshotCache,
        workers: int,
        group_of: Callable[[base_pb2.Node], str] = group_by_cluster,
        registry: CollectorRegistry | None = None,
        warm_timeout: float = 5.0,
        options: XdsOptions | None = None,
        restart_backoff: Sequence[float] = _RESTART_BACKOFF_S,
        healthy_after: float = _HEALTHY_AFTER_S,
        event_loop: str = event_loops.DEFAULT,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not restart_backoff or min(restart_backoff) < 0 or healthy_after < 0:
            raise ValueError("restart_backoff must be delays >= 0 (at least one) and healthy_after >= 0")
        event_loops.loop_factory(event_loop)  # an unknown kind fails here, not in every worker
        super().__init__(cache, group_of, registry, warm_timeout, options)
        self.event_loop = event_loop
        try:
            pickle.dumps((group_of, self.options))
        except Exception as error:
            raise ValueError(f"the node grouping and xDS options must be picklable for worker processes: {error}") from None
        self.worker_count = workers
        self.restart_backoff = tuple(restart_backoff)
        self.healthy_after = healthy_after
        self._workers = [_Worker(index) for index in range(workers)]
        # The workers' counters replace this process's (which would stay at 0: no stream is served here).
        for metric in worker_metrics(self.metrics):
            self.metrics_registry.unregister(metric)
        self.worker_families = WorkerFamilies()
        self.metrics_registry.register(self.worker_families)
        self.worker_restarts = Counter(
            "spillover_xds_worker_restarts_total", "xDS worker processes restarted after they died",
            registry=self.metrics_registry,
        )
        self.workers_up = Gauge("spillover_xds_workers", "xDS worker processes serving", registry=self.metrics_registry)
        self._requests = itertools.count(1)
        self._address: str | None = None
        self._stopping = False
        self._supervisors: list[asyncio.Task[None]] = []
        cache.on_publish.append(self._ship)

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers if w.pid is not None and w.process is not None and w.process.returncode is None]

    # -- start, supervise, stop ---------------------------------------------------------------------------

    async def start(self, address: str = "127.0.0.1:0") -> int:
        host = address.rsplit(":", 1)[0]
        options = self.options
        if options.tls is None and not options.insecure and not is_loopback(host):
            raise InsecureAddressError(
                f"plain-text xDS on {host}, which other hosts can reach: anyone there could read every "
                "configuration and secret. Give a server certificate and client CA (mTLS), or opt in to plain text."
            )
        if options.tls is not None:
            # TlsError here, before any worker starts.
            self.tls = CertificateReloader(
                options.tls, options.tls_check_interval,
                on_reload=lambda ok: self.metrics.tls_reloads.labels("ok" if ok else "error").inc(),
            )
        self._stopping = False
        try:
            port = await self._spawn(self._workers[0], address)
            self._address = f"{host}:{port}"
            await asyncio.gather(*(self._spawn(worker, self._address) for worker in self._workers[1:]))
        except BaseException:
            await self._stop_workers(0)
            raise
        self.port = port
        self.groups.resume()
        loop = asyncio.get_running_loop()
        self._supervisors = [loop.create_task(self._supervise(worker)) for worker in self._workers]
        if self.tls is not None:
            self._supervisors.append(loop.create_task(self._watch_tls(self.tls)))
        log.info("xDS server: %d worker processes on %s (pids %s)", len(self._workers), self._address,
                 ", ".join(str(pid) for pid in self.worker_pids()))
        return port

    async def _spawn(self, worker: _Worker, address: str) -> int:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "spillover.server.workers.child", str(theirs.fileno()), str(worker.index),
                self.event_loop,
                pass_fds=[theirs.fileno()],
            )
        finally:
            theirs.close()
        channel = worker.channel = await Channel.open(mine)
        worker.shipped.clear()
        channel.send(("config", self.group_of, self.warm_timeout, self.options, logging.getLogger().getEffectiveLevel()))
        for group in self.cache.groups():
            snapshot = self.cache.get(group)
            if snapshot is not None:
                channel.send_frame(self._frame(group, snapshot, full=True))
                worker.shipped[group] = snapshot.generation
        channel.send(("serve", address))
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    first = await channel.receive()
            except TimeoutError:
                raise WorkerError(f"xDS worker {worker.index} did not start within {_START_TIMEOUT_S:g}s") from None
            if first is None or first[0] in ("ready", "failed"):
                break
            self._handle(worker, channel, first)  # streams accepted before the worker said it is ready
        if first is None or first[0] != "ready":
            detail = first[1] if first is not None and first[0] == "failed" else "it exited"
            raise WorkerError(f"xDS worker {worker.index} could not serve on {address}: {detail}")
        worker.reader = asyncio.get_running_loop().create_task(self._read(worker, channel))
        worker.serving_since = time.monotonic()
        self.workers_up.set(len(self.worker_pids()))
        return int(first[1])

    async def _supervise(self, worker: _Worker) -> None:
        while not self._stopping:
            process = worker.process
            assert process is not None
            code = await process.wait()
            if self._stopping:
                return
            served = time.monotonic() - worker.serving_since if worker.serving_since is not None else 0.0
            if served >= self.healthy_after:
                worker.restarts = 0
            backoff = self.restart_backoff
            delay = backoff[min(worker.restarts, len(backoff) - 1)]
            worker.restarts += 1
            log.error("xDS worker %d (pid %s) exited with %s after serving %.1fs; its %d streams reconnect; "
                      "restarting it in %gs", worker.index, process.pid, code, served, len(worker.streams), delay)
            self._drop(worker)
            worker.serving_since = None
            while not self._stopping:
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                try:
                    assert self._address is not None
                    await self._spawn(worker, self._address)
                    self.worker_restarts.inc()
                    break
                except (WorkerError, OSError) as error:
                    log.error("restarting xDS worker %d failed: %s", worker.index, error)
                    delay = self.restart_backoff[-1]

    async def _watch_tls(self, tls: CertificateReloader) -> None:
        """Counts the changes of the certificate files (the workers serve them, each from its own look)."""
        while not self._stopping:
            await asyncio.sleep(tls.check_interval)
            try:
                tls.fetch()
            except Exception:  # the count is lost, not the server
                log.exception("xDS TLS: looking at the certificate files failed")

    def _drop(self, worker: _Worker) -> None:
        """A worker is gone: its streams leave the registry, its identities' streams are given back."""
        if worker.reader is not None:
            worker.reader.cancel()
            worker.reader = None
        if worker.channel is not None:
            worker.channel.close()
            worker.channel = None
        for future in worker.waiting.values():
            future.cancel()
        worker.waiting.clear()
        for stream_id in list(worker.streams):
            self._left(worker, stream_id)
        for key, count in worker.identities.items():
            for _ in range(count):
                self.identities.close(key)
        worker.identities.clear()
        worker.shipped.clear()
        self.worker_families.retire(worker.index)
        self.workers_up.set(len(self.worker_pids()))

    async def stop(self, grace: float = 1.0) -> None:
        self._stopping = True
        for task in self._supervisors:
            task.cancel()
        await asyncio.gather(*self._supervisors, return_exceptions=True)
        self._supervisors = []
        await self._stop_workers(grace)
        self.groups.close()
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None

    async def _stop_workers(self, grace: float) -> None:
        async def stop_one(worker: _Worker) -> None:
            process = worker.process
            if process is None:
                return
            if worker.channel is not None:
                worker.channel.send(("stop", grace))
            try:
                async with asyncio.timeout(grace + 5.0):
                    await process.wait()
            except TimeoutError:
                log.warning("xDS worker %d (pid %s) did not stop within %gs: killed", worker.index, process.pid, grace + 5)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            self._drop(worker)
            worker.process = None

        await asyncio.gather(*(stop_one(worker) for worker in self._workers))

    async def wait_for_termination(self) -> None:
        await asyncio.gather(*self._supervisors, return_exceptions=True)

    # -- snapshots ----------------------------------------------------------------------------------------

    def _frame(self, group: str, snapshot: Snapshot, full: bool) -> bytes:
        types = tuple(snapshot.resources)
        upserts: dict[str, list[tuple[str, bytes, str]]] = {}
        removed: dict[str, list[str]] = {}
        changes = snapshot.changes
        if full or changes is None:
            follows = None
            for type_url, named in snapshot.resources.items():
                upserts[type_url] = [(name, resource.body, resource.version) for name, resource in named.items()]
        else:
            follows = snapshot.previous_generation
            for type_url, names in changes.items():
                named = snapshot.get(type_url)
                for name in names:
                    resource = named.get(name)
                    if resource is None:
                        removed.setdefault(type_url, []).append(name)
                    else:
                        upserts.setdefault(type_url, []).append((name, resource.body, resource.version))
        versions = {type_url: snapshot.versions.get(type_url, "") for type_url in types}
        shipped = ShippedSnapshot(
            generation=snapshot.generation, follows=follows, versions=versions, upserts=upserts, removed=removed,
            types=types, build_seconds=snapshot.build_seconds,
        )
        return encode(("snapshot", group, shipped))

    def _ship(self, group: str, snapshot: Snapshot) -> None:
        """Once per publish: one encoding of the changes for the workers holding the previous snapshot,
        one of the whole snapshot for any other (made only if one needs it)."""
        frames: dict[bool, bytes] = {}
        for worker in self._workers:
            channel = worker.channel
            if channel is None:
                continue
            full = snapshot.changes is None or worker.shipped.get(group) != snapshot.previous_generation
            frame = frames.get(full)
            if frame is None:
                frame = frames[full] = self._frame(group, snapshot, full)
            channel.send_frame(frame)
            worker.shipped[group] = snapshot.generation

    def _forget_group(self, group: str) -> None:
        super()._forget_group(group)
        for worker in self._workers:
            worker.shipped.pop(group, None)
            if worker.channel is not None:
                worker.channel.send(("forget", group))

    # -- what workers ask ---------------------------------------------------------------------------------

    async def _read(self, worker: _Worker, channel: Channel) -> None:
        while True:
            message = await channel.receive()
            if message is None:
                return  # the supervisor sees the process exit
            try:
                self._handle(worker, channel, message)
            except Exception:
                log.exception("xDS worker %d: message %r failed", worker.index, message[0])

    def _handle(self, worker: _Worker, channel: Channel, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "open":
            _, request_id, key, limit = message
            granted = self.identities.open(key, limit)
            if granted:
                worker.identities[key] = worker.identities.get(key, 0) + 1
            channel.send(("reply", request_id, granted))
        elif kind == "closed":
            key = message[1]
            count = worker.identities.get(key, 0)
            if count > 0:
                self.identities.close(key)
                if count > 1:
                    worker.identities[key] = count - 1
                else:
                    del worker.identities[key]
        elif kind == "join":
            _, request_id, stream_id, info = message
            channel.send(("reply", request_id, self._join(worker, stream_id, info)))
        elif kind == "left":
            self._left(worker, message[1])
        elif kind == "reply":
            future = worker.waiting.pop(message[1], None)
            if future is not None and not future.done():
                future.set_result(message[2])

    def _join(self, worker: _Worker, stream_id: int, info: StreamInfo) -> tuple[str, str, str] | None:
        if not self.groups.join(info.group):
            return (
                "too_many_groups",
                f"limit: at most {self.groups.max_groups} node groups at once; this stream would make one more",
                "exhausted",
            )
        self.metrics.groups.set(len(self.groups))
        stream = RemoteStream(worker.index, stream_id, info)
        worker.streams[stream_id] = stream
        # Observers (the plane) may publish the group's first snapshot here: it is sent to the worker
        # before this answer, so the stream finds it.
        self.proxies.add(stream)
        self.metrics.connected.labels(stream.group, stream.mode).inc()
        return None

    def _left(self, worker: _Worker, stream_id: int) -> None:
        stream = worker.streams.pop(stream_id, None)
        if stream is None:
            return
        self.proxies.remove(stream)
        self.metrics.connected.labels(stream.group, stream.mode).dec()
        self.groups.leave(stream.group)
        self.metrics.groups.set(len(self.groups))

    # -- the views ----------------------------------------------------------------------------------------

    async def refresh_views(self, node_id: str | None = None, describe: bool = False) -> None:
        """Asks every worker for its streams' states (their descriptions too with `describe`, the resources
        sent to `node_id`'s streams with it) and its counters, and waits for all the answers."""
        what = "describe" if describe else "metrics"

        async def ask(worker: _Worker) -> None:
            channel = worker.channel
            if channel is None:
                return
            request_id = next(self._requests)
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            worker.waiting[request_id] = future
            channel.send(("dump", request_id, what, node_id))
            try:
                async with asyncio.timeout(_DUMP_TIMEOUT_S):
                    report = await future
            except (TimeoutError, asyncio.CancelledError):
                worker.waiting.pop(request_id, None)
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this view was cancelled, not the worker's answer (a dead worker's is)
                log.warning("xDS worker %d did not report its streams within %gs", worker.index, _DUMP_TIMEOUT_S)
                return
            self._take_report(worker, report, describe, node_id)

        started = time.monotonic()
        await asyncio.gather(*(ask(worker) for worker in self._workers))
        log.debug("worker reports gathered in %.1f ms", (time.monotonic() - started) * 1000)

    def _take_report(self, worker: _Worker, report: dict[str, Any], describe: bool, node_id: str | None) -> None:
        self.worker_families.reports[worker.index] = report["families"]
        described = report.get("described", {})
        sent = report.get("sent", {})
        without_layer = set(report.get("without_split_layer", ()))
        without_internal_listener = set(report.get("without_internal_listener", ()))
        for stream_id, states in report["states"].items():
            stream = worker.streams.get(stream_id)
            if stream is None:
                continue  # ended since (its "left" is on the way)
            stream.report(states)
            stream.without_split_layer = stream_id in without_layer
            stream.reported_without_internal_listener = stream_id in without_internal_listener
            if describe and stream_id in described:
                stream.described = {**described[stream_id], "worker": worker.index}
            if node_id is not None and stream.node_id == node_id:
                stream.sent = resources_of(sent.get(stream_id, {}))


def default_workers() -> int:
    return os.cpu_count() or 1
