"""What cluster B says of a copy, as a typed `CopyObservation` (pure: the objects as the informers hold them).

Readiness is the Deployment's `status.readyReplicas` (what the kubelets and the Deployment controller of
cluster B report); the address is the Service's load balancer ingress, or `destination.address` (with
the Service port, or the node port for a NodePort Service). A Deployment found under the copy's name that
is not this ModelDeployment's copy (another origin uid, or no spillover labels) is `foreign`: its
readiness is never taken for the copy's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from spillover.policy.destination import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    ORIGIN_NAME_LABEL,
    ORIGIN_NAMESPACE_LABEL,
    ORIGIN_UID_LABEL,
    TEMPLATE_HASH_ANNOTATION,
    Destination,
)
from spillover.sources.kube.destinations import CopyLocation

__all__ = ["CopyObservation", "copy_address", "observe_copy"]

Object = Mapping[str, Any]


@dataclass(frozen=True)
class CopyObservation:
    """The copy as cluster B shows it. `reachable` False: nothing below is current (no traffic to it)."""

    location: CopyLocation
    reachable: bool = False
    error: str = ""  # why B cannot be read (unreachable, refused credentials, no permission)
    pending: bool = False  # not reachable only because nothing was heard yet (connecting, listing)
    exists: bool = False  # a Deployment of that name, whoever's it is
    foreign: str = ""  # whose it is, when it is not this ModelDeployment's copy
    replicas: int | None = None  # spec.replicas
    ready_replicas: int = 0
    updated_replicas: int = 0
    available_replicas: int = 0
    generation: int | None = None
    observed_generation: int | None = None
    template_hash: str | None = None
    rollout_problem: str = ""  # the Deployment controller's: ProgressDeadlineExceeded, ReplicaFailure
    service_exists: bool = False
    service_foreign: str = ""
    address: tuple[str, int] | None = None
    address_problem: str = ""
    deployment: Object | None = None  # as read, for the actuator
    service: Object | None = None

    @property
    def serving(self) -> bool:
        """Whether traffic may go to the copy: B answers, the copy is ours, has a ready replica and an address."""
        return self.reachable and self.exists and not self.foreign and self.ready_replicas > 0 and (
            self.address is not None
        )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _owner(obj: Object, uid: str) -> str:
    """"" when `obj` is the copy of the ModelDeployment `uid`, else a description of whose it is."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY or not labels.get(ORIGIN_UID_LABEL):
        return "not made by spillover"
    if labels.get(ORIGIN_UID_LABEL) != uid:
        namespace, name = labels.get(ORIGIN_NAMESPACE_LABEL, "?"), labels.get(ORIGIN_NAME_LABEL, "?")
        return f"the copy of another ModelDeployment ({namespace}/{name}, uid {labels.get(ORIGIN_UID_LABEL)})"
    return ""


def _rollout_problem(deployment: Object) -> str:
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if not isinstance(condition, Mapping):
            continue
        kind, status = condition.get("type"), condition.get("status")
        if (kind == "Progressing" and status == "False") or (kind == "ReplicaFailure" and status == "True"):
            reason = str(condition.get("reason") or kind)
            message = str(condition.get("message") or "")[:300]
            return f"{reason}: {message}" if message else reason
    return ""


def copy_address(destination: Destination, service: Object | None) -> tuple[tuple[str, int] | None, str]:
    """(host, port) Envoy sends the copy's share to, or None and why not yet."""
    given = destination.address_host_port
    ports = [p for p in ((service or {}).get("spec") or {}).get("ports") or [] if isinstance(p, Mapping)]
    if given is not None and given[1] is not None:
        return (given[0], given[1]), ""
    if service is None:
        return None, "the copy's Service does not exist yet"
    if not ports:
        return None, "the copy's Service has no port"
    if given is not None:
        if destination.service_type == "NodePort":
            node_port = _int(ports[0].get("nodePort"))
            if not node_port:
                return None, "the copy's Service has no node port yet"
            return (given[0], node_port), ""
        return (given[0], int(ports[0].get("port") or 0)), ""
    for ingress in ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
        host = ingress.get("ip") or ingress.get("hostname") if isinstance(ingress, Mapping) else None
        if isinstance(host, str) and host:
            return (host, int(ports[0].get("port") or 0)), ""
    return None, ("the copy's Service has no load balancer ingress yet (no load balancer on the destination? "
                  "set destination.address)")


def observe_copy(
    location: CopyLocation,
    uid: str,
    destination: Destination | None,
    deployment: Object | None,
    service: Object | None,
    *,
    reachable: bool,
    error: str = "",
    pending: bool = False,
) -> CopyObservation:
    """The observation of one copy from the informers' objects (None: not there)."""
    if deployment is None:
        base = CopyObservation(location, reachable, error, pending)
    else:
        meta = deployment.get("metadata") or {}
        spec = deployment.get("spec") or {}
        status = deployment.get("status") or {}
        replicas = spec.get("replicas", 1)
        generation, observed = meta.get("generation"), status.get("observedGeneration")
        base = CopyObservation(
            location, reachable, error, pending, exists=True, foreign=_owner(deployment, uid),
            replicas=replicas if isinstance(replicas, int) else None,
            ready_replicas=_int(status.get("readyReplicas")),
            updated_replicas=_int(status.get("updatedReplicas")),
            available_replicas=_int(status.get("availableReplicas")),
            generation=generation if isinstance(generation, int) else None,
            observed_generation=observed if isinstance(observed, int) else None,
            template_hash=(meta.get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION),
            rollout_problem=_rollout_problem(deployment),
            deployment=deployment,
        )
    service_foreign = _owner(service, uid) if service is not None else ""
    address, problem = (None, "") if destination is None else copy_address(destination, service)
    if service_foreign:
        address, problem = None, f"the Service named {location.name} is {service_foreign}"
    return replace(base, service_exists=service is not None, service_foreign=service_foreign, address=address,
                   address_problem=problem, service=service)
