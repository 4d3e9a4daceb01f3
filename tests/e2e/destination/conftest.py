"""The destination tests' fixtures: cluster A (the CRD as manifests/ ships it) and cluster B (a second API
server, tests/harness/kube_fixtures.py's `destination_cluster`), the documented Role on B behind a TCP proxy,
`spillover serve --kubernetes` on A, model servers and Prometheus."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.destination import EVALUATION_INTERVAL, MODEL, ClusterB
from tests.harness.kube import KubeCluster
from tests.harness.kube_fixtures import Crds
from tests.harness.modelserver import ModelServer
from tests.harness.prometheus import Prometheus
from tests.harness.serve import Launcher, Spillover


@pytest.fixture(scope="module")
def kube_crds() -> Crds:
    return Crds.MODELDEPLOYMENT


@pytest.fixture
def b(destination_cluster: KubeCluster, cluster: KubeCluster, namespace: str) -> Iterator[ClusterB]:
    b = ClusterB.create(destination_cluster, cluster, namespace)
    yield b
    b.stop()


@pytest.fixture
def serve(tmp_path: Path, cluster: KubeCluster) -> Iterator[Callable[..., Spillover]]:
    launch = Launcher(tmp_path, start_timeout=30.0, evaluation_interval=EVALUATION_INTERVAL)

    def factory(namespace: str, **kwargs: Any) -> Spillover:
        return launch(kubeconfig=cluster.admin_kubeconfig, namespaces=[namespace],
                      leader_election_namespace=namespace, **kwargs)

    yield factory
    launch.stop_all()


@pytest.fixture
def model_servers() -> Iterator[Callable[[str], ModelServer]]:
    started: list[ModelServer] = []

    def factory(name: str) -> ModelServer:
        server = ModelServer(name, MODEL).start()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[str]], Prometheus]]:
    started: list[Prometheus] = []

    def factory(targets: list[str]) -> Prometheus:
        prom = Prometheus(tmp_path / f"prometheus-{len(started)}", targets, scrape_interval="1s").start()
        started.append(prom)
        return prom

    yield factory
    for prom in started:
        prom.stop()
