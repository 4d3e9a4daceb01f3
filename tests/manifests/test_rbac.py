"""manifests/rbac.yaml against a real kube-apiserver with RBAC: the ServiceAccount's token is enough for
StatusWriter and LeaderElector, and nothing beyond the role is allowed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from spillover.controller.kubernetes.leader import LeaderElector
from spillover.controller.kubernetes.writer import StatusWriter
from tests.harness.kube import KubeCluster
from tests.harness.kube_objects import as_object
from tests.harness.kube_status import (
    GROUP,
    MANIFESTS,
    PLURAL,
    VERSION,
    Model,
    create_md,
    eventually,
    get_md,
    load_docs,
)

pytestmark = pytest.mark.timeout(120)

SYSTEM = "spillover-system"


@pytest.fixture
def sa_token(cluster: KubeCluster) -> str:
    cluster.apply(load_docs(MANIFESTS / "namespace.yaml"))
    cluster.apply(load_docs(MANIFESTS / "serviceaccount.yaml"))
    cluster.apply(load_docs(MANIFESTS / "rbac.yaml"))
    return cluster.service_account_token(SYSTEM, "spillover", expiration_s=3600)


def status_of(error: Any) -> int | None:
    return getattr(error, "status", None)


def forbidden(call: Any) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        call()
    except ApiException as error:
        if error.status == 403:
            return True
        raise
    return False


async def test_service_account_can_write_status_and_events(
    cluster: KubeCluster, namespace: str, sa_token: str
) -> None:
    from kubernetes import client

    writer = StatusWriter(cluster.api_client(sa_token))
    writer.start()
    try:
        model = Model(create_md(cluster, namespace, "llama"))
        await writer.publish({model.key: model.step(gpu=10)})
        await eventually(lambda: get_md(cluster, namespace, "llama").get("status", {}).get("state") == "STANDBY")
        await writer.publish({model.key: model.step(gpu=99)})
        await eventually(lambda: get_md(cluster, namespace, "llama")["status"]["state"] == "OVERFLOW")
        admin = client.CustomObjectsApi(cluster.api_client())
        await eventually(
            lambda: [e for e in as_object(admin.list_namespaced_custom_object("events.k8s.io", "v1", namespace, "events"))["items"]
                     if e["reason"] == "Overflow"],
            message="the Overflow Event, created with the ServiceAccount's token",
        )
        assert writer.errors == 0
    finally:
        await writer.close()


async def test_service_account_can_elect(cluster: KubeCluster, sa_token: str) -> None:
    elector = LeaderElector(cluster.api_client(sa_token), SYSTEM, identity="sa-replica",
                            lease_duration=4, renew_deadline=3, retry_period=0.5)
    elector.start()
    try:
        await eventually(lambda: elector.is_leader, message="leadership with the ServiceAccount token")
        await eventually(lambda: elector._last_renew > 0)
    finally:
        await elector.stop()
    # Released on stop: the Role allows update.
    from kubernetes import client

    lease = as_object(client.CustomObjectsApi(cluster.api_client()).get_namespaced_custom_object(
        "coordination.k8s.io", "v1", SYSTEM, "leases", "spillover-leader"
    ))
    assert lease["spec"].get("holderIdentity", "") == ""


async def test_service_account_can_run_the_fleet(cluster: KubeCluster, sa_token: str) -> None:
    """Every Lease request a fleet replica makes: its membership Lease (create, renew by merge patch,
    delete), the decision table (written by the leader with resourceVersion), the watch of them all."""
    from spillover.controller.fleet.decisions import FleetDecisions
    from spillover.controller.fleet.leases import FLEET_LABEL, ROLE_LABEL, LeaseApi, LeaseWatch
    from spillover.controller.fleet.membership import Summary
    from spillover.controller.fleet.table import Table

    api = cluster.api_client(sa_token)
    leases = LeaseApi(api, SYSTEM)
    seen: list[tuple[str, str]] = []
    watch = LeaseWatch(api, SYSTEM, "spillover-leader", lambda t, o: seen.append((t, o["metadata"]["name"])),
                       lambda: None)
    watch.start()
    name = "spillover-leader-member-sa-replica"
    try:
        await eventually(lambda: watch.informer.synced.is_set(), message="the Lease watch lists with the SA token")
        summary = Summary("sa-replica", "", 0.0, {"edge": {"envoy-1": 1.0}})
        leases.create({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "labels": {FLEET_LABEL: "spillover-leader", ROLE_LABEL: "member"},
                         "annotations": summary.annotations()},
            "spec": {"holderIdentity": "sa-replica", "leaseDurationSeconds": 15},
        })
        assert leases.patch(name, {"spec": {"renewTime": "2030-01-01T00:00:00.000000Z"}}) is not None
        decisions = FleetDecisions(leases, "spillover-leader", "sa-replica",
                                   {FLEET_LABEL: "spillover-leader", ROLE_LABEL: "decisions"},
                                   apply=lambda published: None, take_over=lambda memories: None,
                                   deciding=lambda: True)
        decisions._write(Table("sa-replica", 1, 1, 0.0, {}))
        decisions._write(Table("sa-replica", 1, 2, 0.0, {"m": {"s": "STANDBY"}}))  # an update: a PUT
        await eventually(lambda: {(t, n) for t, n in seen} >= {("ADDED", name), ("MODIFIED", name),
                                                               ("ADDED", "spillover-leader-decisions")},
                         message="the watch delivers the fleet's Leases")
        leases.delete(name)
        await eventually(lambda: ("DELETED", name) in seen)
        assert leases.traffic.errors == 0
    finally:
        watch.stop()


def test_nothing_beyond_the_role(cluster: KubeCluster, namespace: str, sa_token: str) -> None:
    from kubernetes import client

    create_md(cluster, namespace, "keep")
    custom = client.CustomObjectsApi(cluster.api_client(sa_token))
    core = client.CoreV1Api(cluster.api_client(sa_token))

    # Allowed: reading policies and what they point at.
    assert as_object(custom.list_cluster_custom_object(GROUP, VERSION, PLURAL))["items"]
    core.list_service_for_all_namespaces()
    client.DiscoveryV1Api(cluster.api_client(sa_token)).list_endpoint_slice_for_all_namespaces()
    client.AppsV1Api(cluster.api_client(sa_token)).list_deployment_for_all_namespaces()

    obj = as_object(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "keep"))
    # Not allowed: changing or deleting a policy (only its status), creating one.
    assert forbidden(lambda: custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "keep"))
    obj["spec"]["model"] = "changed"
    assert forbidden(lambda: custom.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "keep", obj))
    new = {**obj, "metadata": {"name": "other", "namespace": namespace}}
    assert forbidden(lambda: custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, new))
    # Not allowed: writing Services, reading ConfigMaps, Leases outside spillover-system.
    assert forbidden(lambda: core.delete_namespaced_service("kubernetes", "default", dry_run="All"))
    assert forbidden(lambda: core.list_namespaced_config_map(SYSTEM))
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "x"}, "spec": {}}
    assert forbidden(lambda: custom.create_namespaced_custom_object("coordination.k8s.io", "v1", namespace,
                                                                    "leases", lease))
    assert forbidden(lambda: custom.list_namespaced_custom_object("coordination.k8s.io", "v1", namespace, "leases"))
    assert forbidden(lambda: custom.list_cluster_custom_object("coordination.k8s.io", "v1", "leases"))
    # The admin can still do all of it: the 403s come from RBAC, not from a broken request.
    assert get_md(cluster, namespace, "keep")["spec"]["model"] != "changed"


@pytest.fixture
def secrets_restricted(cluster: KubeCluster, sa_token: str, namespace: str) -> Iterator[str]:
    """The README's restriction: no cluster-wide Secret access, a RoleBinding in one model namespace."""
    from kubernetes import client

    rbac = client.RbacAuthorizationV1Api(cluster.api_client())
    rbac.delete_cluster_role_binding("spillover-secrets")
    cluster.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "spillover-secrets", "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "spillover-secrets"},
        "subjects": [{"kind": "ServiceAccount", "name": "spillover", "namespace": SYSTEM}],
    })
    try:
        yield namespace
    finally:
        cluster.apply(load_docs(MANIFESTS / "rbac.yaml"))


async def test_secrets_restricted_to_model_namespaces(
    cluster: KubeCluster, sa_token: str, secrets_restricted: str
) -> None:
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client(sa_token))
    # RBAC changes apply within a moment (the authorizer's informer): poll for the final state.
    await eventually(lambda: forbidden(core.list_secret_for_all_namespaces), message="cluster-wide list refused")
    core.list_namespaced_secret(secrets_restricted)
    assert forbidden(lambda: core.list_namespaced_secret("default"))


def can(cluster: KubeCluster, token: str, verb: str, group: str, resource: str, subresource: str = "",
        namespace: str = "default") -> bool:
    """What the API server's authorizer answers for the token (a SelfSubjectAccessReview): the rules
    themselves, also for API groups this cluster does not serve."""
    import json

    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {
        "resourceAttributes": {"verb": verb, "group": group, "resource": resource, "subresource": subresource,
                               "namespace": namespace, "name": "x"}}}
    status, body = cluster.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", review,
                                   token=token)
    assert status == 201, body
    return bool(json.loads(body)["status"].get("allowed"))


@pytest.mark.parametrize(("verb", "group", "resource", "subresource", "allowed"), [
    # the metrics APIs, read as the HPA reads them
    ("list", "metrics.k8s.io", "pods", "", True),
    ("get", "metrics.k8s.io", "pods", "", True),
    ("create", "metrics.k8s.io", "pods", "", False),
    ("list", "metrics.k8s.io", "nodes", "", False),
    ("get", "custom.metrics.k8s.io", "pods", "vllm_requests_waiting", True),
    ("get", "custom.metrics.k8s.io", "deployments.apps", "requests_per_second", True),
    ("get", "external.metrics.k8s.io", "queue_messages", "", True),
    ("update", "custom.metrics.k8s.io", "pods", "x", False),
    # Beamlit's ModelDeployments: their annotations (a patch), never an update or a delete
    ("patch", "deployment.beamlit.com", "modeldeployments", "", True),
    ("update", "deployment.beamlit.com", "modeldeployments", "", False),
    ("delete", "deployment.beamlit.com", "modeldeployments", "", False),
    ("patch", "deployment.beamlit.com", "modeldeployments", "status", True),
    # spillover's own ModelDeployments: status, and a metadata patch (the destination's finalizer and
    # record); never an update (a whole new spec) or a delete
    ("patch", "spillover.dev", "modeldeployments", "", True),
    ("update", "spillover.dev", "modeldeployments", "", False),
    ("delete", "spillover.dev", "modeldeployments", "", False),
    ("patch", "spillover.dev", "modeldeployments", "status", True),
])
def test_the_role_rule_by_rule(
    cluster: KubeCluster, sa_token: str, verb: str, group: str, resource: str, subresource: str, allowed: bool
) -> None:
    assert can(cluster, sa_token, verb, group, resource, subresource) is allowed
