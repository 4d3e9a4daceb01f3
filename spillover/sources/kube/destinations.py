"""What each ModelDeployment asks of its destination cluster, read purely from the informers' stores.

A `CopyClaim` per ModelDeployment that has a destination, a record of where its copy lives, or
spillover's finalizer:

- `wanted`: the copy that should exist now (the served model's destination, resolved: where on B, the
  origin workload's pod template and replicas) — None while the object is being deleted, when the
  destination was removed from the spec, or when it cannot be resolved (`problem` says why);
- `recorded`: where a copy was made (the `spillover.dev/destination-copy` annotation, written with the
  finalizer before anything is created on B), so that it can be removed after the spec changed, became
  invalid or the object is being deleted;
- `finalizer`, `deleting`, `abandon` (`spillover.dev/abandon-destination: "true"`).

The kubeconfig Secrets are read in the ModelDeployment's own namespace only, for the destination and for
the record alike: a record pointing elsewhere is refused (whoever may edit a ModelDeployment must not make
spillover use another namespace's credentials). Their values travel as `SecretStr`; messages name the
Secret and the key, never the content.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pydantic import SecretStr

from spillover.policy import ModelDeployment
from spillover.policy.destination import ABANDON_ANNOTATION, FINALIZER, RECORD_ANNOTATION, Destination
from spillover.policy.errors import PolicyError
from spillover.policy.types import DNS1123_LABEL
from spillover.sources.kube.kinds import Key, Object
from spillover.sources.kube.resolve import SecretLookupError, secret_value

__all__ = [
    "DESTINATION_PATH",
    "CopyClaim",
    "CopyLocation",
    "OriginWorkload",
    "SecretKey",
    "WantedCopy",
    "claim_of",
    "kubeconfig_values",
]

DESTINATION_PATH = "spec.offloadingConfig.destination"
_RECORD_LIMIT = 1024


@dataclass(frozen=True, order=True)
class SecretKey:
    """A key of a Secret on this cluster."""

    namespace: str
    name: str
    key: str

    def __str__(self) -> str:
        return f'Secret {self.namespace}/{self.name} key "{self.key}"'


@dataclass(frozen=True, order=True)
class CopyLocation:
    """Where a copy lives: the cluster (by the Secret holding its kubeconfig), the namespace and name there."""

    kubeconfig: SecretKey
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    def annotation(self) -> str:
        return json.dumps({
            "kubeconfigSecret": {"namespace": self.kubeconfig.namespace, "name": self.kubeconfig.name,
                                 "key": self.kubeconfig.key},
            "namespace": self.namespace,
            "name": self.name,
        }, sort_keys=True, separators=(",", ":"))

    @classmethod
    def parse(cls, text: str) -> CopyLocation | None:
        """The annotation's value, or None when it is not one spillover wrote (bounded, names checked)."""
        if len(text) > _RECORD_LIMIT:
            return None
        try:
            data = json.loads(text)
            secret = data["kubeconfigSecret"]
            location = cls(SecretKey(str(secret["namespace"]), str(secret["name"]), str(secret["key"])),
                           str(data["namespace"]), str(data["name"]))
        except (ValueError, KeyError, TypeError):
            return None
        labels = (location.kubeconfig.namespace, location.namespace, location.name, location.kubeconfig.name)
        if not all(DNS1123_LABEL.match(v) and len(v) <= 63 for v in labels) or not location.kubeconfig.key:
            return None
        return location


@dataclass(frozen=True)
class OriginWorkload:
    """The workload of modelSourceRef, whose pod template the copy is made of."""

    kind: str
    namespace: str
    name: str
    # spec.template as the API server holds it; None: not read yet, or the workload does not exist
    template: Mapping[str, Any] | None = None
    replicas: int | None = None
    exists: bool | None = None  # None: not known yet

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class WantedCopy:
    location: CopyLocation
    destination: Destination
    origin: OriginWorkload
    serving_port: int | str | None = None  # serviceRef.targetPort: the port the model is served on


@dataclass(frozen=True)
class CopyClaim:
    group: str
    namespace: str
    name: str
    uid: str
    model: str | None = None  # the model this ModelDeployment serves, when it serves one
    wanted: WantedCopy | None = None
    recorded: CopyLocation | None = None
    finalizer: bool = False
    deleting: bool = False
    abandon: bool = False
    problem: str = ""
    resource_version: str = ""
    # Every finalizer of the object, for a patch that adds or removes only spillover's.
    finalizers: tuple[str, ...] = field(default=(), compare=False)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def locations(self) -> tuple[CopyLocation, ...]:
        found = [c for c in (self.wanted.location if self.wanted else None, self.recorded) if c is not None]
        return tuple(dict.fromkeys(found))


def _origin(md: ModelDeployment, namespace: str, workloads: Mapping[tuple[str, str, str], Object | None]) -> OriginWorkload:
    source = md.spec.model_source_ref
    assert source is not None  # validation: a destination needs modelSourceRef
    ident = (source.kind, source.namespace or namespace, source.name)
    origin = OriginWorkload(*ident)
    if ident not in workloads:
        return origin
    obj = workloads[ident]
    if obj is None:
        return OriginWorkload(*ident, exists=False)
    spec = obj.get("spec") or {}
    template = spec.get("template")
    replicas = spec.get("replicas", 1)
    return OriginWorkload(
        *ident,
        template=MappingProxyType(dict(template)) if isinstance(template, Mapping) else None,
        replicas=replicas if isinstance(replicas, int) and not isinstance(replicas, bool) and replicas >= 0 else None,
        exists=True,
    )


def claim_of(
    obj: Object,
    group: str,
    served: ModelDeployment | None,
    workloads: Mapping[tuple[str, str, str], Object | None],
    secrets: set[Key],
) -> tuple[CopyClaim | None, list[PolicyError]]:
    """The claim of one ModelDeployment object (None: it has nothing to do with a destination).

    `served`: the model this object serves now (its valid spec, or its last good one), else None.
    Adds the Secrets to watch to `secrets`."""
    meta = obj.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    found = meta.get("annotations")
    annotations: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    raw_finalizers = meta.get("finalizers")
    finalizers = tuple(str(f) for f in raw_finalizers) if isinstance(raw_finalizers, list) else ()
    deleting = bool(meta.get("deletionTimestamp"))
    file = f"{namespace}/{name}" if group == "spillover.dev" else f"{namespace}/{name} ({group})"
    errors: list[PolicyError] = []
    model = served.model if served is not None else None
    recorded: CopyLocation | None = None
    problem = ""
    record_text = annotations.get(RECORD_ANNOTATION)
    if isinstance(record_text, str):
        recorded = CopyLocation.parse(record_text)
        if recorded is None:
            problem = f"annotation {RECORD_ANNOTATION} is not one spillover wrote: where the copy lives is unknown"
        elif recorded.kubeconfig.namespace != namespace:
            problem = (f"annotation {RECORD_ANNOTATION} names a Secret in another namespace "
                       f"({recorded.kubeconfig.namespace}): refused")
            recorded = None
    if recorded is not None:
        secrets.add((recorded.kubeconfig.namespace, recorded.kubeconfig.name))

    wanted: WantedCopy | None = None
    offloading = served.spec.offloading_config if served is not None else None
    destination = offloading.destination if offloading is not None else None
    if served is not None and destination is not None and not deleting:
        ref = destination.kubeconfig_secret_ref
        if ref.namespace is not None and ref.namespace != namespace:
            problem = "kubeconfigSecretRef.namespace: must be the ModelDeployment's own namespace"
            errors.append(PolicyError(file, None, f"{DESTINATION_PATH}.kubeconfigSecretRef.namespace",
                                      "must be the ModelDeployment's own namespace", model=model))
        else:
            origin = _origin(served, namespace, workloads)
            copy_name = destination.name or origin.name
            if len(copy_name) > 63 or not DNS1123_LABEL.match(copy_name):
                problem = f'the copy cannot be named "{copy_name[:80]}" (a DNS-1123 label of at most 63 characters)'
                errors.append(PolicyError(file, None, f"{DESTINATION_PATH}.name",
                                          "is required: the workload's name is not a DNS-1123 label of at most 63 "
                                          "characters", model=model))
            else:
                location = CopyLocation(SecretKey(namespace, ref.name, ref.key), destination.namespace or namespace,
                                        copy_name)
                secrets.add((namespace, ref.name))
                service = served.spec.service_ref
                wanted = WantedCopy(location, destination, origin, service.target_port if service else None)
    has_finalizer = FINALIZER in finalizers
    if wanted is None and recorded is None and not has_finalizer and destination is None:
        return None, errors
    claim = CopyClaim(
        group=group, namespace=namespace, name=name, uid=str(meta.get("uid") or ""), model=model, wanted=wanted,
        recorded=recorded, finalizer=has_finalizer, deleting=deleting,
        abandon=str(annotations.get(ABANDON_ANNOTATION, "")).strip().lower() == "true",
        problem=problem, resource_version=str(meta.get("resourceVersion") or ""), finalizers=finalizers,
    )
    return claim, errors


def kubeconfig_values(
    claims: Mapping[Any, CopyClaim], secrets: Mapping[Key, Object | None]
) -> dict[SecretKey, SecretStr | str]:
    """The kubeconfig of every location the claims name: its value, or why it cannot be read. A Secret
    whose informer has not synced yet is absent."""
    out: dict[SecretKey, SecretStr | str] = {}
    for claim in claims.values():
        for location in claim.locations:
            ref = location.kubeconfig
            if (ref.namespace, ref.name) not in secrets or ref in out:
                continue
            try:
                out[ref] = secret_value(secrets[(ref.namespace, ref.name)], ref.namespace, ref.name, ref.key)
            except SecretLookupError as error:
                out[ref] = str(error)
    return dict(sorted(out.items()))
