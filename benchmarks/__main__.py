"""`python -m benchmarks [--quick]`: run every benchmark, print a table, write results/latest.{md,json}."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

from benchmarks import build, logic, machine, push, reaction, report

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
}
# (kind, protocol, debounce): the floor of each protocol first, then the server with and without debounce.
SCENARIOS = [
    ("floor", "sotw", 0.0),
    ("xds", "sotw", 0.0),
    ("xds", "sotw", 0.1),
    ("floor", "delta", 0.0),
    ("xds", "delta", 0.0),
    ("xds", "delta", 0.1),
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
    parser.add_argument("--output", default=RESULTS, help="directory for latest.md / latest.json")
    args = parser.parse_args(argv)
    config: dict[str, Any] = dict(QUICK if args.quick else FULL)
    command = "python -m benchmarks" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    started = time.monotonic()
    log_dir = tempfile.mkdtemp(prefix="spillover-bench-")

    def say(line: str) -> None:
        print(line, flush=True)

    results: dict[str, Any] = {
        "command": command,
        "mode": "quick" if args.quick else "full",
        "machine": machine.describe(),
        "config": config,
        "child_logs": log_dir,
    }
    say(f"spillover benchmarks ({results['mode']}) — {results['machine']['summary']}")

    say("  snapshot build ...")
    results["snapshot_build"] = build.snapshot_build(config["build_sizes"], args.quick)
    say(f"  serialization ({config['serialization_clusters']} clusters, upb vs betterproto2) ...")
    results["serialization"] = build.serialization(config["serialization_clusters"], args.quick)

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
            if args.no_delta and protocol == "delta":
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

    results["elapsed_s"] = time.monotonic() - started
    results["targets"] = report.targets(results)
    markdown = report.markdown(results)
    say("")
    say(markdown)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "latest.md"), "w") as f:
        f.write(markdown)
    with open(os.path.join(args.output, "latest.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
    say(f"written {os.path.join(args.output, 'latest.md')} and latest.json in {results['elapsed_s']:.0f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
