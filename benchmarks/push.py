"""Push fan-out: one xDS server process, several client processes with one HTTP/2 connection per stream.

Every simulated Envoy opens its own channel (its own TCP connection), subscribes over ADS to wildcard CDS
and to EDS for every cluster, and ACKs each response the way Envoy does. A stream that fails is opened again after
a back-off, as Envoy does, and each retry is reported to the orchestrator. The orchestrator (this process)
changes ONE ClusterLoadAssignment and measures, with the system-wide CLOCK_MONOTONIC, the time from the
trigger until each stream has the new version. The server's CPU time per push comes from its own
getrusage(RUSAGE_SELF) (all its threads), its memory from /proc/self/status.

The baseline ("floor") is a bare grpc.aio server in the same kind of process, with the stream structure
of a plain grpc.aio servicer (reader task + queue + async-generator handler, identity response serializer;
spillover's own server has used one task per stream since issue 15), with Python's GC settings, streaming the
very same pre-encoded bytes with no xDS logic: it answers each initial request with the current payload
of that type and writes a pre-built EDS payload to every stream on a push. ACKs are parsed and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc as collector
import multiprocessing as mp
import os
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

GROUP = "bench"
SOTW_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
DELTA_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
# The longest wait before a simulated Envoy opens a failed stream again.
MAX_BACKOFF_S = 8.0


# --------------------------------------------------------------------------------------------- server


def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _pid_status(pid: int) -> dict[str, int]:
    out = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _pid_cpu_seconds(pid: int) -> float:
    """utime + stime of another process (by pid) from /proc/<pid>/stat, in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _GcClock:
    """CPU time the cyclic garbage collector takes in this process (thread time of the collecting thread)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        # By generation: which collections the time went to (a full one scans every live object).
        self.by_generation = [[0, 0.0] for _ in range(3)]
        self._started = 0.0
        collector.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.thread_time()
        else:
            took = time.thread_time() - self._started
            self.seconds += took
            self.collections += 1
            generation = self.by_generation[info["generation"]]
            generation[0] += 1
            generation[1] += took

    def status(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for index, (count, seconds) in enumerate(self.by_generation):
            out[f"gc{index}_collections"] = count
            out[f"gc{index}_s"] = seconds
        return out


def _quiet(log_path: str) -> None:
    """Child processes write their stderr (gRPC core logs, tracebacks) to a log file, not the report."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 2)
    os.close(fd)


def server_main(
    conn: Connection,
    kind: str,
    protocol: str,
    debounce: float,
    n_clusters: int,
    changes: int,
    log_path: str,
    gc: str = "python",
    loop: str | None = None,
    grpc_options: tuple[tuple[str, Any], ...] = (),
    tree: str | None = None,
) -> None:
    if tree is not None:
        _use_tree(tree)
    from spillover.server import event_loop as event_loops

    _quiet(log_path)
    with contextlib.suppress(KeyboardInterrupt):
        event_loops.run(
            _server(conn, kind, protocol, debounce, n_clusters, changes, gc, grpc_options), loop or event_loops.DEFAULT
        )


def _use_tree(tree: str) -> None:
    """This server process serves with the `spillover` package of another checkout (`tree`, e.g. an export of
    main), so that two trees are compared in one run, alternated. The spawn imported this tree's package
    already (through the main module): those modules are dropped and imported again from `tree`."""
    if not os.path.isfile(os.path.join(tree, "spillover", "__init__.py")):
        raise BenchError(f"{tree}: no spillover package there")
    sys.path.insert(0, os.path.abspath(tree))
    for name in [n for n in sys.modules if n == "spillover" or n.startswith("spillover.")]:
        del sys.modules[name]


def _with_options(extra: tuple[tuple[str, Any], ...]) -> list[tuple[str, Any]]:
    """The xDS server's gRPC options with `extra` in place of (or beside) those of the same keys."""
    from spillover.server.grpc_options import grpc_server_options

    return grpc_server_options(extra)


async def _server(
    conn: Connection, kind: str, protocol: str, debounce: float, n_clusters: int, changes: int, gc: str,
    grpc_options: tuple[tuple[str, Any], ...] = (),
) -> None:
    import grpc
    from envoy.service.discovery.v3 import discovery_pb2

    from benchmarks import fixtures
    from spillover.server.cache import Snapshot, SnapshotCache
    from spillover.server.resources import CLUSTER, ENDPOINT, Resource
    from spillover.server.resources import delta_payload as join_delta
    from spillover.server.resources import sotw_payload as join_sotw

    resources = [Resource.from_message(m) for m in fixtures.messages(n_clusters)]
    snapshot = Snapshot.from_resources(resources)
    gc_clock = _GcClock()
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()

    def changed_resources(i: int) -> tuple[list[Resource], Resource]:
        """Change i: the endpoints (weights) of ONE cluster change; everything else is the same objects."""
        target = i % n_clusters
        new = Resource.from_message(fixtures.load_assignment(target, generation=i + 1))
        out = list(resources)
        out[2 * target + 1] = new
        return out, new

    worker_pids: list[int] = []
    if kind == "xds" or kind.startswith("workers"):
        from spillover.server.service import XdsServer
        from spillover.server.workers import WorkerPool

        cache = SnapshotCache(debounce=debounce, max_delay=max(1.0, debounce))
        cache.set_snapshot(GROUP, snapshot)
        # Every simulated Envoy has the same (anonymous) identity: no bound of streams per identity.
        from spillover.server.admission import AdmissionPolicy
        from spillover.server.service import XdsOptions

        options = XdsOptions(admission=AdmissionPolicy.admit_all(max_streams_per_identity=1_000_000))
        # "workers2": the streams served by 2 worker processes, the snapshots built in this one.
        xds = (XdsServer(cache, options=options) if kind == "xds"
               else WorkerPool(cache, int(kind.removeprefix("workers")), options=options))
        if grpc_options:
            xds.grpc_options = _with_options(grpc_options)
        port = await xds.start("127.0.0.1:0")
        if isinstance(xds, WorkerPool):
            worker_pids = xds.worker_pids()
        if gc == "tuned":  # as `spillover serve --gc tuned` does
            from spillover.server import gc_tuning

            gc_tuning.install()
        elif gc in ("thresholds", "young"):  # only --gc tuned's thresholds (or its young one), nothing frozen
            from spillover.server import gc_tuning

            older = {} if gc == "thresholds" else {"threshold1": 10, "threshold2": 10}  # Python's for "young"
            gc_tuning.install(gc_tuning.GcSettings(freeze=False, **older))

        def change(i: int) -> str:
            nonlocal resources
            resources, _ = changed_resources(i)
            snap = Snapshot.from_resources(resources)
            cache.update(GROUP, snap)  # debounced when debounce > 0, immediate otherwise
            return snap.version(ENDPOINT)

        async def stop() -> None:
            await xds.stop(0)

    else:  # the transport floor
        watchers: set[asyncio.Queue[object]] = set()
        eof = object()

        def sotw_payload(snap: Snapshot, type_url: str, nonce: str) -> bytes:
            header = discovery_pb2.DiscoveryResponse(
                version_info=snap.version(type_url), type_url=type_url, nonce=nonce
            )
            return join_sotw(header.SerializeToString(), snap.get(type_url).values())

        def delta_payload(
            snap: Snapshot, type_url: str, nonce: str, only: list[Resource] | None = None
        ) -> bytes:
            header = discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=snap.version(type_url), type_url=type_url, nonce=nonce
            )
            entries = only if only is not None else snap.get(type_url).values()
            return join_delta(header.SerializeToString(), entries)

        current: dict[str, bytes] = {}
        if protocol == "sotw":
            current = {t: sotw_payload(snapshot, t, f"n0-{t[-8:]}") for t in (CLUSTER, ENDPOINT)}
        else:
            current = {t: delta_payload(snapshot, t, f"n0-{t[-8:]}") for t in (CLUSTER, ENDPOINT)}
        # Every push is pre-encoded before the clock starts: the floor does nothing but move bytes.
        pushes: list[tuple[str, bytes]] = []
        for i in range(changes):
            all_resources, new = changed_resources(i)
            snap = Snapshot.from_resources(all_resources)
            if protocol == "sotw":
                payload = sotw_payload(snap, ENDPOINT, f"p{i}")
            else:
                payload = delta_payload(snap, ENDPOINT, f"p{i}", [new])
            pushes.append((snap.version(ENDPOINT), payload))

        request_class = (
            discovery_pb2.DiscoveryRequest if protocol == "sotw" else discovery_pb2.DeltaDiscoveryRequest
        )

        async def handle(requests: Any, context: Any) -> Any:
            inbox: asyncio.Queue[object] = asyncio.Queue()

            async def read() -> None:
                try:
                    async for request in requests:
                        inbox.put_nowait(request)
                except Exception:
                    pass
                finally:
                    inbox.put_nowait(eof)

            reader = loop.create_task(read())
            try:
                while True:
                    item: Any = await inbox.get()
                    if item is eof:
                        return
                    if isinstance(item, bytes):
                        yield item
                    elif not item.response_nonce:  # an initial request for a type: answer it
                        yield current[item.type_url]
                        if item.type_url == ENDPOINT:
                            watchers.add(inbox)
            finally:
                reader.cancel()
                watchers.discard(inbox)

        method = "StreamAggregatedResources" if protocol == "sotw" else "DeltaAggregatedResources"
        handler = grpc.method_handlers_generic_handler(
            "envoy.service.discovery.v3.AggregatedDiscoveryService",
            {
                method: grpc.stream_stream_rpc_method_handler(
                    handle, request_deserializer=request_class.FromString, response_serializer=bytes
                )
            },
        )
        server = grpc.aio.server(options=_with_options(grpc_options))
        server.add_generic_rpc_handlers([handler])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()

        def change(i: int) -> str:
            version, payload = pushes[i]
            current[ENDPOINT] = payload
            for queue in watchers:
                queue.put_nowait(payload)
            return version

        async def stop() -> None:
            await server.stop(0)

    def on_command() -> None:
        try:
            command = conn.recv()
        except EOFError:
            stopped.set()
            return
        op = command[0]
        if op == "change":
            conn.send(("changed", change(command[1])))
        elif op == "stats":
            # Worker processes are part of the server: their CPU time and memory count.
            status: dict[str, float] = dict(_proc_status())
            for pid in worker_pids:
                for key, value in _pid_status(pid).items():
                    status[key] = status.get(key, 0) + value
            main_cpu = _cpu_seconds()
            workers_cpu = [_pid_cpu_seconds(pid) for pid in worker_pids]
            status["cpu_main_us"] = int(main_cpu * 1e6)
            status["cpu_busiest_worker_us"] = int(max(workers_cpu, default=0.0) * 1e6)
            status.update(gc_clock.status())
            # The collector's time is this process's (the workers' is in their CPU time).
            conn.send(("stats", main_cpu + sum(workers_cpu), status, gc_clock.seconds, gc_clock.collections))
        elif op == "stop":
            stopped.set()

    loop.add_reader(conn.fileno(), on_command)
    status = _proc_status()
    for pid in worker_pids:
        for key, value in _pid_status(pid).items():
            status[key] = status.get(key, 0) + value
    conn.send(("ready", port, snapshot.version(ENDPOINT), status))
    await stopped.wait()
    loop.remove_reader(conn.fileno())
    await stop()


# --------------------------------------------------------------------------------------------- client


def client_main(
    conn: Connection, port: int, protocol: str, n_streams: int, n_clusters: int, index: int, log_path: str
) -> None:
    _quiet(log_path)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_clients(conn, port, protocol, n_streams, n_clusters, index))


async def _clients(
    conn: Connection, port: int, protocol: str, n_streams: int, n_clusters: int, index: int
) -> None:
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    from benchmarks import fixtures
    from spillover.server.resources import CLUSTER, ENDPOINT

    loop = asyncio.get_running_loop()
    names = [fixtures.cluster_name(i) for i in range(n_clusters)]
    short = {CLUSTER: "CDS", ENDPOINT: "EDS"}
    seen: dict[tuple[str, str], dict[int, float]] = {}
    stopped = asyncio.Event()
    connect_slots = asyncio.Semaphore(32)

    def record(stream: int, type_url: str, version: str, at: float) -> None:
        key = (short.get(type_url, type_url), version)
        times = seen.setdefault(key, {})
        if stream not in times:
            times[stream] = at
            if len(times) == n_streams:
                conn.send(("got", index, key[0], key[1], list(times.values())))
                del seen[key]

    options = [
        ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per channel, like one Envoy each
        ("grpc.max_receive_message_length", -1),
        ("grpc.bench_client_index", f"{index}"),
    ]

    async def sotw(i: int) -> None:
        async with connect_slots:
            channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=[*options, ("grpc.bench_stream", i)]
            )
            await channel.channel_ready()
        call = channel.stream_stream(
            SOTW_METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()
        node = base_pb2.Node(id=f"bench-{index}-{i}", cluster=GROUP)
        await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER))
        eds_requested = False
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return
                record(i, response.type_url, response.version_info, time.monotonic())
                if response.type_url == CLUSTER and not eds_requested:
                    # Envoy asks for the endpoints of the new clusters, then ACKs the clusters.
                    eds_requested = True
                    await call.write(discovery_pb2.DiscoveryRequest(type_url=ENDPOINT, resource_names=names))
                await call.write(
                    discovery_pb2.DiscoveryRequest(
                        type_url=response.type_url,
                        version_info=response.version_info,
                        response_nonce=response.nonce,
                        resource_names=names if response.type_url == ENDPOINT else (),
                    )
                )
        finally:
            await channel.close(None)

    async def delta(i: int) -> None:
        async with connect_slots:
            channel = grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=[*options, ("grpc.bench_stream", i)]
            )
            await channel.channel_ready()
        call = channel.stream_stream(
            DELTA_METHOD,
            request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
        )()
        node = base_pb2.Node(id=f"bench-{index}-{i}", cluster=GROUP)
        await call.write(discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=CLUSTER))
        eds_requested = False
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return
                record(i, response.type_url, response.system_version_info, time.monotonic())
                if response.type_url == CLUSTER and not eds_requested:
                    eds_requested = True
                    await call.write(
                        discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, resource_names_subscribe=names)
                    )
                await call.write(
                    discovery_pb2.DeltaDiscoveryRequest(
                        type_url=response.type_url, response_nonce=response.nonce
                    )
                )
        finally:
            await channel.close(None)

    def on_command() -> None:
        with contextlib.suppress(EOFError):
            conn.recv()
        stopped.set()

    loop.add_reader(conn.fileno(), on_command)
    run = sotw if protocol == "sotw" else delta

    async def envoy(i: int) -> None:
        """Like Envoy, a stream that fails is opened again, for as long as it takes, after a jittered
        back-off growing to MAX_BACKOFF_S; each retry is reported (a server that drops streams under load
        shows it, and the run still converges or times out)."""
        attempt = 0
        while True:
            try:
                await run(i)
                return
            except grpc.aio.AioRpcError as error:
                if stopped.is_set():
                    return
                conn.send(("reconnect", index, error.code().name))
            attempt += 1
            await asyncio.sleep(random.uniform(0.5, 1.0) * min(0.5 * 2.0**attempt, MAX_BACKOFF_S))

    tasks = [loop.create_task(envoy(i)) for i in range(n_streams)]

    def failed(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None and not stopped.is_set():
            with contextlib.suppress(Exception):
                conn.send(("error", index, repr(task.exception())))

    for task in tasks:
        task.add_done_callback(failed)
    await stopped.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# --------------------------------------------------------------------------------------- orchestrator


class BenchError(RuntimeError):
    pass


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))  # nearest-rank
    return ordered[rank]


class Server:
    """A benchmarked xDS server process: start, change one ClusterLoadAssignment, report, stop."""

    name: str
    pid: int | None = None

    def start(self) -> tuple[int, str, int]:
        """(port, the initial EDS version, VmRSS before any client)"""
        raise NotImplementedError

    def change(self, i: int) -> str:
        """Apply push i; the EDS version the clients will see."""
        raise NotImplementedError

    def stats(self) -> tuple[float, dict[str, float]]:
        """(CPU seconds so far, {"VmRSS": bytes, "VmHWM": bytes, and whatever else the server tells})"""
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class PushServer(Server):
    """spillover (`kind` xds, workers2) or the floor: server_main's process, spoken to over its pipe.
    Its stats add the collector's time (`gc_s`) and the CPU split between the main process and the
    busiest worker (`cpu_main_us`, `cpu_busiest_worker_us`). `loop`: the server process's event loop
    (spillover/server/event_loop.py; None: `spillover serve`'s default); `grpc_options`: gRPC server options in place of the xDS server's own of
    the same keys (not passed on to worker processes, which set their own); `tree`: another checkout whose
    `spillover` package the server process runs (see `_use_tree`)."""

    def __init__(
        self,
        kind: str,
        protocol: str,
        n_clusters: int,
        changes: int,
        log_path: str,
        *,
        debounce: float = 0.0,
        gc: str = "python",
        loop: str | None = None,
        grpc_options: tuple[tuple[str, Any], ...] = (),
        name: str | None = None,
        tree: str | None = None,
    ) -> None:
        self.name = name or kind
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=server_main,
            args=(child, kind, protocol, debounce, n_clusters, changes, log_path, gc, loop, grpc_options, tree),
            name=f"bench-server-{self.name}",
            daemon=True,
        )

    def _reply(self, op: str, timeout: float = 60.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.conn.poll(0.5):
                try:
                    message: Any = self.conn.recv()
                except EOFError as error:
                    raise BenchError(f"the {self.name} server process died") from error
                if message[0] == op:
                    return message
                raise BenchError(f"unexpected {self.name} server message {message!r}")
            if not self.process.is_alive():
                raise BenchError(f"the {self.name} server process exited with {self.process.exitcode}")
        raise BenchError(f"no {op!r} from the {self.name} server within {timeout}s")

    def start(self) -> tuple[int, str, int]:
        self.process.start()
        self.pid = self.process.pid
        _, port, version, status = self._reply("ready")
        return port, version, status["VmRSS"]

    def change(self, i: int) -> str:
        self.conn.send(("change", i))
        return str(self._reply("changed")[1])

    def stats(self) -> tuple[float, dict[str, float]]:
        self.conn.send(("stats",))
        _, cpu, status, gc_seconds, _ = self._reply("stats")  # the last: the collector's count
        return cpu, {**status, "gc_s": gc_seconds}

    def alive(self) -> bool:
        return self.process.is_alive()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(("stop",))
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()  # SIGTERM to this pid only
            self.process.join(2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(2)


@dataclass(frozen=True)
class Push:
    """One push as measured: every stream's latency from the trigger, and the server's stats around it."""

    latencies: list[float]
    last_s: float  # until the last stream had it
    trigger_s: float  # until the server said it changed
    cpu_s: float  # the server's, `settle` seconds after the last stream included
    clients_cpu_s: float
    before: dict[str, float]  # the server's stats before and after
    after: dict[str, float]


@dataclass(frozen=True)
class Pushes:
    """What `measure` saw of one server and one fleet."""

    started: float  # time.monotonic() before the server started
    clients_started: float  # ... once every client process was started
    connected: float  # ... once every stream had the first EDS version
    rss_empty: int
    rss_connected: float
    idle_cpu_per_s: float
    reconnects_connecting: int
    reconnects: dict[str, int]  # gRPC status of the failed stream -> retries, over the whole run
    pushes: list[Push]  # the measured ones (after the warm-up)
    status: dict[str, float]  # the server's stats after the last push

    @property
    def latencies(self) -> list[float]:
        return [t for push in self.pushes for t in push.latencies]


def measure(
    server: Server,
    tag: str,
    protocol: str,
    procs: int,
    streams_per_proc: int,
    changes: int,
    warmup: int,
    n_clusters: int,
    settle: float,
    log_dir: str,
    *,
    idle_seconds: float = 1.0,
    connect_timeout: float = 300.0,
) -> Pushes:
    """One server, one fleet: connect every stream, measure the idle cost over `idle_seconds`, then
    `warmup + changes` pushes. The server's stop is this function's.

    The clock of a push starts before the server is told to change and stops when a stream has the new
    EDS version; the server's CPU of a push includes `settle` seconds after the last stream got it, so
    the ACKs are part of its cost.
    """
    ctx = mp.get_context("spawn")
    clients: list[tuple[Any, Connection]] = []
    received: dict[tuple[str, str], list[float]] = {}
    reporters: dict[tuple[str, str], int] = {}
    reconnects: dict[str, int] = {}
    streams = procs * streams_per_proc

    def pump(timeout: float) -> None:
        for ready in wait([c for _, c in clients], timeout):
            try:
                message: Any = ready.recv()  # type: ignore[union-attr,call-arg]
            except EOFError as error:
                raise BenchError(f"a client process died ({tag})") from error
            if message[0] == "got":
                _, _, short, version, times = message
                received.setdefault((short, version), []).extend(times)
                reporters[(short, version)] = reporters.get((short, version), 0) + 1
            elif message[0] == "reconnect":
                reconnects[message[2]] = reconnects.get(message[2], 0) + 1
            elif message[0] == "error":
                raise BenchError(f"{tag}: client process {message[1]} failed: {message[2]}")

    def all_received(key: tuple[str, str], timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while reporters.get(key, 0) < procs:
            if time.monotonic() > deadline:
                got = len(received.get(key, []))
                raise BenchError(f"{tag}: only {got} of {streams} streams got {key} within {timeout:.0f}s")
            if not server.alive():
                raise BenchError(f"{tag}: the {server.name} server exited")
            pump(0.2)
        return max(received[key])

    started = time.monotonic()
    try:
        port, version0, rss_empty = server.start()
        for index in range(procs):
            parent, child = ctx.Pipe()
            process = ctx.Process(
                target=client_main,
                args=(
                    child, port, protocol, streams_per_proc, n_clusters, index,
                    os.path.join(log_dir, f"{tag}-clients-{index}.log"),
                ),
                name=f"bench-clients-{index}",
                daemon=True,
            )
            process.start()
            clients.append((process, parent))
        clients_started = time.monotonic()
        all_received(("EDS", version0), timeout=connect_timeout)
        connected = time.monotonic()
        reconnects_connecting = sum(reconnects.values())
        time.sleep(settle)
        cpu_a, _ = server.stats()
        time.sleep(idle_seconds)
        cpu_b, status = server.stats()
        rss_connected = status["VmRSS"]
        client_pids = [p.pid for p, _ in clients if p.pid is not None]

        pushes: list[Push] = []
        for i in range(warmup + changes):
            clients_before = sum(_pid_cpu_seconds(pid) for pid in client_pids)
            cpu_before, status_before = server.stats()
            t0 = time.monotonic()
            version = server.change(i)
            t_changed = time.monotonic()
            t_last = all_received(("EDS", version), timeout=120)
            time.sleep(settle)  # let the ACKs of this push be processed: they are part of its cost
            cpu_after, status = server.stats()
            clients_after = sum(_pid_cpu_seconds(pid) for pid in client_pids)
            if i < warmup:
                continue
            pushes.append(
                Push(
                    latencies=[t - t0 for t in received[("EDS", version)]],
                    last_s=t_last - t0,
                    trigger_s=t_changed - t0,
                    cpu_s=cpu_after - cpu_before,
                    clients_cpu_s=clients_after - clients_before,
                    before=status_before,
                    after=status,
                )
            )
    finally:
        # Clients first (their streams end cleanly), then the server.
        for _, conn in clients:
            with contextlib.suppress(Exception):
                conn.send(("stop",))
        for process, _ in clients:
            process.join(10)
        server.stop()
        for process, _ in clients:
            if process.is_alive():
                process.terminate()  # SIGTERM to this pid only
                process.join(2)
            if process.is_alive():
                process.kill()
                process.join(2)
    return Pushes(
        started=started,
        clients_started=clients_started,
        connected=connected,
        rss_empty=rss_empty,
        rss_connected=rss_connected,
        idle_cpu_per_s=(cpu_b - cpu_a) / idle_seconds,
        reconnects_connecting=reconnects_connecting,
        reconnects=reconnects,
        pushes=pushes,
        status=status,
    )


def run_push(
    kind: str,
    protocol: str,
    debounce: float,
    procs: int,
    streams_per_proc: int,
    changes: int,
    warmup: int,
    n_clusters: int,
    settle: float,
    log_dir: str,
    log: Any = print,
    gc: str = "python",
) -> dict[str, Any]:
    """`gc`: the xDS server's garbage collection, 'python' (spillover serve's default) or 'tuned' (its
    `--gc tuned`); the floor always runs with Python's defaults."""
    tag = f"{kind}-{protocol}-{int(debounce * 1000)}ms"
    server = PushServer(
        kind, protocol, n_clusters, warmup + changes, os.path.join(log_dir, f"{tag}-server.log"),
        debounce=debounce, gc=gc,
    )
    seen = measure(
        server, tag, protocol, procs, streams_per_proc, changes, warmup, n_clusters, settle, log_dir,
        connect_timeout=180.0,
    )
    started, connect_s = seen.started, seen.connected - seen.clients_started
    idle_cpu_per_s, rss_empty, rss_connected = seen.idle_cpu_per_s, seen.rss_empty, seen.rss_connected
    rss_after, hwm = seen.status["VmRSS"], seen.status["VmHWM"]
    latencies = seen.latencies
    per_push = [
        {
            "p50_s": _percentile(push.latencies, 50),
            "p99_s": _percentile(push.latencies, 99),
            "last_s": push.last_s,
            "trigger_s": push.trigger_s,
            "cpu_s": push.cpu_s,
            "gc_s": push.after["gc_s"] - push.before["gc_s"],
            "clients_cpu_s": push.clients_cpu_s,
            # With worker processes: the main process's part (building and shipping) and the
            # busiest worker's (a bound on the fan-out's wall time when each has a core).
            "main_cpu_s": (push.after["cpu_main_us"] - push.before["cpu_main_us"]) / 1e6,
            "busiest_worker_cpu_s": (push.after["cpu_busiest_worker_us"] - push.before["cpu_busiest_worker_us"]) / 1e6,
        }
        for push in seen.pushes
    ]
    cpu_per_push = [p["cpu_s"] for p in per_push]
    streams = procs * streams_per_proc
    log(
        f"    {kind:5s} {protocol:5s} debounce={debounce * 1000:.0f}ms streams={streams}: "
        f"p50={_percentile(latencies, 50) * 1000:.1f}ms p99={_percentile(latencies, 99) * 1000:.1f}ms "
        f"cpu/push={statistics.median(cpu_per_push) * 1000:.1f}ms "
        f"(GC {statistics.median(p['gc_s'] for p in per_push) * 1000:.1f}ms) "
        f"(clients {statistics.median(p['clients_cpu_s'] for p in per_push) * 1000:.0f}ms) rss={rss_connected / 2**20:.1f}MiB "
        f"({time.monotonic() - started:.0f}s)"
    )
    return {
        "kind": kind,
        "protocol": protocol,
        "debounce_s": debounce,
        "gc": gc if kind == "xds" else "python",
        "streams": streams,
        "client_processes": procs,
        "clusters": n_clusters,
        "changes": changes,
        "connect_s": connect_s,
        "p50_s": _percentile(latencies, 50),
        "p99_s": _percentile(latencies, 99),
        "max_s": max(latencies),
        "last_median_s": statistics.median(p["last_s"] for p in per_push),
        "push_p99_median_s": statistics.median(p["p99_s"] for p in per_push),
        "cpu_per_push_s": statistics.median(cpu_per_push),
        "cpu_per_push_mean_s": statistics.fmean(cpu_per_push),
        # Median and mean: a full collection every few pushes shows in the mean, not the median.
        "gc_per_push_s": statistics.median(p["gc_s"] for p in per_push),
        "gc_per_push_mean_s": statistics.fmean(p["gc_s"] for p in per_push),
        "clients_cpu_per_push_s": statistics.median(p["clients_cpu_s"] for p in per_push),
        "main_cpu_per_push_s": statistics.median(p["main_cpu_s"] for p in per_push),
        "busiest_worker_cpu_per_push_s": statistics.median(p["busiest_worker_cpu_s"] for p in per_push),
        "idle_cpu_per_s": idle_cpu_per_s,
        "settle_s": settle,
        "rss_empty_bytes": rss_empty,
        "rss_connected_bytes": rss_connected,
        "rss_after_bytes": rss_after,
        "rss_hwm_bytes": hwm,
        "per_push": per_push,
    }
