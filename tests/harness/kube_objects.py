"""Kubernetes objects for the tests: as a test writes them to the API server, and as the API server
returns them (with metadata and status) for the pure tests of resolution and state building."""

from __future__ import annotations

import base64
import json
from typing import Any

from spillover.sources.kube.state import CROrigin, KubeDesiredState


def as_object(value: object) -> dict[str, Any]:
    """What the client's CustomObjectsApi returns (typed ``object``): a JSON object."""
    assert isinstance(value, dict), f"not a JSON object: {value!r}"
    return value


# -- as a test writes them to the API server ------------------------------------------------------------


def model_deployment(name: str, model: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "spillover.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"model": model, **spec},
    }


def service(name: str, namespace: str, port: int = 80, target: int | str = "http") -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"name": "http", "port": port, "targetPort": target}], "selector": {"app": name}},
    }


def endpoint_slice(name: str, namespace: str, service_name: str, port: int,
                   endpoints: list[tuple[str, bool]], *, terminating: bool = False) -> dict[str, Any]:
    """An EndpointSlice as the EndpointSlice controller would write it (no controller runs here).

    The API server refuses loopback addresses here, so the addresses are documentation-range data
    (e.g. 198.51.100.0/24): tests only check that they reach Envoy's configuration and never send a
    request that Envoy could route to them (no test traffic may leave 127.0.0.0/8)."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": terminating}}
            for ip, ready in endpoints
        ],
    }


def secret(name: str, namespace: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}, "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


# -- as the API server returns them ------------------------------------------------------------------


def endpoint(*addresses: str, ready: bool | None = True, serving: bool | None = None,
             terminating: bool | None = None) -> dict[str, Any]:
    conditions = {k: v for k, v in (("ready", ready), ("serving", serving), ("terminating", terminating)) if v is not None}
    return {"addresses": list(addresses), "conditions": conditions}


def eps(endpoints: list[dict[str, Any]], ports: list[dict[str, Any]], *, service: str = "llama",
        namespace: str = "ml", address_type: str = "IPv4", name: str = "llama-abc") -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type, "endpoints": endpoints, "ports": ports,
    }


def pod(name: str, model: str | None = "llama", port: str | None = "8000", ip: str | None = "10.1.0.1",
        ready: bool = True, config: Any = None, created: str = "2025-01-01T00:00:00Z", deleting: bool = False,
        namespace: str = "ml") -> dict[str, Any]:
    labels = {}
    if model is not None:
        labels["model.aibrix.ai/name"] = model
    if port is not None:
        labels["model.aibrix.ai/port"] = port
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels, "creationTimestamp": created}
    if config is not None:
        meta["annotations"] = {"model.aibrix.ai/config": config if isinstance(config, str) else json.dumps(config)}
    if deleting:
        meta["deletionTimestamp"] = "2025-01-02T00:00:00Z"
    status: dict[str, Any] = {"phase": "Running",
                              "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": status}


def serving_cr(state: KubeDesiredState, model: str) -> CROrigin:
    """The ModelDeployment serving ``model`` in a built state."""
    origin = state.object_of(model)
    assert origin is not None, f"no ModelDeployment serves {model}"
    return origin


def md(name: str = "llama", model: str = "llama-3-8b", namespace: str = "ml", generation: int = 1,
       created: str = "2025-01-01T00:00:00Z", group: str = "spillover.dev", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{group}/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace, "generation": generation, "uid": f"uid-{name}",
                     "resourceVersion": str(generation), "creationTimestamp": created},
        "spec": {"model": model, **(spec or {"serviceRef": {"name": "llama", "targetPort": 8000}})},
    }


def slices(*ips: str, ready: bool = True) -> list[dict[str, Any]]:
    return [eps([endpoint(ip, ready=ready) for ip in ips], [{"name": "http", "port": 8000}])]
