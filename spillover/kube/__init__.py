"""Kubernetes mode: ModelDeployment custom resources (and what they reference) as the policy source.

`informer` is a generic list+watch informer over the `kubernetes` client; `resolve` holds the pure
functions from Kubernetes objects to endpoints, secrets, readiness and AIBrix models; `source` is the
`KubernetesPolicySource`, which has the interface of the file source and produces `KubeDesiredState`.
"""

from spillover.kube.informer import Informer, InformerStats, Resource
from spillover.kube.source import (
    ClusterView,
    CRKey,
    CRObject,
    CROrigin,
    KubeDesiredState,
    KubernetesPolicySource,
    PodsOrigin,
    api_client,
    build_kube_state,
)

__all__ = [
    "CRKey",
    "CRObject",
    "CROrigin",
    "ClusterView",
    "Informer",
    "InformerStats",
    "KubeDesiredState",
    "KubernetesPolicySource",
    "PodsOrigin",
    "Resource",
    "api_client",
    "build_kube_state",
]
