"""Traffic to the copy on a destination cluster, end to end: two real kube-apiservers with etcd (cluster A,
where spillover runs and the ModelDeployments live; cluster B, where it keeps the model's copy), `spillover
serve --kubernetes`, a real Envoy, real Prometheus, loopback model servers.

Cluster B is reached through a TCP proxy (to cut the network) with a token bound to exactly the Role of
manifests/destination/role.yaml. No controller-manager runs on B: what its kubelets and cloud controller
would write (a Deployment's ready replicas, a Service's load balancer ingress) the tests write through the
status subresources. The copy's load balancer address is 127.0.0.1 and its port an HttpUpstream's: the
upstream stands in for the copy's pods, so that traffic "to the copy" is real and never leaves loopback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from spillover.policy.destination import ABANDON_ANNOTATION, FINALIZER
from tests.harness.destination import (
    MODEL,
    ClusterB,
    copy_of,
    copy_status,
    deploy_origin,
    events_of,
    md_of,
    merge_patch,
    reasons,
    set_ingress,
    set_ready,
    the_model,
)
from tests.harness.envoy import Envoy
from tests.harness.kube import KubeCluster
from tests.harness.kube_objects import model_deployment
from tests.harness.modelserver import ModelServer
from tests.harness.overflow_traffic import REMOTE, remote_percent, send_batch
from tests.harness.polling import wait_until
from tests.harness.prometheus import Prometheus
from tests.harness.serve import Spillover, start_edge
from tests.harness.upstream import HttpUpstream

pytestmark = pytest.mark.timeout(240)


# -- readiness, pre-warm and the way back ------------------------------------------------------------------------


def traffic(port: int, count: int = 60) -> float:
    return remote_percent(send_batch(port, MODEL, count))


def test_readiness_gates_traffic_and_pre_warm_scales_the_copy_before_the_spill(
    cluster: KubeCluster, destination_cluster: KubeCluster, namespace: str, b: ClusterB,
    serve: Callable[..., Spillover], upstream_factory: Callable[..., HttpUpstream],
    envoy_factory: Callable[..., Envoy], model_servers: Callable[[str], ModelServer],
    prometheus: Callable[[list[str]], Prometheus],
) -> None:
    B = destination_cluster
    pods = [model_servers("local-0"), model_servers("local-1")]
    copy_pods = upstream_factory(REMOTE)
    prom = prometheus([p.address for p in pods])
    deploy_origin(cluster, namespace)
    cluster.apply(the_model(
        namespace, b, [p.address for p in pods], copy_pods.port,
        metrics=[{"metric": "queue_length", "target": 8}],
        behavior={"percentage": 50, "bufferDuration": "2s"},
        activeReplicas=2, preWarm={"thresholds": {"queue_length": 6}}, cooldown="3s",
    ))
    server = serve(namespace, prometheus_url=prom.url)
    start_edge(envoy_factory, server, "edge-1", advertise_admin=False)
    port = server.listen_port

    def load(waiting: float) -> None:
        for pod in pods:
            pod.set_load(waiting=waiting)

    # Cold: the copy exists on B with no replica; all traffic local.
    load(1)
    wait_until(lambda: copy_status(cluster, namespace).get("state") == "Cold", timeout=30, message="never Cold")
    wait_until(lambda: copy_of(B, b.namespace, "llama", "services"), timeout=20, message="no Service on B")
    set_ingress(B, b.namespace, "llama")
    assert (copy_of(B, b.namespace, "llama") or {})["spec"]["replicas"] == 0
    assert traffic(port, 30) == 0.0

    # Between the pre-warm threshold (6) and the overflow threshold (8): scaled to activeReplicas, nothing spills.
    load(7)
    wait_until(lambda: (copy_of(B, b.namespace, "llama") or {}).get("spec", {}).get("replicas") == 2, timeout=20,
               message="the copy was not pre-warmed")
    status = copy_status(cluster, namespace)
    assert status["phase"] == "pre-warm" and status["desiredReplicas"] == 2, status
    assert server.model(MODEL)["state"] == "STANDBY"
    assert traffic(port) == 0.0 and copy_pods.request_count == 0
    wait_until(lambda: "CopyScaled" in reasons(cluster, namespace), timeout=10, message="no CopyScaled Event")

    # Over the threshold while the copy is not ready: OVERFLOW, and still nothing reaches it.
    load(10)
    model = server.wait_state(MODEL, "OVERFLOW", timeout=20)
    wait_until(lambda: "not ready yet" in server.model(MODEL)["reason"], timeout=10,
               message="the reason never said the copy is not ready")
    assert "overflowing to a copy that is not ready yet (0 of 2 replica(s) ready on the destination)" in \
        server.model(MODEL)["reason"], model
    assert server.model(MODEL)["remote_share"] == 0
    assert traffic(port) == 0.0 and copy_pods.request_count == 0
    conditions = {c["type"]: c for c in (md_of(cluster, namespace) or {}).get("status", {}).get("conditions", [])}
    wait_until(lambda: {c["type"]: c for c in (md_of(cluster, namespace) or {})["status"]["conditions"]}
               ["Overflowing"]["reason"] == "DestinationUnavailable", timeout=10, message=str(conditions))

    # The copy's pods become ready on B (as its kubelets would report): the spill reaches them.
    set_ready(B, b.namespace, "llama", 2)
    wait_until(lambda: applied_share(server.model(MODEL)) == 50, timeout=10, message="no share after readiness")
    share = traffic(port, 200)
    assert 35.0 <= share <= 65.0, share
    assert copy_pods.request_count > 0

    # Calm again: all local after the buffer, the copy scaled back after buffer + cooldown (2 s + 3 s).
    load(1)
    calm_at = time.monotonic()
    server.wait_state(MODEL, "STANDBY", timeout=10)
    assert traffic(port, 30) == 0.0
    assert (copy_of(B, b.namespace, "llama") or {})["spec"]["replicas"] == 2  # still warm: the cooldown runs
    wait_until(lambda: (copy_of(B, b.namespace, "llama") or {}).get("spec", {}).get("replicas") == 0, timeout=20,
               message="the copy never scaled back")
    # Scaled back no earlier than buffer + cooldown after the calm reading was scraped (1 s scrape interval).
    assert time.monotonic() - calm_at >= 2.0 + 3.0 - 1.5
    assert server.stop() == 0, server.log()[-3000:]


# -- cluster B unreachable -------------------------------------------------------------------------------------------


def test_an_unreachable_destination_gets_no_traffic_disturbs_nothing_and_holds_the_deletion(
    cluster: KubeCluster, destination_cluster: KubeCluster, namespace: str, b: ClusterB,
    serve: Callable[..., Spillover], upstream_factory: Callable[..., HttpUpstream],
    envoy_factory: Callable[..., Envoy], model_servers: Callable[[str], ModelServer],
    prometheus: Callable[[list[str]], Prometheus],
) -> None:
    B = destination_cluster
    pods = [model_servers("local-0"), model_servers("local-1")]
    copy_pods = upstream_factory(REMOTE)
    prom = prometheus([p.address for p in pods])
    deploy_origin(cluster, namespace)
    cluster.apply(the_model(namespace, b, [p.address for p in pods], copy_pods.port,
                            metrics=[{"metric": "queue_length", "target": 8}],
                            behavior={"percentage": 50, "bufferDuration": "30s"}, activeReplicas=1))
    # A bystander on the same gateway, without a destination.
    bystander = upstream_factory("bystander")
    cluster.apply(model_deployment("plain", "plain-model", namespace, localBackend={"endpoints": [bystander.address]}))
    server = serve(namespace, prometheus_url=prom.url)
    start_edge(envoy_factory, server, "edge-1", advertise_admin=False)
    port = server.listen_port
    for pod in pods:
        pod.set_load(waiting=10)
    server.wait_state(MODEL, "OVERFLOW", timeout=30)
    wait_until(lambda: copy_of(B, b.namespace, "llama", "services"), timeout=20, message="no copy")
    set_ingress(B, b.namespace, "llama")
    set_ready(B, b.namespace, "llama", 1)
    wait_until(lambda: applied_share(server.model(MODEL)) == 50, timeout=20, message="never spilled")
    assert traffic(port) > 20.0

    # The network to B is cut (no refusal, no reset: silence). Within the probe's grace the copy gets nothing.
    b.proxy.cut()
    cut_at = time.monotonic()
    wait_until(lambda: applied_share(server.model(MODEL)) == 0, timeout=20, message="traffic kept going to B")
    detected = time.monotonic() - cut_at
    reason = server.model(MODEL)["reason"]
    assert "destination cluster unreachable" in reason and "no traffic to a copy that cannot be seen" in reason, reason
    # /debug/models shows the decision as soon as it is made; the Envoy has it once its route says so.
    wait_until(lambda: traffic(port, 10) == 0.0, timeout=5, message="the Envoy kept sending to B")
    before = copy_pods.request_count
    assert traffic(port) == 0.0 and copy_pods.request_count == before
    status = wait_until(lambda: (s := copy_status(cluster, namespace)).get("reachable") is False and s, timeout=15,
                        message="status.destination never said unreachable")
    assert status["state"] == "Failed" and "unreachable" in status["reason"], status
    # Nothing on A is disturbed: the loop keeps deciding, the status keeps being written, the bystander is served.
    assert server.model(MODEL)["state"] == "OVERFLOW"
    assert send_batch(port, "plain-model", 20)["bystander"] == 20
    started = time.monotonic()
    server.models()
    assert time.monotonic() - started < 1.0
    wait_until(lambda: "CopyFailed" in reasons(cluster, namespace) or "DestinationUnreachable" in
               reasons(cluster, namespace), timeout=15, message="no Event about the unreachable destination")

    # The network comes back (the connections frozen during the cut stay dead): the copy is seen again and
    # the spill resumes.
    b.proxy.restore()
    wait_until(lambda: applied_share(server.model(MODEL)) == 50, timeout=30, message="the spill never resumed")
    assert traffic(port) > 20.0
    wait_until(lambda: copy_status(cluster, namespace).get("reachable") is True, timeout=15, message="still unreachable")

    # Deleting the ModelDeployment while B cannot be reached: the deletion waits and says why.
    b.proxy.cut()
    wait_until(lambda: applied_share(server.model(MODEL)) == 0, timeout=20, message="traffic kept going to B")
    assert cluster.request("DELETE", f"/apis/spillover.dev/v1alpha1/namespaces/{namespace}/modeldeployments/llama")[0] \
        == 200

    def waiting_event() -> dict[str, Any] | None:
        found = [e for e in events_of(cluster, namespace, "llama") if e["reason"] == "WaitingForDestination"]
        return found[-1] if found else None

    event = wait_until(waiting_event, timeout=20, message="no WaitingForDestination Event")
    assert f'annotate {ABANDON_ANNOTATION}="true"' in event["note"] and event["type"] == "Warning"
    time.sleep(2.0)  # several evaluations: the finalizer must hold
    md = md_of(cluster, namespace)
    assert md is not None and FINALIZER in md["metadata"]["finalizers"]
    assert copy_status(cluster, namespace)["state"] == "Deleting"
    # The operator lets it go: released without touching B; the copy stays there.
    code, _ = merge_patch(cluster, f"/apis/spillover.dev/v1alpha1/namespaces/{namespace}/modeldeployments/llama",
                          {"metadata": {"annotations": {ABANDON_ANNOTATION: "true"}}})
    assert code == 200
    wait_until(lambda: md_of(cluster, namespace) is None, timeout=20, message="never released")
    wait_until(lambda: "DestinationAbandoned" in reasons(cluster, namespace), timeout=10,
               message="no DestinationAbandoned Event")
    b.proxy.restore()
    assert copy_of(B, b.namespace, "llama") is not None
    assert detected < 15.0, detected
    log = server.log()
    assert b.token not in log and b.proxy.address not in log
    assert server.stop() == 0, server.log()[-3000:]


def applied_share(model: dict[str, Any]) -> int:
    """The remote share this replica's Envoys get: in a fleet, the Lease holder's published decision,
    which reaches them once it is written (`applied`), a moment after `remote_share` (the decision) moved."""
    share: int = (model.get("applied") or model)["remote_share"]
    return share
