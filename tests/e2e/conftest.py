"""Fixtures for end-to-end tests: `spillover serve --policies` as a subprocess, Envoys bootstrapped to it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spillover.bootstrap import build_bootstrap
from tests.e2e.harness import Spillover, TokenEndpoint, post_model
from tests.harness.envoy import Envoy
from tests.harness.polling import wait_until


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    return directory


@pytest.fixture
def spillover_factory(tmp_path: Path) -> Iterator[Callable[..., Spillover]]:
    """``spillover_factory(policies, log_level="INFO")`` starts `spillover serve` and waits for /readyz.
    Tests stop it themselves to check the exit code; whatever is left running is stopped here by pid."""
    started: list[Spillover] = []

    def factory(policies: Path, **kwargs: Any) -> Spillover:
        server = Spillover(policies, tmp_path, **kwargs)
        started.append(server)
        return server.start()

    yield factory
    for server in started:
        server.stop()
        print(f"--- spillover log ---\n{server.log()[-6000:]}")


@pytest.fixture
def edge_factory(envoy_factory: Callable[..., Envoy]) -> Callable[..., Envoy]:
    """``edge_factory(spillover, node_id, cluster="edge")``: a real Envoy on spillover's ADS, returned
    once it is LIVE and its listener (spillover's --listen port) answers."""

    def start(server: Spillover, node_id: str, cluster: str = "edge") -> Envoy:
        envoy = envoy_factory(
            build_bootstrap(node_id, cluster, server.xds_address, admin_port=0), name=node_id
        )
        wait_until(envoy.is_ready, timeout=20, message=f"envoy {node_id} never became ready")
        wait_until(
            lambda: post_model(server.listen_port, "__probe__").status == 404,
            timeout=15,
            message=f"listener of {node_id} never answered",
        )
        return envoy

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
