"""Edits of a static bootstrap for benchmarks/datapath_ablation.py's sides: the parts of spillover's chain
the IR can't switch off (an inert filter, the reply mapper, route stats, parts of the retry policy or of the
aggregates' upstream chain), and PATCHED, the body path's filters turned on for header-routed requests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from benchmarks.datapath import MODEL
from spillover.names import UPSTREAM_SIDE_HEADER
from spillover.translate.common import CLIENT_HOST_FILTER, HTTP_PROTOCOL_OPTIONS
from tests.harness.envoy import dicts_in

__all__ = [
    "PATCHED",
    "Bootstrap",
    "aggregate_filters",
    "client_host_in_filter_state",
    "without_filters",
    "without_reply_mapper",
    "without_retries",
    "without_retry_parts",
    "without_route_stats",
    "without_side_header_removal",
]

Bootstrap = dict[str, Any]


def _managers(bootstrap: Bootstrap) -> Iterator[dict[str, Any]]:
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                if network_filter["name"] == "envoy.filters.network.http_connection_manager":
                    yield network_filter["typed_config"]


def _routes(bootstrap: Bootstrap) -> Iterator[dict[str, Any]]:
    return (d for manager in _managers(bootstrap) for d in dicts_in(manager["route_config"])
            if "match" in d and "name" in d)  # fmt: skip


def without_filters(*names: str) -> Callable[[Bootstrap], None]:
    """The listener without these HTTP filters, and the routes without their per-route configs."""

    def edit(bootstrap: Bootstrap) -> None:
        for manager in _managers(bootstrap):
            manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] not in names]
        for route in _routes(bootstrap):
            for name in names:
                route.get("typed_per_filter_config", {}).pop(name, None)

    return edit


def client_host_in_filter_state(bootstrap: Bootstrap) -> None:
    """What saving the client's host costs with set_filter_state instead of header_to_metadata: the same two
    headers, on every request (only the saving: the restore Lua reads dynamic metadata and would need to
    read filter state instead)."""
    without_filters(CLIENT_HOST_FILTER)(bootstrap)
    values = [{"object_key": f"spillover.client.{key}", "factory_key": "envoy.string", "skip_if_empty": True,
               "format_string": {"text_format_source": {"inline_string": f"%REQ({header})%"}}}
              for key, header in (("authority", ":authority"), ("original_host", "x-envoy-original-host"))]  # fmt: skip
    for manager in _managers(bootstrap):
        manager["http_filters"].insert(-1, {"name": "spillover.client_host_state", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
            "on_request_headers": values}})  # fmt: skip


def without_side_header_removal(bootstrap: Bootstrap) -> None:
    """The failover routes without their removal of UPSTREAM_SIDE_HEADER (a client's copy on the request,
    the internal listener's answer on the response)."""
    for route in _routes(bootstrap):
        for field in ("request_headers_to_remove", "response_headers_to_remove"):
            kept = [h for h in route.get(field, []) if h != UPSTREAM_SIDE_HEADER]
            if kept:
                route[field] = kept
            else:
                route.pop(field, None)


def without_reply_mapper(bootstrap: Bootstrap) -> None:
    for manager in _managers(bootstrap):
        manager.pop("local_reply_config", None)


def without_route_stats(bootstrap: Bootstrap) -> None:
    for route in _routes(bootstrap):
        route.pop("stat_prefix", None)


def without_retries(bootstrap: Bootstrap) -> None:
    for route in _routes(bootstrap):
        route.get("route", {}).pop("retry_policy", None)


def without_retry_parts(*fields: str) -> Callable[[Bootstrap], None]:
    def edit(bootstrap: Bootstrap) -> None:
        for route in _routes(bootstrap):
            for field in fields:
                route.get("route", {}).get("retry_policy", {}).pop(field, None)

    return edit


def route_stats_rejected(regex: str) -> Callable[[Bootstrap], None]:
    """Envoy's stats matcher rejects the route stats `regex` matches (a cheaper form of the per-route stats,
    if rejected stats cost less per request than kept ones)."""

    def edit(bootstrap: Bootstrap) -> None:
        bootstrap.setdefault("stats_config", {})["stats_matcher"] = {"exclusion_list": {"patterns": [
            {"safe_regex": {"regex": rf"^vhost\.[^.]+\.route\..*\.{regex}$"}}]}}  # fmt: skip

    return edit


def with_listener_failure_header(bootstrap: Bootstrap) -> None:
    """The model's routes retry on the internal listener's failure header and remove it from responses, as
    every failover route did before translate/retries.py left it to the routes with a local share."""
    for route in _routes(bootstrap):
        policy = route.get("route", {}).get("retry_policy")
        if policy is None:
            continue
        policy["retry_on"] += ",retriable-headers"
        policy["retriable_headers"] = [{"name": UPSTREAM_SIDE_HEADER,
                                        "string_match": {"safe_regex": {"regex": "connect-failure|reset"}}}]  # fmt: skip
        route.setdefault("response_headers_to_remove", []).append(UPSTREAM_SIDE_HEADER)


def aggregate_filters(keep: Callable[[str], bool]) -> Callable[[Bootstrap], None]:
    """The failover aggregates' upstream filters reduced to those whose name `keep` says (none left: no
    upstream chain of their own, Envoy's default codec)."""

    def edit(bootstrap: Bootstrap) -> None:
        for cluster in bootstrap["static_resources"]["clusters"]:
            if cluster.get("cluster_type", {}).get("name") != "envoy.clusters.aggregate":
                continue
            options = cluster["typed_extension_protocol_options"][HTTP_PROTOCOL_OPTIONS]
            kept = [f for f in options.get("http_filters", []) if keep(f["name"])]
            if any(f["name"] != "envoy.filters.http.upstream_codec" for f in kept):
                options["http_filters"] = kept
            else:
                options.pop("http_filters", None)

    return edit


def _model_routes(node: Any, name: str) -> list[dict[str, Any]]:
    """Every route called `name` anywhere in a static bootstrap (the table nests them in RouteLists)."""
    found = []
    if isinstance(node, dict):
        if node.get("name") == name and "match" in node:
            found.append(node)
        for value in node.values():
            found += _model_routes(value, name)
    elif isinstance(node, list):
        for value in node:
            found += _model_routes(value, name)
    return found


def _turn_on(*filters: str, copy_from: str | None = None) -> Callable[[Bootstrap], None]:
    """A patch of the full config's bootstrap: the model's route (the one header-routed requests match
    first) leaves `filters` on instead of switching them off, or, with `copy_from`, takes that route's
    per-filter configs of `filters` (where it has one). Header-routed requests then pay for just those."""

    def patch(bootstrap: Bootstrap) -> None:
        routes = _model_routes(bootstrap, f"{MODEL}/default")
        assert routes, "the model's route is not in the bootstrap"
        source = _model_routes(bootstrap, copy_from)[0] if copy_from else None
        for route in routes:
            per_filter = route.setdefault("typed_per_filter_config", {})
            for name in filters:
                if source is not None and name in source["typed_per_filter_config"]:
                    per_filter[name] = source["typed_per_filter_config"][name]
                else:
                    per_filter.pop(name, None)

    return patch


def _drop_routes(node: Any, name: str) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("routes"), list):
            node["routes"] = [r for r in node["routes"] if r.get("name") != name]
        for value in node.values():
            _drop_routes(value, name)
    elif isinstance(node, list):
        for value in node:
            _drop_routes(value, name)


def _without_listener_filter(name: str) -> Callable[[Bootstrap], None]:
    """A patch: the listener's filter chain without `name`, and without the body-model route that turns
    it on (body-routed requests take the old slow path): what a filter disabled by default costs
    header-routed requests, whatever Envoy spends deciding to skip it."""

    def patch(bootstrap: Bootstrap) -> None:
        found = 0
        for listener in bootstrap["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                for network_filter in chain["filters"]:
                    filters = network_filter["typed_config"].get("http_filters", [])
                    kept = [f for f in filters if f["name"] != name]
                    found += len(filters) - len(kept)
                    network_filter["typed_config"]["http_filters"] = kept
        assert found, f"no {name} in the listener"
        _drop_routes(bootstrap, "body-model")

    return patch


# Costs of the pieces, measured on the header-routed side (the body-routed side is the full config's):
# each is the full config with one more filter on for header-routed requests.
PATCHED: dict[str, Callable[[Bootstrap], None]] = {
    "all of it, header path + json_to_metadata": _turn_on("envoy.filters.http.json_to_metadata"),
    "all of it, header path + Lua normaliser": _turn_on("spillover.normalize"),
    "all of it, header path + json_to_metadata + Lua": _turn_on(
        "envoy.filters.http.json_to_metadata", "spillover.normalize"
    ),
    "all of it, header path + the body-model Lua (the body path)": _turn_on(
        "spillover.body_model", copy_from="body-model"
    ),
    "all of it, no body-model filter in the listener (body: old slow path)": _without_listener_filter(
        "spillover.body_model"
    ),
}
