"""Two clusters for the destination tests: cluster B set up as manifests/destination/role.yaml says, the
kubeconfig spillover gets for it (a Secret on cluster A), an origin workload, and what B's controllers
would do (no controller-manager runs here): a Deployment's readiness and a Service's load balancer ingress,
written through their status subresources as a kubelet / cloud controller would."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness.kube import KubeCluster
from tests.harness.kube_objects import model_deployment, secret
from tests.harness.tcp_proxy import TcpProxy

__all__ = [
    "EVALUATION_INTERVAL",
    "MODEL",
    "ROLE_PATH",
    "ClusterB",
    "copy_of",
    "copy_status",
    "deploy_origin",
    "destination_role",
    "events_of",
    "kubeconfig_text",
    "md_of",
    "merge_patch",
    "origin_deployment",
    "reasons",
    "set_ingress",
    "set_ready",
    "the_model",
]

ROLE_PATH = Path(__file__).resolve().parents[2] / "manifests" / "destination" / "role.yaml"
SERVICE_ACCOUNT = "spillover-destination"


def destination_role(namespace: str) -> list[dict[str, Any]]:
    """manifests/destination/role.yaml for `namespace` (the documents as shipped, with their namespace set)."""
    docs = [d for d in yaml.safe_load_all(ROLE_PATH.read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects") or []:
            subject["namespace"] = namespace
    return docs


def kubeconfig_text(cluster: KubeCluster, token: str, server: str | None = None) -> str:
    """A kubeconfig with inline credentials only (what a Secret may carry)."""
    ca = base64.b64encode(cluster.ca_path.read_bytes()).decode()
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "cluster-b", "cluster": {"server": server or cluster.server_url,
                                                        "certificate-authority-data": ca}}],
        "users": [{"name": "spillover", "user": {"token": token}}],
        "contexts": [{"name": "b", "context": {"cluster": "cluster-b", "user": "spillover"}}],
        "current-context": "b",
    })


def merge_patch(cluster: KubeCluster, path: str, body: Any, token: str | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(cluster.server_url + path, data=json.dumps(body).encode(), method="PATCH")
    request.add_header("Authorization", f"Bearer {token or cluster.admin_token}")
    request.add_header("Content-Type", "application/merge-patch+json")
    request.add_header("Accept", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10, context=cluster.ssl_context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def set_ready(cluster: KubeCluster, namespace: str, name: str, ready: int, replicas: int | None = None) -> None:
    """What B's kubelets and Deployment controller would report: `ready` of `replicas` pods ready."""
    status, obj = 0, {}
    status, body = cluster.request("GET", f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}")
    assert status == 200, body
    obj = json.loads(body)
    total = max(ready, replicas if replicas is not None else int(obj["spec"].get("replicas", 1)))
    status, result = merge_patch(cluster, f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}/status", {
        "status": {"observedGeneration": obj["metadata"].get("generation", 1), "replicas": total,
                   "updatedReplicas": total, "readyReplicas": ready, "availableReplicas": ready}})
    assert status == 200, result


def set_ingress(cluster: KubeCluster, namespace: str, name: str, ip: str = "127.0.0.1") -> None:
    """What B's cloud controller would write once a load balancer is up."""
    status, result = merge_patch(cluster, f"/api/v1/namespaces/{namespace}/services/{name}/status",
                                 {"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}})
    assert status == 200, result


def origin_deployment(name: str, namespace: str, image: str = "vllm/vllm-openai:v0.6.0", replicas: int = 3,
                      **pod: Any) -> dict[str, Any]:
    container = {
        "name": "vllm", "image": image, "args": ["--model", "meta-llama/Llama-3.1-8B-Instruct"],
        "env": [{"name": "HF_HOME", "value": "/cache"}],
        "ports": [{"name": "http", "containerPort": 8000}],
        "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}},
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [container], **pod}}},
    }


def copy_of(cluster: KubeCluster, namespace: str, name: str, kind: str = "deployments") -> dict[str, Any] | None:
    group = "/apis/apps/v1" if kind == "deployments" else "/api/v1"
    status, body = cluster.request("GET", f"{group}/namespaces/{namespace}/{kind}/{name}")
    if status == 404:
        return None
    assert status == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


def events_of(cluster: KubeCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    """The Events (events.k8s.io/v1) regarding ModelDeployment `name`, oldest first."""
    status, body = cluster.request("GET", f"/apis/events.k8s.io/v1/namespaces/{namespace}/events")
    assert status == 200, body
    items = [e for e in json.loads(body)["items"] if (e.get("regarding") or {}).get("name") == name]
    return sorted(items, key=lambda e: e.get("eventTime") or "")


@dataclass
class ClusterB:
    """Cluster B for one test: a fresh namespace with the documented Role, a token bound to exactly that
    Role, a TCP proxy in front of the API server (to cut the network), and the kubeconfig Secret on A."""

    cluster: KubeCluster
    namespace: str
    token: str
    proxy: TcpProxy
    kubeconfig: str

    @classmethod
    def create(cls, b: KubeCluster, a: KubeCluster, a_namespace: str, secret_name: str = "cluster-b") -> ClusterB:
        namespace = f"copies-{uuid.uuid4().hex[:8]}"
        b.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        b.apply(destination_role(namespace))
        token = b.service_account_token(namespace, SERVICE_ACCOUNT, expiration_s=3600)
        proxy = TcpProxy(b.secure_port).start()
        text = kubeconfig_text(b, token, server=f"https://{proxy.address}")
        a.apply(secret(secret_name, a_namespace, {"kubeconfig": text}))
        return cls(b, namespace, token, proxy, text)

    def stop(self) -> None:
        self.proxy.stop()
        # No namespace controller runs: the namespace stays Terminating, which is harmless.
        self.cluster.request("DELETE", f"/api/v1/namespaces/{self.namespace}")


# -- for the end-to-end tests (tests/e2e/destination/) ----------------------------------------------------------

MODEL = "llama-3"
EVALUATION_INTERVAL = 0.2


def the_model(namespace: str, b: ClusterB, endpoints: list[str], port: int, *, metrics: list[dict[str, Any]] | None
              = None, behavior: dict[str, Any] | None = None, **destination: Any) -> dict[str, Any]:
    offloading: dict[str, Any] = {"destination": {
        "kubeconfigSecretRef": {"name": "cluster-b"}, "namespace": b.namespace, "port": port, **destination}}
    if metrics is not None:
        offloading["metrics"] = metrics
    if behavior is not None:
        offloading["behavior"] = behavior
    return model_deployment(
        "llama", MODEL, namespace, localBackend={"endpoints": endpoints},
        modelSourceRef={"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama"},
        offloadingConfig=offloading,
    )


def md_of(cluster: KubeCluster, namespace: str) -> dict[str, Any] | None:
    status, body = cluster.request("GET", f"/apis/spillover.dev/v1alpha1/namespaces/{namespace}/modeldeployments/llama")
    if status == 404:
        return None
    assert status == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


def copy_status(cluster: KubeCluster, namespace: str) -> dict[str, Any]:
    md = md_of(cluster, namespace) or {}
    result: dict[str, Any] = (md.get("status") or {}).get("destination") or {}
    return result


def reasons(cluster: KubeCluster, namespace: str) -> list[str]:
    return [e["reason"] for e in events_of(cluster, namespace, "llama")]


def deploy_origin(cluster: KubeCluster, namespace: str, **kwargs: Any) -> dict[str, Any]:
    (origin,) = cluster.apply(origin_deployment("llama", namespace, **kwargs))
    set_ready(cluster, namespace, "llama", 2)  # the local side is up: no FAILOVER
    return origin
