"""The route table: every model's routes, the slow-path catches and the 404s, as a matcher, not a list.

Envoy walks a virtual host's route list in order, so a request for the last of 10,000 models tried every
other model's routes first (about 3 ms of Envoy's CPU per request more than with one model, measured by
benchmarks/route_scan.py). The virtual host's `matcher` instead finds a model's routes with one exact lookup
of ``x-model``; each model's routes are its entry's RouteList, which Envoy then matches in order as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.type.matcher.v3 import http_inputs_pb2
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import matcher_pb2

from spillover.names import ROUTE_CONFIG_NAME, VIRTUAL_HOST_NAME
from spillover.translate.common import pack
from spillover.translate.routes import (
    MODEL_HEADER,
    PROFILE_HEADER,
    PROFILE_HEADER_AIBRIX,
    not_found_routes,
    slow_path_routes,
    uses_prefix_hash,
)

__all__ = ["model_table_entry", "route_configuration", "table_routes"]

_ROUTE_LIST_ACTION = "routes"


def _header_input(name: str) -> xds_extension_pb2.TypedExtensionConfig:
    return xds_extension_pb2.TypedExtensionConfig(
        name=name, typed_config=pack(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=name))
    )


def _header_predicate(name: str, regex: str) -> matcher_pb2.Matcher.MatcherList.Predicate:
    """The header's value (several values joined by commas, as a HeaderMatcher sees them) fully matches
    `regex`; an absent header matches nothing, so ``.*`` means present and ``.+`` present and not empty."""
    predicate = matcher_pb2.Matcher.MatcherList.Predicate()
    single = predicate.single_predicate
    single.input.CopyFrom(_header_input(name))
    single.value_match.safe_regex.google_re2.SetInParent()
    single.value_match.safe_regex.regex = regex
    return predicate


def _route_list(routes: Sequence[route_components_pb2.Route]) -> matcher_pb2.Matcher.OnMatch:
    on_match = matcher_pb2.Matcher.OnMatch()
    on_match.action.name = _ROUTE_LIST_ACTION
    on_match.action.typed_config.CopyFrom(pack(route_components_pb2.RouteList(routes=routes)))
    return on_match


def model_table_entry(
    model: str, routes: Sequence[route_components_pb2.Route]
) -> matcher_pb2.Matcher.MatcherTree.MatchMap:
    """One model's entry of the table's `x-model` map (a MatchMap of that one entry: the map's entries
    of several models concatenate)."""
    entry = matcher_pb2.Matcher.MatcherTree.MatchMap()
    entry.map[model].CopyFrom(_route_list(routes))
    return entry


def route_configuration(
    models: Sequence[tuple[str, Sequence[route_components_pb2.Route]]], prefix_hash: bool | None = None
) -> route_pb2.RouteConfiguration:
    """The table as a matcher that selects what the list (slow-path routes, every model's routes in name
    order, the 404s) did. The slow-path routes came first: ``normalize-model-header`` needs ``x-model`` absent, so the map
    can't pass it over, and it heads the map's fallback; ``normalize-profile-header`` can precede any
    model's routes, so its condition is checked before the map, with the model header's route before
    it as in the list. Within a model's entry (or the fallback) Envoy still matches each route in
    order. `models`: (name, routes) in name order; without models, the fallback alone. `prefix_hash`:
    whether the slow-path routes put spillover.prefix_hash in the chain (routes.py `_slow_path`); by
    default, when some model's routes use it."""
    if prefix_hash is None:
        prefix_hash = any(uses_prefix_hash(routes) for _, routes in models)
    model_header, profile_header = slow_path_routes(prefix_hash)
    host = route_components_pb2.VirtualHost(name=VIRTUAL_HOST_NAME, domains=["*"])
    aibrix_profile = host.matcher.matcher_list.matchers.add()
    both = aibrix_profile.predicate.and_matcher.predicate
    # The rare header first: Envoy stops at the first false predicate, so a request without it (almost
    # every one, and a body-routed one twice: its route is chosen again) costs one header lookup here.
    both.add().CopyFrom(_header_predicate(PROFILE_HEADER_AIBRIX, ".+"))
    both.add().not_matcher.CopyFrom(_header_predicate(PROFILE_HEADER, ".*"))
    aibrix_profile.on_match.CopyFrom(_route_list([model_header, profile_header]))
    by_model = host.matcher.on_no_match.matcher
    if models:
        tree = by_model.matcher_tree
        tree.input.CopyFrom(_header_input(MODEL_HEADER))
        for name, routes in models:
            tree.exact_match_map.map[name].CopyFrom(_route_list(routes))
    by_model.on_no_match.CopyFrom(_route_list([model_header, *not_found_routes(prefix_hash)]))
    return route_pb2.RouteConfiguration(name=ROUTE_CONFIG_NAME, virtual_hosts=[host])


def _listed(on_match: matcher_pb2.Matcher.OnMatch) -> list[route_components_pb2.Route]:
    routes = route_components_pb2.RouteList()
    on_match.action.typed_config.Unpack(routes)
    return list(routes.routes)


def table_routes(config: route_pb2.RouteConfiguration) -> Iterator[route_components_pb2.Route]:
    """Every route of a table `route_configuration` made, once each: the slow-path routes, the models'
    (by name), the 404s; the order the route list had."""
    seen: set[str] = set()
    matcher = config.virtual_hosts[0].matcher
    by_model = matcher.on_no_match.matcher
    lists = [_listed(m.on_match) for m in matcher.matcher_list.matchers]
    lists += [_listed(by_model.matcher_tree.exact_match_map.map[name])
              for name in sorted(by_model.matcher_tree.exact_match_map.map)]  # fmt: skip
    lists.append(_listed(by_model.on_no_match))
    for routes in lists:
        for route in routes:
            if route.name not in seen:
                seen.add(route.name)
                yield route
