"""Where the data path's cost is: spillover's translated config with one feature taken away at a time.

`python -m benchmarks.datapath_ablation [--rounds N] [--seconds S] [--baseline TREE]` serves the translator's own output for
the benchmark's model (tests/harness/static_bootstrap inlines RDS/EDS: what Envoy runs is what ADS would
deliver) in variants that drop one feature each, beside plain Envoy routing, all through the same pinned
one-worker Envoys, the same Go upstream and wrk at 16 connections, rounds alternating the order. A side is a
model (`variants`) or a model plus an edit of its bootstrap for what the IR can't switch off (`sides`: an inert
filter, the reply mapper, route stats, parts of the retry policy or of the aggregates' upstream chain), and the
split weights in runtime (as a static layer). Writes results/NAME.{json,md} (NAME: datapath-ablation);
benchmarks/datapath.py shows the json in results/datapath.md. benchmarks/datapath_instructions.py counts the
same sides' instructions per request, which the machine's load doesn't move.

`--baseline TREE` (a source tree, e.g. `git archive` of main unpacked) adds that tree's translation of the
full config and of the config without failover as two more sides of the same rounds: two translator
versions compared under the same load, which separate runs on a shared machine can't do.

`--pieces` adds sides that price the body path's filters one at a time (PATCHED): the full config with the
model's route leaving json_to_metadata, the Lua normaliser, both, or the body path's Lua (lua.BODY_MODEL)
on for header-routed requests, and without the listener's body-model filter (what a filter disabled by
default costs). `--other TREE` adds more trees' full config as sides.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import machine
from benchmarks.bootstrap_edits import (
    PATCHED,
    Bootstrap,
    aggregate_filters,
    client_host_in_filter_state,
    route_stats_rejected,
    with_listener_failure_header,
    without_filters,
    without_reply_mapper,
    without_retries,
    without_retry_parts,
    without_route_stats,
    without_side_header_removal,
)
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
from spillover.translate.common import (
    CLIENT_HOST_FILTER,
    JSON_TO_METADATA_FILTER,
    NORMALIZE_FILTER,
    PREFIX_HASH_FILTER,
)
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
        # The aggregates alone: a remote that keeps the client's host needs no upstream filter at all (the
        # local-first aggregates never have any: they reach the remote through its internal listener).
        "- the aggregates' upstream filters (remote keeps the host)": dataclasses.replace(
            full, remote=dataclasses.replace(full.remote, host_rewrite=None) if full.remote else None
        ),
        "- failover, - weighted split (local only)": dataclasses.replace(
            no_failover, split=TrafficSplit(100, 0)
        ),
        "- rate limit": dataclasses.replace(full, profiles=(Profile("default", "least-request"),)),
        "random instead of least-request": dataclasses.replace(
            full, profiles=(Profile("default", "random", 1_000_000, 1_000_000),)
        ),
    }


@dataclasses.dataclass(frozen=True)
class Side:
    """One Envoy of the run: a model translated (`split_weights` as the gateway's), then `edit` applied to
    the static bootstrap, for the parts of the chain the IR can't switch off (an inert filter, a mapper).
    `kinds`: the requests it can serve (without the normaliser a body-routed request is a 404)."""

    model: Model
    split_weights: str = "route"
    edit: Callable[[Bootstrap], None] | None = None
    kinds: tuple[str, ...] = KINDS


def sides(upstream: tuple[str, int], pieces: bool = False) -> dict[str, Side]:
    """`variants` and the parts of the chain only an edit of the bootstrap takes away; with `pieces`, the
    PATCHED sides too (what each body-path filter costs header-routed requests)."""
    full = _model(upstream)
    all_local = dataclasses.replace(full, split=TrafficSplit(100, 0))
    all_remote = dataclasses.replace(full, split=TrafficSplit(0, 100))
    local_only = dataclasses.replace(full, failover=False, split=TrafficSplit(100, 0))
    result = {name: Side(model) for name, model in variants(upstream).items()}
    result.update({
        "- the aggregates' upstream filters (host rewrite kept, no restore)": Side(full, edit=aggregate_filters(
            lambda name: False)),
        "- the aggregates' restore and side-header removal (side header kept)": Side(full, edit=aggregate_filters(
            lambda name: name in ("envoy.filters.http.header_mutation", "envoy.filters.http.upstream_codec"))),
        "- client_host header_to_metadata": Side(full, edit=without_filters(CLIENT_HOST_FILTER)),
        "- the side header's removal (request and response)": Side(full, edit=without_side_header_removal),
        "- the retry on the internal listener's failure header (retriable-headers)": Side(
            full, edit=without_retry_parts("retriable_headers")),
        "client_host in filter state (set_filter_state) instead": Side(full, edit=client_host_in_filter_state),
        "- prefix_hash Lua (inert)": Side(full, edit=without_filters(PREFIX_HASH_FILTER)),
        "- json_to_metadata and normaliser (header only)": Side(
            full, edit=without_filters(JSON_TO_METADATA_FILTER, NORMALIZE_FILTER), kinds=("header",)),
        "- local reply mapper": Side(full, edit=without_reply_mapper),
        "- per-route stats": Side(full, edit=without_route_stats),
        "- retry policy": Side(full, edit=without_retries),
        "route stats without per-code and completed counters (stats_matcher)": Side(
            full, edit=route_stats_rejected(r"upstream_rq_(completed|\d{3})")),
        "route stats without their histogram (stats_matcher)": Side(full, edit=route_stats_rejected("upstream_rq_time")),
        "- the retries' host predicate (previous_hosts)": Side(
            full, edit=without_retry_parts("retry_host_predicate", "host_selection_retry_max_attempts")
        ),
        "- the retries' priority (previous_priorities)": Side(full, edit=without_retry_parts("retry_priority")),
        "local only, - retry policy": Side(local_only, edit=without_retries),
        "local only, - per-route stats": Side(local_only, edit=without_route_stats),
        "all remote (failover)": Side(all_remote),
        "all remote (failover), + the listener's failure header": Side(all_remote, edit=with_listener_failure_header),
        "split weights in runtime (spilling)": Side(full, split_weights="runtime"),
        "all local, remote kept (route weights)": Side(all_local),
        "all local, remote kept (runtime weights)": Side(all_local, split_weights="runtime"),
        # STANDBY less one feature: some cost few instructions but a share of the code a request runs through,
        # which decides how much of it stays in the core's L2 (datapath_instructions --simulate --last-level).
        "all local - rate limit": Side(dataclasses.replace(all_local, profiles=(Profile("default", "least-request"),))),
        "all local - failover": Side(dataclasses.replace(all_local, failover=False)),
        "all local - retry policy": Side(all_local, edit=without_retries),
        "all local - the retries' host predicate": Side(
            all_local, edit=without_retry_parts("retry_host_predicate", "host_selection_retry_max_attempts")),
    })  # fmt: skip
    if pieces:
        result.update({name: Side(full, edit=patch) for name, patch in PATCHED.items()})
    return result


def side_bootstrap(side: Side, port: int) -> Bootstrap:
    resources = translate(
        Gateway("bench", Listener("127.0.0.1", port), (side.model,), split_weights=side.split_weights)
    )
    bootstrap = to_static_bootstrap(resources)
    for runtime in resources.runtimes.values():
        # What the RTDS layer would hold, as a static layer: the same keys, the same lookups per request.
        layer = {key: value.number_value for key, value in runtime.layer.fields.items()}
        bootstrap["layered_runtime"] = {"layers": [{"name": runtime.name, "static_layer": layer}]}
    if side.edit is not None:
        side.edit(bootstrap)
    return bootstrap


# Run inside the baseline tree: its own translator and variants, the same harness helpers.
_BASELINE_SCRIPT = """
import json, sys
from benchmarks.datapath_ablation import side_bootstrap, sides
name, host, port, listen = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
print(json.dumps(side_bootstrap(sides((host, port))[name], listen)))
"""
# The sides the baseline tree renders too: the full config (spilling 50 %), without failover, and all local
# (STANDBY, the remote kept: what a model serves while it does not spill).
BASELINE_SIDES = (
    "spillover (all of it)",
    "- failover aggregates (and their upstream Lua)",
    "all local, remote kept (route weights)",
    "- failover, - weighted split (local only)",
)


def baseline_bootstrap(tree: Path, name: str, upstream: tuple[str, int], port: int) -> dict[str, Any]:
    """The static bootstrap the translator in `tree` makes of its variant `name`."""
    done = subprocess.run(
        [sys.executable, "-c", _BASELINE_SCRIPT, name, upstream[0], str(upstream[1]), str(port)],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, check=False,
        timeout=60,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"baseline translation of {name!r} in {tree} failed: {done.stderr[-2000:]}")
    bootstrap: dict[str, Any] = json.loads(done.stdout)
    return bootstrap


def _one_run(tools: dict[str, str], cpus: str, ports: dict[str, int], kind: str, seconds: float, workdir: Path,
             pids: dict[str, dict[str, int]], side: str, syscalls: bool = False) -> dict[str, Any]:  # fmt: skip
    return wrk(tools, cpus, ports[side], kind, SHAPES["throughput"], seconds, workdir, pids[side], syscalls)


def run(
    rounds: int,
    seconds: float,
    log: Any = print,
    baseline: Path | None = None,
    only: tuple[str, ...] = (),
    concurrent: bool = False,
    patched: bool = False,
    others: tuple[Path, ...] = (),
    syscalls: bool = False,
) -> dict[str, Any]:
    """`only`: keep the sides whose name contains one of these (plain always runs). `syscalls`: count each
    Envoy's syscalls and context switches per request too (perf stat, see process_cost). `patched`: add the
    PATCHED sides (what each body-path filter costs). `others`: more trees whose full config runs as a
    side (named after the tree's directory). `concurrent`: each
    round's wrk runs of one kind at once, one per side, all the Envoys sharing their one core over the
    same seconds: whatever else the machine does then falls on every side alike, which makes their
    differences steadier on a shared machine than runs one after the other (rps are then shares of
    the core, comparable only as ratios)."""

    def kept(name: str) -> bool:
        return not only or any(part in name for part in only)

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
        kinds_of: dict[str, tuple[str, ...]] = {"plain": KINDS}
        for i, (name, spec) in enumerate(sides(("127.0.0.1", upstream.port), pieces=patched).items()):
            if not kept(name):
                continue
            port = free_port()
            envoys.append(
                _Pinned(side_bootstrap(spec, port), workdir, name=f"variant-{i}", cpus=envoy_cpu).start()
            )
            ports[name] = port
            kinds_of[name] = spec.kinds
        for i, tree in enumerate(others):
            port = free_port()
            bootstrap = baseline_bootstrap(tree, BASELINE_SIDES[0], ("127.0.0.1", upstream.port), port)
            envoys.append(_Pinned(bootstrap, workdir, name=f"other-{i}", cpus=envoy_cpu).start())
            ports[f"{BASELINE_SIDES[0]} @ {tree.name}"] = port
            kinds_of[f"{BASELINE_SIDES[0]} @ {tree.name}"] = KINDS
        for i, name in enumerate(BASELINE_SIDES if baseline is not None else ()):
            assert baseline is not None
            if not kept(f"{name} @ baseline"):
                continue
            port = free_port()
            bootstrap = baseline_bootstrap(baseline, name, ("127.0.0.1", upstream.port), port)
            envoys.append(_Pinned(bootstrap, workdir, name=f"baseline-{i}", cpus=envoy_cpu).start())
            ports[f"{name} @ baseline"] = port
            kinds_of[f"{name} @ baseline"] = KINDS
        pids = {side: {"envoy": int(envoy.pid or 0)} for side, envoy in zip(ports, envoys, strict=True)}
        for side_name, port in ports.items():
            for kind in kinds_of[side_name]:
                wait_until(
                    partial(_answers, port, kind),
                    timeout=20,
                    interval=0.1,
                    message=f"port {port} never answered {kind}-routed requests",
                )
        names = list(ports)
        runs = []
        for kind in KINDS:
            # wrk() writes its script on first use; concurrent runs must not race to write it.
            wrk(tools, rest, ports["plain"], kind, 1, 1, workdir)
        for rnd in range(rounds):
            order = names if rnd % 2 == 0 else list(reversed(names))
            for kind in KINDS:
                now = [side for side in order if kind in kinds_of[side]]
                one = partial(_one_run, tools, rest, ports, kind, seconds, workdir, pids, syscalls=syscalls)
                if concurrent:
                    with ThreadPoolExecutor(len(now)) as pool:
                        results = list(pool.map(one, now))
                else:
                    results = [one(side) for side in now]
                for side, r in zip(now, results, strict=True):
                    runs.append({"round": rnd, "kind": kind, "side": side, **r})
                    log(
                        f"    round {rnd + 1} {kind:6} {r['rps']:8.0f} rps  {r['envoy_cpu_us_per_req']:5.0f} µs  {side}"
                    )
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
                "over_plain": statistics.median(
                    at[(n, side)]["rps"] / at[(n, "plain")]["rps"] for n in range(rounds)
                ),
                "over_plain_min": min(at[(n, side)]["rps"] / at[(n, "plain")]["rps"] for n in range(rounds)),
                "over_plain_max": max(at[(n, side)]["rps"] / at[(n, "plain")]["rps"] for n in range(rounds)),
                "cpu_us": statistics.median(at[(n, side)]["envoy_cpu_us_per_req"] for n in range(rounds)),
                "cpu_us_min": min(at[(n, side)]["envoy_cpu_us_per_req"] for n in range(rounds)),
                "cpu_us_max": max(at[(n, side)]["envoy_cpu_us_per_req"] for n in range(rounds)),
                **{
                    key: statistics.median(at[(n, side)][f"envoy_{key}_per_req"] for n in range(rounds))
                    for key in SPLIT
                    if f"envoy_{key}_per_req" in at[(0, side)]
                },
            }
            for side in names
            if (0, side) in at
        }
    return {"rounds": rounds, "seconds_per_run": seconds, "connections": SHAPES["throughput"], "runs": runs,
            "concurrent": concurrent,
            "summary": summary}  # fmt: skip


# Per request, beside the CPU: its user and system parts (always), syscalls and context switches (--syscalls).
SPLIT = ("user_us", "sys_us", "syscalls", "context_switches")


def _split_cell(s: dict[str, Any]) -> str:
    """user + sys µs, then syscalls and context switches where counted (runs before the split: '-')."""
    if "user_us" not in s:
        return "-"
    cell = f"{s['user_us']:.0f} + {s['sys_us']:.0f}"
    if "syscalls" in s:
        cell += f"; {s['syscalls']:.2f} syscalls, {s['context_switches']:.3f} switches"
    return cell


def section(result: dict[str, Any], title: str = "now") -> list[str]:
    lines = [
        f"## Where the cost is, {title} (benchmarks/datapath_ablation.py)", "",
        f"The translator's output for the benchmark's model, served statically, one feature taken away at a time; "
        f"wrk at {result['connections']} connections, {result['rounds']} rounds x {result['seconds_per_run']:g} s, "
        "rps as a ratio to plain Envoy routing in the same round (median, min-max). Command: "
        f"`{result.get('command', 'python -m benchmarks.datapath_ablation')}` ({result.get('date', '?')}, "
        f"git {result.get('git', '?')}). Load average (1, 5, 15 min) before: "
        f"{' '.join(result.get('load_average', {}).get('before', ['?']))}, after: "
        f"{' '.join(result.get('load_average', {}).get('after', ['?']))}.", "",
        "Envoy CPU per request (its /proc utime + stime over the run ÷ requests) is the steadier figure: other "
        "work on the machine takes CPU away from rps, not from the CPU each request costs.", "",
        "| config | header-routed: Envoy CPU µs / request | user + sys µs (median) | rps (÷ plain) "
        "| body-routed: Envoy CPU µs / request | user + sys µs (median) | rps (÷ plain) |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    known = ["plain", *sides(("127.0.0.1", 1), pieces=True)]  # the JSON's keys come back sorted
    for side in sorted(
        result["summary"]["header"], key=lambda name: known.index(name) if name in known else 99
    ):
        cells = []
        for kind in KINDS:
            s = result["summary"][kind].get(side)
            if s is None:
                cells += ["-", "-", "-"]
                continue
            cells.append(f"{s['cpu_us']:.0f} ({s['cpu_us_min']:.0f}-{s['cpu_us_max']:.0f})")
            cells.append(_split_cell(s))
            cells.append(
                f"{s['rps']:.0f} ({s['over_plain']:.2f}, {s['over_plain_min']:.2f}-{s['over_plain_max']:.2f})"
            )
        lines.append(f"| {side} | {' | '.join(cells)} |")
    lines += ["", *_chain_lines(result)]
    return [*lines, ""]


def _chain_lines(result: dict[str, Any]) -> list[str]:
    """The failover chain's own cost: the full config minus the same config without failover, per round."""
    full, bare = BASELINE_SIDES[:2]
    lines = []
    for suffix in ("", " @ baseline"):
        for kind in KINDS:
            at = {
                (r["round"], r["side"]): r["envoy_cpu_us_per_req"]
                for r in result["runs"]
                if r["kind"] == kind
            }
            diffs = [at[(n, full + suffix)] - at[(n, bare + suffix)] for n in range(result["rounds"])
                     if (n, full + suffix) in at and (n, bare + suffix) in at]  # fmt: skip
            if diffs:
                lines.append(f"- failover chain{suffix or ' (this tree)'}, {kind}-routed: "
                             f"{statistics.median(diffs):.0f} µs / request (min {min(diffs):.0f}, rounds: "
                             f"{', '.join(f'{d:.0f}' for d in diffs)})")  # fmt: skip
    for kind in KINDS:
        at = {(r["round"], r["side"]): r["envoy_cpu_us_per_req"] for r in result["runs"] if r["kind"] == kind}
        saved = [at[(n, f"{full} @ baseline")] - at[(n, full)] for n in range(result["rounds"])
                 if (n, full) in at and (n, f"{full} @ baseline") in at]  # fmt: skip
        if saved:
            lines.append(f"- the full config, baseline minus this tree, {kind}-routed: {statistics.median(saved):.0f} "
                         f"µs / request (rounds: {', '.join(f'{d:.0f}' for d in saved)})")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.datapath_ablation", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--name", default="datapath-ablation", help="results/NAME.{md,json}")
    parser.add_argument(
        "--baseline", type=Path, help="a source tree whose translation runs beside this one's"
    )
    parser.add_argument("--other", action="append", type=Path, default=[],
                        help="another source tree whose full config runs as a side too (repeatable)")  # fmt: skip
    parser.add_argument("--pieces", action="store_true",
                        help="add the sides that price the body path's filters one by one (PATCHED)")  # fmt: skip
    parser.add_argument("--concurrent", action="store_true",
                        help="run the sides of a round at once, sharing Envoy's core (see run())")  # fmt: skip
    parser.add_argument("--syscalls", action="store_true",
                        help="count each Envoy's syscalls and context switches per request (perf stat)")  # fmt: skip
    parser.add_argument("--only", action="append", default=[],
                        help="run only the sides whose name contains this (repeatable; plain always runs)")  # fmt: skip
    args = parser.parse_args(argv)
    info = machine.describe()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    try:
        result = run(args.rounds, args.seconds, log=lambda line: print(line, flush=True), baseline=args.baseline,
                     only=tuple(args.only), concurrent=args.concurrent, patched=args.pieces,
                     others=tuple(args.other), syscalls=args.syscalls)  # fmt: skip
    except (BenchError, AssertionError, OSError, RuntimeError) as error:
        print(f"FAILED: {error}")
        return 1
    baseline = f" --baseline {args.baseline}" if args.baseline else ""
    baseline += "".join(f" --only {part!r}" for part in args.only)
    baseline += " --concurrent" if args.concurrent else ""
    baseline += " --syscalls" if args.syscalls else ""
    baseline += (" --pieces" if args.pieces else "") + "".join(f" --other {tree}" for tree in args.other)
    result.update(command=f"python -m benchmarks.datapath_ablation --rounds {args.rounds} --seconds {args.seconds:g}"
                          f"{baseline}",
                  date=info["date"], git=info["git"], machine=info,
                  load_average={"before": load_before, "after": Path("/proc/loadavg").read_text().split()[:3]})  # fmt: skip
    text = "\n".join(section(result))
    print(text)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out / f"{args.name}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
