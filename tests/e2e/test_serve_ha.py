"""Two `spillover serve --kubernetes` replicas running as the ServiceAccount of manifests/ (RBAC enforced by
the real API server): both serve, one leader writes status, and leadership moves when the leader dies."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.kube import KubeCluster
from tests.harness.kube_fixtures import Crds
from tests.harness.kube_objects import as_object
from tests.harness.kube_status import GROUP, MANIFESTS, PLURAL, VERSION, create_md, get_md, load_docs
from tests.harness.polling import wait_until
from tests.harness.serve import Spillover

pytestmark = pytest.mark.timeout(180)

SYSTEM = "spillover-system"


@pytest.fixture(scope="module")
def kube_crds() -> Crds:
    """The CRD exactly as manifests/ ships it."""
    return Crds.MODELDEPLOYMENT


def start_replica(name: str, kubeconfig: Path, namespace: str, workdir: Path) -> Spillover:
    """One replica as manifests/ deploys it: its pod's name as identity, the Lease in SYSTEM."""
    return Spillover(
        workdir, name=name, kubeconfig=kubeconfig, namespaces=[namespace], leader_election_namespace=SYSTEM,
        env={"POD_NAME": name}, debounce=None,
    ).launch()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[Spillover]]:
    started: list[Spillover] = []
    yield started
    for replica in started:
        replica.stop(signal.SIGKILL)
        print(f"--- {replica.name} ---\n{replica.log()[-4000:]}")


def _lease_holder(cluster: KubeCluster) -> str | None:
    from kubernetes import client

    try:
        lease = client.CoordinationV1Api(cluster.api_client()).read_namespaced_lease("spillover-leader", SYSTEM)
    except Exception:
        return None
    return (lease.spec and lease.spec.holder_identity) or None


def _events_for(cluster: KubeCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    from kubernetes import client

    events = as_object(client.CustomObjectsApi(cluster.api_client()).list_namespaced_custom_object(
        "events.k8s.io", "v1", namespace, "events"
    ))["items"]
    return [e for e in events if (e.get("regarding") or {}).get("name") == name]


def test_one_leader_writes_status_and_leadership_fails_over(
    cluster: KubeCluster, namespace: str, tmp_path: Path, replicas: list[Spillover]
) -> None:
    for manifest in ("namespace.yaml", "serviceaccount.yaml", "rbac.yaml"):
        cluster.apply(load_docs(MANIFESTS / manifest))
    token = cluster.service_account_token(SYSTEM, "spillover", expiration_s=3600)
    kubeconfig = cluster.kubeconfig_for_token(token, tmp_path / "spillover.kubeconfig", user="spillover")
    create_md(cluster, namespace, "llama")

    replicas.extend(start_replica(name, kubeconfig, namespace, tmp_path) for name in ("replica-a", "replica-b"))
    wait_until(lambda: all(r.ready() for r in replicas), timeout=60, message="both replicas serve")
    leader = wait_until(lambda: _lease_holder(cluster), timeout=30, message="a leader is elected")
    assert leader in {"replica-a", "replica-b"}
    stored = wait_until(
        lambda: (md := get_md(cluster, namespace, "llama")).get("status", {}).get("state") and md,
        timeout=30,
        message="the leader writes status",
    )
    assert stored["status"]["state"] == "STANDBY"
    assert stored["status"]["observedGeneration"] == stored["metadata"]["generation"]
    assert {c["type"] for c in stored["status"]["conditions"]} >= {"Ready", "Overflowing"}

    # The leader dies without releasing the Lease: the other replica takes over within the lease duration.
    (dead,) = [r for r in replicas if r.name == leader]
    (survivor,) = [r for r in replicas if r.name != leader]
    dead.stop(signal.SIGKILL)
    wait_until(lambda: _lease_holder(cluster) == survivor.name, timeout=30, message="leadership moves")
    assert survivor.ready()

    # The new leader writes status: disabling the model shows as DISABLED, with an Event.
    from kubernetes import client

    client.CustomObjectsApi(cluster.api_client()).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "llama", {"spec": {"enabled": False}}
    )
    wait_until(
        lambda: get_md(cluster, namespace, "llama").get("status", {}).get("state") == "DISABLED",
        timeout=30,
        message="the new leader writes the new state",
    )
    wait_until(
        lambda: any(e.get("reason") == "Disabled" for e in _events_for(cluster, namespace, "llama")),
        timeout=15,
        message="an Event records the transition",
    )
    assert survivor.stop() == 0, survivor.log()[-3000:]
    # A graceful stop releases the Lease at once.
    wait_until(lambda: _lease_holder(cluster) is None, timeout=10, message="the Lease is released")
