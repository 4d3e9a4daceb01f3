"""A cluster with Beamlit's CRD and not spillover's (a Beamlit installation): `--beamlit` serves its
ModelDeployments at once, says spillover's CRD is missing, and watches it as soon as it is installed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from spillover.sources.kube.kinds import BEAMLIT_MODEL_DEPLOYMENTS, MODEL_DEPLOYMENTS
from spillover.sources.kube.source import KubernetesPolicySource
from tests.harness.kube import KubeCluster
from tests.harness.kube_fixtures import CRD_PATH, Crds
from tests.harness.kube_objects import endpoint_slice, model_deployment, service
from tests.harness.polling import wait_until

FAST = {"watch_timeout": 5.0, "read_timeout_slack": 5.0, "backoff_initial": 0.1, "backoff_max": 1.0}


@pytest.fixture(scope="module")
def kube_crds() -> Crds:
    return Crds.BEAMLIT


@pytest.fixture
def ours_installed_later(cluster: KubeCluster) -> Iterator[None]:
    yield
    cluster.request("DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/modeldeployments.spillover.dev")
    wait_until(lambda: cluster.request("GET", "/apis/spillover.dev/v1alpha1")[0] == 404, timeout=30,
               message="spillover's CRD never went away")


def test_a_missing_crd_is_reported_watched_for_and_picked_up(
    cluster: KubeCluster, namespace: str, ours_installed_later: None
) -> None:
    beamlit = model_deployment("my-model", "my-model", namespace, serviceRef={"name": "php-apache", "targetPort": 80},
                               modelSourceRef={"apiVersion": "apps/v1", "kind": "Deployment", "name": "php-apache"})
    beamlit["apiVersion"] = "deployment.beamlit.com/v1alpha1"
    cluster.apply([beamlit, service("php-apache", namespace, port=80, target=80),
                   endpoint_slice("php-apache-x", namespace, "php-apache", 80, [("198.51.100.10", True)])])
    source = KubernetesPolicySource(cluster.api_client(), namespaces=[namespace], beamlit=True,
                                    informer_options=FAST, crd_recheck=0.5)
    started = time.monotonic()
    source.start()
    try:
        # No 30 s stall on the CRD that is not there: the sync is over as soon as what exists has listed.
        assert source.wait_synced(20)
        synced_in = time.monotonic() - started
        assert synced_in < 5, synced_in
        state = source.poll() or source.state
        assert list(state.models) == ["my-model"]
        assert [str(w) for w in state.warnings] == [
            "CustomResourceDefinition modeldeployments.spillover.dev: is not installed: its ModelDeployments are not "
            "watched until it is (API discovery is asked again)"
        ]
        assert source.missing == {MODEL_DEPLOYMENTS}
        assert source.informer(BEAMLIT_MODEL_DEPLOYMENTS, namespace) is not None
        assert source.informer(MODEL_DEPLOYMENTS, namespace) is None  # no watch answering 404 forever

        # spillover's CRD is installed later: watched, and its objects served, without a restart.
        cluster.apply(yaml.safe_load(CRD_PATH.read_text()))
        cluster.apply(model_deployment("llama", "llama-3-8b", namespace, localBackend={"endpoints": ["10.0.0.1:8000"]}))

        def both() -> Any:
            source.poll()
            return set(source.state.models) == {"my-model", "llama-3-8b"} and source.state

        state = wait_until(both, timeout=20, message="spillover's ModelDeployment never served")
        assert state.warnings == () and source.missing == frozenset()
    finally:
        source.stop()
