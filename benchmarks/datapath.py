"""The data path's own cost: requests through Envoy with spillover's config, against the same requests
sent straight to the upstream, through plain Envoy routing, and through an ext_proc hop.

Sides, all with the same load generator (Debian's wrk), the same fast HTTP upstream (Go, from
benchmarks/datapath_go) and Envoys with one worker (`--concurrency 1`) pinned to the same CPU:

- **direct**: wrk straight to the upstream;
- **plain**: Envoy with a static bootstrap, one route to one cluster;
- **spillover**: Envoy bootstrapped to a real `spillover serve --policies` over ADS, with a model that has
  a rate limit (never reached), a 50/50 weighted split local/remote (OVERFLOW, held by a metric always
  over its threshold: `vector(10)` read from a real Prometheus with nothing to scrape) and body routing;
- **extproc**: Envoy with an ext_proc filter calling a minimal Go ext_proc server that picks the endpoint
  per request (the `x-gateway-destination-endpoint` header to an ORIGINAL_DST cluster, as the Gateway API
  Inference Extension and AIBrix route): request headers always, the buffered body only when no header
  names the model (the server switches the body off with a mode override).

Requests: POST /v1/chat/completions with a JSON chat body; **header** requests also carry `x-model`,
**body** requests name the model in the body only. Two load shapes: **throughput** (16 connections, closed
loop: rps at saturation) and **latency** (1 connection: each request's own round trip, no queueing).
Each (shape, request kind) runs every side in turn, rounds alternate the order, medians and minimums
over rounds; ratios are taken per round, then the median.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from benchmarks import machine
from benchmarks.process_cost import SyscallCount, cpu_times
from spillover.translate.bootstrap import build_bootstrap, static_bootstrap
from tests.harness.envoy import Envoy
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.prometheus import Prometheus
from tests.harness.serve import Spillover

__all__ = ["main", "markdown", "run"]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BUILD = ROOT / "benchmarks" / "datapath_go" / "build.sh"
MODEL = "bench/chat-model"
SIDES = ("direct", "plain", "spillover", "extproc")
KINDS = ("header", "body")
SHAPES = {"throughput": 16, "latency": 1}
BODY = json.dumps(
    {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
            {"role": "user", "content": "Summarise the plot of a long novel in two sentences. " * 4},
        ],
        "max_tokens": 64,
        "temperature": 0.2,
    }
)

WRK_SCRIPT = """\
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{header}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {{"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,'
    .. '"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean))
end
"""


class BenchError(RuntimeError):
    pass


def _cpus() -> tuple[str, str]:
    """(Envoy's CPU, everyone else's): Envoy alone on one core, the load generator and peers on the rest."""
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return str(usable[0]), str(usable[0])
    return str(usable[0]), ",".join(str(c) for c in usable[1:])


def ensure_tools() -> dict[str, str]:
    """wrk from Debian (installed when missing, as `make system-deps` does), the Go peers built by our script."""
    if shutil.which("wrk") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    done = subprocess.run([str(BUILD)], check=True, capture_output=True, text=True)
    bin_dir = Path(done.stdout.strip().splitlines()[-1])
    wrk = shutil.which("wrk")
    assert wrk is not None
    version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.splitlines()[0]
    return {"wrk": wrk, "wrk_version": version, "extproc": str(bin_dir / "extproc"),
            "upstream": str(bin_dir / "upstream")}


class _Pinned(Envoy):
    def __init__(self, *args: Any, cpus: str, **kwargs: Any) -> None:
        super().__init__(*args, concurrency=1, **kwargs)
        self.cpus = cpus

    def command(self) -> list[str]:
        return ["taskset", "-c", self.cpus, *super().command()]


class _PinnedSpillover(Spillover):
    def __init__(self, *args: Any, cpus: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cpus = cpus

    def command(self) -> list[str]:
        return ["taskset", "-c", self.cpus, *super().command()]


class _GoPeer:
    def __init__(self, binary: str, args: list[str], cpus: str, log: Path) -> None:
        self.port = free_port()
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["taskset", "-c", cpus, binary, "-listen", f"127.0.0.1:{self.port}", *args],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "GOMAXPROCS": "1"},
            )  # fmt: skip
        wait_until(lambda: "listening" in log.read_text() or self.proc.poll() is not None, timeout=10,
                   message=f"{binary} never listened")  # fmt: skip
        if self.proc.poll() is not None:
            raise BenchError(f"{binary} exited: {log.read_text()}")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _listener(port: int, http_filters: list[dict[str, Any]], route: dict[str, Any]) -> dict[str, Any]:
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "route_config": {"name": "bench", "virtual_hosts": [
            {"name": "bench", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": route}]}]},
        "http_filters": [*http_filters, {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }  # fmt: skip
    return {"name": "bench", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                            "typed_config": manager}]}]}  # fmt: skip


def _static_cluster(name: str, address: str, http2: bool = False) -> dict[str, Any]:
    host, port = address.rsplit(":", 1)
    cluster: dict[str, Any] = {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": host, "port_value": int(port)}}}}]}]},
    }  # fmt: skip
    if http2:
        cluster["typed_extension_protocol_options"] = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}}  # fmt: skip
    return cluster


def plain_bootstrap(port: int, upstream: str) -> dict[str, Any]:
    return static_bootstrap("bench-plain", "bench", 0, {
        "listeners": [_listener(port, [], {"cluster": "upstream"})],
        "clusters": [_static_cluster("upstream", upstream)]})  # fmt: skip


def extproc_bootstrap(port: int, extproc: str) -> dict[str, Any]:
    ext_proc = {"name": "envoy.filters.http.ext_proc", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": "extproc"}, "timeout": "2s"},
        "processing_mode": {"request_header_mode": "SEND", "response_header_mode": "SKIP",
                            "request_body_mode": "BUFFERED"},
        "allow_mode_override": True, "message_timeout": "2s"}}  # fmt: skip
    picked = {"name": "picked", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": "1s",
              "original_dst_lb_config": {"use_http_header": True,
                                         "http_header_name": "x-gateway-destination-endpoint"}}  # fmt: skip
    return static_bootstrap("bench-extproc", "bench", 0, {
        "listeners": [_listener(port, [ext_proc], {"cluster": "picked"})],
        "clusters": [picked, _static_cluster("extproc", extproc, http2=True)]})  # fmt: skip


def spillover_policy(upstream: str) -> dict[str, Any]:
    return {
        "apiVersion": "spillover.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "bench"},
        "spec": {
            "model": MODEL,
            "localBackend": {"endpoints": [upstream]},
            "routing": {"profiles": {"default": {"requestsPerSecond": 1_000_000}}},
            "offloadingConfig": {
                "remoteBackend": {"host": upstream, "scheme": "http"},
                "behavior": {"percentage": 50, "activationDuration": "0s"},
                # Always over its threshold: the model stays in OVERFLOW, its route a 50/50 split.
                "metrics": [{"query": "vector(10)", "threshold": 5, "name": "always-busy"}],
            },
        },
    }  # fmt: skip


def _post(port: int, kind: str) -> tuple[int, bytes]:
    headers = {"Content-Type": "application/json"}
    if kind == "header":
        headers["x-model"] = MODEL
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=BODY.encode(),
                                 headers=headers, method="POST")  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _answers(port: int, kind: str) -> bool:
    return _post(port, kind)[0] == 200


def _split_served(envoy: Envoy) -> bool:
    text = json.dumps(envoy.config_dump(resource="dynamic_route_configs"))
    return "weighted_clusters" in text and "local_ratelimit" in text


def wrk(tools: dict[str, str], cpus: str, port: int, kind: str, connections: int, seconds: float,
        script_dir: Path, pids: dict[str, int] | None = None, syscalls: bool = False) -> dict[str, Any]:  # fmt: skip
    """One wrk run; with `pids`, also the CPU time each of those processes spent per request (and its
    split into user and system time): unlike rps, that barely moves when other work on the machine takes
    the CPU away. `syscalls`: their syscalls and context switches per request too (perf stat)."""
    script = script_dir / f"{kind}.lua"
    if not script.exists():
        header = f'wrk.headers["x-model"] = "{MODEL}"' if kind == "header" else ""
        script.write_text(WRK_SCRIPT.format(body=json.dumps(BODY), header=header))
    counts = {role: SyscallCount(pid) for role, pid in (pids or {}).items()} if syscalls else {}
    with contextlib.ExitStack() as stack:
        for count in counts.values():
            stack.enter_context(count)
        times_before = {role: cpu_times(pid) for role, pid in (pids or {}).items()}
        done = subprocess.run(
            ["taskset", "-c", cpus, tools["wrk"], "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s",
             "-s", str(script), f"http://127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=seconds + 30,
        )  # fmt: skip
        times_after = {role: cpu_times(pid) for role, pid in (pids or {}).items()}
    found = re.search(r"^WRK_RESULT (\{.*\})$", done.stdout, re.M)
    if done.returncode != 0 or found is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    r = json.loads(found.group(1))
    errors = r["connect"] + r["read"] + r["write"] + r["status"] + r["timeout"]
    if errors:
        raise BenchError(f"wrk saw {errors} errors on port {port} ({kind}): {r}")
    cpu: dict[str, float] = {}
    per_request = 1e6 / max(r["requests"], 1)
    for role in pids or {}:
        user, system = (after - before for after, before in zip(times_after[role], times_before[role], strict=True))
        cpu[f"{role}_cpu_us_per_req"] = (user + system) * per_request
        cpu[f"{role}_user_us_per_req"] = user * per_request
        cpu[f"{role}_sys_us_per_req"] = system * per_request
        for event, n in counts[role].counts.items() if role in counts else ():
            cpu[f"{role}_{event}_per_req"] = n / max(r["requests"], 1)
    return {"rps": r["requests"] / (r["duration_us"] / 1e6), "p50_ms": r["p50_us"] / 1000,
            "p90_ms": r["p90_us"] / 1000, "p99_ms": r["p99_us"] / 1000, "mean_ms": r["mean_us"] / 1000,
            "requests": r["requests"], **cpu}  # fmt: skip


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run(rounds: int, seconds: float, log: Any = print) -> dict[str, Any]:
    tools = ensure_tools()
    envoy_cpu, rest = _cpus()
    workdir = Path(tempfile.mkdtemp(prefix="spillover-bench-datapath-"))
    peers: list[_GoPeer] = []
    envoys: list[Envoy] = []
    spill: Spillover | None = None
    prometheus: Prometheus | None = None
    try:
        upstream = _GoPeer(tools["upstream"], [], rest, workdir / "upstream.log")
        peers.append(upstream)
        extproc = _GoPeer(tools["extproc"], ["-route", f"{MODEL}={upstream.address}"], rest, workdir / "extproc.log")
        peers.append(extproc)
        policies = workdir / "policies"
        policies.mkdir()
        (policies / "bench.yaml").write_text(yaml.safe_dump(spillover_policy(upstream.address), sort_keys=False))
        prometheus = Prometheus(workdir / "prometheus", targets=[]).start()
        spill = _PinnedSpillover(workdir, policies=policies, prometheus_url=prometheus.url,
                                 evaluation_interval=1.0, cpus=rest).start(timeout=60)  # fmt: skip
        ports = {"direct": upstream.port}
        plain_port, extproc_port = free_port(), free_port()
        envoys.append(_Pinned(plain_bootstrap(plain_port, upstream.address), workdir, name="plain",
                              cpus=envoy_cpu).start())  # fmt: skip
        envoys.append(_Pinned(extproc_bootstrap(extproc_port, extproc.address), workdir, name="extproc",
                              cpus=envoy_cpu).start())  # fmt: skip
        xds = _Pinned(build_bootstrap("bench-edge", "edge", spill.xds_address, admin_port=0), workdir,
                      name="spillover-envoy", cpus=envoy_cpu).start()  # fmt: skip
        envoys.append(xds)
        ports.update(plain=plain_port, extproc=extproc_port, spillover=spill.listen_port)
        plain_envoy, extproc_envoy = envoys[0], envoys[1]
        assert plain_envoy.pid and extproc_envoy.pid and xds.pid
        pids = {"direct": {"upstream": upstream.proc.pid},
                "plain": {"envoy": plain_envoy.pid, "upstream": upstream.proc.pid},
                "spillover": {"envoy": xds.pid, "upstream": upstream.proc.pid},
                "extproc": {"envoy": extproc_envoy.pid, "extproc": extproc.proc.pid, "upstream": upstream.proc.pid}}
        wait_until(lambda: _split_served(xds), timeout=60, interval=0.2,
                   message="spillover never served the weighted split with its rate limit")  # fmt: skip
        for side in SIDES:
            for kind in KINDS:
                wait_until(partial(_answers, ports[side], kind), timeout=20, interval=0.1,
                           message=f"{side}/{kind} never answered 200")
        before = xds.stats()
        runs: list[dict[str, Any]] = []
        for side in SIDES:  # warm-up: connection pools, Lua states, JIT of the Go peers
            for kind in KINDS:
                wrk(tools, rest, ports[side], kind, SHAPES["throughput"], 1, workdir)
        for rnd in range(rounds):
            order = list(SIDES) if rnd % 2 == 0 else list(reversed(SIDES))
            for shape, connections in SHAPES.items():
                for kind in KINDS:
                    for side in order:
                        r = wrk(tools, rest, ports[side], kind, connections, seconds, workdir, pids[side])
                        runs.append({"round": rnd, "shape": shape, "kind": kind, "side": side, **r})
                        log(f"    round {rnd + 1} {shape:10} {kind:6} {side:9} {r['rps']:8.0f} rps  "
                            f"p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  "
                            f"Envoy {r.get('envoy_cpu_us_per_req', 0):.0f} µs CPU/request")  # fmt: skip
        after = xds.stats()
        envoy_version = xds.server_info()["version"]
    finally:
        for envoy in envoys:
            envoy.stop()
        if spill is not None:
            spill.stop()
        if prometheus is not None:
            prometheus.stop()
        for peer in peers:
            peer.stop()

    def delta(name: str) -> int:
        return after.get(name, 0) - before.get(name, 0)

    split = {name.split(".")[1]: delta(name) for name in after
             if name.startswith("cluster.") and name.endswith(".upstream_rq_completed") and delta(name)}  # fmt: skip
    return {
        "rounds": rounds, "seconds_per_run": seconds, "shapes": SHAPES, "body_bytes": len(BODY),
        "cpus": {"envoy": envoy_cpu, "wrk_upstream_extproc_spillover": rest},
        "tools": {"wrk": tools["wrk_version"], "envoy": envoy_version},
        "spillover_upstream_requests": split,
        "runs": runs, "summary": summarise(runs),
    }  # fmt: skip


def _per_round(rounds: list[int], at: dict[tuple[int, str], dict[str, Any]], key: str, top: str, bottom: str,
               baseline: str | None) -> dict[str, float]:  # fmt: skip
    """top ÷ bottom per round (each minus the baseline's figure when one is given), summarised; a round whose
    bottom is not above the baseline (noise) has no ratio."""
    values = []
    for n in rounds:
        base = at[(n, baseline)][key] if baseline else 0.0
        if at[(n, bottom)][key] - base > 0:
            values.append((at[(n, top)][key] - base) / (at[(n, bottom)][key] - base))
    return _summary(values) if values else {"median": float("nan"), "min": float("nan"), "max": float("nan")}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for shape in SHAPES:
        for kind in KINDS:
            rows = [r for r in runs if r["shape"] == shape and r["kind"] == kind]
            if not rows:
                continue
            rounds = sorted({r["round"] for r in rows})
            at = {(r["round"], r["side"]): r for r in rows}
            sides: dict[str, Any] = {}
            for side in SIDES:
                mine = [at[(n, side)] for n in rounds]
                keys = ["rps", "p50_ms", "p99_ms"] + [k for k in mine[0] if k.endswith("_cpu_us_per_req")]
                entry = {k: _summary([r[k] for r in mine]) for k in keys}
                if side != "direct":
                    for k in ("p50_ms", "p99_ms"):
                        entry[f"added_{k}"] = _summary([at[(n, side)][k] - at[(n, "direct")][k] for n in rounds])
                sides[side] = entry

            ratios = {
                "spillover_over_plain_rps": _per_round(rounds, at, "rps", "spillover", "plain", None),
                "extproc_over_plain_rps": _per_round(rounds, at, "rps", "extproc", "plain", None),
            }
            if "envoy_cpu_us_per_req" in at[(rounds[0], "plain")]:
                # Requests per CPU-second of Envoy: throughput if each Envoy had its core to itself.
                ratios["spillover_over_plain_capacity"] = _per_round(
                    rounds, at, "envoy_cpu_us_per_req", "plain", "spillover", None)
            for k in ("p50_ms", "p99_ms"):
                ratios[f"spillover_added_over_extproc_added_{k}"] = _per_round(
                    rounds, at, k, "spillover", "extproc", "direct")
            out[f"{shape}/{kind}"] = {"sides": sides, "ratios": ratios}
    return out


TARGETS = (
    ("throughput/header", "spillover_over_plain_rps", ">=", 0.95, "throughput with spillover's config ÷ plain Envoy, header-routed"),
    ("throughput/body", "spillover_over_plain_rps", ">=", 0.90, "throughput with spillover's config ÷ plain Envoy, body-routed"),
    ("latency/header", "spillover_added_over_extproc_added_p50_ms", "<=", 0.5, "added p50 ÷ the ext_proc hop's, header-routed"),
    ("latency/body", "spillover_added_over_extproc_added_p50_ms", "<=", 0.5, "added p50 ÷ the ext_proc hop's, body-routed"),
)


def targets(summary: dict[str, Any]) -> list[dict[str, str]]:
    """Throughput verdicts from Envoy's CPU per request where measured (rps moves with whatever else the
    machine runs; the CPU a request costs barely does), rps beside it."""
    out = []
    for key, ratio, op, bound, label in TARGETS:
        if key not in summary:
            continue
        ratios = summary[key]["ratios"]
        value = ratios[ratio]["median"]
        measured = f"{value:.2f} (median of rounds)"
        capacity = ratios.get("spillover_over_plain_capacity")
        if capacity and ratio == "spillover_over_plain_rps":
            measured = f"{capacity['median']:.2f} by Envoy CPU per request; rps {value:.2f}"
            value = capacity["median"]
        ok = value >= bound if op == ">=" else value <= bound
        out.append({"target": f"{label} {op} {bound:g}", "measured": measured, "verdict": "PASS" if ok else "FAIL"})
    for kind in KINDS:
        key = f"latency/{kind}"
        if key in summary:
            sides = summary[key]["sides"]
            added = sides["spillover"]["added_p99_ms"]["median"]
            floor = sides["plain"]["added_p99_ms"]["median"]
            out.append({"target": f"p99 added by spillover's config <= 1 ms ({kind}-routed, 1 connection)",
                        "measured": f"{added:.3f} ms (plain Envoy's own: {floor:.3f} ms)",
                        "verdict": "PASS" if added <= 1.0 else "FAIL"})  # fmt: skip
    return out


def _range(s: dict[str, float], fmt: str) -> str:
    return f"{format(s['median'], fmt)} ({format(s['min'], fmt)}-{format(s['max'], fmt)})"


def section(result: dict[str, Any], title: str) -> list[str]:
    lines = [f"## {title}", ""]
    if "error" in result:
        return [*lines, f"Not measured: {result['error']}", ""]
    lines += [f"git {result.get('git', '?')}; {result['rounds']} rounds x {result['seconds_per_run']:g} s per run; "
              f"Envoy {result['tools']['envoy']}; {result['tools']['wrk']}; request body {result['body_bytes']} bytes. "
              f"Spillover's Envoy sent {result['spillover_upstream_requests']} requests per cluster "
              "(the 50/50 split).", ""]  # fmt: skip
    for key, block in result["summary"].items():
        shape, kind = key.split("/")
        connections = result["shapes"][shape]
        lines += [f"### {shape}, {kind}-routed requests ({connections} connection{'s' if connections > 1 else ''})", "",
                  "| side | rps | p50 ms | p99 ms | added p50 ms | added p99 ms | Envoy CPU µs / request | "
                  "ext_proc server CPU µs / request |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for side, s in block["sides"].items():
            added = ("—", "—") if side == "direct" else (_range(s["added_p50_ms"], ".3f"), _range(s["added_p99_ms"], ".3f"))
            cpu = [_range(s[k], ".0f") if k in s else "—" for k in ("envoy_cpu_us_per_req", "extproc_cpu_us_per_req")]
            lines.append(f"| {side} | {_range(s['rps'], '.0f')} | {_range(s['p50_ms'], '.3f')} | "
                         f"{_range(s['p99_ms'], '.3f')} | {added[0]} | {added[1]} | {cpu[0]} | {cpu[1]} |")  # fmt: skip
        r = block["ratios"]
        capacity = r.get("spillover_over_plain_capacity")
        lines += ["", f"spillover ÷ plain rps {_range(r['spillover_over_plain_rps'], '.2f')}"
                  + (f" (by Envoy CPU per request: {_range(capacity, '.2f')})" if capacity else "") + "; "
                  f"ext_proc ÷ plain rps {_range(r['extproc_over_plain_rps'], '.2f')}; "
                  f"spillover's added latency ÷ the ext_proc hop's: p50 "
                  f"{_range(r['spillover_added_over_extproc_added_p50_ms'], '.2f')}, p99 "
                  f"{_range(r['spillover_added_over_extproc_added_p99_ms'], '.2f')}.", ""]  # fmt: skip
    lines += ["### Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | {t['verdict']} |" for t in targets(result["summary"])]
    return [*lines, ""]


def markdown(result: dict[str, Any], info: dict[str, Any], command: str, before: dict[str, Any] | None) -> str:
    lines = [
        "# spillover benchmark: the data path's own cost", "",
        f"- Date: {info['date']}; git {info['git']}",
        f"- Machine: {info['cpu_model']}, {info['usable_cores']} usable cores, {info['ram_bytes'] / 2**30:.1f} GiB RAM "
        "(shared with other work while it ran: figures are noisy; medians and min-max over rounds)",
        f"- Command: `{command}`",
        f"- CPUs: every Envoy on CPU {result.get('cpus', {}).get('envoy', '?')} (`--concurrency 1`); wrk, the "
        f"upstream, the ext_proc server and spillover on CPU {result.get('cpus', {}).get('wrk_upstream_extproc_spillover', '?')}",
        "", (__doc__ or "").split("\n\n", 1)[1].strip(), "",
        "Added latency = the side's figure minus direct's in the same round. Ratios: per round, then the median "
        "(min-max).", "",
    ]  # fmt: skip
    lines += section(result, "Now" if before else "Results")
    if before:
        lines += section(before, f"Before the translator change ({before.get('date', '?')}: the same benchmark on "
                                 "the previous generated config)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.datapath", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 s")
    parser.add_argument("--before", help="a datapath.json of an earlier run to show beside this one")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--render", help="no run: rewrite datapath.md from this datapath.json (and --before)")
    args = parser.parse_args(argv)
    rounds, seconds = (2, 2.0) if args.quick else (args.rounds, args.seconds)
    command = "python -m benchmarks.datapath" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    info = machine.describe()
    print(f"data-path benchmark — {info['summary']}", flush=True)
    before = None
    if args.before:
        earlier = json.loads(Path(args.before).read_text())
        before = {**earlier["datapath"], "command": earlier.get("command"), "date": earlier["machine"]["date"]}
        before["summary"] = summarise(before["runs"])
    if args.render:
        document = json.loads(Path(args.render).read_text())
        document["before"] = before
        document["datapath"]["summary"] = summarise(document["datapath"]["runs"])
        return _write(Path(args.output), document["datapath"], document["machine"], document["command"], before)
    try:
        result = run(rounds, seconds, log=lambda line: print(line, flush=True))
        result["git"] = info["git"]
    except (BenchError, AssertionError, OSError, RuntimeError, subprocess.SubprocessError) as error:
        result = {"error": str(error)}
    return _write(Path(args.output), result, info, command, before)


def _write(out: Path, result: dict[str, Any], info: dict[str, Any], command: str, before: dict[str, Any] | None) -> int:
    text = markdown(result, info, command, before)
    from benchmarks.datapath_ablation import section as ablation_section

    for name, title in (("datapath-ablation.json", "now"), ("datapath-ablation-before.json", "before the change")):
        if (out / name).exists():
            text += "\n".join(["", *ablation_section(json.loads((out / name).read_text()), title)])
    notes = out / "datapath-notes.md"  # the reading of the figures, written by hand after a run
    if notes.exists():
        text += "\n" + notes.read_text()
    print(text)
    out.mkdir(parents=True, exist_ok=True)
    (out / "datapath.md").write_text(text)
    document: dict[str, Any] = {"machine": info, "command": command, "datapath": result, "before": before}
    if "summary" in result:
        document["targets"] = targets(result["summary"])
    (out / "datapath.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    raise SystemExit(main())
