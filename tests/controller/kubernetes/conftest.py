"""The status writer and leader election run against an API server with the CRD exactly as manifests/
ships it (the fixtures are tests/harness/kube_fixtures.py's)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.harness.kube_fixtures import ApiServers, Crds


@pytest.fixture(scope="module")
def kube_crds() -> Crds:
    return Crds.MODELDEPLOYMENT


@pytest.fixture(scope="module")
def crd_applied(kube_api_servers: ApiServers, kube_crds: Crds) -> dict[str, Any]:
    """The CRD as the API server stored it (Established)."""
    (crd,) = kube_api_servers.installed(kube_crds)
    return crd
