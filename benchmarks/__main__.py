"""`python -m benchmarks [--quick]`: run every benchmark, print a table, write results/latest.{md,json}.

`python -m benchmarks --only push [--protocol delta] [--gc tuned] [--procs 4 --streams-per-proc 250]`: only
the push fan-out (a few minutes), written to results/push-only.{md,json} unless --output says otherwise.
`python -m benchmarks --only peer|scale`: the go-control-plane peer comparison or the scale figures, written
to results/peer.* or results/scale.*. `python -m benchmarks --only incremental`: one model changing in a
10,000-model fleet, full against incremental translation (results/incremental.*; benchmarks/incremental.py).
`python -m benchmarks --only envoy-apply`: what a real Envoy pays (CPU, wall time to ACK, RSS) to load a
1,000- and a 10,000-model fleet and to apply one-model changes to it (results/envoy-apply.*;
benchmarks/envoy_apply.py); not in the default run (the 10,000-model initial load alone takes many minutes).
`python -m benchmarks --only route-scan`: a request's Envoy CPU and latency with 1, 1,000 and 10,000 models in
the route table (results/route-scan.*; benchmarks/route_scan.py). `python -m benchmarks --only
rate-limit-refill`: what a limited model admits while another model's split flips (benchmarks/rate_limit_refill.py).
Neither is in the default run."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

from benchmarks import (
    build,
    datapath,
    destination,
    envoy_apply,
    incremental,
    logic,
    machine,
    peer_report,
    push,
    rate_limit_refill,
    reaction,
    report,
    route_scan,
)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

FULL: dict[str, Any] = {
    "procs": 4,
    "streams_per_proc": 250,
    "changes": 20,
    "warmup": 2,
    "push_clusters": 100,
    "settle": 0.3,
    "build_sizes": [100, 1_000, 10_000],
    "serialization_clusters": 2_000,
    "logic_clusters": [100, 1_000],
    "logic_streams": 1_000,
    "logic_pushes": 5,
    "reaction_repetitions": 7,
    "reaction_rps": 100.0,
    "destination_repetitions": 5,
    "datapath_rounds": 5,
    "datapath_seconds": 5.0,
}
QUICK: dict[str, Any] = {
    "procs": 2,
    "streams_per_proc": 50,
    "changes": 5,
    "warmup": 1,
    "push_clusters": 100,
    "settle": 0.15,
    "build_sizes": [100, 1_000, 10_000],
    "serialization_clusters": 200,
    "logic_clusters": [100, 1_000],
    "logic_streams": 100,
    "logic_pushes": 2,
    "reaction_repetitions": 2,
    "reaction_rps": 100.0,
    "destination_repetitions": 2,
    "datapath_rounds": 2,
    "datapath_seconds": 2.0,
}
# (kind, protocol, debounce): the floor of each protocol first, then the server with and without debounce.
SCENARIOS = [
    ("floor", "sotw", 0.0),
    ("xds", "sotw", 0.0),
    ("xds", "sotw", 0.1),
    ("floor", "delta", 0.0),
    ("xds", "delta", 0.0),
    ("xds", "delta", 0.1),
    # The streams served by 2 worker processes (spillover serve --xds-workers 2); see benchmarks/workers.py.
    ("workers2", "sotw", 0.0),
    ("workers2", "delta", 0.0),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 100 streams, fewer iterations (< 60 s)"
    )
    parser.add_argument("--skip-push", action="store_true", help="only the in-process benchmarks")
    parser.add_argument("--no-delta", action="store_true", help="SotW push scenarios only")
    parser.add_argument(
        "--skip-reaction",
        action="store_true",
        help="skip the reaction-time benchmark (real Envoy + Prometheus)",
    )
    parser.add_argument(
        "--skip-destination",
        action="store_true",
        help="skip the destination-cluster benchmark (two kube-apiservers, real Envoy + Prometheus)",
    )
    parser.add_argument(
        "--skip-datapath",
        action="store_true",
        help="skip the data-path benchmark (wrk through Envoy: plain, spillover's config, an ext_proc hop)",
    )
    parser.add_argument(
        "--only", choices=("push", "incremental", "envoy-apply", "route-scan", "rate-limit-refill", *peer_report.PARTS),
        help="run only this part: push (written as push-only.md/.json, not latest), the go-control-plane peer "
        "comparison (results/peer.*), the 10,000-stream scale figures (results/scale.*), incremental "
        "(results/incremental.*), envoy-apply (results/envoy-apply.*: a real Envoy applying changes), route-scan "
        "(results/route-scan.*) or rate-limit-refill",
    )
    parser.add_argument("--skip-peer", action="store_true", help="skip the go-control-plane peer comparison")
    parser.add_argument(
        "--skip-incremental", action="store_true", help="skip the one-model change in a 10,000-model fleet"
    )
    parser.add_argument("--skip-scale", action="store_true", help="skip the 10,000-stream scale figures")
    parser.add_argument("--protocol", choices=("sotw", "delta"), help="push scenarios of this protocol only")
    parser.add_argument("--no-debounce-scenarios", action="store_true", help="skip the push scenarios with a debounce")
    parser.add_argument(
        "--gc", choices=("tuned", "python"), default="python",
        help="the xDS server's garbage collection in the push scenarios (spillover serve's --gc; default python)",
    )
    parser.add_argument("--procs", type=int, help="push: client processes (default 4, --quick 2)")
    parser.add_argument("--streams-per-proc", type=int, help="push: streams per client process (default 250)")
    parser.add_argument("--changes", type=int, help="push: measured pushes (default 20)")
    parser.add_argument("--output", default=RESULTS, help="directory for latest.md / latest.json")
    args = parser.parse_args(argv)
    config: dict[str, Any] = dict(QUICK if args.quick else FULL)
    for option in ("procs", "streams_per_proc", "changes"):
        if getattr(args, option) is not None:
            config[option] = getattr(args, option)
    only_push = args.only == "push"
    if only_push:
        args.skip_reaction = args.skip_destination = args.skip_datapath = True
        args.skip_peer = args.skip_scale = args.skip_incremental = True
    command = "python -m benchmarks" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    if args.only == "incremental":
        models, repetitions = (1_000, 3) if args.quick else (10_000, 7)
        return 0 if incremental.write(models, repetitions, args.output, command) else 1
    if args.only == "envoy-apply":
        sizes, flips = ([1_000], 2) if args.quick else ([1_000, 10_000], 5)
        return 0 if envoy_apply.write(sizes, flips, args.output, command) else 1
    if args.only == "route-scan":
        quick = ["--rounds", "2", "--models", "1", "1000"] if args.quick else []
        return route_scan.main(["--output", args.output, *quick])
    if args.only == "rate-limit-refill":
        return rate_limit_refill.main(["--rounds", "1"] if args.quick else [])
    if args.only and not only_push:
        return 0 if peer_report.run_parts([args.only], args.quick, args.output, command) else 1
    started = time.monotonic()
    log_dir = tempfile.mkdtemp(prefix="spillover-bench-")

    def say(line: str) -> None:
        print(line, flush=True)

    results: dict[str, Any] = {
        "command": command,
        "mode": ("quick" if args.quick else "full") + (" push only" if only_push else ""),
        "machine": machine.describe(),
        "config": config,
        "child_logs": log_dir,
    }
    say(f"spillover benchmarks ({results['mode']}) — {results['machine']['summary']}")

    if not only_push:
        say("  snapshot build ...")
        results["snapshot_build"] = build.snapshot_build(config["build_sizes"], args.quick)
        say(f"  serialization ({config['serialization_clusters']} clusters, upb vs betterproto2) ...")
        results["serialization"] = build.serialization(config["serialization_clusters"], args.quick)

        if not args.skip_incremental:
            # Written to results/incremental.{md,json} of its own (its figures are not latest.md's table).
            models, repetitions = (1_000, 3) if args.quick else (10_000, 7)
            incremental.write(models, repetitions, args.output, command, log=say)

        say(f"  per-stream protocol logic without transport ({config['logic_streams']} streams) ...")
        results["stream_logic"] = logic.run(
            config["logic_clusters"], config["logic_streams"], config["logic_pushes"]
        )

    results["push"] = []
    failed = False
    if not args.skip_push:
        say(
            f"  push fan-out: {config['procs']} client processes x {config['streams_per_proc']} streams, "
            f"{config['changes']} changes of one ClusterLoadAssignment among {config['push_clusters']} clusters ..."
        )
        for kind, protocol, debounce in SCENARIOS:
            if (args.no_delta and protocol == "delta") or (args.protocol and protocol != args.protocol):
                continue
            if args.no_debounce_scenarios and debounce > 0:
                continue
            try:
                results["push"].append(
                    push.run_push(
                        kind,
                        protocol,
                        debounce,
                        procs=config["procs"],
                        streams_per_proc=config["streams_per_proc"],
                        changes=config["changes"],
                        warmup=config["warmup"],
                        n_clusters=config["push_clusters"],
                        settle=config["settle"],
                        log_dir=log_dir,
                        log=say,
                        gc=args.gc,
                    )
                )
            except push.BenchError as error:
                failed = True
                say(f"    FAILED {kind}/{protocol}/debounce={debounce}: {error} (child logs in {log_dir})")
                results["push"].append(
                    {"kind": kind, "protocol": protocol, "debounce_s": debounce, "error": str(error)}
                )

    results["reaction"] = []
    if not args.skip_reaction:
        say(
            f"  reaction time: metric crosses its threshold -> first request at the remote backend "
            f"({config['reaction_repetitions']} repetitions per scenario, {config['reaction_rps']:g} req/s through Envoy) ..."
        )
        results["reaction"] = reaction.run(
            args.quick,
            log_dir,
            log=say,
            rate=config["reaction_rps"],
            repetitions=config["reaction_repetitions"],
        )
        if any("error" in row for row in results["reaction"]):
            failed = True

    results["destination"] = None
    if not args.skip_destination:
        say(
            f"  destination cluster: threshold -> copy scale-up on B, readiness -> first request at the copy "
            f"({config['destination_repetitions']} repetitions) ..."
        )
        try:
            results["destination"] = destination.run(config["destination_repetitions"], log_dir, log=say)
        except (reaction.BenchError, AssertionError, OSError, RuntimeError) as error:
            failed = True
            say(f"    FAILED: {error}")
            results["destination"] = {"error": str(error)}

    results["datapath"] = None
    if not args.skip_datapath:
        say(
            f"  data path: wrk through Envoy ({config['datapath_rounds']} rounds x {config['datapath_seconds']:g} s "
            "per side: direct, plain Envoy, spillover's config, ext_proc hop) ..."
        )
        try:
            results["datapath"] = datapath.run(config["datapath_rounds"], config["datapath_seconds"], log=say)
        except (datapath.BenchError, AssertionError, OSError, RuntimeError) as error:
            failed = True
            say(f"    FAILED: {error}")
            results["datapath"] = {"error": str(error)}

    parts = [p for p, skip in zip(peer_report.PARTS, (args.skip_peer, args.skip_scale), strict=True) if not skip]
    if parts and not peer_report.run_parts(parts, args.quick, args.output, command, log=say):
        failed = True

    results["elapsed_s"] = time.monotonic() - started
    results["targets"] = report.targets(results)
    markdown = report.markdown(results)
    if results["datapath"] is not None:
        markdown += "\n".join(["", *datapath.section(results["datapath"], "The data path's own cost (benchmarks/datapath.py)")])
    say("")
    say(markdown)
    os.makedirs(args.output, exist_ok=True)
    name = "push-only" if only_push else "latest"
    with open(os.path.join(args.output, f"{name}.md"), "w") as f:
        f.write(markdown)
    with open(os.path.join(args.output, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
    say(f"written {os.path.join(args.output, name + '.md')} and {name}.json in {results['elapsed_s']:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
