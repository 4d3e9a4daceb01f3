"""manifests/destination/role.yaml on a real API server (cluster B of the destination tests): what spillover
does there is allowed, nothing else is. The end-to-end tests (tests/e2e/destination/) run spillover
with a token bound to exactly this Role."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.harness.destination import destination_role
from tests.harness.kube import KubeCluster


@pytest.fixture(scope="module")
def role_token(destination_cluster: KubeCluster) -> tuple[str, str]:
    namespace = f"copies-{uuid.uuid4().hex[:8]}"
    destination_cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    destination_cluster.apply(destination_role(namespace))
    return namespace, destination_cluster.service_account_token(namespace, "spillover-destination")


def can(cluster: KubeCluster, token: str, verb: str, group: str, resource: str, namespace: str,
        subresource: str = "") -> bool:
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {
        "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "subresource": subresource,
                               "namespace": namespace}}}
    status, body = cluster.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review,
                                   token=token)
    assert status == 201, body
    return bool(json.loads(body)["status"].get("allowed"))


@pytest.mark.parametrize(("verb", "group", "resource", "subresource", "allowed"), [
    # what the copies need: list/watch (informers), create, update (a scale, a new template), delete
    *[(verb, "apps", "deployments", "", True) for verb in ("list", "watch", "create", "update", "delete")],
    *[(verb, "", "services", "", True) for verb in ("list", "watch", "create", "update", "delete")],
    # nothing more: no get, no patch, no status, no scale, no pods, no Secrets
    ("get", "apps", "deployments", "", False),
    ("patch", "apps", "deployments", "", False),
    ("deletecollection", "apps", "deployments", "", False),
    ("update", "apps", "deployments", "status", False),
    ("update", "apps", "deployments", "scale", False),
    ("update", "", "services", "status", False),
    ("list", "", "pods", "", False),
    ("get", "", "secrets", "", False),
    ("list", "", "configmaps", "", False),
    ("create", "apps", "statefulsets", "", False),
])
def test_the_destination_role_rule_by_rule(
    destination_cluster: KubeCluster, role_token: tuple[str, str], verb: str, group: str, resource: str,
    subresource: str, allowed: bool,
) -> None:
    namespace, token = role_token
    assert can(destination_cluster, token, verb, group, resource, namespace, subresource) is allowed


def test_only_in_its_namespace_and_the_probe_is_public(destination_cluster: KubeCluster,
                                                       role_token: tuple[str, str]) -> None:
    _, token = role_token
    assert not can(destination_cluster, token, "list", "apps", "deployments", "default")
    assert not can(destination_cluster, token, "create", "apps", "deployments", "kube-system")
    # The reachability probe: GET /version, which every authenticated user may.
    status, body = destination_cluster.request("GET", "/version", token=token)
    assert status == 200 and b"gitVersion" in body
    status, _ = destination_cluster.request("GET", "/version", token="not-a-token")
    assert status == 401
