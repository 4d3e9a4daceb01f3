"""The Kubernetes source's tests run against an API server with both ModelDeployment CRDs (spillover.dev,
and the same schema under Beamlit's group); the fixtures are tests/harness/kube_fixtures.py's."""

from __future__ import annotations

import pytest

from tests.harness.kube_fixtures import Crds


@pytest.fixture(scope="module")
def kube_crds() -> Crds:
    return Crds.MODELDEPLOYMENT_AND_BEAMLIT
