"""`python -m benchmarks.scoped_routes [--models 1000] [--flips 5] [--rounds 2] [--wrk-rounds 5] [--seconds 3]`:
Scoped RDS (SRDS) against the one route table, on a real Envoy 1.40: a feasibility study.

spillover serves every model's routes in one RouteConfiguration: a one-model change resends, and Envoy
re-parses and rebuilds, the whole table (benchmarks/envoy_apply.py), refilling every token bucket
(tests/translate/test_rate_limit_updates.py). tests/harness/scoped_routes.py re-shapes the translator's
output into one scope and one route table per model; tests/translate/test_scoped_routes.py asserts the
behaviours. This measures what the two cost:

- apply: per protocol (SotW, Delta), three Envoys (`--concurrency 2`) on spillover's xDS server in process
  (no debounce), each given the same fleet of `--models` (tests/harness/ir_fleet.py, active health checks
  off as in envoy_apply, remotes on IPs: see `quiet_fleet`) in one layout: `table` (today's), `srds+rds` (scopes over SRDS naming per-model
  tables over RDS), `srds-inline` (scopes over SRDS carrying their tables). Decision flips (one model's
  split: a route change only) go to the three in turn, order alternated, one warm-up round not counted.
  Per flip: bytes sent (Delta: the changed resources; SotW: every resource of the changed type), the
  wall time from publishing to the ACK, Envoy's CPU to the ACK and to 1 s after it (schedstat run time
  of every thread), less its idle rate (measured before the flips, the three side by side). And, from
  Envoy's own counters over all flips, how many route tables it rebuilt (`config_reload`) per flip.
  `--rounds` repeats the pair of protocols, order alternated (A B B A).
- datapath: per-request Envoy CPU, the route table's `x-model` matcher against SRDS's scope lookup, at
  1 model (benchmarks/datapath.py's) and at `--models` (that model and plain local models), four pinned
  one-worker Envoys on spillover's xDS server, the same Go upstream and wrk (16 connections),
  header- and body-routed, `--wrk-rounds` rounds, order alternated (benchmarks/datapath_ablation.py's
  method).

Results: benchmarks/results/scoped-routes.{md,json}, with the machine and the load averages.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from google.protobuf.message import Message

from benchmarks import machine
from benchmarks.datapath import (
    KINDS,
    MODEL,
    RESULTS,
    SHAPES,
    _answers,
    _cpus,
    _GoPeer,
    _Pinned,
    ensure_tools,
    wrk,
)
from benchmarks.datapath_ablation import _model as datapath_model
from benchmarks.envoy_apply import BenchError, _Cpu, _envoy_version, _idle_rate, memory_mib, stream_resets
from benchmarks.incremental import _index
from spillover.ir import Endpoint, Gateway, Listener, Model
from spillover.server.cache import Snapshot
from spillover.server.resources import ROUTE, short_type
from spillover.server.service import XdsOptions
from spillover.translate import translate
from spillover.translate.bootstrap import build_bootstrap
from tests.harness.envoy import Envoy
from tests.harness.ir_fleet import change, fleet
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.scoped_routes import SCOPED_ROUTE, SCOPES_NAME, scoped
from tests.harness.xds import XdsThread

__all__ = ["main"]

# Layout -> tests/harness/scoped_routes.py's mode (None: the translator's own table).
LAYOUTS: dict[str, str | None] = {"table": None, "srds+rds": "rds", "srds-inline": "srds-inline"}
PROTOCOLS = ("sotw", "delta")
SETTLE_S = 1.0
IDLE_S = 3.0
_GROUP_GRACE_S = 24 * 3600.0
_START_S = 180.0


def messages(gateway: Gateway, layout: str) -> list[Message]:
    out = [m for items in translate(gateway).by_type_url().values() for m in items.values()]
    mode = LAYOUTS[layout]
    return out if mode is None else scoped(out, mode)


@dataclasses.dataclass
class _Side:
    layout: str
    node: str
    group: str
    gateway: Gateway
    snapshot: Snapshot
    envoy: Envoy | None = None
    idle_per_s: float = 0.0
    flips: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.envoy is not None and self.envoy.pid is not None
        return self.envoy.pid


def _acked(xds: XdsThread, side: _Side, types: tuple[str, ...]) -> bool:
    proxy = xds.proxy(side.node)
    if proxy is None:
        return False
    states = {state["type"]: state for state in proxy["types"].values()}
    for type_url in types:
        state = states.get(short_type(type_url))
        if state is not None and state["status"] == "NACKED":
            raise BenchError(f"{side.layout}: Envoy NACKed {short_type(type_url)}: {state['nack_error']}")
        if state is None or state["acked_version"] != side.snapshot.version(type_url):
            return False
    return True


def _wait_acked(xds: XdsThread, side: _Side, types: tuple[str, ...], timeout: float, interval: float) -> None:
    envoy = side.envoy
    assert envoy is not None

    def done() -> bool | str:
        return "exited" if not envoy.is_running() else _acked(xds, side, types)

    if wait_until(done, timeout=timeout, interval=interval, message=f"{side.layout}: no ACK") == "exited":
        raise BenchError(f"{side.layout}: Envoy exited ({envoy.returncode})\n{envoy.log_tail(20)}")


def _publish(xds: XdsThread, side: _Side) -> None:
    cache = xds.cache
    if cache is None:
        raise BenchError("the xDS server is not running")
    snapshot = side.snapshot
    xds.call_soon(lambda: cache.set_snapshot(side.group, snapshot))


def _reloads(envoy: Envoy) -> dict[str, int]:
    """Envoy's count of route tables (RDS) and scope sets (SRDS) it rebuilt, summed over all of them."""
    stats = envoy.stats()
    return {
        "rds": sum(
            v
            for k, v in stats.items()
            if k.startswith("http.spillover.rds.") and k.endswith(".config_reload")
        ),
        "srds": stats.get(f"http.spillover.scoped_rds.{SCOPES_NAME}.config_reload", 0),
    }


def _flip(xds: XdsThread, side: _Side, repetition: int, models: int, delta: bool) -> dict[str, Any]:
    index = _index("decision", repetition, models)
    side.gateway = change(side.gateway, "decision", index, repetition + 1)
    previous = side.snapshot
    side.snapshot = Snapshot.from_messages(messages(side.gateway, side.layout))
    changed = {t: names for t, names in side.snapshot.changes_since(previous).items() if names}
    if not changed:
        raise BenchError(f"{side.layout}: the flip changed no resource")
    types = tuple(changed)
    sent = [
        r for t, names in changed.items() for n, r in side.snapshot.get(t).items() if not delta or n in names
    ]
    start = _Cpu(side.pid).mark()
    _publish(xds, side)
    _wait_acked(xds, side, types, timeout=600.0, interval=0.01)
    acked = _Cpu(side.pid).mark().since(start)
    time.sleep(SETTLE_S)  # a measuring window: what Envoy still does after its ACK (freeing the old table)
    settled = _Cpu(side.pid).mark().since(start)
    return {
        "model": side.gateway.models[index].name,
        "types": sorted(short_type(t) for t in types),
        "changed": sum(len(n) for n in changed.values()),
        "sent_resources": len(sent),
        "bytes": sum(len(r.body) for r in sent),
        "wall_s": acked["wall_s"],
        "run_s": acked["run_s"],
        "cpu_s": acked["cpu_s"],
        "run_net_s": acked["run_s"] - side.idle_per_s * acked["wall_s"],
        "settled_run_net_s": settled["run_s"] - side.idle_per_s * settled["wall_s"],
    }


def _stats(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    return {
        "median": statistics.median(values) * scale,
        "min": min(values) * scale,
        "max": max(values) * scale,
    }


def quiet_fleet(models: int) -> Gateway:
    """tests/harness/ir_fleet.py's fleet without what keeps an idle Envoy busy: active health checks (as in
    envoy_apply) and remote hostnames (LOGICAL_DNS clusters whose lookups fail here and are retried:
    ~0.1 core at 1,000 models, more than a flip's own CPU once the load stretches the wall time). The
    remotes get loopback IPs instead (STATIC clusters); routes and tables keep their shapes."""
    gateway = fleet(models)
    quiet = []
    for i, model in enumerate(gateway.models):
        remote = model.remote
        if remote is not None:
            remote = dataclasses.replace(remote, host=f"127.1.{i // 250}.{i % 250 + 1}")
        quiet.append(dataclasses.replace(model, health_check=None, remote=remote))
    return dataclasses.replace(gateway, models=tuple(quiet))


def apply_run(models: int, flips: int, delta: bool, log: Callable[[str], None]) -> dict[str, Any]:
    protocol = "delta" if delta else "sotw"
    base = quiet_fleet(models)
    load_start = os.getloadavg()
    with (
        tempfile.TemporaryDirectory(prefix="spillover-scoped-") as workdir,
        XdsThread(debounce=0.0, options=XdsOptions(group_grace=_GROUP_GRACE_S)) as xds,
    ):
        sides = []
        for layout in LAYOUTS:
            gateway = dataclasses.replace(base, listener=Listener("127.0.0.1", free_port()))
            group = f"scoped-{layout}"
            sides.append(
                _Side(layout, f"{group}-0", group, gateway, Snapshot.from_messages(messages(gateway, layout)))
            )
        try:
            counts = {
                s.layout: {short_type(t): len(n) for t, n in s.snapshot.resources.items() if n} for s in sides
            }
            route_bytes = {s.layout: sum(len(r.body) for t in (ROUTE, SCOPED_ROUTE) for r in s.snapshot.get(t).values())
                           for s in sides}  # fmt: skip
            log(f"  {protocol}, {models:,} models: initial load of {len(sides)} Envoys ({counts}) ...")
            initial: dict[str, dict[str, Any]] = {}
            for side in sides:
                _publish(xds, side)
                bootstrap = build_bootstrap(side.node, side.group, xds.xds_address, admin_port=0, delta=delta)
                # A generous start timeout: on the shared machine (load averages past 10) 20 s was not enough.
                envoy = Envoy(bootstrap, Path(workdir) / side.layout, name=side.node, log_level="warning")
                side.envoy = envoy
                envoy.start(timeout=_START_S)
                initial[side.layout] = {"start": _Cpu(side.pid).mark()}
            for side in sides:
                types = tuple(t for t in side.snapshot.resources if side.snapshot.get(t))
                _wait_acked(xds, side, types, timeout=1800.0, interval=0.2)
                spent = _Cpu(side.pid).mark().since(initial[side.layout].pop("start"))
                initial[side.layout] = {**spent, "rss_mib": memory_mib(side.pid)["rss_mib"]}
                log(f"    {side.layout:12s} loaded: {spent['wall_s']:.1f} s wall, Envoy CPU {spent['run_s']:.1f} s, "
                    f"RSS {initial[side.layout]['rss_mib']:.0f} MiB")  # fmt: skip
            time.sleep(5.0)  # a settling window after the initial load before the idle rates are measured
            for side in sides:
                side.idle_per_s = _idle_rate(side.pid, IDLE_S)["run_per_s"]
            reloads_before = {s.layout: _reloads(s.envoy) for s in sides if s.envoy is not None}
            load_flips = os.getloadavg()
            for repetition in range(flips + 1):  # round 0 is the warm-up
                order = sides if repetition % 2 == 0 else list(reversed(sides))
                for side in order:
                    result = _flip(xds, side, repetition, models, delta)
                    if repetition:
                        side.flips.append(result)
                    log(f"    {'warm-up ' if not repetition else ''}{side.layout:12s} {'+'.join(result['types'])}: "
                        f"{result['sent_resources']:,} sent, {result['bytes'] / 2**10:,.1f} KiB, wall "
                        f"{result['wall_s'] * 1000:6.1f} ms, Envoy CPU {result['run_s'] * 1000:6.1f} ms "
                        f"(net {result['run_net_s'] * 1000:6.1f}, settled net {result['settled_run_net_s'] * 1000:6.1f})")  # fmt: skip
            reloads_after = {s.layout: _reloads(s.envoy) for s in sides if s.envoy is not None}
            resets = {s.layout: stream_resets(s.envoy) for s in sides if s.envoy is not None}
        finally:
            for side in sides:
                if side.envoy is not None:
                    side.envoy.stop()
    per_layout = {}
    for side in sides:
        fl = side.flips
        per_layout[side.layout] = {
            "resources": counts[side.layout],
            "route_bytes_total": route_bytes[side.layout],
            "initial": initial[side.layout],
            "idle_per_s": side.idle_per_s,
            "stream_resets": resets[side.layout],
            "flips": fl,
            "types": fl[0]["types"],
            "sent_resources": statistics.median(f["sent_resources"] for f in fl),
            "bytes_median": statistics.median(f["bytes"] for f in fl),
            # Flips measured plus the warm-up: every flip Envoy saw after the reloads_before mark.
            "reloads_per_flip": {
                kind: (reloads_after[side.layout][kind] - reloads_before[side.layout][kind]) / (flips + 1)
                for kind in ("rds", "srds")
            },
            **{
                key: _stats([f[key] for f in fl])
                for key in ("wall_s", "run_s", "run_net_s", "settled_run_net_s")
            },
        }
    return {
        "protocol": protocol,
        "models": models,
        "flips": flips,
        "layouts": per_layout,
        "load_average": {"start": load_start[0], "flips": load_flips[0], "end": os.getloadavg()[0]},
    }


# -- datapath --------------------------------------------------------------------------------------------


def _plain_model(i: int, upstream: tuple[str, int]) -> Model:
    # Local only, no remote (no DNS), no health checks: the table's or the scopes' size is what differs.
    return Model(f"model-{i:05d}", (Endpoint(upstream[0], upstream[1]),))


def datapath_run(models: int, rounds: int, seconds: float, log: Callable[[str], None]) -> dict[str, Any]:
    tools = ensure_tools()
    envoy_cpu, rest = _cpus()
    workdir = Path(tempfile.mkdtemp(prefix="spillover-bench-scoped-"))
    upstream = _GoPeer(tools["upstream"], [], rest, workdir / "upstream.log")
    address = ("127.0.0.1", upstream.port)
    envoys: list[Envoy] = []
    ports: dict[str, int] = {}
    pids: dict[str, dict[str, int]] = {}
    load_start = os.getloadavg()
    with XdsThread(debounce=0.0, options=XdsOptions(group_grace=_GROUP_GRACE_S)) as xds:
        try:
            for count in (1, models):
                chosen = (datapath_model(address), *(_plain_model(i, address) for i in range(count - 1)))
                for layout in ("table", "srds+rds"):
                    side = f"{layout}, {count:,} model{'s' if count > 1 else ''}"
                    port = free_port()
                    group = f"datapath-{layout}-{count}"
                    xds.set_snapshot(
                        group, messages(Gateway(group, Listener("127.0.0.1", port), chosen), layout)
                    )
                    bootstrap = build_bootstrap(f"{group}-0", group, xds.xds_address, admin_port=0)
                    envoy = _Pinned(bootstrap, workdir, name=f"{group}-0", cpus=envoy_cpu)
                    envoys.append(envoy)
                    envoy.start(timeout=_START_S)
                    ports[side], pids[side] = port, {"envoy": int(envoy.pid or 0)}
            for port in ports.values():
                for kind in KINDS:
                    wait_until(partial(_answers, port, kind), timeout=120, interval=0.2,
                               message=f"port {port} never answered {kind}-routed requests")  # fmt: skip
            time.sleep(3.0)  # the initial load's tail before measuring
            sides = list(ports)
            runs = []
            for rnd in range(rounds):
                order = sides if rnd % 2 == 0 else list(reversed(sides))
                for kind in KINDS:
                    for side in order:
                        r = wrk(
                            tools, rest, ports[side], kind, SHAPES["throughput"], seconds, workdir, pids[side]
                        )
                        runs.append(
                            {"round": rnd, "kind": kind, "side": side, "loadavg": os.getloadavg()[0], **r}
                        )
                        log(
                            f"    round {rnd + 1} {kind:6} {r['rps']:8.0f} rps  {r['envoy_cpu_us_per_req']:5.0f} µs  {side}"
                        )
        finally:
            for started in envoys:
                started.stop()
            upstream.stop()
            shutil.rmtree(workdir, ignore_errors=True)
    summary: dict[str, Any] = {}
    for kind in KINDS:
        at = {(r["round"], r["side"]): r for r in runs if r["kind"] == kind}
        summary[kind] = {
            side: {
                "rps": statistics.median(at[(n, side)]["rps"] for n in range(rounds)),
                "cpu_us": statistics.median(at[(n, side)]["envoy_cpu_us_per_req"] for n in range(rounds)),
                "cpu_us_min": min(at[(n, side)]["envoy_cpu_us_per_req"] for n in range(rounds)),
                "cpu_us_max": max(at[(n, side)]["envoy_cpu_us_per_req"] for n in range(rounds)),
            }
            for side in sides
        }
        for count in (1, models):
            label = f"{count:,} model{'s' if count > 1 else ''}"
            diffs = [at[(n, f"srds+rds, {label}")]["envoy_cpu_us_per_req"] - at[(n, f"table, {label}")]["envoy_cpu_us_per_req"]
                     for n in range(rounds)]  # fmt: skip
            summary[kind][f"srds minus table, {label}"] = {
                "median": statistics.median(diffs),
                "rounds": diffs,
            }
    return {
        "models": models, "rounds": rounds, "seconds_per_run": seconds, "connections": SHAPES["throughput"],
        "model": MODEL, "runs": runs, "summary": summary,
        "load_average": {"start": load_start[0], "end": os.getloadavg()[0]},
    }  # fmt: skip


# -- the report ------------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    info = results["machine"]
    lines = [
        "# Scoped RDS against the one route table: measurements (benchmarks/scoped_routes.py)",
        "",
        f"Command: `{results['command']}` · {info['date']} · git {info['git']} · Envoy {results['envoy_version']}",
        "",
        f"Machine: {info['summary']}, Linux {info['kernel']}, shared with other helpers' benchmarks. "
        f"/proc/loadavg before: {results.get('proc_loadavg_before', '?')}; after: "
        f"{results.get('proc_loadavg_after', '?')}.",
        "",
    ]
    if results.get("apply"):
        lines += [
            f"## One model's decision flip (a route change) at {results['apply'][0]['models']:,} models",
            "",
            "Envoy CPU: run time of every Envoy thread (schedstat) from publishing to the ACK; *net* less the "
            "Envoy's idle rate; *settled* to 1 s after the ACK. Median (min) over the flips. *Tables rebuilt*: "
            "Envoy's RDS `config_reload` counters summed over every route table, per flip (SRDS's own in "
            "brackets).",
            "",
            "| run | protocol | layout | sent per flip | wall push -> ACK | Envoy CPU to ACK | net | settled, net "
            "| tables rebuilt per flip | initial load (CPU, RSS) | load avg (flips) |",
            "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n, run in enumerate(results["apply"], 1):
            for layout, row in run["layouts"].items():
                wall, run_s, net, settled = (
                    row["wall_s"],
                    row["run_s"],
                    row["run_net_s"],
                    row["settled_run_net_s"],
                )
                reloads = row["reloads_per_flip"]
                lines.append(
                    f"| {n} | {run['protocol']} | {layout} | {'+'.join(row['types'])}: {row['sent_resources']:,.0f} "
                    f"resources, {row['bytes_median'] / 2**10:,.1f} KiB | {wall['median']:,.1f} ({wall['min']:,.1f}) | "
                    f"{run_s['median']:,.1f} ({run_s['min']:,.1f}) | {net['median']:,.1f} ({net['min']:,.1f}) | "
                    f"{settled['median']:,.1f} ({settled['min']:,.1f}) | {reloads['rds']:g} ({reloads['srds']:g}) | "
                    f"{row['initial']['run_s']:.1f} s, {row['initial']['rss_mib']:.0f} MiB | "
                    f"{run['load_average']['flips']:.1f} |"
                )
        lines.append("")
    data = results.get("datapath")
    if data:
        lines += [
            "## Per request: the table's matcher against SRDS's scope lookup",
            "",
            f"wrk at {data['connections']} connections, {data['rounds']} rounds x {data['seconds_per_run']:g} s, "
            "order alternated; one pinned one-worker Envoy per side on spillover's xDS server; the model of "
            "benchmarks/datapath.py (overflow 50 %, failover, a rate limit), alone or with plain local models. "
            "Envoy CPU µs per request (its utime + stime over the run ÷ requests): median (min-max); rps median. "
            f"Load average {data['load_average']['start']:.1f} at the start, {data['load_average']['end']:.1f} at "
            "the end.",
            "",
            "| side | header-routed: Envoy CPU µs / request | rps | body-routed: Envoy CPU µs / request | rps |",
            "|---|---|---:|---|---:|",
        ]
        for side in data["summary"]["header"]:
            if "minus" in side:
                continue
            cells = []
            for kind in KINDS:
                s = data["summary"][kind][side]
                cells += [
                    f"{s['cpu_us']:.0f} ({s['cpu_us_min']:.0f}-{s['cpu_us_max']:.0f})",
                    f"{s['rps']:.0f}",
                ]
            lines.append(f"| {side} | {' | '.join(cells)} |")
        lines.append("")
        for kind in KINDS:
            for side, s in data["summary"][kind].items():
                if "minus" in side:
                    rounds = ", ".join(f"{d:.0f}" for d in s["rounds"])
                    lines.append(
                        f"- {side}, {kind}-routed: {s['median']:+.0f} µs / request (rounds: {rounds})"
                    )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scoped_routes", description=__doc__)
    parser.add_argument("--models", type=int, default=1_000)
    parser.add_argument("--flips", type=int, default=5, help="measured flips per layout (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="apply: rounds of the protocol pair (A B B A)")
    parser.add_argument("--wrk-rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--parts", nargs="+", choices=("apply", "datapath"), default=["apply", "datapath"])
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--name", default="scoped-routes", help="results/NAME.{md,json}")
    args = parser.parse_args(argv)
    log = partial(print, flush=True)
    command = "python -m benchmarks.scoped_routes" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:])
    )
    results: dict[str, Any] = {
        "command": command,
        "machine": machine.describe(),
        "envoy_version": _envoy_version(),
    }
    results["proc_loadavg_before"] = Path("/proc/loadavg").read_text().strip()
    log(f"Scoped RDS vs the route table — {results['machine']['summary']}")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> str:
        # After each part and run: what was measured survives a later failure.
        results["proc_loadavg_after"] = Path("/proc/loadavg").read_text().strip()
        (out / f"{args.name}.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        text = markdown(results)
        (out / f"{args.name}-measured.md").write_text(text)
        return text

    try:
        # The short part first: the per-request comparison.
        if "datapath" in args.parts:
            log(f"  datapath: 1 and {args.models:,} models ...")
            results["datapath"] = datapath_run(args.models, args.wrk_rounds, args.seconds, log)
            save()
        if "apply" in args.parts:
            results["apply"] = []
            for rnd in range(args.rounds):
                for protocol in PROTOCOLS if rnd % 2 == 0 else tuple(reversed(PROTOCOLS)):
                    results["apply"].append(apply_run(args.models, args.flips, protocol == "delta", log))
                    save()
    except (BenchError, AssertionError, OSError, RuntimeError) as error:
        print(f"FAILED: {error}")
        return 1
    text = save()
    log("")
    log(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
