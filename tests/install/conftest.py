"""The packaging tests (chart, image, versions) use the real kubectl, helm and API server of the
Kubernetes plugin (tests/harness/kube_fixtures.py). The chart's rendered objects include its CRD: the API
server starts with none and the tests install what they test."""

from __future__ import annotations

import pytest

from tests.harness.kube_fixtures import Crds


@pytest.fixture(scope="module")
def kube_crds() -> Crds:
    return Crds.NONE
