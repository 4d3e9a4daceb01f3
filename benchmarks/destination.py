"""The copy on a destination cluster: how fast it is scaled up, and how fast traffic reaches it once ready.

Everything is real and on 127.0.0.1: two kube-apiservers with etcd (cluster A: the ModelDeployment and its
origin Deployment; cluster B: the copy, reached with a token bound to manifests/destination/role.yaml),
`spillover serve --kubernetes` as a subprocess, Debian's Prometheus scraping two local model servers every
second, a real Envoy, 100 req/s of paced client load through it, and an upstream standing in for the copy's
pods behind its Service's load balancer address (127.0.0.1, written into the Service's status as a cloud
controller would).

Policy: `metric: queue_length, target: 5`, `behavior{percentage: 50, bufferDuration: 1s}`, `destination
{activeReplicas: 2, standbyReplicas: 0, cooldown: 0s}`: a cold copy, scaled up when the model overflows.

Per repetition (CLOCK_MONOTONIC throughout; log lines placed on it with the wall-monotonic offset):

1. **threshold -> scale-up on B**: t0 = this process sets `vllm:num_requests_waiting` to 10; the end = a
   watch on cluster B (an informer in this process) sees the copy's Deployment at 2 replicas. Stages: the
   first scrape serving the new value (the model server's record), spillover's `STANDBY -> OVERFLOW` log
   line, the Deployment update seen on B.
2. **readiness -> first request at the copy**: t1 = the return of this process's PATCH of the copy's
   Deployment status to 2 ready replicas (what B's kubelets and Deployment controller would report); the
   end = the copy's upstream records its first request. Stage: Envoy's `Received gRPC message for
   ...RouteConfiguration` (the route with the copy's share).

Then back: the metric calm, STANDBY after the buffer, the copy scaled back to 0 (buffer + cooldown 0 s),
its readiness cleared, before the next repetition (which starts at a random phase of the scrape period).
"""

from __future__ import annotations

import contextlib
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.reaction import (
    MODEL,
    BenchError,
    PacedLoad,
    RemoteRecorder,
    TimedModelServer,
    _clock_offset,
    envoy_route_updates,
    spillover_transitions,
)
from spillover.sources.kube.informer import Informer
from spillover.sources.kube.kinds import DEPLOYMENTS
from spillover.translate.bootstrap import build_bootstrap
from tests.harness.destination import ClusterB, origin_deployment, set_ingress, set_ready
from tests.harness.envoy import Envoy
from tests.harness.kube import KubeCluster, ensure_binaries
from tests.harness.kube_objects import model_deployment
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.prometheus import Prometheus
from tests.harness.serve import Spillover

__all__ = ["markdown_section", "run"]

QUEUE_TARGET, QUEUE_TRIGGERED = 5.0, 10.0
ACTIVE = 2
BUFFER_S = 1.0
SCRAPE_S = 1.0
EVALUATION_INTERVAL_S = 0.5
CRD = Path(__file__).resolve().parents[1] / "manifests" / "crd-modeldeployment.yaml"


class _Replicas:
    """A watch on cluster B: (monotonic time, spec.replicas) of every version of the copy's Deployment seen."""

    def __init__(self, cluster: KubeCluster, namespace: str) -> None:
        self.seen: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        self.informer = Informer(cluster.api_client(), DEPLOYMENTS, namespace=namespace, on_event=self._event)

    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        now = time.monotonic()
        if kind != "DELETED":
            with self._lock:
                self.seen.append((now, int((obj.get("spec") or {}).get("replicas", 1))))

    def first(self, replicas: int, after: float) -> float | None:
        with self._lock:
            return next((t for t, r in self.seen if t >= after and r == replicas), None)


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"p50_s": statistics.median(values), "max_s": max(values), "min_s": min(values)}


def run(repetitions: int, log_dir: str, log: Any = print, rate: float = 100.0) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="destination-", dir=log_dir))
    apiserver, etcd = ensure_binaries(build=False)
    offset = _clock_offset()
    a = KubeCluster(workdir / "cluster-a", apiserver_binary=apiserver, etcd_binary=etcd)
    b_cluster = KubeCluster(workdir / "cluster-b", apiserver_binary=apiserver, etcd_binary=etcd)
    models = [TimedModelServer(f"local-{i}") for i in range(2)]
    copy_pods = RemoteRecorder("copy")
    prometheus: Prometheus | None = None
    spill: Spillover | None = None
    envoy: Envoy | None = None
    load: PacedLoad | None = None
    watch: _Replicas | None = None
    b: ClusterB | None = None
    reps: list[dict[str, Any]] = []
    try:
        a.start()
        b_cluster.start()
        a.apply(CRD.read_text())
        namespace = "models"
        a.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        b = ClusterB.create(b_cluster, a, namespace)
        copy_pods.start()
        for m in models:
            m.start()
        prometheus = Prometheus(workdir / "prometheus", targets=[m.address for m in models],
                                scrape_interval=f"{SCRAPE_S:g}s").start()
        a.apply(origin_deployment("llama", namespace))
        set_ready(a, namespace, "llama", 2)
        a.apply(model_deployment(
            "bench", MODEL, namespace, localBackend={"endpoints": [m.address for m in models]},
            modelSourceRef={"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama"},
            offloadingConfig={
                "metrics": [{"metric": "queue_length", "target": QUEUE_TARGET}],
                "behavior": {"percentage": 50, "bufferDuration": f"{BUFFER_S:g}s"},
                "destination": {"kubeconfigSecretRef": {"name": "cluster-b"}, "namespace": b.namespace,
                                "activeReplicas": ACTIVE, "cooldown": "0s", "port": copy_pods.port},
            },
        ))
        spill = Spillover(workdir, kubeconfig=a.admin_kubeconfig, namespaces=[namespace],
                          leader_election_namespace=namespace, prometheus_url=prometheus.url,
                          evaluation_interval=EVALUATION_INTERVAL_S, debounce=None).start(timeout=60)
        watch = _Replicas(b_cluster, b.namespace)
        watch.informer.start()
        envoy = Envoy(build_bootstrap("bench-edge", "edge", spill.xds_address, admin_port=free_port()), workdir,
                      name="envoy", extra_args=["--component-log-level", "config:debug"]).start()
        server = spill

        def copy_seen() -> bool:
            status = ((server.model(MODEL).get("status") or {}).get("destination") or {})
            return status.get("state") == "Cold"

        wait_until(copy_seen, timeout=60, interval=0.1, message="the copy never became Cold on B")
        wait_until(lambda: b_cluster.request("GET", f"/api/v1/namespaces/{b.namespace}/services/llama")[0] == 200,
                   timeout=20, interval=0.1, message="the copy's Service never appeared on B")
        set_ingress(b_cluster, b.namespace, "llama")
        wait_until(lambda: ((server.model(MODEL).get("status") or {}).get("destination") or {}).get("address"),
                   timeout=20, interval=0.1, message="the copy never had an address")
        load = PacedLoad(spill.listen_port, rate).start()

        def known_standby() -> bool:
            model = server.model(MODEL)
            readings = (model.get("status") or {}).get("metrics") or []
            return model.get("state") == "STANDBY" and bool(readings) and all(
                r.get("condition") == "calm" for r in readings)

        # The metric read (calm) before the first trigger: Prometheus' first scrapes are not measured.
        wait_until(known_standby, timeout=30, interval=0.1, message="the metric never read calm in STANDBY")
        rng = random.Random(4321)
        for rep in range(repetitions):
            time.sleep(rng.uniform(0, SCRAPE_S))
            for m in models:
                m.scraped_at, m.watch_from = None, time.monotonic()
            t0 = time.monotonic()
            for m in models:
                m.set_load(waiting=QUEUE_TRIGGERED)
            scaled = wait_until(lambda: watch.first(ACTIVE, t0), timeout=20, interval=0.005,  # noqa: B023
                                message="the copy was never scaled up")
            scraped = [m.scraped_at for m in models if m.scraped_at is not None]
            row: dict[str, Any] = {"rep": rep, "scale_up_s": scaled - t0,
                                   "scraped_s": (min(scraped) - t0) if scraped else None, "t0": t0}
            time.sleep(0.3)  # the copy's pods "start"
            copy_pods.arm()
            before = time.monotonic()
            set_ready(b_cluster, b.namespace, "llama", ACTIVE)
            t1 = time.monotonic()
            first = wait_until(lambda: copy_pods.first_at, timeout=15, interval=0.002,
                               message="no request reached the copy")
            copy_pods.disarm()
            row.update({"ready_patch_s": t1 - before, "ready_to_first_s": first - t1, "t1": t1, "first": first})
            log(f"      rep {rep + 1}: threshold -> scale-up on B {row['scale_up_s'] * 1000:.0f} ms; "
                f"ready -> first request at the copy {row['ready_to_first_s'] * 1000:.0f} ms")
            reps.append(row)
            for m in models:
                m.watch_from = None
                m.set_load(waiting=0)
            calm = time.monotonic()
            wait_until(lambda: watch.first(0, calm), timeout=20, interval=0.05,  # noqa: B023
                       message="the copy never scaled back")
            set_ready(b_cluster, b.namespace, "llama", 0, replicas=0)
            wait_until(lambda: time.monotonic() - copy_pods.last_at > 0.5, timeout=10, interval=0.05)
    finally:
        if load is not None:
            load.stop()
        if watch is not None:
            watch.informer.stop()
        if envoy is not None:
            envoy.stop()
        if spill is not None:
            spill.stop()
        if prometheus is not None:
            prometheus.stop()
        for m in models:
            m.stop()
        copy_pods.stop()
        if b is not None:
            with contextlib.suppress(Exception):
                b.stop()
        b_cluster.stop()
        a.stop()
    if spill is not None and envoy is not None:
        flips = [t for t, _a, to in spillover_transitions(spill.log_path, offset) if to == "OVERFLOW"]
        routes = envoy_route_updates(envoy.log_path, offset)
        for r in reps:
            t0, t1, first = r.pop("t0"), r.pop("t1"), r.pop("first")
            flip = next((t for t in flips if t0 - 0.002 <= t <= t0 + r["scale_up_s"] + 0.002), None)
            r["decision_s"] = (flip - t0) if flip is not None else None
            route = next((t for t in routes if t1 - 0.002 <= t <= first + 0.002), None)
            r["envoy_route_s"] = (route - t1) if route is not None else None
    return {
        "repetitions": repetitions,
        "rate_rps": rate,
        "evaluation_interval_s": EVALUATION_INTERVAL_S,
        "scrape_interval_s": SCRAPE_S,
        "load": load.summary() if load else {},
        "reps": reps,
        "scale_up": _stats([r["scale_up_s"] for r in reps]),
        "ready_to_first": _stats([r["ready_to_first_s"] for r in reps]),
        "stages": {key: _stats([r[key] for r in reps if r.get(key) is not None])
                   for key in ("scraped_s", "decision_s", "envoy_route_s", "ready_patch_s")},
        "workdir": str(workdir),
    }


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:.1f} ms"


def markdown_section(result: dict[str, Any] | None) -> list[str]:
    if not result:
        return []
    lines = ["", "## The copy on a destination cluster (threshold -> scale-up on B; readiness -> first request)", ""]
    if "error" in result:
        return [*lines, f"Not measured: {result['error']}"]
    lines += [
        "Two real kube-apiservers with etcd on 127.0.0.1 (A: the ModelDeployment; B: its copy, reached with a "
        "token bound to `manifests/destination/role.yaml`), `spillover serve --kubernetes` (evaluation interval "
        f"{result['evaluation_interval_s'] * 1000:.0f} ms), Prometheus scraping the local model servers every "
        f"{result['scrape_interval_s']:g} s, a real Envoy, {result['rate_rps']:g} req/s of paced load, a cold copy "
        f"(`activeReplicas: {ACTIVE}`, `standbyReplicas: 0`). **threshold -> scale-up on B**: from setting "
        "`vllm:num_requests_waiting` over its target to a watch on B seeing the copy's Deployment at "
        f"{ACTIVE} replicas. **readiness -> first request**: from the copy's Deployment status PATCHed to ready "
        "(as B's kubelets would report) to the first request at the copy's upstream, through Envoy.",
        "",
        "| measured | repetitions | p50 | max | min |",
        "|---|---|---|---|---|",
    ]
    for label, key in (("threshold -> copy scale-up request on B", "scale_up"),
                       ("copy ready on B -> first request at the copy through Envoy", "ready_to_first")):
        s = result.get(key)
        if s:
            lines.append(f"| {label} | {len(result['reps'])} | {_ms(s['p50_s'])} | {_ms(s['max_s'])} | "
                         f"{_ms(s['min_s'])} |")
    stages = result.get("stages") or {}

    def p50(key: str) -> str:
        s = stages.get(key)
        return _ms(s["p50_s"]) if s else "—"

    lines += [
        "",
        f"Where the time goes (p50, from t0 or t1): first scrape serving the new value {p50('scraped_s')}, "
        f"spillover's `STANDBY -> OVERFLOW` {p50('decision_s')} (then the actuator's PUT on B, seen by the "
        f"watch); Envoy received the route with the copy's share {p50('envoy_route_s')} after the readiness "
        f"PATCH returned (which took {p50('ready_patch_s')}).",
        "",
        "Per repetition: " + "; ".join(
            f"{r['scale_up_s'] * 1000:.0f} / {r['ready_to_first_s'] * 1000:.0f} ms" for r in result["reps"])
        + " (scale-up / readiness -> traffic).",
    ]
    return lines


def main() -> int:
    import argparse
    import os

    from benchmarks import machine

    parser = argparse.ArgumentParser(prog="python -m benchmarks.destination", description=__doc__)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args()
    info = machine.describe()
    print(f"destination benchmark — {info['summary']}", flush=True)
    log_dir = tempfile.mkdtemp(prefix="spillover-bench-destination-")
    try:
        result = run(args.repetitions, log_dir, log=lambda line: print(line, flush=True))
    except (BenchError, AssertionError, OSError, RuntimeError) as error:
        result = {"error": str(error)}
    text = "\n".join([
        "# spillover benchmark: the copy on a destination cluster", "",
        f"- Date: {info['date']}; git {info['git']}",
        f"- Machine: {info['cpu_model']}, {info['usable_cores']} usable cores, {info['ram_bytes'] / 2**30:.1f} GiB RAM",
        f"- Command: `python -m benchmarks.destination --repetitions {args.repetitions}`",
        *markdown_section(result), "",
    ])
    print(text)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "destination.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.output, "destination.json"), "w") as f:
        json.dump({"machine": info, "destination": result}, f, indent=2, sort_keys=True)
        f.write("\n")
    return 1 if "error" in result else 0


if __name__ == "__main__":
    raise SystemExit(main())
