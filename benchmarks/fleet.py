"""The fleet: from the leader's decision to the last Envoy of every replica holding the new weights, and
what membership costs each replica.

Everything is real and on 127.0.0.1 except the Envoys: a kube-apiserver with etcd, 2 then 3 replicas of
`spillover serve --kubernetes` in one fleet (membership Leases, the peer channel, leader election; its
default push debounce), Debian's Prometheus scraping two local model servers every second, and per
replica 100 simulated Envoys: ADS streams (one gRPC channel, one TCP connection each; one client process
per replica) that subscribe to clusters, listeners and the route configuration and ACK every response as
Envoy does.

Per decision (CLOCK_MONOTONIC throughout; log lines placed on it with the wall-monotonic offset): t0 = the
leader's log line `model M: STANDBY -> OVERFLOW` (or back); the end = the last simulated Envoy, on any
replica, to receive the RouteConfiguration whose remote weight is the new one. A repetition is one
overflow (`vllm:num_requests_waiting` set over its target) and one return to STANDBY (set back, after the
1 s buffer): two decisions.

Membership traffic: each replica's own counters of the fleet's Lease requests (/debug/fleet `traffic`:
membership and decision table requests, bytes sent and received, and the bytes its watch on the fleet's
Leases read) over an idle window, with spillover's default Lease timing (membership renewed every 5 s).
The leader election Lease's own renewals are the elector's and not counted; neither is the peer channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import statistics
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks.reaction import BenchError, _clock_offset, spillover_transitions
from spillover.names import ROUTE_CONFIG_NAME, remote_cluster_name, remote_first_cluster_name
from tests.harness.fleet import fleet_replica, token_file
from tests.harness.kube import KubeCluster, ensure_binaries
from tests.harness.kube_fixtures import Crds, crd_documents
from tests.harness.kube_objects import model_deployment
from tests.harness.modelserver import ModelServer
from tests.harness.polling import wait_until
from tests.harness.prometheus import Prometheus
from tests.harness.serve import Spillover
from tests.harness.upstream import HttpUpstream

MODEL = "bench-model"
NAMESPACE = "bench-fleet"
GROUP = "edge"
QUEUE_TARGET = 5.0
# spillover's own Lease timing (the tests' is shorter): lease 15 s, renew deadline 10 s, membership renewed
# every 5 s, the leader Lease tried every 2 s.
DEFAULT_TIMING = ["--lease-duration", "15", "--renew-deadline", "10", "--retry-period", "2", "--fleet-heartbeat", "5"]
SOTW_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


# -- the simulated Envoys (one process per replica) ----------------------------------------------------------


def envoys_main(conn: Connection, xds_port: int, prefix: str, count: int) -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_envoys(conn, xds_port, prefix, count))


async def _envoys(conn: Connection, xds_port: int, prefix: str, count: int) -> None:
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.config.route.v3 import route_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    from spillover.server.resources import CLUSTER, LISTENER, ROUTE
    from spillover.translate.route_table import table_routes

    remote = remote_cluster_name(MODEL)
    remote_first = remote_first_cluster_name(MODEL, "")

    def is_remote(cluster: str) -> bool:  # the remote itself, or an aggregate that tries it first
        return cluster == remote or cluster.startswith(remote_first)
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    slots = asyncio.Semaphore(16)

    def remote_weight(response: Any) -> int | None:
        for resource in response.resources:
            config = route_pb2.RouteConfiguration()
            resource.Unpack(config)
            for route in table_routes(config):
                if route.name != f"{MODEL}/default":
                    continue
                if route.route.HasField("weighted_clusters"):
                    return sum(c.weight.value for c in route.route.weighted_clusters.clusters if is_remote(c.name))
                return 100 if is_remote(route.route.cluster) else 0
        return None

    async def envoy(i: int) -> None:
        node_id = f"{prefix}-{i}"
        async with slots:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{xds_port}", options=[("grpc.use_local_subchannel_pool", 1)])
            await channel.channel_ready()
        call = channel.stream_stream(
            SOTW_METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()
        node = base_pb2.Node(id=node_id, cluster=GROUP)
        names = {ROUTE: [ROUTE_CONFIG_NAME]}
        for type_url in (CLUSTER, LISTENER, ROUTE):
            await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=type_url,
                                                            resource_names=names.get(type_url, ())))
        held: int | None = None
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return
                if response.type_url == ROUTE:
                    weight = remote_weight(response)
                    if weight is not None and weight != held:
                        held = weight
                        conn.send(("weight", node_id, weight, time.monotonic()))
                await call.write(discovery_pb2.DiscoveryRequest(
                    type_url=response.type_url, version_info=response.version_info, response_nonce=response.nonce,
                    resource_names=names.get(response.type_url, ()),
                ))
        finally:
            await channel.close(None)

    def on_command() -> None:
        with contextlib.suppress(EOFError):
            conn.recv()
        stopped.set()

    loop.add_reader(conn.fileno(), on_command)
    tasks = [loop.create_task(envoy(i)) for i in range(count)]
    for task in tasks:
        task.add_done_callback(
            lambda t: None if t.cancelled() or t.exception() is None or stopped.is_set()
            else conn.send(("error", repr(t.exception()), 0, 0.0))
        )
    await stopped.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class SimulatedEnvoys:
    """`count` simulated Envoys on one replica; `weights()` is what each holds, `changes` when it changed."""

    def __init__(self, replica: Spillover, prefix: str, count: int) -> None:
        self.count = count
        self.parent, child = mp.Pipe()
        self.process = mp.get_context("spawn").Process(
            target=envoys_main, args=(child, replica.xds_port, prefix, count), daemon=True)
        self.held: dict[str, int] = {}
        self.changes: list[tuple[str, int, float]] = []

    def start(self) -> SimulatedEnvoys:
        self.process.start()
        return self

    def drain(self) -> None:
        while self.parent.poll():
            kind, node, weight, at = self.parent.recv()
            if kind == "error":
                raise BenchError(f"a simulated Envoy failed: {node}")
            self.held[node] = weight
            self.changes.append((node, weight, at))

    def all_hold(self, weight: int) -> bool:
        self.drain()
        return len(self.held) == self.count and all(w == weight for w in self.held.values())

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.parent.send("stop")
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()


# -- the run ----------------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _stats(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_s": statistics.median(values), "p99_s": _percentile(values, 0.99),
            "max_s": max(values), "min_s": min(values)}


def _policy() -> dict[str, Any]:
    return {"localBackend": {"endpoints": []},  # filled in run_fleet
            "offloadingConfig": {"remoteBackend": {"host": "", "scheme": "http"},
                                 "behavior": {"percentage": 50, "activationDuration": "0s", "bufferDuration": "1s"},
                                 "metrics": [{"metric": "queue_length", "target": QUEUE_TARGET}]}}


def run_fleet(replicas: int, envoys_per_replica: int, repetitions: int, workdir: Path, *,
              idle_window_s: float = 15.0, log: Any = print) -> dict[str, Any]:
    apiserver, etcd = ensure_binaries()
    offset = _clock_offset()
    cluster = KubeCluster(workdir / "kube", apiserver_binary=apiserver, etcd_binary=etcd)
    models = [ModelServer(f"local-{i}", model=MODEL) for i in range(2)]
    remote = HttpUpstream("remote")
    prometheus: Prometheus | None = None
    servers: list[Spillover] = []
    envoys: list[SimulatedEnvoys] = []
    try:
        cluster.start()
        cluster.apply(crd_documents(Crds.MODELDEPLOYMENT))
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        for m in models:
            m.start()
        remote.start()
        prometheus = Prometheus(workdir / "prometheus", targets=[m.address for m in models], scrape_interval="1s").start()
        spec = _policy()
        spec["localBackend"]["endpoints"] = [m.address for m in models]
        spec["offloadingConfig"]["remoteBackend"]["host"] = remote.address
        cluster.apply(model_deployment(MODEL, MODEL, NAMESPACE, **spec))
        token = token_file(workdir)
        for r in range(replicas):
            server = fleet_replica(workdir, f"replica-{r}", cluster.admin_kubeconfig, NAMESPACE, token,
                                   prometheus_url=prometheus.url, debounce=None, extra=DEFAULT_TIMING)
            servers.append(server.launch())
            wait_until(server.ready, timeout=60, message=f"replica-{r} never became ready")
        wait_until(lambda: all(len(s.get_json("/debug/fleet")["members"]) == replicas - 1 for s in servers),
                   timeout=30, message="the replicas never saw each other")
        for r, server in enumerate(servers):
            envoys.append(SimulatedEnvoys(server, f"sim-{r}", envoys_per_replica).start())
        wait_until(lambda: all(e.all_hold(0) for e in envoys), timeout=120, interval=0.2,
                   message="the simulated Envoys never all got the model's route")
        wait_until(lambda: all(s.get_json("/debug/fleet")["groups"].get(GROUP) == replicas * envoys_per_replica
                               for s in servers), timeout=30, message="the fleet never counted every Envoy")
        leader = wait_until(lambda: next((s for s in servers if s.get_json("/debug/fleet")["deciding"]), None),
                            timeout=30, message="no replica decides")
        log(f"  {replicas} replicas x {envoys_per_replica} Envoys connected; leader {leader.name}")

        # Membership traffic: idle (no change), every replica's own counters.
        before = {s.name: s.get_json("/debug/fleet")["traffic"] for s in servers}
        started = time.monotonic()
        time.sleep(idle_window_s)
        elapsed = time.monotonic() - started
        traffic = {}
        for s in servers:
            after = s.get_json("/debug/fleet")["traffic"]
            b = before[s.name]
            traffic[s.name] = {
                "requests_per_s": round((sum(after["requests"].values()) - sum(b["requests"].values())) / elapsed, 3),
                "sent_bytes_per_s": round((after["sent_bytes"] - b["sent_bytes"]) / elapsed, 1),
                "received_bytes_per_s": round((after["received_bytes"] - b["received_bytes"]) / elapsed, 1),
                "watch_bytes_per_s": round((after["watch_bytes"] - b["watch_bytes"]) / elapsed, 1),
                "leader": s is leader,
            }

        lags: list[float] = []
        per_envoy: list[float] = []
        decisions: list[dict[str, Any]] = []
        for rep in range(repetitions):
            for state, waiting, weight in (("OVERFLOW", 10.0, 50), ("STANDBY", 0.0, 0)):
                for e in envoys:
                    e.drain()
                    e.changes.clear()
                set_at = time.monotonic()
                for m in models:
                    m.set_load(waiting=waiting)
                try:
                    wait_until(lambda w=weight: all(e.all_hold(w) for e in envoys), timeout=30, interval=0.02,  # type: ignore[misc]
                               message=f"not every Envoy got the {state} weights")
                except AssertionError as error:
                    held = sorted({w for e in envoys for w in e.held.values()})
                    raise BenchError(f"{error}; weights held {held}; the leader's view of the model: "
                                     f"{json.dumps(leader.model(MODEL))[:1500]}") from None
                transitions = [t for t in spillover_transitions(leader.log_path, offset) if t[2] == state and t[0] >= set_at - 0.05]
                if not transitions:
                    raise BenchError(f"the leader logged no transition to {state}")
                decided = transitions[0][0]
                arrivals = [at for e in envoys for _, w, at in e.changes if w == weight]
                last = max(arrivals) - decided
                lags.append(last)
                per_envoy.extend(at - decided for at in arrivals)
                decisions.append({"rep": rep, "to": state, "last_envoy_s": round(last, 4),
                                  "first_envoy_s": round(min(arrivals) - decided, 4)})
                log(f"  rep {rep + 1}/{repetitions} -> {state}: last Envoy {last * 1000:.0f} ms after the decision")
        return {"replicas": replicas, "envoys_per_replica": envoys_per_replica, "decisions": decisions,
                "last_envoy": _stats(lags), "every_envoy": _stats(per_envoy), "membership_traffic": traffic,
                "idle_window_s": round(elapsed, 1)}
    finally:
        for e in envoys:
            e.stop()
        for s in servers:
            s.stop()
        if prometheus is not None:
            prometheus.stop()
        remote.stop()
        for m in models:
            m.stop()
        cluster.stop()


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def markdown_section(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## The leader's decision -> the last Envoy of every replica holding the new weights", "",
        "| replicas x simulated Envoys | decisions | last Envoy p50 | last Envoy p99 | every Envoy p50 / p99 |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        if "error" in r:
            lines.append(f"| {r.get('replicas')} x {r.get('envoys_per_replica')} | error: {r['error'][:200]} | | | |")
            continue
        last, every = r["last_envoy"], r["every_envoy"]
        lines.append(f"| {r['replicas']} x {r['envoys_per_replica']} | {last['n']} | {_ms(last['p50_s'])} | "
                     f"{_ms(last['p99_s'])} | {_ms(every['p50_s'])} / {_ms(every['p99_s'])} |")
    lines += ["", "## Membership traffic per replica (idle, its own Lease requests and its watch)", "",
              "| replicas | replica | API requests/s | sent B/s | received B/s | watch B/s |", "|---|---|---|---|---|---|"]
    for r in results:
        for name, t in sorted((r.get("membership_traffic") or {}).items()):
            role = " (leader)" if t["leader"] else ""
            lines.append(f"| {r['replicas']} | {name}{role} | {t['requests_per_s']:g} | {t['sent_bytes_per_s']:g} | "
                         f"{t['received_bytes_per_s']:g} | {t['watch_bytes_per_s']:g} |")
    return lines


def main() -> int:
    import argparse
    import os

    from benchmarks import machine

    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__)
    parser.add_argument("--replicas", type=int, action="append", help="fleet sizes (default 2 and 3)")
    parser.add_argument("--envoys", type=int, default=100, help="simulated Envoys per replica")
    parser.add_argument("--repetitions", type=int, default=5, help="overflow and back, per fleet size")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    sizes = args.replicas or [2, 3]
    info = machine.describe()
    print(f"fleet benchmark — {info['summary']}", flush=True)
    results = []
    for size in sizes:
        workdir = Path(tempfile.mkdtemp(prefix=f"spillover-bench-fleet-{size}-"))
        try:
            results.append(run_fleet(size, args.envoys, args.repetitions, workdir,
                                     log=lambda line: print(line, flush=True)))
        except (BenchError, AssertionError, OSError, RuntimeError) as error:
            results.append({"replicas": size, "envoys_per_replica": args.envoys, "error": str(error)})
    command = "python -m benchmarks.fleet" + "".join(f" --replicas {s}" for s in (args.replicas or [])) + \
        (f" --envoys {args.envoys}" if args.envoys != 100 else "") + \
        (f" --repetitions {args.repetitions}" if args.repetitions != 5 else "")
    text = "\n".join([
        "# spillover benchmark: the fleet", "",
        f"- Date: {info['date']}; git {info['git']}",
        f"- Machine: {info['cpu_model']}, {info['usable_cores']} usable cores, {info['ram_bytes'] / 2**30:.1f} GiB RAM",
        f"- Command: `{command}`", "",
        "One kube-apiserver + etcd, the replicas (`spillover serve --kubernetes`, fleet with the peer channel, "
        "default debounce), Prometheus scraping two model servers every 1 s, simulated Envoys (ADS streams, "
        "one client process per replica) all on this machine. t0 = the leader's `STANDBY -> OVERFLOW` (or back) "
        "log line; the end = the last simulated Envoy, on any replica, to receive the route with the new "
        "remote weight. Followers learn the decision from the decision table Lease's watch event.", "",
        *markdown_section(results), "",
    ])
    print(text)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "fleet.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.output, "fleet.json"), "w") as f:
        json.dump({"machine": info, "fleet": results}, f, indent=2, sort_keys=True)
        f.write("\n")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
