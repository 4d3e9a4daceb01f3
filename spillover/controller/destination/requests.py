"""The calls the actuator makes, and the bodies it sends (the `kubernetes` client's raw ApiClient: JSON in,
JSON out, a bounded timeout per call, no retries of its own)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from spillover.sources.kube.destinations import CopyClaim

__all__ = ["api_error", "call", "event_body", "resource_version", "service_replacement", "with_replicas"]

_NOTE_LIMIT = 1024  # events.k8s.io/v1: a note of at most 1 kB


def call(
    api: ApiClient, method: str, path: str, body: Any, timeout: float, content_type: str = "application/json"
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, the JSON object answered, {} when there is none)."""
    method, url, headers, payload, post = api.param_serialize(
        method=method, resource_path=path, body=body,
        header_params={"Accept": "application/json", "Content-Type": content_type},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(method, url, header_params=headers, body=payload, post_params=post,
                            _request_timeout=(timeout, timeout)).response
    try:
        data = response.data
    finally:
        response.release_conn()
    try:
        document = json.loads(data) if data else {}
    except ValueError:
        document = {}
    return response.status, document if isinstance(document, dict) else {}


def resource_version(obj: Mapping[str, Any] | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")


def event_body(
    claim: CopyClaim, reason: str, note: str, kind: str, action: str, now: float, controller: str, instance: str
) -> dict[str, Any]:
    """An events.k8s.io/v1 Event regarding the claim's ModelDeployment."""
    if len(note.encode()) > _NOTE_LIMIT:
        note = note.encode()[: _NOTE_LIMIT - 3].decode(errors="ignore") + "..."
    regarding: dict[str, Any] = {"apiVersion": f"{claim.group}/v1alpha1", "kind": "ModelDeployment",
                                 "namespace": claim.namespace, "name": claim.name}
    if claim.uid:
        regarding["uid"] = claim.uid
    return {
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        # client-go's naming (<object>.<unix nanoseconds in hex>): generateName ending in "." is refused.
        "metadata": {"name": f"{claim.name[:230]}.{int(now * 1e9):x}", "namespace": claim.namespace},
        "eventTime": datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "reportingController": controller, "reportingInstance": instance, "action": action, "reason": reason,
        "note": note, "type": kind, "regarding": regarding,
    }


def with_replicas(deployment: Mapping[str, Any], replicas: int) -> dict[str, Any]:
    body = json.loads(json.dumps(deployment))
    body["spec"]["replicas"] = replicas
    return dict(body)


def service_replacement(wanted: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    """The Service to PUT: what spillover keeps, with what the API server allocated kept as allocated."""
    body = json.loads(json.dumps(wanted))
    spec, live_spec = body["spec"], live.get("spec") or {}
    body["metadata"]["resourceVersion"] = resource_version(live)
    for field in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy", "healthCheckNodePort"):
        if field in live_spec:
            spec[field] = live_spec[field]
    node_ports = {p.get("name"): p.get("nodePort") for p in live_spec.get("ports") or [] if p.get("nodePort")}
    for port in spec["ports"]:
        if port.get("name") in node_ports and spec["type"] != "ClusterIP":
            port["nodePort"] = node_ports[port["name"]]
    return dict(body)


def api_error(status: int, result: Mapping[str, Any]) -> ApiException:
    error = ApiException(status=status, reason=str(result.get("reason") or ""))
    error.body = json.dumps({"message": str(result.get("message") or "")})
    return error
