"""Kubernetes mode: a restarted `spillover serve --kubernetes` takes each model's decision back from the
status the leader wrote (a real API server; a wire-level Prometheus stand-in whose value the test sets).

Before, a restart during OVERFLOW snapped the model to STANDBY at once. Now the state and share come back
from `status` and the buffer resumes from the BufferRunning condition, paused from the last status write:
it can last longer than it would have (by up to the writer's refresh interval), never shorter."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.harness.kube import KubeCluster
from tests.harness.kube_fixtures import Crds
from tests.harness.kube_objects import endpoint_slice, model_deployment, service
from tests.harness.kube_status import get_md
from tests.harness.polling import wait_until
from tests.harness.serve import Spillover
from tests.harness.slow_prometheus import SlowPrometheus

BUFFER_S = 12.0


@pytest.fixture(scope="module")
def kube_crds() -> Crds:
    return Crds.MODELDEPLOYMENT_AND_BEAMLIT


@pytest.fixture
def prometheus() -> Iterator[SlowPrometheus]:
    server = SlowPrometheus(value=10.0, delay_s=0.0).start()
    yield server
    server.stop()


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return {}


@pytest.mark.parametrize("sig", [signal.SIGKILL], ids=["SIGKILL"])
def test_a_restart_takes_overflow_and_its_buffer_back_from_the_status(
    cluster: KubeCluster,
    namespace: str,
    kube_spillover: Callable[..., Spillover],
    prometheus: SlowPrometheus,
    sig: signal.Signals,
) -> None:
    cluster.apply([
        service("llama", namespace, port=8000, target=8000),
        # Data only (TEST-NET-2): nothing is ever sent there, no Envoy is connected.
        endpoint_slice("llama-1", namespace, "llama", 8000, [("198.51.100.10", True)]),
        model_deployment("llama", "llama-3-8b", namespace, serviceRef={"name": "llama", "targetPort": 8000},
                         offloadingConfig={
                             "remoteBackend": {"host": "127.0.0.1:9"},
                             "behavior": {"percentage": 30, "bufferDuration": f"{BUFFER_S:g}s"},
                             "metrics": [{"metric": "queue_length", "target": 5}],
                         }),
    ])
    # A stable identity, as a pod's name is across restarts of its container: the restarted process takes its
    # own Lease back at once (a new identity would wait for the old one's Lease to expire, deciding nothing).
    server = kube_spillover([namespace], prometheus_url=prometheus.url, leader_election_namespace=namespace,
                            env={"POD_NAME": "spillover-0"})
    wait_until(lambda: (get_md(cluster, namespace, "llama").get("status") or {}).get("state") == "OVERFLOW",
               timeout=20, message="OVERFLOW was never written to the status")
    prometheus.value = 1.0
    running = wait_until(lambda: condition(get_md(cluster, namespace, "llama"), "BufferRunning").get("status") == "True",
                         timeout=10, message="BufferRunning never became True")
    assert running
    calm_since = time.monotonic()
    time.sleep(3.0)

    killed = time.monotonic()
    server.stop(sig)
    again = server.successor()
    try:
        again.launch().wait_ready(timeout=30)
        model = again.wait_model("llama-3-8b", lambda m: m["state"] != "UNKNOWN", timeout=20)
        restarted = time.monotonic()
        assert (model["state"], model["remote_share"]) == ("OVERFLOW", 30), model
        standby = again.wait_model("llama-3-8b", lambda m: m["state"] == "STANDBY", timeout=BUFFER_S + 40)
        took = time.monotonic() - restarted
        exact = BUFFER_S - (killed - calm_since)
        print(f"STANDBY {took:.1f}s after the restart (exactly {exact:.1f}s of buffer were left)")
        # Paused from the last status write (BufferRunning's, 3 s before the kill): up to the full buffer.
        assert exact - 2.5 <= took <= BUFFER_S + 3.0, (took, exact, standby["reason"])
        assert again.stop() == 0, again.log()
    finally:
        again.stop()
