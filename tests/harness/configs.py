"""Small static Envoy configurations for tests of plain Envoy behaviour (no control plane)."""

from __future__ import annotations

from typing import Any

__all__ = ["http_proxy_listener", "static_cluster", "static_proxy_resources"]

_HCM_TYPE = (
    "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)
_ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def static_cluster(name: str, addresses: list[str], connect_timeout: str = "1s") -> dict[str, Any]:
    """A STATIC round-robin cluster over ``ip:port`` addresses."""
    endpoints = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        endpoints.append(
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": int(port)}}}}
        )
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": connect_timeout,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]},
    }


def http_proxy_listener(name: str, port: int, cluster: str, stat_prefix: str = "ingress") -> dict[str, Any]:
    """An HTTP listener on 127.0.0.1:port sending every request to ``cluster``."""
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": _HCM_TYPE,
                            "stat_prefix": stat_prefix,
                            "route_config": {
                                "name": f"{name}-routes",
                                "virtual_hosts": [
                                    {
                                        "name": "all",
                                        "domains": ["*"],
                                        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}],
                                    }
                                ],
                            },
                            "http_filters": [
                                {"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER_TYPE}}
                            ],
                        },
                    }
                ]
            }
        ],
    }


def static_proxy_resources(
    listener_port: int, upstream_addresses: list[str], cluster: str = "backend"
) -> dict:
    """``static_resources`` for one listener proxying everything to one cluster of upstreams."""
    return {
        "listeners": [http_proxy_listener("ingress", listener_port, cluster)],
        "clusters": [static_cluster(cluster, upstream_addresses)],
    }
