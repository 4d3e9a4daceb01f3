"""Reading a model's local rate limit (Envoy's token bucket) out of what Envoy runs and what spillover sent."""

from __future__ import annotations

from typing import Any

from tests.harness.envoy import Envoy, dicts_in
from tests.harness.serve import Spillover

__all__ = ["RL_FILTER", "envoy_bucket", "sent_bucket", "token_buckets"]

RL_FILTER = "envoy.filters.http.local_ratelimit"


def token_buckets(document: Any, route_name: str = "llama/default") -> list[dict[str, Any]]:
    """The local rate limit token bucket(s) of a route, in an Envoy config_dump or a /debug/config view."""
    buckets = []
    for node in dicts_in(document):
        if node.get("name") == route_name and "typed_per_filter_config" in node:
            limit = node["typed_per_filter_config"].get(RL_FILTER)
            if limit is not None:
                buckets.append(limit["token_bucket"])
    return buckets


def envoy_bucket(envoy: Envoy, route_name: str = "llama/default") -> list[dict[str, Any]]:
    """The buckets of the route in the Envoy's running configuration."""
    return token_buckets(envoy.config_dump(resource="dynamic_route_configs"), route_name)


def sent_bucket(server: Spillover, node: str, route_name: str = "llama/default") -> list[dict[str, Any]]:
    """The buckets of the route in what spillover sent to `node` (its /debug/config view)."""
    return token_buckets(server.get_json(f"/debug/config?node={node}"), route_name)
