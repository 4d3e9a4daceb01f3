"""`python -m benchmarks.workers`: the xDS server in one process against 2 worker processes
(`spillover serve --xds-workers 2`), and what shipping a snapshot to a worker costs.

1. Shipping: the time from a publish in the main process until a worker holds the new snapshot (the
   channel's round trip after it), through the real WorkerPool, for a 10,000-cluster snapshot (20,000
   resources) sent whole and for a one-resource change; and, for the transport alone, the same frame
   bytes through the socketpair against a copy into shared memory.
2. Push fan-out (benchmarks/push.py) at 1,000 streams: `xds` (one process) and `workers2` alternated in
   one run, several repetitions, for SotW and Delta. Clients and server share the machine's cores.

Writes benchmarks/results/workers.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import tempfile
import threading
import time
from multiprocessing import shared_memory
from typing import Any

from benchmarks import fixtures, machine, push

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# ------------------------------------------------------------------------------------------- shipping


async def _shipping(n_clusters: int, repetitions: int) -> dict[str, Any]:
    from spillover.server.cache import Snapshot, SnapshotCache
    from spillover.server.resources import Resource
    from spillover.server.workers import WorkerPool

    resources = [Resource.from_message(m) for m in fixtures.messages(n_clusters)]
    cache = SnapshotCache(debounce=0.0)
    pool = WorkerPool(cache, 1)
    await pool.start("127.0.0.1:0")
    try:
        full_s: list[float] = []
        change_s: list[float] = []
        encode_full_s: list[float] = []
        encode_change_s: list[float] = []
        frame_sizes: dict[str, int] = {}
        for i in range(repetitions):
            # A group new to the worker: the whole snapshot goes.
            group = f"full-{i}"
            snapshot = Snapshot.from_resources(resources)
            started = time.perf_counter()
            cache.set_snapshot(group, snapshot)
            await pool.refresh_views()  # answered after the snapshot is applied (one channel, in order)
            full_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            frame = pool._frame(group, snapshot, full=True)
            encode_full_s.append(time.perf_counter() - started)
            frame_sizes["full"] = len(frame)
            # One ClusterLoadAssignment changes: only it goes.
            changed = list(resources)
            changed[1] = Resource.from_message(fixtures.load_assignment(0, generation=i + 1))
            snapshot = Snapshot.from_resources(changed)
            started = time.perf_counter()
            cache.set_snapshot(group, snapshot)
            await pool.refresh_views()
            change_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            frame = pool._frame(group, snapshot, full=False)
            encode_change_s.append(time.perf_counter() - started)
            frame_sizes["change"] = len(frame)
            cache.remove(group)
            pool._forget_group(group)
        # The round trip alone (a dump with no stream), to subtract.
        empty_s = []
        for _ in range(repetitions):
            started = time.perf_counter()
            await pool.refresh_views()
            empty_s.append(time.perf_counter() - started)
    finally:
        await pool.stop(0)
    return {
        "clusters": n_clusters,
        "resources": len(resources),
        "full_snapshot_to_worker_s": statistics.median(full_s),
        "one_change_to_worker_s": statistics.median(change_s),
        "encode_full_s": statistics.median(encode_full_s),
        "encode_change_s": statistics.median(encode_change_s),
        "round_trip_s": statistics.median(empty_s),
        "frame_bytes": frame_sizes,
    }


def _transport(size: int, repetitions: int) -> dict[str, float]:
    """The same number of bytes through a socketpair (what the channel does) and into shared memory."""
    payload = os.urandom(size)
    pipe_s = []
    for _ in range(repetitions):
        a, b = socket.socketpair()
        got = bytearray()

        def read(sock: socket.socket = b, into: bytearray = got) -> None:
            while len(into) < size:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    return
                into += chunk

        reader = threading.Thread(target=read)
        started = time.perf_counter()
        reader.start()
        a.sendall(payload)
        reader.join()
        pipe_s.append(time.perf_counter() - started)
        a.close()
        b.close()
    shm_s = []
    for _ in range(repetitions):
        started = time.perf_counter()
        block = shared_memory.SharedMemory(create=True, size=size)
        buf = block.buf
        assert buf is not None
        buf[:size] = payload
        copy = bytes(buf[:size])  # the reader needs bytes of its own to unpickle
        shm_s.append(time.perf_counter() - started)
        assert len(copy) == size
        block.close()
        block.unlink()
    return {"bytes": size, "socketpair_s": statistics.median(pipe_s), "shared_memory_s": statistics.median(shm_s)}


# --------------------------------------------------------------------------------------------- pushes


def _pushes(protocols: list[str], repetitions: int, procs: int, per_proc: int, changes: int, log: Any) -> list[dict[str, Any]]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="spillover-workers-bench-") as log_dir:
        for repetition in range(repetitions):
            for protocol in protocols:
                # Alternated, and the order flips every repetition: neither kind always runs on a warmer machine.
                kinds = ["xds", "workers2"] if repetition % 2 == 0 else ["workers2", "xds"]
                for kind in kinds:
                    result = push.run_push(
                        kind, protocol, 0.0, procs=procs, streams_per_proc=per_proc, changes=changes, warmup=2,
                        n_clusters=100, settle=0.3, log_dir=log_dir, log=log,
                    )
                    result.pop("per_push", None)
                    result["repetition"] = repetition
                    runs.append(result)
    return runs


def _summary(runs: list[dict[str, Any]], protocols: list[str]) -> list[dict[str, Any]]:
    cores = len(os.sched_getaffinity(0))
    out = []
    for protocol in protocols:
        one = [r for r in runs if r["protocol"] == protocol and r["kind"] == "xds"]
        two = [r for r in runs if r["protocol"] == protocol and r["kind"] == "workers2"]
        ratios = [b["p99_s"] / a["p99_s"] for a, b in zip(one, two, strict=True)]
        out.append(
            {
                "protocol": protocol,
                "p99_one_s": [r["p99_s"] for r in one],
                "p99_two_s": [r["p99_s"] for r in two],
                # The median over the pushes of each push's p99: one push slowed by the machine (other
                # users of the 2 cores) moves the overall p99 of a run, not this.
                "push_p99_one_s": [r["push_p99_median_s"] for r in one],
                "push_p99_two_s": [r["push_p99_median_s"] for r in two],
                "push_p99_ratio_median": statistics.median(
                    b["push_p99_median_s"] / a["push_p99_median_s"] for a, b in zip(one, two, strict=True)
                ),
                "p50_one_s": [r["p50_s"] for r in one],
                "p50_two_s": [r["p50_s"] for r in two],
                "p99_ratio": ratios,
                "p99_ratio_median": statistics.median(ratios),
                "cpu_one_s": [r["cpu_per_push_s"] for r in one],
                "cpu_two_s": [r["cpu_per_push_s"] for r in two],
                "clients_cpu_one_s": [r["clients_cpu_per_push_s"] for r in one],
                "clients_cpu_two_s": [r["clients_cpu_per_push_s"] for r in two],
                "main_cpu_two_s": [r.get("main_cpu_per_push_s", 0.0) for r in two],
                "busiest_worker_cpu_two_s": [r.get("busiest_worker_cpu_per_push_s", 0.0) for r in two],
                # Server and clients share the cores: no push can converge faster than all the CPU it
                # takes spread over every core.
                "budget_one_s": [(r["cpu_per_push_s"] + r["clients_cpu_per_push_s"]) / cores for r in one],
                "budget_two_s": [(r["cpu_per_push_s"] + r["clients_cpu_per_push_s"]) / cores for r in two],
                "rss_one": [r["rss_connected_bytes"] for r in one],
                "rss_two": [r["rss_connected_bytes"] for r in two],
            }
        )
    return out


def _ms(values: list[float]) -> str:
    return ", ".join(f"{v * 1000:.0f}" for v in values)


def markdown(results: dict[str, Any]) -> str:
    info = results["machine"]
    ship = results["shipping"]
    lines = [
        "# xDS worker processes: 2 workers against one process",
        "",
        f"Machine: {info['summary']} ({info['date']}, git {info['git']}).",
        f"Command: `{results['command']}`.",
        "",
        "## Push convergence at "
        f"{results['streams']} streams (one ClusterLoadAssignment of 100 changes per push)",
        "",
        f"`xds` is today's single process, `workers2` is `--xds-workers 2`; alternated in one run, "
        f"{results['repetitions']} repetitions, {results['changes']} pushes each (after 2 warm-up pushes). "
        "p99 is over every stream of every push of a run. Server CPU per push counts the main process and "
        "both workers; the simulated Envoys run in "
        f"{results['client_processes']} client processes on the same 2 cores.",
        "",
        "| protocol | p99 1 process (ms) | p99 2 workers (ms) | ratio per repetition | median ratio | "
        "p50 1 / 2 (ms) | server CPU/push 1 / 2 (ms) | clients CPU/push 1 / 2 (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["summary"]:
        lines.append(
            f"| {row['protocol']} | {_ms(row['p99_one_s'])} | {_ms(row['p99_two_s'])} | "
            f"{', '.join(f'{r:.2f}' for r in row['p99_ratio'])} | **{row['p99_ratio_median']:.2f}x** | "
            f"{_ms(row['p50_one_s'])} / {_ms(row['p50_two_s'])} | "
            f"{_ms(row['cpu_one_s'])} / {_ms(row['cpu_two_s'])} | "
            f"{_ms(row['clients_cpu_one_s'])} / {_ms(row['clients_cpu_two_s'])} |"
        )
    lines += [
        "",
        "The same runs, by the median over the pushes of each push's p99 (robust to one push slowed by "
        "the machine's other users):",
        "",
        "| protocol | per-push p99, median, 1 process (ms) | 2 workers (ms) | median ratio |",
        "|---|---|---|---|",
    ]
    for row in results["summary"]:
        lines.append(
            f"| {row['protocol']} | {_ms(row['push_p99_one_s'])} | {_ms(row['push_p99_two_s'])} | "
            f"**{row['push_p99_ratio_median']:.2f}x** |"
        )
    lines += [
        "",
        "Where the CPU of a push goes with 2 workers, and the bound the shared cores put on convergence "
        "((server + clients CPU per push) / cores):",
        "",
        "| protocol | main process CPU/push (ms) | busiest worker CPU/push (ms) | bound 1 process (ms) | "
        "bound 2 workers (ms) |",
        "|---|---|---|---|---|",
    ]
    for row in results["summary"]:
        lines.append(
            f"| {row['protocol']} | {_ms(row['main_cpu_two_s'])} | {_ms(row['busiest_worker_cpu_two_s'])} | "
            f"{_ms(row['budget_one_s'])} | {_ms(row['budget_two_s'])} |"
        )
    lines += [
        "",
        "## Shipping a snapshot to a worker",
        "",
        f"Through the real WorkerPool (1 worker), {ship['clusters']:,} clusters + their "
        f"ClusterLoadAssignments ({ship['resources']:,} resources); median of {results['shipping_repetitions']}. "
        "\"To worker\" is from the publish until the worker answers a question sent after it (so it has "
        "decoded the frame, rebuilt the resources and published the snapshot to its streams); the bare "
        f"round trip is {ship['round_trip_s'] * 1000:.2f} ms.",
        "",
        "| what | frame | encode (main) | publish -> worker holds it |",
        "|---|---|---|---|",
        f"| whole snapshot | {ship['frame_bytes']['full'] / 2**20:.1f} MiB | {ship['encode_full_s'] * 1000:.1f} ms | "
        f"{ship['full_snapshot_to_worker_s'] * 1000:.1f} ms |",
        f"| one resource changed | {ship['frame_bytes']['change']:,} B | {ship['encode_change_s'] * 1000:.2f} ms | "
        f"{ship['one_change_to_worker_s'] * 1000:.2f} ms |",
        "",
        "The transport alone, for the same number of bytes:",
        "",
        "| bytes | socketpair (the channel) | shared memory (create, copy in, copy out) |",
        "|---|---|---|",
    ]
    for row in results["transport"]:
        lines.append(
            f"| {row['bytes']:,} | {row['socketpair_s'] * 1000:.2f} ms | {row['shared_memory_s'] * 1000:.2f} ms |"
        )
    lines += ["", results.get("notes", "").strip(), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--streams-per-proc", type=int, default=250)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--protocols", default="sotw,delta")
    parser.add_argument("--shipping-clusters", type=int, default=10_000)
    parser.add_argument("--notes", default="", help="a file whose text is appended to the Markdown report")
    parser.add_argument("--out", default=os.path.join(RESULTS, "workers"))
    args = parser.parse_args()
    protocols = args.protocols.split(",")

    def say(text: str) -> None:
        print(text, flush=True)

    results: dict[str, Any] = {
        "machine": machine.describe(),
        "command": "python -m benchmarks.workers "
        + f"--repetitions {args.repetitions} --procs {args.procs} --streams-per-proc {args.streams_per_proc} "
        + f"--changes {args.changes} --protocols {args.protocols}",
        "repetitions": args.repetitions,
        "streams": args.procs * args.streams_per_proc,
        "client_processes": args.procs,
        "changes": args.changes,
        "shipping_repetitions": 5,
    }
    say("shipping ...")
    results["shipping"] = asyncio.run(_shipping(args.shipping_clusters, 5))
    frames = results["shipping"]["frame_bytes"]
    results["transport"] = [_transport(frames["change"], 50), _transport(frames["full"], 5)]
    say(json.dumps(results["shipping"]))
    say("pushes ...")
    results["runs"] = _pushes(protocols, args.repetitions, args.procs, args.streams_per_proc, args.changes, say)
    results["summary"] = _summary(results["runs"], protocols)
    if args.notes:
        with open(args.notes) as f:
            results["notes"] = f.read()
    with open(args.out + ".json", "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(results))
    say(markdown(results))


if __name__ == "__main__":
    main()
