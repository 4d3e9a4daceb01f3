"""The Kubernetes resource types spillover reads, and objects as plain data (the API server's JSON).

Shared by the informers (which list and watch them) and the pure state builder (which reads their
stores), so that the builder needs no `kubernetes` client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Key = tuple[str, str]  # (namespace or "", name)
Object = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    """A resource type: its API group ("" for core), version, plural and kind."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace and self.namespaced:
            return f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{base}/{self.plural}"

    def __str__(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural


PODS = Resource("", "v1", "pods", "Pod")
SERVICES = Resource("", "v1", "services", "Service")
SECRETS = Resource("", "v1", "secrets", "Secret")
ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
STATEFULSETS = Resource("apps", "v1", "statefulsets", "StatefulSet")
REPLICASETS = Resource("apps", "v1", "replicasets", "ReplicaSet")
MODEL_DEPLOYMENTS = Resource("spillover.dev", "v1alpha1", "modeldeployments", "ModelDeployment")
BEAMLIT_MODEL_DEPLOYMENTS = Resource("deployment.beamlit.com", "v1alpha1", "modeldeployments", "ModelDeployment")


def key_of(obj: Object) -> Key:
    meta = obj.get("metadata") or {}
    return (meta.get("namespace") or "", meta.get("name") or "")


def resource_version_of(obj: Object) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
