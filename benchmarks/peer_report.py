"""Markdown for benchmarks/results/peer.md and scale.md (the peer comparison and the scale figures)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks import machine, peer, push, scale
from spillover.server import event_loop as event_loops

TIMES = "\u00d7"  # the multiplication sign of "0.61x" (escaped: ruff flags the literal as ambiguous)


# The ratio rows in this order (the JSON keeps them sorted by name).
RATIOS = tuple(f"{name}/{base}" for name, base in peer.RATIO_PAIRS)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def _kib(value: float) -> str:
    return f"{value / 1024:.1f}"


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}{TIMES}"


def _header(title: str, results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    load = results.get("load_average", {})
    lines = [
        f"# {title}",
        "",
        f"Command: `{results['command']}` · {machine['date']} · git {machine['git']}",
        "",
        f"Machine: {machine['summary']}, Linux {machine['kernel']}.",
    ]
    if load:
        lines.append(
            f"Load average (1 min) at the start {load['start']:.1f}, at the end {load['end']:.1f} on "
            f"{machine['usable_cores']} cores: the machine is shared, which is why every figure is compared "
            "only with the others of the same run."
        )
    return lines


def peer_markdown(results: dict[str, Any]) -> str:
    data = results["peer"]
    lines = _header("Peer benchmark: spillover, go-control-plane v0.14.0 and the bare grpc.aio floor", results)
    sizes = ", ".join(
        f"{s['streams']:,} streams ({s['procs']} client processes, {s['changes']} pushes, "
        f"{s['repetitions']} repetition{'s' if s['repetitions'] > 1 else ''})"
        for s in data["sizes"]
    )
    lines += [
        "",
        f"The same snapshot ({data['clusters']} clusters + {data['clusters']} ClusterLoadAssignments, "
        "benchmarks/fixtures.py), the same simulated ADS clients (benchmarks/push.py: one HTTP/2 connection "
        "per stream, CDS wildcard + EDS for every cluster, ACKs like Envoy), ONE ClusterLoadAssignment "
        f"changed per push, after {data['warmup']} warm-up pushes. Servers: {data['peer']}; spillover "
        "(push.py's server, whatever `spillover/server` is in the tree); the floor (a bare grpc.aio server "
        "streaming pre-encoded bytes, no xDS logic). Each repetition runs the three in turn with fresh "
        "processes, the order reversed every repetition (A B C, C B A)."
        + (
            f" `{peer.SPILLOVER_GC_TUNED}`: the same spillover server with `spillover serve --gc tuned`'s collector "
            "settings (spillover/server/gc_tuning.py; opt-in, the default is Python's)."
            if peer.SPILLOVER_GC_TUNED in data.get("servers", ())
            else ""
        )
        + (
            f" `{peer.SPILLOVER_GC_THRESHOLDS}`: only those settings' thresholds, nothing frozen."
            if peer.SPILLOVER_GC_THRESHOLDS in data.get("servers", ())
            else ""
        )
        + (
            f" `{peer.SPILLOVER_GC_YOUNG}`: only their young threshold (10,000 instead of 700), nothing frozen."
            if peer.SPILLOVER_GC_YOUNG in data.get("servers", ())
            else ""
        )
        + (
            " `spillover uvloop`, `floor asyncio`, ...: the same server on that event loop "
            "(spillover/server/event_loop.py; `spillover serve --event-loop`); the clients always run on asyncio."
            if any(loop in name.split() for name in data.get("servers", ()) for loop in event_loops.KINDS)
            else ""
        )
        + "".join(
            f" `{variant}`: the server with the gRPC options {dict(options)} beside its own."
            for variant, options in peer.GRPC_VARIANTS.items()
            if any(variant in name.split() for name in data.get("servers", ()))
        )
        + (
            f" `{peer.SPILLOVER_BASELINE}`: the same benchmark server running the spillover package of "
            f"`{data.get('baseline_tree')}` (another checkout), alternated with the others."
            if peer.SPILLOVER_BASELINE in data.get("servers", ())
            else ""
        )
        + " Sizes: " + sizes + ".",
        "",
        "Convergence: from the trigger until a stream has the new EDS version, over every stream of every "
        f"push (nearest rank). CPU per push: the server's getrusage, all threads, including {data['settle_s']:g} s "
        "after the last stream converged (its ACKs). RSS per stream: VmRSS with every stream connected minus "
        "VmRSS before the first. Figures are the median over repetitions (minimum in brackets); ratios are "
        "medians over medians. Reconnects: streams the clients had to open again after the server ended or "
        "dropped them (the clients retry with a back-off, as Envoy does).",
        f"Elapsed: {data['elapsed_s']:.0f} s.",
    ]
    for protocol in data["protocols"]:
        rows = [r for r in data["summary"] if r["protocol"] == protocol]
        if not rows:
            continue
        lines += [
            "",
            f"## {'SotW' if protocol == 'sotw' else 'Delta'}",
            "",
            "| streams | server | p50 ms | p99 ms | CPU per push ms | RSS per stream KiB | idle CPU % | reconnects |",
            "|---:|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in sorted(rows, key=lambda r: r["streams"]):
            for name in peer.ALL_SERVERS:
                figures = row["servers"].get(name)
                if figures is None:
                    continue
                lines.append(
                    f"| {row['streams']:,} | {name} | {_ms(figures['p50_s_median'])} ({_ms(figures['p50_s_min'])}) "
                    f"| {_ms(figures['p99_s_median'])} ({_ms(figures['p99_s_min'])}) "
                    f"| {_ms(figures['cpu_per_push_s_median'])} ({_ms(figures['cpu_per_push_s_min'])}) "
                    f"| {_kib(figures['rss_per_stream_bytes_median'])} ({_kib(figures['rss_per_stream_bytes_min'])}) "
                    f"| {figures['idle_cpu_per_s_median'] * 100:.1f} | {figures['reconnects']} |"
                )
        lines += [
            "",
            "| streams | ratio | p50 | p99 | CPU per push | RSS per stream |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for row in sorted(rows, key=lambda r: r["streams"]):
            for label in RATIOS:
                ratio = row["ratios"].get(label)
                if ratio is None:
                    continue
                lines.append(
                    f"| {row['streams']:,} | {label} | {_times(ratio['p50_s'])} | {_times(ratio['p99_s'])} "
                    f"| {_times(ratio['cpu_per_push_s'])} | {_times(ratio['rss_per_stream_bytes'])} |"
                )
    failed = [r for r in data["runs"] if "error" in r]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [f"- {r['server']} {r['protocol']} {r['streams']:,}: {r['error']}" for r in failed]
    return "\n".join(lines) + "\n"


def scale_markdown(results: dict[str, Any]) -> str:
    data = results["scale"]
    m = data["measured"]
    p = data["projection"]
    target = data["rss_per_stream_target_bytes"]
    istiod = data["istiod"]
    lines = _header(f"Scale: {m['streams']:,} connected Delta streams against spillover", results)
    lines += [
        "",
        f"{m['streams']:,} simulated Envoys (benchmarks/push.py's clients: one HTTP/2 connection per stream, "
        f"{m['client_processes']} client processes of {m['streams'] // m['client_processes']:,} channels) on "
        f"Delta ADS to one spillover server process (push.py's, whatever `spillover/server` is in the tree), "
        f"{m['clusters']} clusters + {m['clusters']} ClusterLoadAssignments; {m['changes']} pushes of ONE "
        f"ClusterLoadAssignment. RLIMIT_NOFILE raised to {data['fd_limit']:,} for every process. The clients "
        "share the 2 cores with the server, so the convergence figures include their own CPU.",
        f"Elapsed: {data['elapsed_s']:.0f} s.",
        "",
        "| figure | measured | target |",
        "|---|---:|---:|",
        f"| connected streams | {m['streams']:,} | |",
        f"| time until every stream had its endpoints | {m['connect_s']:.0f} s ({m['reconnects_connecting']:,} reconnects) | |",
        f"| server RSS before the first stream | {m['rss_empty_bytes'] / 2**20:.0f} MiB | |",
        f"| server RSS, every stream connected | {m['rss_connected_bytes'] / 2**20:.0f} MiB | |",
        f"| RSS per connected stream | {_kib(m['rss_per_stream_bytes'])} KiB | ≤ {_kib(target)} KiB "
        f"({'met' if m['rss_per_stream_bytes'] <= target else 'not met'}) |",
        f"| idle server CPU, every stream connected | {m['idle_cpu_per_s'] * 100:.1f} % of a core | |",
        f"| one-resource change: p50 / p99 over every stream and push | {_ms(m['p50_s'])} / {_ms(m['p99_s'])} ms | |",
        f"| one-resource change: last stream (median / worst push) | {_ms(m['last_median_s'])} / {_ms(m['last_max_s'])} ms | |",
        f"| server CPU per push (median) | {_ms(m['cpu_per_push_s'])} ms | |",
        f"| the clients' CPU per push (median, all processes) | {_ms(m['clients_cpu_per_push_s'])} ms | |",
        f"| reconnects after the fleet was connected | {m['reconnects_total'] - m['reconnects_connecting']:,} | |",
    ]
    if m["reconnects_total"]:
        statuses = ", ".join(f"{count:,} {status}" for status, count in sorted(m["reconnect_statuses"].items()))
        lines += [
            "",
            f"Retried streams ({statuses}): the server ended or dropped them and the simulated Envoys opened them "
            "again after a back-off, as Envoy does; every figure above is of the fleet once all were connected.",
        ]
    lines += [
        "",
        f"## Projection: {p['streams']:,} Envoys on {p['cores']} cores",
        "",
        f"Measured per-stream costs {TIMES} {p['streams']:,} streams / {p['cores']} cores, assuming the push work "
        "spreads evenly over the cores (xDS worker processes) and grows linearly with the streams; it is "
        "arithmetic on this run's figures, not a measurement of such a machine.",
        "",
        "| figure | projected |",
        "|---|---:|",
        f"| server CPU per push per stream (measured) | {p['cpu_per_push_per_stream_s'] * 1e6:.1f} µs |",
        f"| server CPU of one push to {p['streams']:,} streams | {p['push_cpu_s'] * 1000:.0f} ms |",
        f"| wall time of that push over {p['cores']} cores | {p['push_wall_s'] * 1000:.0f} ms |",
        f"| pushes per second the {p['cores']} cores sustain | {p['pushes_per_s']:.1f} |",
        f"| idle CPU of {p['streams']:,} connected streams | {p['idle_cores'] * 100:.1f} % of a core |",
        f"| server memory (empty + per-stream RSS {TIMES} streams) | {p['rss_bytes'] / 2**30:.2f} GiB |",
        "",
        f"For comparison, Istio's performance and scalability documentation sizes one istiod at "
        f"{istiod['sidecars']:,} sidecars per {istiod['vcpus']}-vCPU istiod. istiod's pushes carry a whole "
        "mesh's configuration per sidecar, these carry one ClusterLoadAssignment among "
        f"{m['clusters']} clusters: the comparison is of fleet size per core, not of work per push.",
    ]
    return "\n".join(lines) + "\n"



PARTS = ("peer", "scale")
QUICK_SCALE: dict[str, Any] = {"streams": 1_000, "procs": 2, "changes": 3, "idle_seconds": 2.0, "settle": 0.3}


def run_parts(
    parts: Sequence[str], quick: bool, output: str, command: str, log: Callable[[str], None] = print
) -> bool:
    """Run the peer comparison and/or the scale figures; write <output>/peer.{md,json} and
    scale.{md,json}. False when a run failed (the files are written all the same)."""
    ok = True
    for part in parts:
        results: dict[str, Any] = {
            "command": command,
            "mode": "quick" if quick else "full",
            "machine": machine.describe(),
        }
        load_start = os.getloadavg()[0]
        if part == "peer":
            sizes = peer.QUICK_SIZES if quick else peer.FULL_SIZES
            log(
                "  peer: go-control-plane v0.14.0, spillover and the grpc.aio floor alternated, SotW and Delta at "
                + ", ".join(f"{s.streams:,}" for s in sizes)
                + " streams ..."
            )
            try:
                results["peer"] = peer.run(sizes, log=log)
            except push.BenchError as error:
                log(f"    FAILED: {error}")
                return False
            ok = ok and not any("error" in r for r in results["peer"]["runs"])
            render = peer_markdown
        else:
            options: dict[str, Any] = QUICK_SCALE if quick else {}
            log(f"  scale: {options.get('streams', 10_000):,} Delta streams against spillover ...")
            try:
                results["scale"] = scale.run(log=log, **options)
            except push.BenchError as error:
                log(f"    FAILED: {error}")
                return False
            render = scale_markdown
        results["load_average"] = {"start": load_start, "end": os.getloadavg()[0]}
        os.makedirs(output, exist_ok=True)
        with open(os.path.join(output, f"{part}.md"), "w") as f:
            f.write(render(results))
        with open(os.path.join(output, f"{part}.json"), "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
            f.write("\n")
        log(f"  written {os.path.join(output, part)}.md and .json")
    return ok
