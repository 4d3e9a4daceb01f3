"""Small protobuf helpers shared by the listener, route and cluster builders.

Every value that reaches Envoy goes through one of these, so range checks (durations, ports) and
deterministic packing happen in one place.
"""

from __future__ import annotations

import ipaddress
import json
import math
from typing import Any

from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, protocol_pb2
from envoy.extensions.filters.http.header_to_metadata.v3 import header_to_metadata_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message

__all__ = [
    "ADS",
    "BODY_MODEL_FILTER",
    "CLIENT_HOST_FILTER",
    "CLIENT_HOST_KEY",
    "CLIENT_HOST_NAMESPACE",
    "CLIENT_ORIGINAL_HOST_KEY",
    "CREDENTIAL_FILTER",
    "HTTP_PROTOCOL_OPTIONS",
    "JSON_TO_METADATA_FILTER",
    "NORMALIZE_FILTER",
    "PREFIX_HASH_FILTER",
    "RATE_LIMIT_BODY_KEY",
    "RATE_LIMIT_FILTER",
    "ROUTE_CONFIGURED_FILTERS",
    "address",
    "client_host_config",
    "compact_json",
    "duration",
    "header",
    "http1_options",
    "is_ip",
    "lua_filter",
    "pack",
    "u32",
]

# HTTP filter names: the listener installs them, routes configure them per route by these names.
NORMALIZE_FILTER = "spillover.normalize"
# Lua (lua.BODY_MODEL): the JSON body's top-level model into x-model, on the body-model route alone.
BODY_MODEL_FILTER = "spillover.body_model"
JSON_TO_METADATA_FILTER = "envoy.filters.http.json_to_metadata"
PREFIX_HASH_FILTER = "spillover.prefix_hash"
CLIENT_HOST_FILTER = "spillover.client_host"
# Dynamic metadata namespace and keys where CLIENT_HOST_FILTER keeps the client's :authority and
# x-envoy-original-host before any attempt (an attempt's auto_host_rewrite overwrites both); read by
# the failover aggregates' lua.client_host. The namespace is lua.UPSTREAM_STATE's.
CLIENT_HOST_NAMESPACE = "spillover.upstream"
CLIENT_HOST_KEY = "authority"
CLIENT_ORIGINAL_HOST_KEY = "original_host"


def client_host_config() -> header_to_metadata_pb2.Config:
    """CLIENT_HOST_FILTER's per-route config, on the routes that need it."""
    Config = header_to_metadata_pb2.Config
    return Config(
        request_rules=[
            Config.Rule(
                header=name,
                on_header_present=Config.KeyValuePair(metadata_namespace=CLIENT_HOST_NAMESPACE, key=key),
            )
            for name, key in (
                (":authority", CLIENT_HOST_KEY),
                ("x-envoy-original-host", CLIENT_ORIGINAL_HOST_KEY),
            )
        ]
    )


RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
# The listener's filters that act only where a route configures them: off by default (a request whose
# route needs none has none in its chain), on for a route that configures them, and on for the slow-path
# routes, on which body-routed requests land first (see listener.py). local_ratelimit stays on: Envoy
# takes no per-route config of it without a token bucket, so the slow-path routes could not switch it on.
ROUTE_CONFIGURED_FILTERS = (PREFIX_HASH_FILTER, CLIENT_HOST_FILTER)
CREDENTIAL_FILTER = "envoy.filters.http.credential_injector"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# The route metadata key of the rendered 429 body; the listener's local reply mapper reads it.
RATE_LIMIT_BODY_KEY = "rate_limit_body"

ADS = config_source_pb2.ConfigSource(
    ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
)


def pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed


def duration(seconds: float, field: str) -> duration_pb2.Duration:
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{field} must be a finite number of seconds >= 0, got {seconds!r}")
    nanos = round(seconds * 1_000_000_000)
    return duration_pb2.Duration(seconds=nanos // 1_000_000_000, nanos=nanos % 1_000_000_000)


def u32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def address(host: str, port: int) -> address_pb2.Address:
    if not host:
        raise ValueError("an address needs a host")
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be in 1-65535, got {port!r} for {host}")
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, value=value),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def lua_filter(name: str, **kwargs: Any) -> hcm_pb2.HttpFilter:
    return hcm_pb2.HttpFilter(name=name, typed_config=pack(lua_pb2.Lua(**kwargs)))


def http1_options(http_filters: list[hcm_pb2.HttpFilter] | None = None) -> dict[str, any_pb2.Any]:
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http_protocol_options=protocol_pb2.Http1ProtocolOptions()
        ),
        http_filters=http_filters or [],
    )
    return {HTTP_PROTOCOL_OPTIONS: pack(options)}
