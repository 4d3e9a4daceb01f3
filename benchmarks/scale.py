"""Scale figures: 10,000 connected Delta streams against spillover on this machine, and a projection.

The fleet is benchmarks/push.py's simulated Envoys (one HTTP/2 connection per stream), in a few client
processes with many channels each; the server is push.py's spillover server process. Measured: RSS per
connected stream (VmRSS with every stream connected minus VmRSS before the first), the server's idle CPU
with every stream connected, and the convergence (p50/p99/last) of a one-resource change. The projection
multiplies the measured per-stream costs out to another fleet and core count; it assumes the push work
spreads evenly over the cores (xDS workers), which is what it projects, not what it measured.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks import peer, push

# istiod's published sizing, quoted beside the projection (Istio's performance and scalability docs).
ISTIOD_SIDECARS = 25_000
ISTIOD_VCPUS = 16
RSS_PER_STREAM_TARGET = 60 * 1024


def run(
    streams: int = 10_000,
    procs: int = 8,
    changes: int = 5,
    warmup: int = 1,
    idle_seconds: float = 5.0,
    settle: float = 1.0,
    n_clusters: int = 100,
    project_streams: int = ISTIOD_SIDECARS,
    project_cores: int = ISTIOD_VCPUS,
    log_dir: str | None = None,
    log: Callable[[str], None] = print,
    kind: str = "xds",
) -> dict[str, Any]:
    """`kind`: push.py's server kind, "xds" (one process) or "workersN" (N xDS worker processes, whose
    CPU time and memory count with the main process's)."""
    if streams % procs:
        raise ValueError(f"streams ({streams}) must be a multiple of the client processes ({procs})")
    hard = peer.raise_fd_limit()
    # The server holds one socket per stream, each client process one per stream of its own.
    if hard < streams + 256:
        raise push.BenchError(f"RLIMIT_NOFILE hard limit {hard} is below {streams + 256} for {streams} streams")
    log_dir = log_dir or tempfile.mkdtemp(prefix="spillover-scale-")
    started = time.monotonic()
    server = push.PushServer(
        kind, "delta", n_clusters, warmup + changes, os.path.join(log_dir, f"scale-{kind}-server.log"),
        name=peer.SPILLOVER if kind == "xds" else kind,
    )
    result = peer.measure(
        server, "delta", procs, streams // procs, changes, warmup, n_clusters, settle, log_dir,
        idle_seconds=idle_seconds, connect_timeout=900.0,
    )
    log(
        f"    delta {streams} streams ({kind}): connected in {result['connect_s']:.0f}s "
        f"({result['reconnects_connecting']} reconnects), rss/stream {result['rss_per_stream_bytes'] / 1024:.1f} KiB, "
        f"idle {result['idle_cpu_per_s'] * 100:.1f}% of a core, p50 {result['p50_s'] * 1000:.0f} ms "
        f"p99 {result['p99_s'] * 1000:.0f} ms last {result['last_median_s'] * 1000:.0f} ms, "
        f"cpu/push {result['cpu_per_push_s'] * 1000:.0f} ms"
    )
    return {
        "fd_limit": hard,
        "measured": result,
        "projection": project(result, project_streams, project_cores),
        "rss_per_stream_target_bytes": RSS_PER_STREAM_TARGET,
        "istiod": {"sidecars": ISTIOD_SIDECARS, "vcpus": ISTIOD_VCPUS},
        "elapsed_s": time.monotonic() - started,
        "child_logs": log_dir,
    }


def project(measured: dict[str, Any], streams: int, cores: int) -> dict[str, float]:
    """Measured per-stream costs x streams / cores. The server's CPU of a push and its idle CPU grow with
    the streams it serves; memory is the empty server plus the per-stream RSS."""
    per_stream_push_cpu = measured["cpu_per_push_s"] / measured["streams"]
    per_stream_idle_cpu = measured["idle_cpu_per_s"] / measured["streams"]
    push_cpu = per_stream_push_cpu * streams
    return {
        "streams": streams,
        "cores": cores,
        "cpu_per_push_per_stream_s": per_stream_push_cpu,
        "idle_cpu_per_stream_per_s": per_stream_idle_cpu,
        "push_cpu_s": push_cpu,
        "push_wall_s": push_cpu / cores,
        "pushes_per_s": cores / push_cpu if push_cpu > 0 else float("inf"),
        "idle_cores": per_stream_idle_cpu * streams,
        "rss_bytes": measured["rss_empty_bytes"] + measured["rss_per_stream_bytes"] * streams,
    }


def compare(
    kinds: Sequence[str] = ("workers1", "workers2"),
    repetitions: int = 2,
    log: Callable[[str], None] = print,
    **options: Any,
) -> dict[str, Any]:
    """The scale run for each server kind in turn, the order reversed every repetition (A B, B A): one
    process against xDS worker processes at the same fleet, medians and minimums over the repetitions."""
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    for repetition in range(repetitions):
        for kind in kinds if repetition % 2 == 0 else tuple(reversed(kinds)):
            try:
                result = run(log=log, kind=kind, **options)
            except push.BenchError as error:
                log(f"    FAILED {kind}: {error}")
                runs.append({"kind": kind, "repetition": repetition, "error": str(error)})
                continue
            runs.append({"kind": kind, "repetition": repetition, "load_1min": os.getloadavg()[0], **result})
    summary = {}
    for kind in kinds:
        measured = [r["measured"] for r in runs if r["kind"] == kind and "error" not in r]
        if not measured:
            continue
        summary[kind] = {
            "repetitions": len(measured),
            **{
                f"{key}_{how}": fn(m[key] for m in measured)
                for key in COMPARED
                for how, fn in (("median", statistics.median), ("min", min))
            },
            "reconnects_after_connect": sum(m["reconnects_total"] - m["reconnects_connecting"] for m in measured),
        }
    return {"kinds": list(kinds), "runs": runs, "summary": summary, "elapsed_s": time.monotonic() - started}


COMPARED = (
    "p50_s", "p99_s", "last_median_s", "last_max_s", "cpu_per_push_s", "connect_s", "rss_per_stream_bytes",
    "rss_connected_bytes", "idle_cpu_per_s",
)
