"""Peer benchmark: go-control-plane v0.14.0, spillover and the bare grpc.aio floor, alternated in one run.

The three servers serve the same snapshot (benchmarks/fixtures.py: clusters + ClusterLoadAssignments) to
the same simulated ADS clients (benchmarks/push.py's client processes, one HTTP/2 connection per stream),
and each push changes the same ONE ClusterLoadAssignment. spillover and the floor are push.py's own server
processes; go-control-plane is benchmarks/peer_go (its SnapshotCache and xDS server), fed the very bytes
the Python servers serve. Every server reports its CPU time with getrusage(RUSAGE_SELF) and its memory from
/proc/self/status, so the figures compare like with like.

For each protocol and fleet size the servers run in turn, the order reversed every repetition (A B C,
C B A, ...), each with a fresh server and fresh clients; the report gives medians and minimums over the
repetitions and the ratios of spillover and the floor to go-control-plane.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import statistics
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

from benchmarks import push
from spillover.server import event_loop as event_loops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = os.path.join(ROOT, "benchmarks", "peer_go", "build.sh")
GO_CONTROL_PLANE = "go-control-plane"
SPILLOVER = "spillover"
FLOOR = "floor"
# spillover with `spillover serve --gc tuned` (spillover/server/gc_tuning.py): not in the default run,
# which compares the default server; `run(servers=ALL_SERVERS)` adds it.
SPILLOVER_GC_TUNED = "spillover gc-tuned"
# Only `--gc tuned`'s thresholds (fewer, larger young collections), nothing frozen.
SPILLOVER_GC_THRESHOLDS = "spillover gc-thresholds"
# Only its young threshold (10,000 instead of 700); the older ones and nothing frozen as Python has them.
SPILLOVER_GC_YOUNG = "spillover gc-young"
SERVERS = (GO_CONTROL_PLANE, SPILLOVER, FLOOR)
# spillover from another checkout (`run(baseline_tree=...)`, `peer_focus --baseline DIR`): a change is
# compared with the tree before it in the same run, alternated with the others.
SPILLOVER_BASELINE = "spillover baseline"


def on_loop(name: str, loop: str) -> str:
    """spillover or the floor on one event loop (spillover/server/event_loop.py), e.g. 'spillover uvloop';
    plain 'spillover' and 'floor' run on the loop `spillover serve` runs by default."""
    return f"{name} {loop}"


# Both Python servers on each event loop: `run(servers=EVENT_LOOP_SERVERS)` compares the loops in one run.
EVENT_LOOP_SERVERS = (GO_CONTROL_PLANE, *(on_loop(name, loop) for name in (SPILLOVER, FLOOR) for loop in event_loops.KINDS))
# gRPC server options tried against the xDS server's own (spillover/server/grpc_options.py GRPC_SERVER_OPTIONS),
# each as a server 'spillover <variant>' or 'floor <variant>' (`peer_focus --grpc-variants`).
GRPC_VARIANTS: dict[str, tuple[tuple[str, Any], ...]] = {
    # No BDP pings: each stream's ACKs otherwise start bandwidth-delay probes (a PING and its answer).
    # The xDS server's own since these runs (benchmarks/results/peer-1000-uvloop-notes.md); "bdp" is the old default.
    "no-bdp": (("grpc.http2.bdp_probe", 0),),
    "bdp": (("grpc.http2.bdp_probe", 1),),
    "throughput": (("grpc.optimization_target", "throughput"),),
}
ALL_SERVERS = (
    GO_CONTROL_PLANE, SPILLOVER, SPILLOVER_BASELINE, SPILLOVER_GC_TUNED, SPILLOVER_GC_THRESHOLDS, SPILLOVER_GC_YOUNG, FLOOR,
    *EVENT_LOOP_SERVERS[1:],
    *(f"{name} {variant}" for name in (SPILLOVER, FLOOR) for variant in GRPC_VARIANTS),
)


def _words(name: str) -> list[str]:
    return name.split()


def kind_of(name: str) -> str:
    """push.py's server kind of a Python server: 'floor' or 'xds' (spillover)."""
    return "floor" if _words(name)[0] == FLOOR else "xds"


def loop_of(name: str) -> str:
    return next((w for w in _words(name) if w in event_loops.KINDS), event_loops.DEFAULT)


def grpc_options_of(name: str) -> tuple[tuple[str, Any], ...]:
    return tuple(option for w in _words(name) for option in GRPC_VARIANTS.get(w, ()))


@dataclass(frozen=True)
class Size:
    """One fleet size: client processes x streams each, pushes measured, repetitions per server."""

    procs: int
    streams_per_proc: int
    changes: int
    repetitions: int

    @property
    def streams(self) -> int:
        return self.procs * self.streams_per_proc


# 5,000 streams take 25-35 s per server to connect on 2 cores: one repetition there, two at 1,000 and
# three at 100 keep the whole comparison (18 server runs per protocol) near 12 minutes.
FULL_SIZES = (Size(2, 50, 10, 3), Size(4, 250, 8, 2), Size(5, 1000, 4, 1))
QUICK_SIZES = (Size(2, 50, 5, 1), Size(4, 250, 5, 1))


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; the processes spawned afterwards inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def build_peer() -> str:
    """The go-control-plane peer's binary, built by benchmarks/peer_go/build.sh when stale."""
    try:
        done = subprocess.run([BUILD], capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise push.BenchError(f"{BUILD}: {error}") from error
    if done.returncode != 0:
        raise push.BenchError(f"{BUILD} failed: {done.stderr.strip()[-2000:]}")
    return os.path.join(done.stdout.strip().splitlines()[-1], "peer")


# --------------------------------------------------------------------------------------------- servers


class PushServer(push.PushServer):
    """spillover or the floor, by their names here: benchmarks/push.py's server process."""

    def __init__(
        self, name: str, protocol: str, n_clusters: int, changes: int, log_path: str, baseline_tree: str | None = None
    ) -> None:
        if name == SPILLOVER_BASELINE and baseline_tree is None:
            raise push.BenchError(f"{SPILLOVER_BASELINE!r} needs the tree to run (baseline_tree)")
        super().__init__(
            kind_of(name), protocol, n_clusters, changes, log_path, name=name,
            gc={SPILLOVER_GC_TUNED: "tuned", SPILLOVER_GC_THRESHOLDS: "thresholds", SPILLOVER_GC_YOUNG: "young"}.get(
                name, "python"
            ),
            loop=loop_of(name), grpc_options=grpc_options_of(name),
            tree=baseline_tree if name == SPILLOVER_BASELINE else None,
        )


def write_resources(path: str, n_clusters: int, changes: int) -> None:
    """The peer's input: clusters, their assignments, and push i's assignment (push.py's changes)."""
    from envoy.service.discovery.v3 import discovery_pb2
    from google.protobuf import any_pb2
    from google.protobuf.message import Message

    from benchmarks import fixtures

    def framed(messages: Sequence[Message]) -> bytes:
        response = discovery_pb2.DiscoveryResponse()
        for message in messages:
            packed = any_pb2.Any()
            packed.Pack(message)
            response.resources.append(packed)
        data = response.SerializeToString()
        return struct.pack(">I", len(data)) + data

    clusters = [fixtures.cluster(i) for i in range(n_clusters)]
    assignments = [fixtures.load_assignment(i) for i in range(n_clusters)]
    pushes = [fixtures.load_assignment(i % n_clusters, generation=i + 1) for i in range(changes)]
    with open(path, "wb") as f:
        for part in (clusters, assignments, pushes):
            f.write(framed(part))


class GoServer(push.Server):
    """go-control-plane: benchmarks/peer_go, spoken to over its stdin and stdout lines."""

    name = GO_CONTROL_PLANE

    def __init__(self, binary: str, n_clusters: int, changes: int, log_path: str, work_dir: str) -> None:
        self.binary = binary
        self.resources = os.path.join(work_dir, f"peer-{n_clusters}-{changes}.bin")
        if not os.path.exists(self.resources):
            write_resources(self.resources, n_clusters, changes)
        self.log_path = log_path
        self.process: subprocess.Popen[str] | None = None

    def _io(self) -> tuple[IO[str], IO[str]]:
        assert self.process is not None and self.process.stdin and self.process.stdout
        return self.process.stdin, self.process.stdout

    def _line(self, want: str, timeout: float = 60.0) -> list[str]:
        _, stdout = self._io()
        assert self.process is not None
        if not select.select([stdout], [], [], timeout)[0]:
            raise push.BenchError(f"no {want!r} from go-control-plane within {timeout}s")
        line = stdout.readline()
        fields = line.split()
        if not fields:
            raise push.BenchError(f"go-control-plane exited with {self.process.poll()} (log {self.log_path})")
        if fields[0] != want:
            raise push.BenchError(f"unexpected go-control-plane line {line!r}")
        return fields

    def start(self) -> tuple[int, str, int]:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [self.binary, "-listen", "127.0.0.1:0", "-resources", self.resources, "-group", push.GROUP],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                bufsize=1,
            )
        self.pid = self.process.pid
        port = int(self._line("ready")[1])
        _, status = self.stats()
        return port, "e0", int(status["VmRSS"])

    def _ask(self, command: str, want: str) -> list[str]:
        stdin, _ = self._io()
        try:
            stdin.write(command + "\n")
            stdin.flush()
        except BrokenPipeError as error:
            raise push.BenchError("go-control-plane exited") from error
        return self._line(want)

    def change(self, i: int) -> str:
        return self._ask(f"change {i}", "changed")[1]

    def stats(self) -> tuple[float, dict[str, float]]:
        fields = self._ask("stats", "stats")
        return float(fields[1]), {"VmRSS": int(fields[2]), "VmHWM": int(fields[3])}

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(OSError):
            self._io()[0].close()  # EOF: the peer stops its gRPC server and exits
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()  # this pid only
            self.process.wait(2)
        with contextlib.suppress(OSError):
            self._io()[1].close()


# --------------------------------------------------------------------------------------------- measure


def measure(
    server: push.Server,
    protocol: str,
    procs: int,
    streams_per_proc: int,
    changes: int,
    warmup: int,
    n_clusters: int,
    settle: float,
    log_dir: str,
    idle_seconds: float = 1.0,
    connect_timeout: float = 300.0,
) -> dict[str, Any]:
    """One server, one fleet (push.measure): connected streams, idle cost, `changes` pushes after `warmup`."""
    streams = procs * streams_per_proc
    seen = push.measure(
        server, f"{server.name}-{protocol}-{streams}", protocol, procs, streams_per_proc, changes, warmup,
        n_clusters, settle, log_dir, idle_seconds=idle_seconds, connect_timeout=connect_timeout,
    )
    # From before the server started: a Python server's start-up is part of the time to connect.
    connect_s = seen.connected - seen.started
    rss_empty, rss_connected, status = seen.rss_empty, seen.rss_connected, seen.status
    latencies = seen.latencies
    per_push = [
        {
            "p50_s": push._percentile(one.latencies, 50),
            "p99_s": push._percentile(one.latencies, 99),
            "last_s": one.last_s,
            "cpu_s": one.cpu_s,
            "clients_cpu_s": one.clients_cpu_s,
            # The Python servers' cyclic collector (push.py's _GcClock), by generation; 0 for go-control-plane.
            **{
                key: one.after.get(key, 0.0) - one.before.get(key, 0.0)
                for key in ("gc_s", *(f"gc{g}_{what}" for g in range(3) for what in ("s", "collections")))
            },
        }
        for one in seen.pushes
    ]
    cpu = [p["cpu_s"] for p in per_push]
    return {
        "server": server.name,
        "protocol": protocol,
        "streams": streams,
        "client_processes": procs,
        "clusters": n_clusters,
        "changes": changes,
        "connect_s": connect_s,
        "p50_s": push._percentile(latencies, 50),
        "p99_s": push._percentile(latencies, 99),
        "last_median_s": statistics.median(p["last_s"] for p in per_push),
        "last_max_s": max(p["last_s"] for p in per_push),
        "cpu_per_push_s": statistics.median(cpu),
        "cpu_per_push_mean_s": statistics.fmean(cpu),
        "clients_cpu_per_push_s": statistics.median(p["clients_cpu_s"] for p in per_push),
        "gc_per_push_mean_s": statistics.fmean(p["gc_s"] for p in per_push),
        "idle_cpu_per_s": seen.idle_cpu_per_s,
        "settle_s": settle,
        "reconnects_connecting": seen.reconnects_connecting,
        "reconnects_total": sum(seen.reconnects.values()),
        "reconnect_statuses": seen.reconnects,
        "rss_empty_bytes": rss_empty,
        "rss_connected_bytes": rss_connected,
        "rss_per_stream_bytes": (rss_connected - rss_empty) / streams,
        "rss_after_bytes": status["VmRSS"],
        "rss_hwm_bytes": status["VmHWM"],
        "per_push": per_push,
    }


# --------------------------------------------------------------------------------------------- compare

# The figures compared across servers: (key, lower is better for all of them).
FIGURES = ("p50_s", "p99_s", "cpu_per_push_s", "rss_per_stream_bytes")


def order_of(repetition: int, servers: Sequence[str] = SERVERS) -> tuple[str, ...]:
    """A B C, then C B A: each server runs first and last equally often."""
    return tuple(servers) if repetition % 2 == 0 else tuple(reversed(servers))


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (protocol, streams): median and minimum of every figure per server, and the ratios of
    spillover and the floor to go-control-plane and of spillover to the floor (medians over medians)."""
    groups: dict[tuple[str, int], dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        if "error" in run:
            continue
        groups.setdefault((run["protocol"], run["streams"]), {}).setdefault(run["server"], []).append(run)
    out = []
    for (protocol, streams), by_server in groups.items():
        row: dict[str, Any] = {"protocol": protocol, "streams": streams, "servers": {}, "ratios": {}}
        for name, server_runs in by_server.items():
            row["servers"][name] = {
                "repetitions": len(server_runs),
                **{f"{k}_median": statistics.median(r[k] for r in server_runs) for k in FIGURES},
                **{f"{k}_min": min(r[k] for r in server_runs) for k in FIGURES},
                "idle_cpu_per_s_median": statistics.median(r["idle_cpu_per_s"] for r in server_runs),
                "connect_s_median": statistics.median(r["connect_s"] for r in server_runs),
                "reconnects": sum(r["reconnects_total"] for r in server_runs),
            }
        for name, base in RATIO_PAIRS:
            if name in row["servers"] and base in row["servers"]:
                row["ratios"][f"{name}/{base}"] = {
                    k: _ratio(row["servers"][name][f"{k}_median"], row["servers"][base][f"{k}_median"])
                    for k in FIGURES
                }
        out.append(row)
    return out


RATIO_PAIRS = (
    (SPILLOVER, GO_CONTROL_PLANE),
    (FLOOR, GO_CONTROL_PLANE),
    (SPILLOVER, FLOOR),
    (SPILLOVER_BASELINE, GO_CONTROL_PLANE),
    (SPILLOVER_BASELINE, FLOOR),
    (SPILLOVER, SPILLOVER_BASELINE),
    (SPILLOVER_GC_TUNED, GO_CONTROL_PLANE),
    (SPILLOVER_GC_TUNED, SPILLOVER),
    (SPILLOVER_GC_THRESHOLDS, GO_CONTROL_PLANE),
    (SPILLOVER_GC_THRESHOLDS, SPILLOVER),
    (SPILLOVER_GC_YOUNG, GO_CONTROL_PLANE),
    (SPILLOVER_GC_YOUNG, SPILLOVER),
    *(pair for loop in event_loops.KINDS for pair in (
        (on_loop(SPILLOVER, loop), GO_CONTROL_PLANE),
        (on_loop(FLOOR, loop), GO_CONTROL_PLANE),
        (on_loop(SPILLOVER, loop), on_loop(FLOOR, loop)),
    )),
    # uvloop against asyncio, for each server: the figure the choice of the default rests on.
    (on_loop(SPILLOVER, event_loops.UVLOOP), on_loop(SPILLOVER, event_loops.ASYNCIO)),
    (on_loop(FLOOR, event_loops.UVLOOP), on_loop(FLOOR, event_loops.ASYNCIO)),
    *(pair for variant in GRPC_VARIANTS for pair in (
        (f"{SPILLOVER} {variant}", GO_CONTROL_PLANE),
        (f"{SPILLOVER} {variant}", SPILLOVER),
        (f"{FLOOR} {variant}", FLOOR),
        # The variants run on the default loop: beside the same server named by its loop.
        (f"{SPILLOVER} {variant}", on_loop(SPILLOVER, event_loops.DEFAULT)),
        (f"{FLOOR} {variant}", on_loop(FLOOR, event_loops.DEFAULT)),
    )),
)


def _ratio(value: float, base: float) -> float | None:
    return value / base if base > 0 else None


def run(
    sizes: Sequence[Size],
    protocols: Sequence[str] = ("sotw", "delta"),
    n_clusters: int = 100,
    warmup: int = 2,
    settle: float = 0.3,
    log_dir: str | None = None,
    log: Callable[[str], None] = print,
    servers: Sequence[str] = SERVERS,
    baseline_tree: str | None = None,
) -> dict[str, Any]:
    raise_fd_limit()
    log_dir = log_dir or tempfile.mkdtemp(prefix="spillover-peer-")
    binary = build_peer()
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    for protocol in protocols:
        for size in sizes:
            for repetition in range(size.repetitions):
                for name in order_of(repetition, servers):
                    total = warmup + size.changes
                    tag = f"{name}-{protocol}-{size.streams}"
                    server: push.Server = (
                        GoServer(binary, n_clusters, total, os.path.join(log_dir, f"{tag}-server.log"), log_dir)
                        if name == GO_CONTROL_PLANE
                        else PushServer(
                            name, protocol, n_clusters, total, os.path.join(log_dir, f"{tag}-server.log"), baseline_tree
                        )
                    )
                    try:
                        result = measure(
                            server, protocol, size.procs, size.streams_per_proc, size.changes, warmup,
                            n_clusters, settle, log_dir,
                        )
                    except push.BenchError as error:
                        log(f"    FAILED {tag}: {error} (logs in {log_dir})")
                        runs.append({"server": name, "protocol": protocol, "streams": size.streams, "error": str(error)})
                        continue
                    result["repetition"] = repetition
                    runs.append(result)
                    log(
                        f"    {protocol:5s} {size.streams:5d} streams  {name:16s} rep {repetition + 1}: "
                        f"p50 {result['p50_s'] * 1000:7.1f} ms  p99 {result['p99_s'] * 1000:7.1f} ms  "
                        f"cpu/push {result['cpu_per_push_s'] * 1000:7.1f} ms  "
                        f"rss/stream {result['rss_per_stream_bytes'] / 1024:6.1f} KiB  "
                        f"reconnects {result['reconnects_total']}  "
                        f"({time.monotonic() - started:.0f}s)"
                    )
    return {
        "sizes": [s.__dict__ | {"streams": s.streams} for s in sizes],
        "protocols": list(protocols),
        "servers": list(servers),
        "clusters": n_clusters,
        "warmup": warmup,
        "settle_s": settle,
        "peer": "github.com/envoyproxy/go-control-plane v0.14.0 (benchmarks/peer_go)",
        "baseline_tree": baseline_tree,
        "runs": runs,
        "summary": summarize(runs),
        "elapsed_s": time.monotonic() - started,
        "child_logs": log_dir,
    }
