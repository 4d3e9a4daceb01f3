"""One slow metric source must not stall every model: a Prometheus that takes longer than its 5 s
timeout to answer (a wire-level stand-in, tests/harness/slow_prometheus.py) holds one model's metrics,
while another model, decided on Envoy's health alone, loses its local pods. Real `spillover serve`,
real Envoy, real upstreams.

Before each metric query had its own deadline and the round stopped waiting for slow sources, the round
waited for Prometheus's timeout: the other model's FAILOVER took 8.2 s instead of 2 s."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.envoy import Envoy
from tests.harness.model_traffic import ModelTraffic
from tests.harness.policy_files import write
from tests.harness.serve import Spillover, start_edge
from tests.harness.slow_prometheus import SlowPrometheus
from tests.harness.upstream import HttpUpstream

FAST_HEALTH = {"path": "/health", "interval": "0.5s", "timeout": "0.25s", "healthyThreshold": 1,
               "unhealthyThreshold": 2}


@pytest.fixture
def slow_prometheus() -> Iterator[SlowPrometheus]:
    server = SlowPrometheus(value=1.0, delay_s=12.0).start()
    yield server
    server.stop()


def document(name: str, local: list[HttpUpstream], remote: HttpUpstream, **offloading: Any) -> dict[str, Any]:
    return {
        "apiVersion": "spillover.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": name,
            "localBackend": {"endpoints": [u.address for u in local], "healthCheck": FAST_HEALTH},
            "offloadingConfig": {
                "remoteBackend": {"host": "127.0.0.1", "port": remote.port, "healthCheck": FAST_HEALTH},
                **offloading,
            },
        },
    }


def test_a_slow_prometheus_does_not_delay_another_models_failover(
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    envoy_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
    slow_prometheus: SlowPrometheus,
) -> None:
    slow_local, slow_remote = upstream_factory("slow-local"), upstream_factory("slow-remote")
    pods = [upstream_factory("pod-0"), upstream_factory("pod-1")]
    remote = upstream_factory("remote")
    write(
        policy_dir / "models.yaml",
        document("metrics-from-prometheus", [slow_local], slow_remote,
                 metrics=[{"metric": "queue_length", "target": 5}]),
        document("health-only", pods, remote),
    )
    server = spillover_factory(policy_dir, evaluation_interval=0.25, prometheus_url=slow_prometheus.url)
    start_edge(envoy_factory, server, "edge-1")
    server.wait_model("health-only", lambda m: m["state"] == "STANDBY", timeout=15)
    # Prometheus is being asked and answers nothing in time: that metric alone is unknown.
    slow = server.wait_model(
        "metrics-from-prometheus",
        lambda m: any("timed out after 5s" in (x.get("error") or "") for x in m["status"].get("metrics", [])),
        timeout=20, message="the Prometheus query never timed out",
    )
    assert slow["state"] == "STANDBY"
    assert server.model("health-only")["status"].get("metrics", []) == []

    with ModelTraffic(server.listen_port, "health-only", workers=4) as traffic:
        traffic.wait_for(50)
        assert set(traffic.served()) == {"pod-0", "pod-1"}, traffic.served()
        # Kill the pods just after a query went out, so that a round waiting for it would wait ~5 s.
        asked = len(slow_prometheus.queries)
        deadline = time.monotonic() + 10
        while len(slow_prometheus.queries) == asked and time.monotonic() < deadline:
            time.sleep(0.01)
        killing = time.monotonic()
        for pod in pods:
            pod.stop()
        # A request sent while the pods were being stopped may be cut mid-answer by the kill itself,
        # which no control plane can save: failures count from the moment both were gone.
        killed = time.monotonic()
        server.wait_model("health-only", lambda m: m["state"] == "FAILOVER", timeout=10)
        took = time.monotonic() - killing
        time.sleep(0.5)
    failed = traffic.failures(killed)
    print(f"FAILOVER {took:.2f}s after the pods died; {len(failed)} of {len(traffic.answers(killed))} failed")
    assert took < 2.0, f"FAILOVER took {took:.2f}s"
    assert not failed, failed[:5]
