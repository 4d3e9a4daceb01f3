"""Two replicas running as the ServiceAccount of manifests/: only the Lease holder acts on cluster B, and the
other takes over."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.destination import (
    EVALUATION_INTERVAL,
    MODEL,
    ClusterB,
    copy_of,
    deploy_origin,
    events_of,
    md_of,
    origin_deployment,
    the_model,
)
from tests.harness.kube import KubeCluster
from tests.harness.overflow_traffic import REMOTE
from tests.harness.polling import wait_until
from tests.harness.serve import Spillover
from tests.harness.upstream import HttpUpstream

pytestmark = pytest.mark.timeout(240)


# -- two replicas, as the ServiceAccount of manifests/ ---------------------------------------------------------

SYSTEM = "spillover-system"
MANIFESTS = Path(__file__).resolve().parents[3] / "manifests"


def lease_holder(cluster: KubeCluster) -> str | None:
    status, body = cluster.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/{SYSTEM}/leases/spillover-leader")
    if status != 200:
        return None
    holder = json.loads(body).get("spec", {}).get("holderIdentity")
    return str(holder) if holder else None


def test_only_the_lease_holder_acts_with_the_rights_of_manifests_rbac(
    cluster: KubeCluster, destination_cluster: KubeCluster, namespace: str, b: ClusterB, tmp_path: Path,
    upstream_factory: Callable[..., HttpUpstream],
) -> None:
    import yaml

    B = destination_cluster
    for manifest in ("namespace.yaml", "serviceaccount.yaml", "rbac.yaml"):
        cluster.apply([d for d in yaml.safe_load_all((MANIFESTS / manifest).read_text()) if d])
    token = cluster.service_account_token(SYSTEM, "spillover", expiration_s=3600)
    kubeconfig = cluster.kubeconfig_for_token(token, tmp_path / "spillover.kubeconfig", user="spillover")
    copy_pods = upstream_factory(REMOTE)
    deploy_origin(cluster, namespace)
    cluster.apply(the_model(namespace, b, ["127.0.0.1:9"], copy_pods.port, standbyReplicas=1))
    replicas = {
        name: Spillover(tmp_path, name=name, kubeconfig=kubeconfig, namespaces=[namespace],
                        leader_election_namespace=SYSTEM, env={"POD_NAME": name},
                        evaluation_interval=EVALUATION_INTERVAL).launch()
        for name in ("replica-a", "replica-b")
    }
    try:
        for replica in replicas.values():
            replica.wait_ready(30)
        leader = wait_until(lambda: lease_holder(cluster) in replicas and lease_holder(cluster), timeout=40,
                            message="no leader")
        follower = next(name for name in replicas if name != leader)
        wait_until(lambda: copy_of(B, b.namespace, "llama", "services"), timeout=30, message="no copy on B")
        # Both replicas see the copy; only the leader wrote it (and reported it).
        for replica in replicas.values():
            replica.wait_model(MODEL, lambda m: (m["status"].get("destination") or {}).get("name") == "llama")
        ours = [e for e in events_of(cluster, namespace, "llama") if e["reason"].startswith(("Copy", "Destination"))]
        assert ours and {e["reportingInstance"] for e in ours} == {leader}, ours

        # The leader goes (releasing the Lease): the other one takes over and keeps the copy in step.
        assert replicas[leader].stop() == 0
        wait_until(lambda: lease_holder(cluster) == follower, timeout=30, message="no takeover")
        cluster.apply(origin_deployment("llama", namespace, image="vllm/vllm-openai:v0.8.0"))
        wait_until(lambda: (copy_of(B, b.namespace, "llama") or {})["spec"]["template"]["spec"]["containers"][0]
                   ["image"] == "vllm/vllm-openai:v0.8.0", timeout=30, message="the new leader did not update the copy")
        updated = wait_until(lambda: [e for e in events_of(cluster, namespace, "llama") if e["reason"] == "CopyUpdated"],
                             timeout=10, message="no CopyUpdated Event")
        assert updated[-1]["reportingInstance"] == follower

        assert cluster.request(
            "DELETE", f"/apis/spillover.dev/v1alpha1/namespaces/{namespace}/modeldeployments/llama")[0] == 200
        wait_until(lambda: md_of(cluster, namespace) is None, timeout=30, message="never released")
        assert copy_of(B, b.namespace, "llama") is None
        assert replicas[follower].stop() == 0
    finally:
        for replica in replicas.values():
            replica.stop()
            print(f"--- {replica.name} ---\n{replica.log()[-4000:]}")
