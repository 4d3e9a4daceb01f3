"""Fixtures for the Kubernetes-mode tests: the real API server of tests/k8s (etcd + kube-apiserver),
re-exported here (with its build hook) so that `pytest tests/kube` alone brings it up, plus the
ModelDeployment CRD, a fresh namespace per test and `spillover serve --kubernetes` as a subprocess."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.kube import KubeCluster
from tests.k8s.conftest import kube_binaries, kube_cluster, pytest_collection_finish
from tests.kube.harness import KubeSpillover

__all__ = ["kube_binaries", "kube_cluster", "pytest_collection_finish"]

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "manifests" / "crd-modeldeployment.yaml"


@pytest.fixture(scope="session")
def cluster(kube_cluster: KubeCluster) -> KubeCluster:
    """The session's API server with the ModelDeployment CRDs (spillover.dev, and the same schema under
    Beamlit's group) installed and served."""
    import yaml

    crd = yaml.safe_load(CRD_PATH.read_text())
    kube_cluster.apply(crd)
    beamlit = yaml.safe_load(CRD_PATH.read_text())
    beamlit["metadata"]["name"] = "modeldeployments.deployment.beamlit.com"
    beamlit["spec"]["group"] = "deployment.beamlit.com"
    kube_cluster.apply(beamlit)
    return kube_cluster


@pytest.fixture
def namespace(cluster: KubeCluster) -> str:
    name = f"kube-{uuid.uuid4().hex[:8]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


@pytest.fixture
def kube_spillover(tmp_path: Path, cluster: KubeCluster) -> Iterator[Callable[..., KubeSpillover]]:
    """``kube_spillover(namespaces, kubeconfig=None, *extra_args)`` starts `spillover serve --kubernetes`
    (admin kubeconfig by default) and waits for /readyz; stopped by pid at teardown."""
    started: list[KubeSpillover] = []

    def factory(namespaces: list[str], kubeconfig: Path | None = None, **kwargs: Any) -> KubeSpillover:
        server = KubeSpillover(kubeconfig or cluster.admin_kubeconfig, namespaces, tmp_path, **kwargs)
        started.append(server)
        return server.start()

    yield factory
    for server in started:
        server.stop()
        print(f"--- spillover log ---\n{server.log()[-6000:]}")
