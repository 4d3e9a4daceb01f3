"""The copy on cluster B: created from the origin's pod template, kept in step, restored, deleted with the
ModelDeployment; a kubeconfig that asks for too much. (Two real kube-apiservers, `spillover serve
--kubernetes`; see conftest.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from spillover.policy.destination import FINALIZER, RECORD_ANNOTATION
from tests.harness.destination import (
    MODEL,
    ClusterB,
    copy_of,
    copy_status,
    deploy_origin,
    events_of,
    md_of,
    merge_patch,
    origin_deployment,
    reasons,
    set_ingress,
    set_ready,
    the_model,
)
from tests.harness.kube import KubeCluster
from tests.harness.overflow_traffic import REMOTE
from tests.harness.polling import wait_until
from tests.harness.serve import Spillover
from tests.harness.upstream import HttpUpstream

pytestmark = pytest.mark.timeout(240)


# -- the copy's life ------------------------------------------------------------------------------------------


def test_the_copy_is_created_follows_its_origin_comes_back_and_goes_with_the_model_deployment(
    cluster: KubeCluster, destination_cluster: KubeCluster, namespace: str, b: ClusterB,
    serve: Callable[..., Spillover], upstream_factory: Callable[..., HttpUpstream], kubectl_binary: Path,
) -> None:
    copy_pods = upstream_factory(REMOTE)
    B = destination_cluster
    origin = deploy_origin(cluster, namespace)
    cluster.apply(the_model(namespace, b, ["127.0.0.1:9"], copy_pods.port, standbyReplicas=1))
    server = serve(namespace)

    # The copy appears on B, with the origin's pod template and spillover's labels.
    deployment = wait_until(lambda: copy_of(B, b.namespace, "llama"), timeout=30, message="no copy on B")
    md = md_of(cluster, namespace)
    assert md is not None and FINALIZER in md["metadata"]["finalizers"]
    record = json.loads(md["metadata"]["annotations"][RECORD_ANNOTATION])
    assert record == {"kubeconfigSecret": {"namespace": namespace, "name": "cluster-b", "key": "kubeconfig"},
                      "namespace": b.namespace, "name": "llama"}
    labels = deployment["metadata"]["labels"]
    assert labels == {"app.kubernetes.io/managed-by": "spillover", "spillover.dev/origin-namespace": namespace,
                      "spillover.dev/origin-name": "llama", "spillover.dev/origin-uid": md["metadata"]["uid"],
                      "spillover.dev/copy": "llama"}
    assert deployment["metadata"]["annotations"]["spillover.dev/origin"] == (
        f"spillover.dev/ModelDeployment {namespace}/llama; Deployment {namespace}/llama")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["selector"] == {"matchLabels": {"spillover.dev/copy": "llama"}}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (original,) = origin["spec"]["template"]["spec"]["containers"]
    for field in ("image", "args", "env", "ports", "resources"):
        assert container[field] == original[field], field
    assert deployment["spec"]["template"]["metadata"]["labels"] == {"app": "llama", "spillover.dev/copy": "llama"}
    service = wait_until(lambda: copy_of(B, b.namespace, "llama", "services"), timeout=20, message="no Service")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["selector"] == {"spillover.dev/copy": "llama"}
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(copy_pods.port, 8000)]

    # status.destination on A says where it is and how far it got; the printer columns show it.
    status = wait_until(lambda: (s := copy_status(cluster, namespace)).get("state") == "Warming" and s,
                        timeout=20, message="status.destination never said Warming")
    assert (status["desiredReplicas"], status["readyReplicas"], status["phase"]) == (1, 0, "warm")
    assert (status["namespace"], status["name"], status["kubeconfigSecret"]) == (
        b.namespace, "llama", f"{namespace}/cluster-b")
    assert status["reachable"] is True
    set_ready(B, b.namespace, "llama", 1)
    set_ingress(B, b.namespace, "llama")
    status = wait_until(lambda: (s := copy_status(cluster, namespace)).get("state") == "Ready" and s.get("address")
                        and s, timeout=20, message="never Ready with an address")
    assert status["address"] == f"127.0.0.1:{copy_pods.port}"
    wait_until(lambda: {"CopyCreated", "CopyReady"} <= set(reasons(cluster, namespace)), timeout=10,
               message="no CopyCreated and CopyReady Events")
    table = subprocess.run(
        [str(kubectl_binary), "--kubeconfig", str(cluster.admin_kubeconfig), "--cache-dir",
         str(cluster.workdir / "kubectl"), "-n", namespace, "get", "modeldeployments.spillover.dev", "llama"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.splitlines()
    assert table[0].split() == ["NAME", "MODEL", "STATE", "REMOTE%", "COPY", "COPY-READY", "AGE"], table
    assert table[1].split()[:6] == ["llama", MODEL, "STANDBY", "0", "Ready", "1"], table

    # The origin's image changes: the copy follows.
    cluster.apply(origin_deployment("llama", namespace, image="vllm/vllm-openai:v0.7.0"))
    wait_until(lambda: (copy_of(B, b.namespace, "llama") or {}).get("spec", {}).get("template", {}).get("spec", {})
               .get("containers", [{}])[0].get("image") == "vllm/vllm-openai:v0.7.0",
               timeout=20, message="the copy did not follow the origin's image")
    wait_until(lambda: "CopyUpdated" in reasons(cluster, namespace), timeout=10, message="no CopyUpdated Event")

    # Someone edits the copy on B (its image, its replicas): put back as spillover keeps it.
    edited = copy_of(B, b.namespace, "llama")
    assert edited is not None
    status_code, _ = merge_patch(B, f"/apis/apps/v1/namespaces/{b.namespace}/deployments/llama",
                                 {"spec": {"replicas": 5, "template": {"spec": {"containers": [
                                     {"name": "vllm", "image": "attacker/miner:latest"}]}}}})
    assert status_code == 200
    wait_until(lambda: (d := copy_of(B, b.namespace, "llama")) is not None and d["spec"]["replicas"] == 1
               and d["spec"]["template"]["spec"]["containers"][0]["image"] == "vllm/vllm-openai:v0.7.0",
               timeout=20, message="the edited copy was not restored")

    # Someone deletes the copy (and its Service) on B: they come back.
    first_uid = edited["metadata"]["uid"]
    assert B.request("DELETE", f"/apis/apps/v1/namespaces/{b.namespace}/deployments/llama")[0] == 200
    assert B.request("DELETE", f"/api/v1/namespaces/{b.namespace}/services/llama")[0] == 200
    again = wait_until(lambda: (d := copy_of(B, b.namespace, "llama")) is not None
                       and d["metadata"]["uid"] != first_uid and d, timeout=20, message="the copy never came back")
    assert again["spec"]["template"]["spec"]["containers"][0]["image"] == "vllm/vllm-openai:v0.7.0"
    wait_until(lambda: copy_of(B, b.namespace, "llama", "services"), timeout=20, message="the Service never came back")
    wait_until(lambda: "CopyRestored" in reasons(cluster, namespace), timeout=10, message="no CopyRestored Event")

    # `spillover status` shows the copy.
    out = subprocess.run([sys.executable, "-m", "spillover", "status", "--admin-address",
                          f"127.0.0.1:{server.admin_port}"], capture_output=True, text=True, timeout=30, check=True)
    assert f"copy of {MODEL}: " in out.stdout and f"at {b.namespace}/llama" in out.stdout, out.stdout

    # The kubeconfig (its token) is nowhere: logs, status, debug output, Events.
    debug = json.dumps(server.models())
    events = json.dumps(events_of(cluster, namespace, "llama"))
    everything = server.log() + debug + json.dumps(md_of(cluster, namespace)) + events + out.stdout
    assert b.token not in everything and b.token[-24:] not in everything
    assert "certificate-authority-data" not in everything and b.proxy.address not in everything

    # kubectl delete: the copy and its Service go from B, then the finalizer is released.
    assert cluster.request("DELETE", f"/apis/spillover.dev/v1alpha1/namespaces/{namespace}/modeldeployments/llama")[0] \
        == 200
    wait_until(lambda: md_of(cluster, namespace) is None, timeout=30, message="the ModelDeployment was never released")
    assert copy_of(B, b.namespace, "llama") is None
    assert copy_of(B, b.namespace, "llama", "services") is None
    wait_until(lambda: {"CopyDeleted", "DestinationReleased"} <= set(reasons(cluster, namespace)), timeout=10,
               message="no CopyDeleted and DestinationReleased Events")
    code = server.stop()
    assert code == 0, f"exit status {code}; the end of its log:\n{server.log()[-6000:]}"


# -- a kubeconfig that asks for too much -------------------------------------------------------------------------


def test_a_kubeconfig_that_runs_a_program_is_refused_and_nothing_runs(
    cluster: KubeCluster, destination_cluster: KubeCluster, namespace: str, b: ClusterB, tmp_path: Path,
    serve: Callable[..., Spillover],
) -> None:
    import yaml

    from tests.harness.kube_objects import secret

    marker = tmp_path / "the-kubeconfig-ran-this"
    hostile = yaml.safe_load(b.kubeconfig)
    hostile["users"][0]["user"] = {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": "/bin/sh",
                                            "args": ["-c", f"touch {marker}; echo {{}}"]}}
    cluster.apply(secret("cluster-b", namespace, {"kubeconfig": yaml.safe_dump(hostile)}))
    deploy_origin(cluster, namespace)
    cluster.apply(the_model(namespace, b, ["127.0.0.1:9"], 8000, standbyReplicas=1))
    server = serve(namespace)
    status = wait_until(lambda: (s := copy_status(cluster, namespace)).get("state") == "Failed" and s, timeout=30,
                        message="status.destination never said Failed")
    assert status["reason"] == (
        f'the kubeconfig in Secret {namespace}/cluster-b key "kubeconfig": users[0].user.exec: a kubeconfig from a '
        "Secret may not run programs: give token or client-certificate-data")
    assert not marker.exists()
    wait_until(lambda: "CopyFailed" in reasons(cluster, namespace), timeout=10, message="no CopyFailed Event")
    assert copy_of(destination_cluster, b.namespace, "llama") is None
    assert server.model(MODEL)["remote_share"] == 0
    # Fixed in place (the Secret rotated to a proper kubeconfig): the copy is made.
    cluster.apply(secret("cluster-b", namespace, {"kubeconfig": b.kubeconfig}))
    wait_until(lambda: copy_of(destination_cluster, b.namespace, "llama"), timeout=30, message="no copy after the fix")
    assert not marker.exists()
    code = server.stop()
    assert code == 0, f"exit status {code}; the end of its log:\n{server.log()[-6000:]}"
