"""Kubernetes mode: ModelDeployment custom resources (and what they reference) as the policy source.

`kinds` names the resource types read and holds objects as plain data; `informer` is a generic
list+watch informer over the `kubernetes` client; `resolve` holds the pure functions from Kubernetes
objects to endpoints, secrets, readiness and AIBrix models; `state` is the pure builder of the
`KubeDesiredState` from the informers' stores; `source` is the `KubernetesPolicySource`, which runs the
informers and the rebuilds and has the interface of the file source; `api` makes the ApiClient.
"""

from spillover.sources.kube.api import api_client
from spillover.sources.kube.informer import Informer, InformerStats
from spillover.sources.kube.kinds import Resource
from spillover.sources.kube.source import KubernetesPolicySource
from spillover.sources.kube.state import (
    ClusterView,
    CRKey,
    CRObject,
    CROrigin,
    KubeDesiredState,
    PodsOrigin,
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
