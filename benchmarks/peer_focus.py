"""A focused peer run: one fleet size, chosen protocols, several repetitions (benchmarks/peer.py alternates
the servers A B C, C B A). Written as results/<name>.{md,json} beside the full comparison (results/peer.*).

    PYTHONPATH=. .venv/bin/python -m benchmarks.peer_focus --streams-per-proc 250 --procs 4 --changes 8 \
        --repetitions 3 --protocols delta sotw --name peer-1000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from benchmarks import machine, peer, peer_report

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer_focus", description=__doc__)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--streams-per-proc", type=int, default=250)
    parser.add_argument("--changes", type=int, default=8)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--protocols", nargs="+", choices=("sotw", "delta"), default=["delta", "sotw"])
    parser.add_argument(
        "--gc-tuned", action="store_true",
        help="also spillover with `--gc tuned` (spillover/server/gc_tuning.py), alternated with the others",
    )
    parser.add_argument(
        "--event-loops", action="store_true",
        help="spillover and the floor each on uvloop and on asyncio (spillover/server/event_loop.py), "
        "alternated with go-control-plane, instead of on the default loop",
    )
    parser.add_argument(
        "--grpc-variants", nargs="+", choices=sorted(peer.GRPC_VARIANTS), default=[],
        help="also spillover and the floor with these gRPC server options (benchmarks/peer.py GRPC_VARIANTS)",
    )
    parser.add_argument(
        "--servers", nargs="+", choices=peer.ALL_SERVERS, metavar="SERVER",
        help=f"exactly these servers, in this order (instead of the options above); of: {', '.join(peer.ALL_SERVERS)}",
    )
    parser.add_argument(
        "--baseline", metavar="DIR",
        help=f"also {peer.SPILLOVER_BASELINE!r}: the server with the spillover package of the checkout DIR (e.g. "
        "`git archive main | tar -x -C DIR`), right after spillover in the order",
    )
    parser.add_argument("--name", default="peer-1000", help="results/<name>.md and .json")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.peer_focus" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    loads: list[float] = []

    def log(line: str) -> None:
        # Every server run's line carries the load average at its end: the machine is shared.
        loads.append(os.getloadavg()[0])
        print(f"{line}  load {loads[-1]:.1f}", flush=True)

    results: dict[str, Any] = {"command": command, "mode": "focused", "machine": machine.describe()}
    start = os.getloadavg()[0]
    servers: tuple[str, ...] = peer.EVENT_LOOP_SERVERS if args.event_loops else peer.SERVERS
    if args.gc_tuned:
        servers = (*servers[:2], peer.SPILLOVER_GC_TUNED, *servers[2:])
    for variant in args.grpc_variants:
        servers = (*servers, f"{peer.SPILLOVER} {variant}", f"{peer.FLOOR} {variant}")
    if args.baseline:
        at = servers.index(peer.SPILLOVER) + 1 if peer.SPILLOVER in servers else len(servers)
        servers = (*servers[:at], peer.SPILLOVER_BASELINE, *servers[at:])
    if args.servers:
        servers = tuple(args.servers)
    size = peer.Size(args.procs, args.streams_per_proc, args.changes, args.repetitions)
    results["peer"] = peer.run(
        [size], protocols=tuple(args.protocols), log=log,
        servers=servers, baseline_tree=args.baseline,
    )
    results["load_average"] = {"start": start, "end": os.getloadavg()[0], "per_run": loads}
    with open(os.path.join(RESULTS, f"{args.name}.md"), "w") as f:
        f.write(peer_report.peer_markdown(results))
    with open(os.path.join(RESULTS, f"{args.name}.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"written {os.path.join(RESULTS, args.name)}.md and .json")
    return 0 if not any("error" in r for r in results["peer"]["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
