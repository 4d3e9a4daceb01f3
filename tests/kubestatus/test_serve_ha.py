"""Two `spillover serve --kubernetes` replicas running as the ServiceAccount of manifests/ (RBAC enforced by
the real API server): both serve, one leader writes status, and leadership moves when the leader dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.client import request
from tests.harness.kube import KubeCluster
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.kubestatus.helpers import GROUP, MANIFESTS, PLURAL, VERSION, create_md, get_md, load_docs

pytestmark = pytest.mark.timeout(180)

SYSTEM = "spillover-system"
REPO = Path(__file__).resolve().parents[2]


class Replica:
    def __init__(self, name: str, kubeconfig: Path, namespace: str, workdir: Path) -> None:
        self.name = name
        self.admin_port = free_port()
        self.log_path = workdir / f"{name}.log"
        command = [
            sys.executable, "-m", "spillover", "serve", "--kubernetes",
            "--kubeconfig", str(kubeconfig),
            "--namespace", namespace,
            "--leader-election-namespace", SYSTEM,
            "--listen", f"127.0.0.1:{free_port()}",
            "--xds-address", f"127.0.0.1:{free_port()}",
            "--admin-address", f"127.0.0.1:{self.admin_port}",
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "POD_NAME": name},
            )

    def ready(self) -> bool:
        try:
            return request("GET", f"http://127.0.0.1:{self.admin_port}/readyz").status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[list[Replica]]:
    started: list[Replica] = []
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
    return lease.spec.holder_identity or None


def _events_for(cluster: KubeCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    from kubernetes import client

    events = client.CustomObjectsApi(cluster.api_client()).list_namespaced_custom_object(
        "events.k8s.io", "v1", namespace, "events"
    )["items"]
    return [e for e in events if (e.get("regarding") or {}).get("name") == name]


def test_one_leader_writes_status_and_leadership_fails_over(
    cluster: KubeCluster, namespace: str, tmp_path: Path, replicas: list[Replica]
) -> None:
    for manifest in ("namespace.yaml", "serviceaccount.yaml", "rbac.yaml"):
        cluster.apply(load_docs(MANIFESTS / manifest))
    token = cluster.service_account_token(SYSTEM, "spillover", expiration_s=3600)
    kubeconfig = cluster.kubeconfig_for_token(token, tmp_path / "spillover.kubeconfig", user="spillover")
    create_md(cluster, namespace, "llama")

    replicas.extend(Replica(name, kubeconfig, namespace, tmp_path) for name in ("replica-a", "replica-b"))
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
