"""The manifests and their RBAC are checked against an API server with the CRD exactly as manifests/
ships it (the fixtures are tests/harness/kube_fixtures.py's)."""

from __future__ import annotations

import pytest

from tests.harness.kube_fixtures import Crds


@pytest.fixture(scope="module")
def kube_crds() -> Crds:
    return Crds.MODELDEPLOYMENT
