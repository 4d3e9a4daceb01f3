"""Convergence at a large Delta fleet with the streams in one process against xDS worker processes,
alternated (benchmarks/scale.py's compare). Written as results/<name>.{md,json}.

    PYTHONPATH=. .venv/bin/python -m benchmarks.scale_workers --streams 10000 --kinds workers1 workers2 xds \
        --repetitions 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from benchmarks import machine, peer_report, scale

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
LABELS = {"xds": "one process", "workers1": "1 worker process", "workers2": "2 worker processes"}


def markdown(results: dict[str, Any]) -> str:
    data: dict[str, Any] = results["scale"]
    runs = [r for r in data["runs"] if "error" not in r]
    first = runs[0]["measured"] if runs else {}
    lines = peer_report._header(
        f"Scale: {first.get('streams', 0):,} Delta streams, one process against xDS worker processes", results
    )
    lines += [
        "",
        f"benchmarks/scale.py's run (push.py's simulated Envoys, one HTTP/2 connection per stream, "
        f"{first.get('client_processes', 0)} client processes; {first.get('clusters', 0)} clusters + as many "
        f"ClusterLoadAssignments; {first.get('changes', 0)} pushes of ONE ClusterLoadAssignment after a warm-up "
        "push) for each server kind in turn, fresh processes each time, the order reversed every repetition. "
        "Workers: `WorkerPool(cache, N)` as `spillover serve --xds-workers N` builds it (snapshots built in "
        "the main process, streams served by N processes on one SO_REUSEPORT port); CPU and RSS are the "
        "main process's plus every worker's. The clients share the 2 cores with the server, so convergence "
        "includes their CPU. Medians over the repetitions (minimum in brackets).",
        f"Elapsed: {data['elapsed_s']:.0f} s.",
        "",
        "| server | runs | p50 ms | p99 ms | last stream ms (median push) | CPU per push ms | connect s "
        "| RSS per stream KiB | RSS connected MiB | idle CPU % | reconnects after connect |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, s in data["summary"].items():
        def pair(key: str, scale_by: float, fmt: str = ".1f", s: dict[str, float] = s) -> str:
            return f"{s[key + '_median'] * scale_by:{fmt}} ({s[key + '_min'] * scale_by:{fmt}})"

        lines.append(
            f"| {LABELS.get(kind, kind)} | {s['repetitions']} | {pair('p50_s', 1000, '.0f')} | {pair('p99_s', 1000, '.0f')} "
            f"| {pair('last_median_s', 1000, '.0f')} | {pair('cpu_per_push_s', 1000, '.0f')} | {pair('connect_s', 1, '.0f')} "
            f"| {pair('rss_per_stream_bytes', 1 / 1024)} | {pair('rss_connected_bytes', 1 / 2**20, '.0f')} "
            f"| {pair('idle_cpu_per_s', 100)} | {s['reconnects_after_connect']} |"
        )
    lines += ["", "Every run, in order:", "", "| # | server | p50 ms | p99 ms | CPU per push ms | load (1 min) at its end |",
              "|---:|---|---:|---:|---:|---:|"]
    for i, r in enumerate(data["runs"], 1):
        if "error" in r:
            lines.append(f"| {i} | {LABELS.get(r['kind'], r['kind'])} | failed: {r['error']} | | | |")
            continue
        m = r["measured"]
        lines.append(
            f"| {i} | {LABELS.get(r['kind'], r['kind'])} | {m['p50_s'] * 1000:.0f} | {m['p99_s'] * 1000:.0f} "
            f"| {m['cpu_per_push_s'] * 1000:.0f} | {r['load_1min']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_workers", description=__doc__)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=8, help="client processes")
    parser.add_argument("--changes", type=int, default=5)
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--kinds", nargs="+", default=["workers1", "workers2"])
    parser.add_argument("--name", default="scale-workers", help="results/<name>.md and .json")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.scale_workers" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    results: dict[str, Any] = {"command": command, "mode": "focused", "machine": machine.describe()}
    start = os.getloadavg()[0]

    def log(line: str) -> None:
        print(f"{line}  load {os.getloadavg()[0]:.1f}", flush=True)

    results["scale"] = scale.compare(
        args.kinds, args.repetitions, log=log, streams=args.streams, procs=args.procs, changes=args.changes
    )
    results["load_average"] = {"start": start, "end": os.getloadavg()[0]}
    with open(os.path.join(RESULTS, f"{args.name}.md"), "w") as f:
        f.write(markdown(results))
    with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"written {os.path.join(RESULTS, args.name)}.md and .json")
    return 0 if all("error" not in r for r in results["scale"]["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
