"""Where the data path's cost is: spillover's translated config with one feature taken away at a time.

`python -m benchmarks.datapath_ablation [--rounds N] [--seconds S]` serves the translator's own output for
the benchmark's model (tests/harness/static_bootstrap inlines RDS/EDS: what Envoy runs is what ADS would
deliver) in variants that drop one feature each, beside plain Envoy routing, all through the same pinned
one-worker Envoys, the same Go upstream and wrk at 16 connections, rounds alternating the order. Writes
results/datapath-ablation.json; benchmarks/datapath.py shows it in results/datapath.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import machine
from benchmarks.datapath import (
    KINDS,
    MODEL,
    RESULTS,
    SHAPES,
    BenchError,
    _answers,
    _cpus,
    _GoPeer,
    _Pinned,
    ensure_tools,
    plain_bootstrap,
    wrk,
)
from spillover.ir import Endpoint, Gateway, Listener, Model, Profile, RemoteBackend, TrafficSplit
from spillover.translate import translate
from tests.harness.envoy import Envoy
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.static_bootstrap import to_static_bootstrap

__all__ = ["main", "run"]


def _model(upstream: tuple[str, int]) -> Model:
    """What spillover serves for benchmarks/datapath.py's policy (OVERFLOW at 50 %, failover, a rate limit)."""
    host, port = upstream
    return Model(
        MODEL,
        (Endpoint(host, port),),
        profiles=(Profile("default", "least-request", 1_000_000, 1_000_000),),
        remote=RemoteBackend(host, port, scheme="http", host_rewrite=f"{host}:{port}"),
        split=TrafficSplit(50, 50),
        failover=True,
    )


def variants(upstream: tuple[str, int]) -> dict[str, Model]:
    full = _model(upstream)
    no_failover = dataclasses.replace(full, failover=False)
    return {
        "spillover (all of it)": full,
        "- failover aggregates (and their upstream Lua)": no_failover,
        "- failover, - weighted split (local only)": dataclasses.replace(no_failover, split=TrafficSplit(100, 0)),
        "- rate limit": dataclasses.replace(full, profiles=(Profile("default", "least-request"),)),
        "random instead of least-request": dataclasses.replace(
            full, profiles=(Profile("default", "random", 1_000_000, 1_000_000),)
        ),
    }


def run(rounds: int, seconds: float, log: Any = print) -> dict[str, Any]:
    tools = ensure_tools()
    envoy_cpu, rest = _cpus()
    workdir = Path(tempfile.mkdtemp(prefix="spillover-bench-ablation-"))
    upstream = _GoPeer(tools["upstream"], [], rest, workdir / "upstream.log")
    envoys: list[Envoy] = []
    ports: dict[str, int] = {}
    try:
        plain_port = free_port()
        envoys.append(_Pinned(plain_bootstrap(plain_port, upstream.address), workdir, name="plain",
                              cpus=envoy_cpu).start())  # fmt: skip
        ports["plain"] = plain_port
        for i, (name, model) in enumerate(variants(("127.0.0.1", upstream.port)).items()):
            port = free_port()
            resources = translate(Gateway("bench", Listener("127.0.0.1", port), (model,)))
            envoys.append(_Pinned(to_static_bootstrap(resources), workdir, name=f"variant-{i}", cpus=envoy_cpu).start())
            ports[name] = port
        pids = {side: {"envoy": int(envoy.pid or 0)} for side, envoy in zip(ports, envoys, strict=True)}
        for port in ports.values():
            for kind in KINDS:
                wait_until(partial(_answers, port, kind), timeout=20, interval=0.1,
                           message=f"port {port} never answered {kind}-routed requests")
        sides = list(ports)
        runs = []
        for rnd in range(rounds):
            order = sides if rnd % 2 == 0 else list(reversed(sides))
            for kind in KINDS:
                for side in order:
                    r = wrk(tools, rest, ports[side], kind, SHAPES["throughput"], seconds, workdir, pids[side])
                    runs.append({"round": rnd, "kind": kind, "side": side, **r})
                    log(f"    round {rnd + 1} {kind:6} {r['rps']:8.0f} rps  {r['envoy_cpu_us_per_req']:5.0f} µs  {side}")
    finally:
        for envoy in envoys:
            envoy.stop()
        upstream.stop()
    summary: dict[str, Any] = {}
    for kind in KINDS:
        at = {(r["round"], r["side"]): r for r in runs if r["kind"] == kind}
        summary[kind] = {
            side: {
                "rps": statistics.median(at[(n, side)]["rps"] for n in range(rounds)),
                "over_plain": statistics.median(at[(n, side)]["rps"] / at[(n, "plain")]["rps"] for n in range(rounds)),
                "over_plain_min": min(at[(n, side)]["rps"] / at[(n, "plain")]["rps"] for n in range(rounds)),
                "over_plain_max": max(at[(n, side)]["rps"] / at[(n, "plain")]["rps"] for n in range(rounds)),
                "cpu_us": statistics.median(at[(n, side)]["envoy_cpu_us_per_req"] for n in range(rounds)),
                "cpu_us_min": min(at[(n, side)]["envoy_cpu_us_per_req"] for n in range(rounds)),
                "cpu_us_max": max(at[(n, side)]["envoy_cpu_us_per_req"] for n in range(rounds)),
            }
            for side in sides
        }
    return {"rounds": rounds, "seconds_per_run": seconds, "connections": SHAPES["throughput"], "runs": runs,
            "summary": summary}  # fmt: skip


def section(result: dict[str, Any], title: str = "now") -> list[str]:
    lines = [
        f"## Where the cost is, {title} (benchmarks/datapath_ablation.py)", "",
        f"The translator's output for the benchmark's model, served statically, one feature taken away at a time; "
        f"wrk at {result['connections']} connections, {result['rounds']} rounds x {result['seconds_per_run']:g} s, "
        "rps as a ratio to plain Envoy routing in the same round (median, min-max). Command: "
        f"`{result.get('command', 'python -m benchmarks.datapath_ablation')}` ({result.get('date', '?')}, "
        f"git {result.get('git', '?')}).", "",
        "Envoy CPU per request (its /proc utime + stime over the run ÷ requests) is the steadier figure: other "
        "work on the machine takes CPU away from rps, not from the CPU each request costs.", "",
        "| config | header-routed: Envoy CPU µs / request | rps (÷ plain) | body-routed: Envoy CPU µs / request "
        "| rps (÷ plain) |", "|---|---|---|---|---|",
    ]  # fmt: skip
    known = ["plain", *variants(("127.0.0.1", 1))]  # the JSON's keys come back sorted
    for side in sorted(result["summary"]["header"], key=lambda name: known.index(name) if name in known else 99):
        cells = []
        for kind in KINDS:
            s = result["summary"][kind][side]
            cells.append(f"{s['cpu_us']:.0f} ({s['cpu_us_min']:.0f}-{s['cpu_us_max']:.0f})")
            cells.append(f"{s['rps']:.0f} ({s['over_plain']:.2f}, {s['over_plain_min']:.2f}-{s['over_plain_max']:.2f})")
        lines.append(f"| {side} | {' | '.join(cells)} |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.datapath_ablation", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--name", default="datapath-ablation", help="results/NAME.{md,json}")
    args = parser.parse_args(argv)
    info = machine.describe()
    try:
        result = run(args.rounds, args.seconds, log=lambda line: print(line, flush=True))
    except (BenchError, AssertionError, OSError, RuntimeError) as error:
        print(f"FAILED: {error}")
        return 1
    result.update(command=f"python -m benchmarks.datapath_ablation --rounds {args.rounds} --seconds {args.seconds:g}",
                  date=info["date"], git=info["git"], machine=info)  # fmt: skip
    text = "\n".join(section(result))
    print(text)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
