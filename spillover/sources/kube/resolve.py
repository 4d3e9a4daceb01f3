"""Pure functions from Kubernetes objects (the API server's JSON, as dicts) to what the policies need.

- `slice_endpoints`: EndpointSlices of a Service -> "host:port" of the ready, non-terminating endpoints,
  the port chosen by `serviceRef.targetPort` (a number or a port name);
- `secret_value`: a key of a Secret -> SecretStr (never logged, errors name the Secret and the key only);
- `workload_ready_replicas`: `status.readyReplicas` of a Deployment / StatefulSet / ReplicaSet;
- `aibrix_models`: pods labelled `model.aibrix.ai/name` + `model.aibrix.ai/port` -> ModelDeployments,
  with the routing profiles of the `model.aibrix.ai/config` annotation.

No I/O, no clock: the Kubernetes source calls them with its informers' stores.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from spillover.policy import API_VERSION, KIND, ModelDeployment, Profile
from spillover.policy.errors import PolicyError
from spillover.policy.validate import validate_document

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
AIBRIX_NAME_LABEL = "model.aibrix.ai/name"
AIBRIX_PORT_LABEL = "model.aibrix.ai/port"
AIBRIX_CONFIG_ANNOTATION = "model.aibrix.ai/config"

Object = Mapping[str, Any]


def _meta(obj: Object) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- EndpointSlices -----------------------------------------------------------------------------------


class PortError(ValueError):
    pass


def _service_port_name(service: Object | None, target: int) -> str | None:
    """The name of the Service port whose `port` is `target` (serviceRef.targetPort may name the
    Service's port rather than the pods' port, as in Beamlit's examples where both are 80)."""
    for port in ((service or {}).get("spec") or {}).get("ports") or []:
        if port.get("port") == target:
            return port.get("name") or ""
    return None


def slice_port(slice_: Object, target: int | str | None, service: Object | None = None) -> int | None:
    """The port number of `target` in one EndpointSlice; None when the slice cannot serve it.

    - a name: the slice port of that name (the pods' number, which may differ between slices);
    - a number: a slice port with that number, else the slice port named like the Service port with that
      number, else the number itself when the slice lists no ports;
    - none: the only port of the Service (or of the slice). Raises PortError when that is ambiguous.
    """
    ports = [p for p in slice_.get("ports") or [] if (p.get("protocol") or "TCP") == "TCP"]
    if isinstance(target, str):
        return next((p.get("port") for p in ports if (p.get("name") or "") == target), None)
    if isinstance(target, int):
        if any(p.get("port") == target for p in ports):
            return target
        name = _service_port_name(service, target)
        if name is not None:
            match = next((p.get("port") for p in ports if (p.get("name") or "") == name), None)
            if match is not None:
                return match
        return target if not ports else None
    service_ports = ((service or {}).get("spec") or {}).get("ports") or []
    if len(service_ports) > 1:
        raise PortError(f"is required: the Service has {len(service_ports)} ports")
    if len(service_ports) == 1:
        name = service_ports[0].get("name") or ""
        match = next((p.get("port") for p in ports if (p.get("name") or "") == name), None)
        if match is not None:
            return match
    if len(ports) == 1:
        return ports[0].get("port")
    if len(ports) > 1:
        raise PortError(f"is required: the EndpointSlice has {len(ports)} ports")
    return None


def endpoint_usable(endpoint: Object) -> bool:
    """Ready and not terminating. A missing `ready` means unknown, which consumers treat as ready
    (EndpointConditions API doc); a missing `terminating` means false. `serving` is not enough: a
    terminating endpoint that still serves is draining and gets no new traffic."""
    conditions = endpoint.get("conditions") or {}
    return conditions.get("ready") is not False and conditions.get("terminating") is not True


def slice_endpoints(
    slices: Iterable[Object], target: int | str | None, service: Object | None = None
) -> list[str]:
    """Sorted, unique "host:port" of the usable endpoints of a Service's EndpointSlices.

    Raises PortError when `target` is needed but not given (several ports)."""
    found: set[str] = set()
    for slice_ in slices:
        if slice_.get("addressType") not in ("IPv4", "IPv6", "FQDN"):
            continue
        port = slice_port(slice_, target, service)
        if port is None or not 1 <= int(port) <= 65535:
            continue
        for endpoint in slice_.get("endpoints") or []:
            if not endpoint_usable(endpoint):
                continue
            for address in endpoint.get("addresses") or []:
                found.add(host_port(address, int(port)))
    return sorted(found)


def slices_of_service(slices: Iterable[Object], namespace: str, service: str) -> list[Object]:
    return [
        s for s in slices
        if (_meta(s).get("namespace") or "") == namespace
        and (_meta(s).get("labels") or {}).get(SERVICE_NAME_LABEL) == service
    ]


# -- Secrets ------------------------------------------------------------------------------------------


class SecretLookupError(LookupError):
    pass


def secret_value(secret: Object | None, namespace: str, name: str, key: str) -> SecretStr:
    """The value of `key` in a Secret (data is base64, stringData is never returned by the API), without
    the trailing newline that `echo` and editors add, as in file mode. Messages never contain a value."""
    where = f"Secret {namespace}/{name}"
    if secret is None:
        raise SecretLookupError(f"{where} does not exist (or is not readable)")
    data = secret.get("data") or {}
    if key not in data:
        raise SecretLookupError(f'{where} has no key "{key}"')
    try:
        raw = base64.b64decode(data[key] or "", validate=True)
        value = raw.decode("utf-8")
    except (binascii.Error, ValueError):
        raise SecretLookupError(f'{where}: key "{key}" is not UTF-8 text') from None
    value = value.rstrip("\r\n")
    if not value:
        raise SecretLookupError(f'{where}: key "{key}" is empty')
    return SecretStr(value)


# -- workloads ----------------------------------------------------------------------------------------


def workload_ready_replicas(workload: Object | None) -> int:
    """Ready replicas of a Deployment/StatefulSet/ReplicaSet; 0 when it does not exist."""
    if workload is None:
        return 0
    ready = (workload.get("status") or {}).get("readyReplicas")
    return int(ready) if isinstance(ready, int) and ready > 0 else 0


# -- AIBrix pods --------------------------------------------------------------------------------------


def pod_ready(pod: Object) -> bool:
    """Running, Ready=True, not being deleted, with an IP."""
    if _meta(pod).get("deletionTimestamp"):
        return False
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or not status.get("podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


@dataclass(frozen=True)
class AIBrixModel:
    model: ModelDeployment
    pods: tuple[str, ...]  # "namespace/name" of the pods labelled with the model (ready or not)
    namespaces: tuple[str, ...]


_NOT_DNS = re.compile(r"[^a-z0-9-]+")


def synthetic_name(model: str) -> str:
    """A DNS-1123 label for metadata.name of a synthesized ModelDeployment."""
    slug = _NOT_DNS.sub("-", model.lower()).strip("-")
    return f"aibrix-{slug}"[:63].rstrip("-") or "aibrix-model"


def _pod_label(pod: Object) -> str:
    meta = _meta(pod)
    return f"{meta.get('namespace') or ''}/{meta.get('name') or ''}"


def _where(pod: Object) -> str:
    return f"{_pod_label(pod)} (pod)"


CONFIG_PATH = f'metadata.annotations["{AIBRIX_CONFIG_ANNOTATION}"]'


def _relabel(errors: Iterable[PolicyError], file: str, model: str) -> list[PolicyError]:
    out = []
    for e in errors:
        path = e.path
        if path.startswith("spec.routing"):
            path = CONFIG_PATH + path[len("spec.routing"):]
        out.append(PolicyError(file, None, path, e.message, model=model))
    return out


def _routing(config: Any, document: dict[str, Any], file: str, model: str) -> tuple[dict[str, Any] | None, list[PolicyError]]:
    """The routing section from an AIBrix config: the whole of it when valid, else only its valid
    profiles (each bad profile reported), else nothing (the defaults)."""
    if not isinstance(config, dict):
        return None, [PolicyError(file, None, CONFIG_PATH, "must be a JSON object", model=model)]

    def check(routing: dict[str, Any]) -> list[PolicyError]:
        result = validate_document({**document, "spec": {**document["spec"], "routing": routing}}, file=file)
        return [] if isinstance(result, ModelDeployment) else _relabel(result, file, model)

    errors = check(config)
    if not errors:
        return config, []
    profiles = config.get("profiles")
    if isinstance(profiles, dict):
        kept = {}
        for name, profile in profiles.items():
            try:
                Profile.model_validate(profile)
            except Exception:
                continue
            kept[name] = profile
        reduced = {**config, "profiles": kept}
        if kept and not check(reduced):
            return reduced, errors
    return None, errors


def aibrix_models(pods: Iterable[Object], taken: set[str] | frozenset[str] = frozenset()) -> tuple[list[AIBrixModel], list[PolicyError]]:
    """Models served straight from AIBrix-labelled pods, except those in `taken` (declared by a
    ModelDeployment, which wins). Endpoints: ready pods at `podIP:model.aibrix.ai/port`. Routing: the
    `model.aibrix.ai/config` annotation of the newest pod that has one (a rollout brings the new config)."""
    errors: list[PolicyError] = []
    by_model: dict[str, list[Object]] = {}
    for pod in pods:
        labels = _meta(pod).get("labels") or {}
        model = labels.get(AIBRIX_NAME_LABEL)
        if not model or model in taken:
            continue
        by_model.setdefault(model, []).append(pod)
    out: list[AIBrixModel] = []
    for model, members in sorted(by_model.items()):
        members.sort(key=lambda p: (_meta(p).get("creationTimestamp") or "", _pod_label(p)))
        endpoints: set[str] = set()
        for pod in members:
            port_text = (_meta(pod).get("labels") or {}).get(AIBRIX_PORT_LABEL)
            port = int(port_text) if isinstance(port_text, str) and port_text.isdigit() else 0
            if not 1 <= port <= 65535:
                errors.append(PolicyError(
                    _where(pod), None, f'metadata.labels["{AIBRIX_PORT_LABEL}"]',
                    "must be a port number between 1 and 65535" if port_text else "is required", model=model,
                ))
                continue
            if pod_ready(pod):
                endpoints.add(host_port((pod.get("status") or {})["podIP"], port))
        namespaces = sorted({_meta(p).get("namespace") or "" for p in members})
        document: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": synthetic_name(model), **({"namespace": namespaces[0]} if len(namespaces) == 1 else {})},
            "spec": {"model": model, "localBackend": {"endpoints": sorted(endpoints)}},
        }
        configured = [p for p in members if AIBRIX_CONFIG_ANNOTATION in (_meta(p).get("annotations") or {})]
        if configured:
            source = configured[-1]
            file = _where(source)
            try:
                config = json.loads(_meta(source)["annotations"][AIBRIX_CONFIG_ANNOTATION])
            except ValueError as exc:
                errors.append(PolicyError(file, None, CONFIG_PATH, f"invalid JSON: {type(exc).__name__}", model=model))
            else:
                routing, problems = _routing(config, document, file, model)
                errors.extend(problems)
                if routing is not None:
                    document["spec"]["routing"] = routing
        result = validate_document(document, file=f"pods labelled {AIBRIX_NAME_LABEL}={model}")
        if isinstance(result, ModelDeployment):
            out.append(AIBrixModel(result, tuple(_pod_label(p) for p in members), tuple(namespaces)))
        else:
            errors.extend(result)
    return out, errors
