"""Envoy v3 bootstrap documents that point an Envoy at spillover over ADS.

Pure functions: they build plain dicts (the shape of Envoy's YAML/JSON bootstrap) and never touch
the filesystem or the network, so they can be rendered into a ConfigMap, written by the harness,
or checked with ``envoy --mode validate`` alike.
"""

from __future__ import annotations

import ipaddress
import math
from typing import Any

import yaml

__all__ = [
    "XDS_CLUSTER_NAME",
    "build_bootstrap",
    "dump_yaml",
    "parse_host_port",
    "render_bootstrap_yaml",
    "static_bootstrap",
]

XDS_CLUSTER_NAME = "spillover_xds"

_HTTP_PROTOCOL_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

# HTTP/2 PING on the xDS connection: a control plane that vanished without a FIN (node lost,
# network partition) is detected within interval + timeout instead of the kernel's ~2 hours,
# and Envoy reconnects to a healthy replica.
_XDS_KEEPALIVE_INTERVAL = "10s"
_XDS_KEEPALIVE_TIMEOUT = "5s"

# Envoy's own default, written down so that a fleet with thousands of clusters keeps enough
# room for one large DiscoveryResponse in flight even if the default ever changes.
_XDS_CONNECTION_BUFFER_BYTES = 1024 * 1024


def parse_host_port(value: object, field: str = "xds_address") -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) and check it; ValueError names ``field``."""
    rule = f"{field} must be 'host:port' with a non-empty host and a port in 1-65535"
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise ValueError(f"{rule}, got {value!r}")
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or value[end + 1 : end + 2] != ":":
            raise ValueError(f"{rule}, got {value!r}")
        host, port_text = value[1:end], value[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{rule} (bracketed host must be an IPv6 address), got {value!r}") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or ":" in host:
            # A bare IPv6 address is ambiguous with the port separator; demand brackets.
            raise ValueError(f"{rule} (write IPv6 as [addr]:port), got {value!r}")
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"{rule}, got {value!r}")
    if not port_text.isdigit():
        raise ValueError(f"{rule}, got {value!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{rule}, got port {port} in {value!r}")
    return host, port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _duration(seconds: float, field: str) -> str:
    """Protobuf JSON Duration text; Envoy rejects exponents, so never use %g."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ValueError(f"{field} must be a number of seconds, got {seconds!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{field} must be a finite number of seconds > 0, got {seconds!r}")
    nanos = round(seconds * 1_000_000_000)
    if nanos < 1_000_000:
        raise ValueError(f"{field} must be at least 0.001 seconds, got {seconds!r}")
    whole, frac = divmod(nanos, 1_000_000_000)
    if frac == 0:
        return f"{whole}s"
    return f"{whole}.{frac:09d}".rstrip("0") + "s"


def _check_name(value: object, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field} must be a non-empty string, got {value!r}")
    return value


def _check_port(value: object, field: str) -> int:
    # 0 is allowed for admin: Envoy then picks a port and reports it via --admin-address-path.
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"{field} must be an integer in 0-65535, got {value!r}")
    return value


ADMIN_PORT_METADATA = "spillover.admin_port"


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _admin(admin_address: str, admin_port: int) -> dict[str, Any]:
    _check_name(admin_address, "admin_address")
    if not _is_ip(admin_address):
        raise ValueError(f"admin_address must be an IP address, got {admin_address!r}")
    return {"address": _socket_address(admin_address, _check_port(admin_port, "admin_port"))}


def _node(node_id: str, cluster: str) -> dict[str, Any]:
    return {"id": _check_name(node_id, "node_id"), "cluster": _check_name(cluster, "cluster")}


def _xds_cluster(host: str, port: int, connect_timeout: str) -> dict[str, Any]:
    ip = _is_ip(host)
    cluster: dict[str, Any] = {
        "name": XDS_CLUSTER_NAME,
        "type": "STATIC" if ip else "STRICT_DNS",
        "connect_timeout": connect_timeout,
    }
    if not ip:
        # Kubernetes Services and "localhost" may resolve to both families; a v4 answer is the
        # one that reliably works in pods without IPv6, v6 remains the fallback.
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    cluster["per_connection_buffer_limit_bytes"] = _XDS_CONNECTION_BUFFER_BYTES
    cluster["typed_extension_protocol_options"] = {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _HTTP_PROTOCOL_OPTIONS_TYPE,
            "explicit_http_config": {
                "http2_protocol_options": {
                    "connection_keepalive": {
                        "interval": _XDS_KEEPALIVE_INTERVAL,
                        "timeout": _XDS_KEEPALIVE_TIMEOUT,
                    },
                },
            },
        },
    }
    # TCP keepalive as well: it covers the window before the first HTTP/2 PING and idle NATs.
    cluster["upstream_connection_options"] = {
        "tcp_keepalive": {"keepalive_probes": 3, "keepalive_time": 30, "keepalive_interval": 5},
    }
    cluster["load_assignment"] = {
        "cluster_name": XDS_CLUSTER_NAME,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(host, port)}}]}],
    }
    return cluster


def build_bootstrap(
    node_id: str,
    cluster: str,
    xds_address: str,
    admin_port: int = 9901,
    admin_address: str = "127.0.0.1",
    delta: bool = False,
    xds_connect_timeout_s: float = 1.0,
) -> dict[str, Any]:
    """An Envoy v3 bootstrap that takes LDS and CDS (and through them RDS/EDS) from spillover's ADS."""
    host, port = parse_host_port(xds_address, "xds_address")
    connect_timeout = _duration(xds_connect_timeout_s, "xds_connect_timeout_s")
    if not isinstance(delta, bool):
        raise ValueError(f"delta must be a bool, got {delta!r}")
    node = _node(node_id, cluster)
    if admin_port:
        # Lets spillover read this Envoy's stats (the `envoy` metric source) at <peer ip>:<port>.
        node["metadata"] = {ADMIN_PORT_METADATA: admin_port}
    return {
        "node": node,
        "admin": _admin(admin_address, admin_port),
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER_NAME}}],
                # The server remembers the node per stream; resending it costs bytes on every request.
                "set_node_on_first_message_only": True,
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [_xds_cluster(host, port, connect_timeout)]},
    }


def render_bootstrap_yaml(
    node_id: str,
    cluster: str,
    xds_address: str,
    admin_port: int = 9901,
    admin_address: str = "127.0.0.1",
    delta: bool = False,
    xds_connect_timeout_s: float = 1.0,
) -> str:
    """``build_bootstrap`` as YAML, keys in construction order so the output is byte-stable."""
    return dump_yaml(
        build_bootstrap(
            node_id,
            cluster,
            xds_address,
            admin_port=admin_port,
            admin_address=admin_address,
            delta=delta,
            xds_connect_timeout_s=xds_connect_timeout_s,
        )
    )


class _NoAliasDumper(yaml.SafeDumper):
    # A dict shared between two places would come out as &id001/*id001: valid YAML, but it makes
    # the file hard to read and diff, and some tools mishandle anchors.
    def ignore_aliases(self, data: Any) -> bool:
        return True


# Envoy's YAML parser (yaml-cpp) reads y/n/yes/no/on/off as booleans, PyYAML only some of them,
# so PyYAML would emit a node id "n" bare and Envoy would reject the bootstrap ("id: string").
_YAML_CPP_BOOLS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false"})


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if data.lower() in _YAML_CPP_BOOLS:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style='"')
    return dumper.represent_str(data)


_NoAliasDumper.add_representer(str, _represent_str)


def dump_yaml(document: dict[str, Any]) -> str:
    """YAML for an Envoy config dict; insertion order kept (sort_keys would scatter related keys)."""
    return yaml.dump(
        document, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def static_bootstrap(
    node_id: str,
    cluster: str,
    admin_port: int,
    static_resources: dict[str, Any],
    admin_address: str = "127.0.0.1",
) -> dict[str, Any]:
    """A bootstrap with only static listeners/clusters (no xDS), for tests of plain Envoy behaviour."""
    if not isinstance(static_resources, dict):
        raise ValueError(f"static_resources must be a dict, got {type(static_resources).__name__}")
    return {
        "node": _node(node_id, cluster),
        "admin": _admin(admin_address, admin_port),
        "static_resources": static_resources,
    }
