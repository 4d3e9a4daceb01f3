"""The one listener: an HTTP connection manager whose filter chain picks the model and profile.

    HCM (RDS over ADS)
      1. json_to_metadata              body ``model`` → metadata spillover.model;   } slow path only
                                       route chosen again                           }
      2. Lua ``spillover.body_model``  the JSON body's top-level ``model`` →        } body path only
                                       ``x-model`` (and metadata); route chosen     } (off unless the
                                       again                                        } route turns it on)
      3. Lua ``spillover.normalize``   model (x-model, model, body) → ``x-model``,  } slow path only
                                       config-profile/x-aibrix-config-profile →     }
                                       ``config-profile``; route chosen again       }
      4. local_ratelimit               per-route token bucket (requestsPerSecond); 429 + header
      5. Lua ``spillover.prefix_hash`` per-route (prefix-cache only): hash of the prompt prefix } off by
      6. header_to_metadata ``spillover.client_host``: per-route (failover, see failover.py)    } default
      7. router                        route = (model, profile) on the x-model / config-profile headers

A request that names its model in ``x-model`` is routed on its headers alone: its route switches 1 and
3 off, so it costs no Lua and no body buffering (see routes.py). A JSON request that names its model in
its body only (no ``model`` or ``x-aibrix-config-profile`` header) takes 2 alone (see routes.py
``body-model``): it reads the top level of the body, not all of it, which json_to_metadata's parse did
at ~90 Envoy instructions a byte. 5 and 6 do
something only on the routes that configure them, so they are `disabled` here and a route enables one by
configuring it: a request whose route needs neither (no prefix-cache, no failover remote that only
rewrites the host) has neither in its chain. Envoy builds a request's filter chain from the route it
first matches, and a body-routed request first matches ``body-model`` or a slow-path route, not its
model's: those routes enable both (routes._slow_path), which then read the model route's configuration,
after the route is chosen again; 5 only while some model of the gateway uses prefix-cache (otherwise no
route reads it: one Lua run less per body-routed request). The chain is the same for every gateway whatever its models use, so a
policy change never touches LDS (a listener update drains connections): routes switch the per-route
filters on and off.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.http.header_to_metadata.v3 import header_to_metadata_pb2
from envoy.extensions.filters.http.json_to_metadata.v3 import json_to_metadata_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import regex_pb2
from google.protobuf import wrappers_pb2

from spillover.ir import Gateway
from spillover.names import LISTENER_NAME, METADATA_NAMESPACE, RATE_LIMIT_STAT_PREFIX, ROUTE_CONFIG_NAME
from spillover.translate import lua
from spillover.translate.common import (
    ADS,
    BODY_MODEL_FILTER,
    CLIENT_HOST_FILTER,
    JSON_TO_METADATA_FILTER,
    NORMALIZE_FILTER,
    PREFIX_HASH_FILTER,
    RATE_LIMIT_BODY_KEY,
    RATE_LIMIT_FILTER,
    ROUTE_CONFIGURED_FILTERS,
    address,
    lua_filter,
    pack,
)

__all__ = ["build_listener"]


def _client_host() -> hcm_pb2.HttpFilter:
    """Keeps the client's host for a local retry after a remote attempt of a failover aggregate
    (lua.client_host). Only the routes that need it (failover routes whose remote gets its host from
    Envoy's auto_host_rewrite) configure it, and so enable it (see the module's docstring)."""
    return hcm_pb2.HttpFilter(name=CLIENT_HOST_FILTER, typed_config=pack(header_to_metadata_pb2.Config()))


def _body_model() -> hcm_pb2.HttpFilter:
    """Off by default: only the ``body-model`` route turns it on (routes.py), with json_to_metadata off
    there. lua.BODY_MODEL finds the JSON body's top-level model without parsing the rest of the body
    and writes it into ``x-model``; the header change has Envoy choose the route again, the model's.
    A model no header can carry (a line break) goes into metadata only, and the route chosen again is
    the 404 that names it from there (``unknown-body-model``); no model, no change (the route stays
    ``body-model``, whose answer is the 404 of no model)."""
    return lua_filter(
        BODY_MODEL_FILTER,
        source_codes={lua.BODY_MODEL_NAME: base_pb2.DataSource(inline_string=lua.BODY_MODEL)},
        clear_route_cache=wrappers_pb2.BoolValue(value=True),
    )


def _http_filters() -> list[hcm_pb2.HttpFilter]:
    json_rules = json_to_metadata_pb2.JsonToMetadata(
        request_rules=json_to_metadata_pb2.JsonToMetadata.MatchRules(
            rules=[
                json_to_metadata_pb2.JsonToMetadata.Rule(
                    selectors=[json_to_metadata_pb2.JsonToMetadata.Selector(key="model")],
                    on_present=json_to_metadata_pb2.JsonToMetadata.KeyValuePair(
                        metadata_namespace=METADATA_NAMESPACE,
                        key="model",
                    ),
                )
            ],
            # The default list is the exact string "application/json"; clients commonly add
            # "; charset=utf-8", and media types are case-insensitive.
            allow_content_types_regex=regex_pb2.RegexMatcher(regex=r"(?i)application/json\s*(;.*)?"),
        )
    )
    filters = [
        hcm_pb2.HttpFilter(name=JSON_TO_METADATA_FILTER, typed_config=pack(json_rules)),
        _body_model(),
        lua_filter(
            NORMALIZE_FILTER,
            default_source_code=base_pb2.DataSource(inline_string=lua.NORMALIZE),
            clear_route_cache=wrappers_pb2.BoolValue(value=True),
        ),
        # No bucket here: only routes with requestsPerSecond carry one (typed_per_filter_config).
        hcm_pb2.HttpFilter(
            name=RATE_LIMIT_FILTER,
            typed_config=pack(local_rate_limit_pb2.LocalRateLimit(stat_prefix=RATE_LIMIT_STAT_PREFIX)),
        ),
        # Present even if no model uses prefix-cache so that strategy changes never touch LDS
        # (a listener update drains connections); enabled only where a route names its source.
        lua_filter(
            PREFIX_HASH_FILTER,
            source_codes={lua.PREFIX_HASH_NAME: base_pb2.DataSource(inline_string=lua.PREFIX_HASH)},
            clear_route_cache=wrappers_pb2.BoolValue(value=False),
        ),
        _client_host(),
    ]
    for http_filter in filters:
        # spillover.body_model is off by default too, turned on by the body-model route alone.
        http_filter.disabled = http_filter.name in (*ROUTE_CONFIGURED_FILTERS, BODY_MODEL_FILTER)
    return [
        *filters,
        hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router())),
    ]


def _rate_limited_reply() -> hcm_pb2.ResponseMapper:
    # local_ratelimit in 1.40 has no body option and sets no response flag the mappers can see,
    # so the 429 is recognised by status; only that filter answers 429 locally here. The body was
    # rendered (and JSON-escaped) at translation time and travels as route metadata.
    return hcm_pb2.ResponseMapper(
        filter=accesslog_pb2.AccessLogFilter(
            status_code_filter=accesslog_pb2.StatusCodeFilter(
                comparison=accesslog_pb2.ComparisonFilter(
                    op=accesslog_pb2.ComparisonFilter.EQ,
                    value=base_pb2.RuntimeUInt32(
                        default_value=429, runtime_key="spillover.rate_limit_status"
                    ),
                )
            )
        ),
        body_format_override=substitution_format_string_pb2.SubstitutionFormatString(
            text_format_source=base_pb2.DataSource(
                inline_string=f"%METADATA(ROUTE:{METADATA_NAMESPACE}:{RATE_LIMIT_BODY_KEY})%"
            ),
            content_type="application/json",
        ),
    )


def build_listener(gateway: Gateway) -> listener_pb2.Listener:
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix="spillover",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=ADS, route_config_name=ROUTE_CONFIG_NAME),
        http_filters=_http_filters(),
        local_reply_config=hcm_pb2.LocalReplyConfig(mappers=[_rate_limited_reply()]),
    )
    return listener_pb2.Listener(
        name=LISTENER_NAME,
        address=address(gateway.listener.address, gateway.listener.port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name="envoy.filters.network.http_connection_manager", typed_config=pack(manager)
                    )
                ]
            )
        ],
    )
