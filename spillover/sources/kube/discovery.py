"""Whether the API server serves a resource type (API discovery), asked before watching a custom resource.

A watch of a resource whose CustomResourceDefinition is not installed answers 404 forever; asking
discovery first lets the source say so once, leave it out of the initial sync, and watch for it to be
installed instead.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from spillover.sources.kube.kinds import Resource

__all__ = ["resource_served"]


def resource_served(api: ApiClient, resource: Resource, timeout: float = 5.0) -> bool:
    """True when `/apis/<group>/<version>` lists the resource's plural, False when the group/version
    is not served (404) or does not list it. Raises ApiException (other statuses) or the transport's
    error when there is no usable answer."""
    base = f"/apis/{resource.group}/{resource.version}" if resource.group else f"/api/{resource.version}"
    method, url, headers, body, post = api.param_serialize(
        method="GET", resource_path=base, header_params={"Accept": "application/json"}, auth_settings=["BearerToken"]
    )
    rest = api.call_api(method, url, header_params=headers, body=body, post_params=post,
                        _request_timeout=(timeout, timeout))
    response = rest.response
    try:
        data = response.data
    finally:
        response.release_conn()
    if response.status == 404:
        return False
    if not 200 <= response.status <= 299:
        raise ApiException(status=response.status, reason=response.reason, body=data.decode("utf-8", "replace"))
    document: Any = json.loads(data)
    names = {r.get("name") for r in document.get("resources") or [] if isinstance(r, dict)}
    return resource.plural in names
