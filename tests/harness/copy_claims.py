"""Copy claims and observations built by hand, for the pure tests of the destination's controller side."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Any

from spillover.policy import Destination
from spillover.sources.destination.observe import CopyObservation
from spillover.sources.kube.destinations import CopyClaim, CopyLocation, OriginWorkload, SecretKey, WantedCopy

__all__ = ["LOCATION", "claim", "destination", "observed", "origin_template"]

LOCATION = CopyLocation(SecretKey("ml", "cluster-b", "kubeconfig"), "serving", "llama")


def destination(**fields: Any) -> Destination:
    return Destination.model_validate({"kubeconfigSecretRef": {"name": "cluster-b"}, **fields})


def origin_template(**pod: Any) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "llama"}, "creationTimestamp": None},
        "spec": {"containers": [{"name": "vllm", "image": "vllm:1", "ports": [{"name": "http", "containerPort": 8000}],
                                 "args": ["--model", "m"]}], **pod},
    }


def claim(template: dict[str, Any] | None = None, kind: str = "Deployment", serving_port: int | str | None = None,
          wanted: bool = True, location: CopyLocation = LOCATION, **fields: Any) -> CopyClaim:
    spec = destination(**fields.pop("destination", {}))
    origin = OriginWorkload(kind, "ml", "llama", MappingProxyType(template or origin_template()), 3, True)
    base = CopyClaim("spillover.dev", "ml", "llama", "uid-1", model="llama-3",
                     wanted=WantedCopy(location, spec, origin, serving_port) if wanted else None,
                     finalizers=tuple(fields.get("finalizers", ())))
    return replace(base, **fields)


def observed(**fields: Any) -> CopyObservation:
    return CopyObservation(**{"location": LOCATION, "reachable": True, **fields})
