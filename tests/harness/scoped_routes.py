"""spillover's translation re-shaped for Scoped RDS (SRDS): a feasibility study, not the product.

The translator puts every model's routes in one RouteConfiguration (route_table.py: a matcher on
``x-model``). `scoped` turns its output into what an SRDS translation would serve instead:

- the HCM's ``rds`` becomes ``scoped_routes``: the scope key is the whole ``x-model`` value (one
  header fragment, no separator), scopes over SRDS and their route tables over RDS, both on ADS;
- one ScopedRouteConfiguration per model (named after the model, key = the model's name) naming
- one RouteConfiguration per model (``spillover_routes/<model>``): the ``normalize-profile-header``
  route (the table checks it before its map) then the model's routes, as a plain list;
- the slow-path and 404 routes have no scope to live in: Envoy finds no scope for a request without
  ``x-model`` (or with an unknown one) and so no route (NR, 404). The filters then run with their
  listener-level defaults (json_to_metadata and the normaliser on), so a body-routed request is still
  normalised and routed again; `not_found_replies` gives those NR 404s the table's JSON bodies
  through local_reply_config mappers.

benchmarks/scoped_routes.py and tests/translate/test_scoped_routes.py use it on a real Envoy.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import substitution_format_string_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2, scoped_route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import metadata_pb2, value_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from spillover.names import METADATA_NAMESPACE, ROUTE_CONFIG_NAME
from spillover.server.resources import TYPE_PREFIX
from spillover.translate.common import ADS
from spillover.translate.routes import MODEL_HEADER

__all__ = [
    "MODES",
    "SCOPED_ROUTE",
    "SCOPES_NAME",
    "model_route_config_name",
    "not_found_replies",
    "scoped",
    "scoped_listener",
    "split_table",
]

SCOPED_ROUTE = TYPE_PREFIX + scoped_route_pb2.ScopedRouteConfiguration.DESCRIPTOR.full_name
SCOPES_NAME = "spillover_scopes"


def model_route_config_name(model: str) -> str:
    return f"{ROUTE_CONFIG_NAME}/{model}"


def _listed(on_match: object) -> list[route_components_pb2.Route]:
    routes = route_components_pb2.RouteList()
    on_match.action.typed_config.Unpack(routes)  # type: ignore[attr-defined]
    return list(routes.routes)


def split_table(
    table: route_pb2.RouteConfiguration, inline: bool = False
) -> list[route_pb2.RouteConfiguration | scoped_route_pb2.ScopedRouteConfiguration]:
    """The table as one scope and one RouteConfiguration per model (`inline`: each scope carries its
    RouteConfiguration itself, no RDS)."""
    host = table.virtual_hosts[0]
    (aibrix,) = host.matcher.matcher_list.matchers
    _model_header, profile_header = _listed(aibrix.on_match)
    by_model = host.matcher.on_no_match.matcher.matcher_tree.exact_match_map.map
    out: list[route_pb2.RouteConfiguration | scoped_route_pb2.ScopedRouteConfiguration] = []
    for model in sorted(by_model):
        config = route_pb2.RouteConfiguration()
        config.CopyFrom(table)
        config.name = model_route_config_name(model)
        vhost = config.virtual_hosts[0]
        vhost.ClearField("matcher")
        vhost.routes.extend([profile_header, *_listed(by_model[model])])
        scope = scoped_route_pb2.ScopedRouteConfiguration(name=model)
        scope.key.fragments.add(string_key=model)
        if inline:
            scope.route_configuration.CopyFrom(config)
        else:
            scope.route_configuration_name = config.name
            out.append(config)
        out.append(scope)
    return out


def _flag_and(*filters: accesslog_pb2.AccessLogFilter) -> accesslog_pb2.AccessLogFilter:
    no_route = accesslog_pb2.AccessLogFilter(
        response_flag_filter=accesslog_pb2.ResponseFlagFilter(flags=["NR"])
    )
    if not filters:
        return no_route
    return accesslog_pb2.AccessLogFilter(and_filter=accesslog_pb2.AndFilter(filters=[no_route, *filters]))


def _json_reply(
    message: str, code: str = "model_not_found"
) -> substitution_format_string_pb2.SubstitutionFormatString:
    body = substitution_format_string_pb2.SubstitutionFormatString()
    body.json_format.update(
        {"error": {"message": message, "type": "invalid_request_error", "param": "model", "code": code}}
    )
    return body


def not_found_replies() -> list[hcm_pb2.ResponseMapper]:
    """The table's 404 routes as local replies of requests that found no scope (no route: flag NR): an
    unknown ``x-model``, an unknown body model no header can carry (the normaliser's metadata), no model."""
    header_present = accesslog_pb2.AccessLogFilter(
        header_filter=accesslog_pb2.HeaderFilter(
            header=route_components_pb2.HeaderMatcher(name=MODEL_HEADER, present_match=True)
        )
    )
    body_model = accesslog_pb2.AccessLogFilter(
        metadata_filter=accesslog_pb2.MetadataFilter(
            matcher=metadata_pb2.MetadataMatcher(
                filter=METADATA_NAMESPACE,
                path=[metadata_pb2.MetadataMatcher.PathSegment(key="model")],
                value=value_pb2.ValueMatcher(present_match=True),
            ),
            match_if_key_not_found=wrappers_pb2.BoolValue(value=False),
        )
    )
    replies = [
        (_flag_and(header_present), f"The model `%REQ({MODEL_HEADER})%` does not exist"),
        (_flag_and(body_model), f"The model `%DYNAMIC_METADATA({METADATA_NAMESPACE}:model)%` does not exist"),
        (_flag_and(), "No model given: set the `model` field of the JSON body or the `x-model` header"),
    ]
    return [
        hcm_pb2.ResponseMapper(filter=matcher, body_format_override=_json_reply(message))
        for matcher, message in replies
    ]


def scoped_listener(listener: listener_pb2.Listener) -> None:
    """The listener's HCM on scoped routes (SRDS over ADS), in place."""
    network_filter = listener.filter_chains[0].filters[0]
    manager = hcm_pb2.HttpConnectionManager()
    network_filter.typed_config.Unpack(manager)
    manager.ClearField("rds")
    scoped_routes = manager.scoped_routes
    scoped_routes.name = SCOPES_NAME
    extractor = scoped_routes.scope_key_builder.fragments.add().header_value_extractor
    # No separator, index 0: the whole header value is the key.
    extractor.name = MODEL_HEADER
    extractor.index = 0
    scoped_routes.rds_config_source.CopyFrom(ADS)
    scoped_routes.scoped_rds.scoped_rds_config_source.CopyFrom(ADS)
    manager.local_reply_config.mappers.extend(not_found_replies())
    network_filter.typed_config.Pack(manager)


# Where the route tables go: over RDS, named by their SRDS scopes (the module's doc), or inside the scopes
# (`route_configuration`: no RDS at all).
MODES = ("rds", "srds-inline")


def scoped(messages: Iterable[Message], mode: str = "rds") -> list[Message]:
    """The translator's resources (`translate(...).by_type_url()` values) with the route table split into
    scopes (see the module's doc), served as `mode` says (one of MODES)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    kept: list[Message] = []
    listeners: list[listener_pb2.Listener] = []
    split: list[Message] = []
    for message in messages:
        if isinstance(message, route_pb2.RouteConfiguration):
            split.extend(split_table(message, inline=mode == "srds-inline"))
        elif isinstance(message, listener_pb2.Listener) and not message.HasField("internal_listener"):
            # The gateway's listener; a failover model's internal listener (failover.py) has its own
            # inline route and stays as it is.
            copy = listener_pb2.Listener()
            copy.CopyFrom(message)
            listeners.append(copy)
        else:
            kept.append(message)
    for listener in listeners:
        scoped_listener(listener)
    return [*kept, *listeners, *split]
