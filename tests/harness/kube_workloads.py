"""What a controller-manager and kubelets would do, for tests against an API server that has neither: the pods
of a workload created from its template, running and ready (or not), and the workload's status to match."""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.harness.kube import KubeCluster

__all__ = ["PodState", "rfc3339", "run_pods", "set_pod_ready", "set_workload_status"]


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class PodState:
    name: str
    ip: str
    ready: bool = True
    phase: str = "Running"
    started_ago: float = 3600.0  # seconds since the pod started (the HPA's cpu initialization period is 5 min)
    ready_changed_ago: float = 3500.0  # seconds since its Ready condition last changed


def _pod_status(state: PodState, now: float) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": state.phase}
    if state.phase in ("Running", "Succeeded", "Failed"):
        status.update(podIP=state.ip, podIPs=[{"ip": state.ip}], startTime=rfc3339(now - state.started_ago))
        status["conditions"] = [{"type": "Ready", "status": "True" if state.ready else "False",
                                 "lastTransitionTime": rfc3339(now - state.ready_changed_ago)}]
    return status


def _call(cluster: KubeCluster, method: str, path: str, body: Any = None) -> dict[str, Any]:
    import json

    status, data = cluster.request(method, path, body)
    if not 200 <= status <= 299:
        raise RuntimeError(f"{method} {path}: HTTP {status}: {data[:500]!r}")
    result: dict[str, Any] = json.loads(data)
    return result


def run_pods(cluster: KubeCluster, workload: dict[str, Any], pods: Sequence[PodState],
             namespace: str | None = None) -> list[dict[str, Any]]:
    """Creates `pods` from the template of `workload` (a Deployment/StatefulSet as stored) with their status,
    and sets the workload's status (replicas, readyReplicas, availableReplicas). Returns the pods."""
    ns = namespace or workload["metadata"]["namespace"]
    template = workload["spec"]["template"]
    now = time.time()
    # Pods carry their ReplicaSet's pod-template-hash, as the Deployment controller names them.
    digest = hashlib.sha256(repr(template).encode()).hexdigest()[:10]
    created = []
    for state in pods:
        labels = {**(template.get("metadata") or {}).get("labels", {}), "pod-template-hash": digest}
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": state.name, "namespace": ns, "labels": labels},
                "spec": copy.deepcopy(template["spec"])}
        pod = _call(cluster, "POST", f"/api/v1/namespaces/{ns}/pods", body)
        pod["status"] = _pod_status(state, now)
        created.append(_call(cluster, "PUT", f"/api/v1/namespaces/{ns}/pods/{state.name}/status", pod))
    set_workload_status(cluster, workload, len(pods), sum(1 for p in pods if p.ready and p.phase == "Running"), ns)
    return created


def set_workload_status(cluster: KubeCluster, workload: dict[str, Any], replicas: int, ready: int,
                        namespace: str | None = None) -> dict[str, Any]:
    ns = namespace or workload["metadata"]["namespace"]
    plural = {"Deployment": "deployments", "StatefulSet": "statefulsets"}[workload["kind"]]
    path = f"/apis/apps/v1/namespaces/{ns}/{plural}/{workload['metadata']['name']}"
    current = _call(cluster, "GET", path)
    current["status"] = {"replicas": replicas, "readyReplicas": ready, "availableReplicas": ready,
                         "updatedReplicas": replicas, "observedGeneration": current["metadata"].get("generation", 1)}
    return _call(cluster, "PUT", f"{path}/status", current)


def set_pod_ready(cluster: KubeCluster, namespace: str, name: str, ready: bool) -> dict[str, Any]:
    path = f"/api/v1/namespaces/{namespace}/pods/{name}"
    pod = _call(cluster, "GET", path)
    for condition in pod["status"].get("conditions", []):
        if condition["type"] == "Ready":
            condition["status"] = "True" if ready else "False"
            condition["lastTransitionTime"] = rfc3339(time.time())
    return _call(cluster, "PUT", f"{path}/status", pod)
