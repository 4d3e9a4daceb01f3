"""Envoy v3 bootstrap documents that point an Envoy at spillover over ADS.

Pure functions: they build plain dicts (the shape of Envoy's YAML/JSON bootstrap) and never touch
the filesystem or the network, so they can be rendered into a ConfigMap, written by the harness,
or checked with ``envoy --mode validate`` alike.
"""

from __future__ import annotations

import ipaddress
import math
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from spillover.names import SPLIT_RUNTIME_LAYER, STATS_TAGS
from spillover.translate.remote_listener import INTERNAL_LISTENER_EXTENSION

__all__ = [
    "ADMIN_CLUSTER_NAME",
    "PROMETHEUS_STATS_PATH",
    "SDS_FILES",
    "STATS_LISTENER_NAME",
    "XDS_CA_SECRET",
    "XDS_CLIENT_SECRET",
    "XDS_CLUSTER_NAME",
    "XdsTls",
    "add_stats_listener",
    "bootstrap_extensions",
    "build_bootstrap",
    "build_xds_tls_sds",
    "dump_yaml",
    "parse_host_port",
    "render_bootstrap_yaml",
    "split_weights_runtime",
    "static_bootstrap",
    "stats_config",
]

XDS_CLUSTER_NAME = "spillover_xds"
# The SDS resources holding Envoy's client certificate and the CA of spillover's server certificate,
# each in a file of its own in XdsTls.sds_dir (file-based SDS holds one resource per file).
XDS_CLIENT_SECRET = "spillover_xds_client_certificate"
XDS_CA_SECRET = "spillover_xds_server_ca"
SDS_FILES = {XDS_CLIENT_SECRET: "xds-client-certificate.yaml", XDS_CA_SECRET: "xds-server-ca.yaml"}
_SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
_UPSTREAM_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


@dataclass(frozen=True)
class XdsTls:
    """mTLS from Envoy to spillover, with the certificates rotated without a restart.

    tls_dir:     a directory with `tls.crt` and `tls.key` (Envoy's client certificate) and `ca.crt` (the CA
                 of spillover's server certificate): the layout of a Kubernetes TLS Secret made by
                 cert-manager. Envoy watches it and reloads the files when they change (a Secret
                 volume's atomic symlink swap included).
    sds_dir:     where the files of `build_xds_tls_sds` are (Envoy reads the certificates through them:
                 file-based SDS is what makes Envoy watch the certificate files).
    server_name: SNI, and the DNS SAN spillover's certificate must carry.
    """

    tls_dir: str
    sds_dir: str
    server_name: str

    def __post_init__(self) -> None:
        for label, path in (("xds_tls_dir", self.tls_dir), ("xds_sds_dir", self.sds_dir)):
            if not isinstance(path, str) or not path.startswith("/") or any(c.isspace() for c in path):
                raise ValueError(f"{label} must be an absolute path without spaces, got {path!r}")
        if not isinstance(self.server_name, str) or not self.server_name or any(
            c.isspace() or c in "/:" for c in self.server_name
        ):
            raise ValueError(f"xds_server_name must be a DNS name, got {self.server_name!r}")

    def file(self, name: str) -> str:
        return posixpath.join(self.tls_dir, name)

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


def _sds_source(tls: XdsTls, secret: str) -> dict[str, Any]:
    return {
        "path_config_source": {
            "path": posixpath.join(tls.sds_dir, SDS_FILES[secret]),
            # A ConfigMap volume swaps its directory too: a new SDS file is seen as well.
            "watched_directory": {"path": tls.sds_dir},
        },
        "resource_api_version": "V3",
    }


def _xds_transport_socket(tls: XdsTls) -> dict[str, Any]:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _UPSTREAM_TLS_TYPE,
            "sni": tls.server_name,
            "common_tls_context": {
                "alpn_protocols": ["h2"],
                "tls_certificate_sds_secret_configs": [
                    {"name": XDS_CLIENT_SECRET, "sds_config": _sds_source(tls, XDS_CLIENT_SECRET)},
                ],
                "combined_validation_context": {
                    "default_validation_context": {
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": tls.server_name}},
                        ],
                    },
                    "validation_context_sds_secret_config": {
                        "name": XDS_CA_SECRET, "sds_config": _sds_source(tls, XDS_CA_SECRET),
                    },
                },
            },
        },
    }


def build_xds_tls_sds(tls: XdsTls) -> dict[str, dict[str, Any]]:
    """The SDS files (name in `tls.sds_dir` -> document) the bootstrap's xDS cluster reads its certificates
    through."""
    watched = {"path": tls.tls_dir}
    secrets = {
        XDS_CLIENT_SECRET: {
            "tls_certificate": {
                "certificate_chain": {"filename": tls.file("tls.crt")},
                "private_key": {"filename": tls.file("tls.key")},
                "watched_directory": watched,
            },
        },
        XDS_CA_SECRET: {
            "validation_context": {"trusted_ca": {"filename": tls.file("ca.crt")}, "watched_directory": watched},
        },
    }
    return {
        SDS_FILES[name]: {"resources": [{"@type": _SECRET_TYPE, "name": name, **body}]}
        for name, body in secrets.items()
    }


def _xds_cluster(addresses: list[tuple[str, int]], connect_timeout: str, tls: XdsTls | None = None) -> dict[str, Any]:
    ip = all(_is_ip(host) for host, _ in addresses)
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
    # Several control-plane replicas: the ADS stream goes to one of them, and when it ends (the replica
    # died, or handed its Envoys over) the reconnection goes to the next endpoint (round robin).
    cluster["load_assignment"] = {
        "cluster_name": XDS_CLUSTER_NAME,
        "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": _socket_address(host, port)}} for host, port in addresses]}
        ],
    }
    if tls is not None:
        cluster["transport_socket"] = _xds_transport_socket(tls)
    return cluster


def _addresses(xds_address: str | Sequence[str]) -> list[tuple[str, int]]:
    given = list(xds_address) if isinstance(xds_address, list | tuple) else [xds_address]
    if not given:
        raise ValueError("xds_address must be 'host:port' with a non-empty host and a port in 1-65535, got none")
    addresses = [parse_host_port(address, "xds_address") for address in given]
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"xds_address: the same address twice in {given!r}")
    return addresses


def build_bootstrap(
    node_id: str,
    cluster: str,
    xds_address: str | Sequence[str],
    admin_port: int = 9901,
    admin_address: str = "127.0.0.1",
    delta: bool = False,
    xds_connect_timeout_s: float = 1.0,
    stats_port: int = 0,
    tls: XdsTls | None = None,
    split_weights: str = "route",
) -> dict[str, Any]:
    """An Envoy v3 bootstrap that takes LDS and CDS (and through them RDS/EDS) from spillover's ADS;
    `xds_address` is one `host:port` or several (each replica of the control plane); over mTLS with `tls`
    (the certificates read through the SDS file of `build_xds_tls_sds`, one server name for every replica).
    `stats_port`: also serve GET /stats/prometheus (and nothing else of the admin) on that port.
    `split_weights`: "runtime" for a spillover serving with `--split-weights runtime` (the layer it
    reads the splits from, see `split_weights_runtime`)."""
    addresses = _addresses(xds_address)
    connect_timeout = _duration(xds_connect_timeout_s, "xds_connect_timeout_s")
    if not isinstance(delta, bool):
        raise ValueError(f"delta must be a bool, got {delta!r}")
    node = _node(node_id, cluster)
    if admin_port:
        # Lets spillover read this Envoy's stats (the `envoy` metric source) at <peer ip>:<port>.
        node["metadata"] = {ADMIN_PORT_METADATA: admin_port}
    document = {
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
        "static_resources": {"clusters": [_xds_cluster(addresses, connect_timeout, tls)]},
        "stats_config": stats_config(),
        "bootstrap_extensions": bootstrap_extensions(),
    }
    if split_weights == "runtime":
        document["layered_runtime"] = split_weights_runtime()
    elif split_weights != "route":
        raise ValueError(f"split_weights must be route or runtime, got {split_weights!r}")
    if stats_port:
        add_stats_listener(document, stats_port, admin_address, admin_port)
    return document


def bootstrap_extensions() -> list[dict[str, Any]]:
    """The internal listeners of failover models' remotes (spillover.translate.failover): Envoy refuses a
    listener of that kind without this extension."""
    return [
        {
            "name": INTERNAL_LISTENER_EXTENSION,
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.bootstrap.internal_listener.v3.InternalListener"},
        }
    ]


def split_weights_runtime() -> dict[str, Any]:
    """The bootstrap's `layered_runtime` for splits carried in runtime: the RTDS layer spillover serves
    over ADS, then an admin layer (so /runtime_modify still works, and wins). The layer's initial fetch
    never times out: Envoy waits for the layer (as it does for its clusters, which it asks for only
    after it) and never routes on the routes' fallback weights (all local) before it has the splits.
    Without this layer an Envoy of a spillover in that mode routes everything locally."""
    rtds = {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"}
    return {
        "layers": [
            {"name": SPLIT_RUNTIME_LAYER, "rtds_layer": {"name": SPLIT_RUNTIME_LAYER, "rtds_config": rtds}},
            {"name": "admin", "admin_layer": {}},
        ]
    }


def stats_config() -> dict[str, Any]:
    """Envoy's tag extractors for the per-model stats (see spillover.names, STATS_TAGS): Prometheus sees
    `model`, `profile` and `side` labels instead of one metric name per model. Envoy's own tags are
    kept (use_all_default_tags defaults to true)."""
    return {"stats_tags": [{"tag_name": name, "regex": regex} for name, regex in STATS_TAGS]}


# -- /stats/prometheus for Prometheus, without the rest of the admin ---------------------------------------

STATS_LISTENER_NAME = "spillover_stats"
ADMIN_CLUSTER_NAME = "spillover_admin"
PROMETHEUS_STATS_PATH = "/stats/prometheus"


def add_stats_listener(document: dict[str, Any], port: int, admin_address: str, admin_port: int) -> None:
    """A static listener on `port` (all addresses) that proxies GET /stats/prometheus to the admin and
    answers 404 to anything else: Prometheus may scrape it, while the admin (which can drain listeners,
    change log levels and stop Envoy) stays reachable only where it was."""
    _check_port(port, "stats_port")
    if not port or not admin_port or port == admin_port:
        raise ValueError(f"stats_port must be a port of its own beside a fixed admin_port, got {port} / {admin_port}")
    target = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(admin_address, admin_address)
    only_get = {"name": ":method", "string_match": {"exact": "GET"}}
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": STATS_LISTENER_NAME,
        "route_config": {
            "name": STATS_LISTENER_NAME,
            "virtual_hosts": [{
                "name": STATS_LISTENER_NAME,
                "domains": ["*"],
                "routes": [
                    {"match": {"path": PROMETHEUS_STATS_PATH, "headers": [only_get]},
                     "route": {"cluster": ADMIN_CLUSTER_NAME}},
                    {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
                ],
            }],
        },
        "http_filters": [{
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
        }],
    }
    family = "::" if ":" in target else "0.0.0.0"
    document["static_resources"]["listeners"] = [{
        "name": STATS_LISTENER_NAME,
        "address": _socket_address(family, port),
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": manager}]}],
    }]
    document["static_resources"]["clusters"].append({
        "name": ADMIN_CLUSTER_NAME,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER_NAME,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(target, admin_port)}}]}],
        },
    })


def render_bootstrap_yaml(
    node_id: str,
    cluster: str,
    xds_address: str | Sequence[str],
    admin_port: int = 9901,
    admin_address: str = "127.0.0.1",
    delta: bool = False,
    xds_connect_timeout_s: float = 1.0,
    stats_port: int = 0,
    tls: XdsTls | None = None,
    split_weights: str = "route",
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
            stats_port=stats_port,
            tls=tls,
            split_weights=split_weights,
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
        "bootstrap_extensions": bootstrap_extensions(),
    }
