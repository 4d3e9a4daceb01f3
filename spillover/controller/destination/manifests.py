"""The copy's Deployment and Service on the destination cluster, made from the origin's pod template (pure).

The pod template is copied as it is — image, command, args, env, resources, probes, volumes — with these
exceptions, each reported (status `destination.warnings`, and an Event when they change), because a
field that names something of cluster A means something else, or nothing, on cluster B:

| field of the origin's pod spec | on the copy |
|---|---|
| `serviceAccountName` / `serviceAccount` | `destination.serviceAccountName`, else removed (the namespace's default): an identity of cluster A does not exist on B, and creating one there is not spillover's to decide |
| `nodeName` | removed: a node of cluster A |
| `nodeSelector` | `destination.nodeSelector` when given, else kept |
| Secrets, ConfigMaps, PersistentVolumeClaims (volumes, `env[].valueFrom`, `envFrom`, `imagePullSecrets`), `priorityClassName` | kept, and listed as what the destination namespace must provide: spillover copies no Secret across clusters, and a copy silently started without its configuration would be worse than one waiting for it |
| `hostPath` volumes | kept, listed: paths on cluster B's nodes |

The copy's pods carry the origin's template labels plus `spillover.dev/copy: <name>`, which alone is the
Deployment's selector and the Service's (the origin's selector may change; a Deployment's may not). The
Deployment and Service carry `app.kubernetes.io/managed-by: spillover` and the origin's namespace, name
and uid (labels), the origin workload (annotation) and `spillover.dev/template-hash`: a digest of
everything spillover sets except the replica count, which tells an origin change (or an edit of the
copy's template on B) from a scale.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spillover.policy.destination import (
    COPY_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    ORIGIN_NAME_LABEL,
    ORIGIN_NAMESPACE_LABEL,
    ORIGIN_UID_LABEL,
    TEMPLATE_HASH_ANNOTATION,
)
from spillover.sources.kube.destinations import CopyClaim, WantedCopy

__all__ = ["ORIGIN_ANNOTATION", "CopyManifests", "copy_manifests", "service_differs"]

ORIGIN_ANNOTATION = "spillover.dev/origin"


@dataclass(frozen=True)
class CopyManifests:
    deployment: dict[str, Any] = field(default_factory=dict)
    service: dict[str, Any] = field(default_factory=dict)
    template_hash: str = ""
    warnings: tuple[str, ...] = ()
    error: str = ""  # why no copy can be made (yet): the origin is not read, has no port, ...


def _container_ports(spec: Mapping[str, Any]) -> list[tuple[str, int]]:
    out = []
    for container in spec.get("containers") or []:
        for port in container.get("ports") or [] if isinstance(container, Mapping) else []:
            number = port.get("containerPort") if isinstance(port, Mapping) else None
            if isinstance(number, int):
                out.append((str(port.get("name") or ""), number))
    return out


def _ports(wanted: WantedCopy, spec: Mapping[str, Any]) -> tuple[int | str, int] | str:
    """(targetPort, Service port), or why they cannot be chosen."""
    destination = wanted.destination
    declared = _container_ports(spec)
    target: int | str | None = destination.target_port
    if target is None:
        serving = wanted.serving_port
        if any(serving in (name, number) for name, number in declared if serving is not None):
            target = serving
        elif declared:
            target = declared[0][1]
    if target is None:
        return "the origin's pod template declares no container port: set destination.targetPort"
    if isinstance(target, str):
        number = next((n for name, n in declared if name == target), None)
        if number is None and destination.port is None:
            return f'the origin\'s pod template has no container port named "{target}": set destination.port'
        return target, destination.port or int(number or 0)
    return target, destination.port or target


def _references(spec: Mapping[str, Any]) -> list[str]:
    """What the pod needs from its namespace: Secrets, ConfigMaps, claims, a PriorityClass, host paths."""
    found: dict[str, None] = {}

    def add(kind: str, name: Any) -> None:
        if isinstance(name, str) and name:
            found[f"{kind} {name}"] = None

    for volume in spec.get("volumes") or []:
        if not isinstance(volume, Mapping):
            continue
        add("Secret", (volume.get("secret") or {}).get("secretName"))
        add("ConfigMap", (volume.get("configMap") or {}).get("name"))
        add("PersistentVolumeClaim", (volume.get("persistentVolumeClaim") or {}).get("claimName"))
        if volume.get("hostPath"):
            add("hostPath", (volume.get("hostPath") or {}).get("path"))
        for source in (volume.get("projected") or {}).get("sources") or []:
            if isinstance(source, Mapping):
                add("Secret", (source.get("secret") or {}).get("name"))
                add("ConfigMap", (source.get("configMap") or {}).get("name"))
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if not isinstance(container, Mapping):
            continue
        for env in container.get("env") or []:
            source = (env.get("valueFrom") or {}) if isinstance(env, Mapping) else {}
            add("Secret", (source.get("secretKeyRef") or {}).get("name"))
            add("ConfigMap", (source.get("configMapKeyRef") or {}).get("name"))
        for env_from in container.get("envFrom") or []:
            if isinstance(env_from, Mapping):
                add("Secret", (env_from.get("secretRef") or {}).get("name"))
                add("ConfigMap", (env_from.get("configMapRef") or {}).get("name"))
    for pull in spec.get("imagePullSecrets") or []:
        add("Secret", pull.get("name") if isinstance(pull, Mapping) else None)
    add("PriorityClass", spec.get("priorityClassName"))
    return sorted(found)


def _pod_spec(wanted: WantedCopy, spec: dict[str, Any], warnings: list[str]) -> None:
    destination = wanted.destination
    account = spec.pop("serviceAccountName", None) or spec.pop("serviceAccount", None)
    spec.pop("serviceAccount", None)
    if destination.service_account_name is not None:
        spec["serviceAccountName"] = destination.service_account_name
    elif account and account != "default":
        warnings.append(f"serviceAccountName {account} is cluster A's: the copy runs as its namespace's default "
                        "ServiceAccount (set destination.serviceAccountName)")
    if spec.pop("nodeName", None):
        warnings.append("nodeName is a node of cluster A: removed")
    if destination.node_selector is not None:
        spec["nodeSelector"] = dict(destination.node_selector)
    needed = _references(spec)
    if needed:
        warnings.append(f"needs on the destination, in namespace {wanted.location.namespace}: {', '.join(needed)}")


def _digest(document: Any) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def copy_manifests(claim: CopyClaim, wanted: WantedCopy, replicas: int) -> CopyManifests:
    """The Deployment and Service to keep on the destination for `claim`, with `replicas`."""
    origin = wanted.origin
    if origin.exists is False:
        return CopyManifests(error=f"the origin {origin} does not exist")
    if origin.template is None:
        return CopyManifests(error=f"reading the origin {origin}")
    template = copy.deepcopy(dict(origin.template))
    spec = template.get("spec")
    if not isinstance(spec, dict) or not spec.get("containers"):
        return CopyManifests(error=f"the origin {origin} has no pod template with containers")
    warnings: list[str] = []
    if origin.kind != "Deployment":
        warnings.append(f"the origin is a {origin.kind}: the copy is a Deployment (its pod template only)")
    _pod_spec(wanted, spec, warnings)
    ports = _ports(wanted, spec)
    if isinstance(ports, str):
        return CopyManifests(warnings=tuple(warnings), error=ports)
    target_port, service_port = ports
    location = wanted.location
    found = template.get("metadata")
    meta: dict[str, Any] = found if isinstance(found, dict) else {}
    pod_labels = {**(meta.get("labels") or {}), COPY_LABEL: location.name}
    template["metadata"] = {"labels": pod_labels}
    if meta.get("annotations"):
        template["metadata"]["annotations"] = meta["annotations"]
    labels = {
        MANAGED_BY_LABEL: MANAGED_BY,
        ORIGIN_NAMESPACE_LABEL: claim.namespace,
        ORIGIN_NAME_LABEL: claim.name,
        ORIGIN_UID_LABEL: claim.uid,
        COPY_LABEL: location.name,
    }
    where = f"{claim.group}/ModelDeployment {claim.namespace}/{claim.name}; {origin}"
    selector = {COPY_LABEL: location.name}
    deployment_spec = {"selector": {"matchLabels": selector}, "template": template}
    service_spec = {
        "type": wanted.destination.service_type,
        "selector": selector,
        "ports": [{"name": "serving", "protocol": "TCP", "port": service_port, "targetPort": target_port}],
    }
    digest = _digest({"labels": labels, "origin": where, "deployment": deployment_spec, "service": service_spec})
    annotations = {ORIGIN_ANNOTATION: where, TEMPLATE_HASH_ANNOTATION: digest}
    metadata = {"name": location.name, "namespace": location.namespace, "labels": labels, "annotations": annotations}
    return CopyManifests(
        deployment={"apiVersion": "apps/v1", "kind": "Deployment", "metadata": copy.deepcopy(metadata),
                    "spec": {"replicas": replicas, **deployment_spec}},
        service={"apiVersion": "v1", "kind": "Service", "metadata": copy.deepcopy(metadata), "spec": service_spec},
        template_hash=digest,
        warnings=tuple(warnings),
    )


def service_differs(live: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """Why the Service on B is not what spillover keeps there ("" when it is), ignoring what the API server
    fills in (cluster IPs, node ports, defaults)."""
    meta = live.get("metadata") or {}
    if (meta.get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION) != wanted["metadata"]["annotations"][
        TEMPLATE_HASH_ANNOTATION
    ]:
        return "its template hash differs"
    spec, want = live.get("spec") or {}, wanted["spec"]
    if spec.get("type") != want["type"]:
        return f"its type is {spec.get('type')}"
    if dict(spec.get("selector") or {}) != want["selector"]:
        return "its selector was changed"
    ports = [{k: p.get(k) for k in ("name", "protocol", "port", "targetPort")} for p in spec.get("ports") or []]
    if ports != want["ports"]:
        return "its ports were changed"
    return ""
