"""`helm install`, `helm upgrade` and `helm uninstall` of charts/spillover with the real helm against a real
kube-apiserver, as the README tells a newcomer to do. An API server of its own: uninstalling deletes
cluster-wide objects (ClusterRoles) that other tests of the session's server apply."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.chart import CHART, helm_env, run
from tests.harness.kube import KubeCluster

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def private_cluster(kube_binaries: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeCluster]:
    apiserver, etcd = kube_binaries
    with KubeCluster(tmp_path_factory.mktemp("helm-kube"), apiserver_binary=apiserver, etcd_binary=etcd) as c:
        yield c


def read(cluster: KubeCluster, path: str) -> dict[str, Any]:
    """An object (or a list) as the API server returns it, as JSON."""
    status, body = cluster.request("GET", path)
    assert status == 200, f"GET {path}: HTTP {status} {body[:300]!r}"
    document: dict[str, Any] = json.loads(body)
    return document


def control_plane_pod(cluster: KubeCluster) -> dict[str, Any]:
    deployment = read(cluster, "/apis/apps/v1/namespaces/spillover-system/deployments/spillover")
    return {"replicas": deployment["spec"]["replicas"], **deployment["spec"]["template"]["spec"]["containers"][0]}


def test_helm_install_upgrade_and_uninstall(helm_binary: Path, private_cluster: KubeCluster, tmp_path: Path) -> None:
    cluster = private_cluster
    env = helm_env(tmp_path)
    helm = [str(helm_binary), "--kubeconfig", str(cluster.admin_kubeconfig)]

    out = run([*helm, "install", "spillover", CHART], env=env)
    assert "STATUS: deployed" in out, out
    assert "spillover 0.1.0 is installed in namespace spillover-system" in out, out  # the chart's NOTES
    assert "http://spillover-gateway.spillover-system.svc.cluster.local/v1/chat/completions" in out, out
    # Everything in the chart's namespace, created by the chart (Pod Security `restricted`).
    ns = read(cluster, "/api/v1/namespaces/spillover-system")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    control = control_plane_pod(cluster)
    assert control["replicas"] == 2
    assert control["image"] == "ghcr.io/spillover-dev/spillover:0.1.0"
    gateway = read(cluster, "/apis/apps/v1/namespaces/spillover-system/deployments/spillover-gateway")
    assert gateway["spec"]["replicas"] == 2
    role = read(cluster, "/apis/rbac.authorization.k8s.io/v1/clusterroles/spillover")
    assert role["metadata"]["annotations"]["meta.helm.sh/release-name"] == "spillover"
    crd_path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/modeldeployments.spillover.dev"
    assert read(cluster, crd_path)["spec"]["group"] == "spillover.dev"
    status = run([*helm, "status", "spillover", "-o", "json"], env=env)
    assert '"status":"deployed"' in status.replace(" ", "")

    run([*helm, "upgrade", "spillover", CHART, "--set", "replicas=3", "--set", "watchNamespaces={models}"],
        env=env)
    control = control_plane_pod(cluster)
    assert control["replicas"] == 3
    assert "--namespace=models" in control["args"]
    history = run([*helm, "history", "spillover"], env=env)
    assert len(history.strip().splitlines()) == 3, history  # header + two revisions

    run([*helm, "uninstall", "spillover"], env=env)
    deployments = read(cluster, "/apis/apps/v1/namespaces/spillover-system/deployments")["items"]
    assert [d["metadata"]["name"] for d in deployments if "deletionTimestamp" not in d["metadata"]] == []
    roles = read(cluster, "/apis/rbac.authorization.k8s.io/v1/clusterroles")["items"]
    assert [r["metadata"]["name"] for r in roles if r["metadata"]["name"].startswith("spillover")] == []
    # Helm never deletes what crds/ installed: the ModelDeployments survive an uninstall.
    assert read(cluster, crd_path)["metadata"]["name"] == "modeldeployments.spillover.dev"
