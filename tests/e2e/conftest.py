"""Fixtures for end-to-end tests: `spillover serve` (--policies, --kubernetes) as a subprocess, Envoys
bootstrapped to it, a real OAuth2 token endpoint."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.envoy import Envoy
from tests.harness.kube import KubeCluster
from tests.harness.serve import Launcher, Spillover, start_edge
from tests.harness.token_endpoint import TokenEndpoint


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    return directory


@pytest.fixture
def spillover_factory(tmp_path: Path) -> Iterator[Callable[..., Spillover]]:
    """``spillover_factory(policies, log_level="INFO")`` starts `spillover serve` and waits for /readyz.
    Tests stop it themselves to check the exit code; whatever is left running is stopped here by pid."""
    launch = Launcher(tmp_path)

    def factory(policies: Path, **kwargs: Any) -> Spillover:
        return launch(policies=policies, **kwargs)

    yield factory
    launch.stop_all()


@pytest.fixture
def kube_spillover(tmp_path: Path, cluster: KubeCluster) -> Iterator[Callable[..., Spillover]]:
    """``kube_spillover(namespaces, kubeconfig=None, beamlit=False)`` starts `spillover serve --kubernetes`
    (admin kubeconfig by default, evaluating every 0.2 s) and waits for /readyz; stopped by pid at
    teardown."""
    launch = Launcher(tmp_path, start_timeout=30.0, evaluation_interval=0.2)

    def factory(namespaces: list[str], kubeconfig: Path | None = None, **kwargs: Any) -> Spillover:
        return launch(kubeconfig=kubeconfig or cluster.admin_kubeconfig, namespaces=namespaces, **kwargs)

    yield factory
    launch.stop_all()


@pytest.fixture
def edge_factory(envoy_factory: Callable[..., Envoy]) -> Callable[..., Envoy]:
    """``edge_factory(spillover, node_id, cluster="edge")``: a real Envoy on spillover's ADS, returned
    once it is LIVE and its listener (spillover's --listen port) answers."""

    def start(server: Spillover, node_id: str, cluster: str = "edge") -> Envoy:
        return start_edge(envoy_factory, server, node_id, cluster, advertise_admin=False)

    return start


@pytest.fixture
def token_endpoint() -> Iterator[Callable[..., TokenEndpoint]]:
    started: list[TokenEndpoint] = []

    def factory(client_id: str, client_secret: str) -> TokenEndpoint:
        endpoint = TokenEndpoint(client_id, client_secret).start()
        started.append(endpoint)
        return endpoint

    yield factory
    for endpoint in started:
        endpoint.stop()
