"""Fixtures of the status / leader election / manifests tests: the session's real API server (shared
with tests/k8s), the CRD from manifests/ applied once, and one fresh namespace per test."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.kube import KubeCluster
from tests.k8s.conftest import kube_binaries, kube_cluster  # noqa: F401 - fixtures, re-exported
from tests.kubestatus.helpers import MANIFESTS, load_docs

_counter = itertools.count()


@pytest.fixture(scope="session")
def crd_applied(kube_cluster: KubeCluster) -> dict[str, Any]:  # noqa: F811
    """The CRD exactly as manifests/ ships it, Established."""
    (crd,) = kube_cluster.apply(load_docs(MANIFESTS / "crd-modeldeployment.yaml"))
    return crd


@pytest.fixture
def cluster(kube_cluster: KubeCluster, crd_applied: dict[str, Any]) -> KubeCluster:  # noqa: F811
    return kube_cluster


@pytest.fixture
def namespace(cluster: KubeCluster) -> Iterator[str]:
    from kubernetes import client

    name = f"ks-{os.getpid() % 10000}-{next(_counter)}"
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespace({"metadata": {"name": name}})
    yield name
    # No namespace controller runs: the namespace stays Terminating, which is harmless.
    core.delete_namespace(name)
