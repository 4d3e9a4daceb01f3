"""Does a route-table update refill a model's token bucket? A real Envoy 1.40 on spillover's xDS server.

A model's ``requestsPerSecond`` is a per-route local rate limit (routes.py). A flip or a new remote share,
of any model, reaches Envoy as a new RouteConfiguration (the whole table); endpoint weights go over EDS and
tokens over SDS. If Envoy built new, full buckets on each RDS update, a client could take a fresh burst
after every update, whichever model it was for. It does (SotW and Delta alike): the two refill cases
are strict xfails until a fix keeps the buckets; the others guard what holds today. With the splits in
Envoy's runtime (`split_weights: runtime`) a flip is an RTDS update that leaves the route table, and
with it every bucket, as it is: that case passes.

Each case drains the limited model's bucket (429s), publishes a change, waits until the server has
Envoy's ACK of it (and, for RDS, Envoy's config_dump runs that version), and counts how many requests a
quick burst gets through. Without a refill only the tokens earned at the limit's rate since the drain
can be accepted. The model's burst is set above its rate so that a refill stands out from timing.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from envoy.config.core.v3 import extension_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from spillover.ir import Endpoint, Gateway, Listener, Model, Profile, RemoteBackend, TrafficSplit
from spillover.names import RATE_LIMIT_HEADER, ROUTE_CONFIG_NAME
from spillover.server.resources import ENDPOINT, LISTENER, ROUTE, RUNTIME
from spillover.translate import translate
from spillover.translate.bootstrap import build_bootstrap
from spillover.translate.common import RATE_LIMIT_FILTER, pack
from spillover.translate.route_table import table_routes
from tests.harness.client import Response
from tests.harness.client import request as http_request
from tests.harness.envoy import Envoy
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.upstream import HttpUpstream
from tests.harness.xds import XdsThread

CHAT = "/v1/chat/completions"
GROUP = "edge"
NODE = "edge-1"
LIMITED = "llama"
# A slow refill and a bucket well above it: a refilled bucket answers BURST requests at once, a
# drained one only what RPS earned since the drain (a fraction of a second's worth here).
RPS = 1.0
BURST = 10.0
PROBE = 3 * int(BURST)
DESCRIPTOR_KEY = "spillover_model_rps"
ECDS_NAME = "spillover.model_rps"
ALL_LOCAL = TrafficSplit()
OVERFLOW = TrafficSplit(50, 50)

REFILL_REASON = (
    "Envoy 1.40 builds a new per-route local_ratelimit config, hence a new full token bucket, for every "
    "route of a new RouteConfiguration: any RDS update (another model's flip included) refills every "
    "model's bucket. Its process-wide shared limiters serve the access-log filters only: nothing keeps "
    "a per-route bucket across an RDS update."
)


class Edge:
    """One Envoy on the xDS server, with what it was last given."""

    def __init__(
        self, xds: XdsThread, envoy: Envoy, port: int, upstreams: dict[str, HttpUpstream], delta: bool
    ) -> None:
        self.xds, self.envoy, self.port, self.upstreams, self.delta = xds, envoy, port, upstreams, delta
        self.render: Callable[[tuple[Model, ...], int], list[Message]] = _messages

    def post(self, model: str) -> Response:
        url = f"http://127.0.0.1:{self.port}{CHAT}"
        return http_request("POST", url, body={"model": model}, headers={"x-model": model}, timeout=5)

    def rds_version(self) -> str | None:
        for entry in self.envoy.config_dump(resource="dynamic_route_configs").get("configs", []):
            return entry.get("version_info")
        return None

    def acked(self, short_type: str) -> str | None:
        state = self.xds.type_state(NODE, short_type)
        return None if state is None else str(state["acked_version"])

    def publish(self, models: tuple[Model, ...]) -> None:
        """Publish the models; return once the server has Envoy's ACK of their route table and Envoy's
        config_dump shows it running."""
        before = self.rds_version()
        snapshot = self.xds.set_snapshot(GROUP, self.render(models, self.port))
        version = snapshot.version(ROUTE)
        # Envoy's config_dump shows the type's version in SotW, the resource's own in Delta.
        running = snapshot.get(ROUTE)[ROUTE_CONFIG_NAME].version if self.delta else version
        assert running != before, "the change did not touch the route table"
        wait_until(lambda: self.acked("RDS") == version, timeout=10, message=f"RDS {version} never ACKed")
        wait_until(
            lambda: self.rds_version() == running, timeout=10, message=f"Envoy never ran RDS {running}"
        )

    def publish_runtime(self, models: tuple[Model, ...]) -> None:
        """Publish models that differ only in their splits, rendered with the splits in runtime; return
        once Envoy ACKed the new layer, its route table untouched."""
        routes, running = self.acked("RDS"), self.rds_version()
        snapshot = self.xds.set_snapshot(GROUP, self.render(models, self.port))
        assert snapshot.version(ROUTE) == routes, "the change touched the route table"
        version = snapshot.version(RUNTIME)
        wait_until(lambda: self.acked("RTDS") == version, timeout=10, message=f"RTDS {version} never ACKed")
        assert self.rds_version() == running

    def publish_endpoints(self, models: tuple[Model, ...]) -> None:
        """Publish models that differ only in their endpoints; return once Envoy ACKed the EDS update."""
        routes = self.acked("RDS")
        snapshot = self.xds.set_snapshot(GROUP, self.render(models, self.port))
        assert snapshot.version(ROUTE) == routes, "the change touched the route table"
        version = snapshot.version(ENDPOINT)
        wait_until(lambda: self.acked("EDS") == version, timeout=10, message=f"EDS {version} never ACKed")

    def rerender(self, render: Callable[[tuple[Model, ...], int], list[Message]]) -> None:
        """Serve the same models rendered by `render` (listener included); return once Envoy serves them."""
        self.render = render
        snapshot = self.xds.set_snapshot(GROUP, render(_models(self.upstreams), self.port))
        listeners = snapshot.version(LISTENER)
        wait_until(lambda: self.acked("LDS") == listeners, timeout=10, message=f"LDS {listeners} never ACKed")

        def serving() -> bool:
            dump = self.envoy.config_dump(resource="dynamic_listeners")
            return all("warming_state" not in c for c in dump.get("configs", []))

        wait_until(serving, timeout=10, message="the new listener never left warming")
        wait_until(
            lambda: self.acked("RDS") == snapshot.version(ROUTE), timeout=10, message="RDS never ACKed"
        )

    def drain(self) -> float:
        """Send to the limited model until it answers 429; returns when the last 429 came back."""
        statuses = []
        for _ in range(int(BURST) * 5):
            response = self.post(LIMITED)
            statuses.append(response.status)
            # One more 429 after the first: the bucket stays empty (the drained state we start from).
            if response.status == 429 and self.post(LIMITED).status == 429:
                return time.monotonic()
        raise AssertionError(f"{LIMITED} never answered 429 twice in a row: {statuses}")

    def burst(self) -> int:
        """How many of PROBE back-to-back requests the limited model accepts."""
        return sum(self.post(LIMITED).status == 200 for _ in range(PROBE))


def _messages(models: tuple[Model, ...], port: int, split_weights: str = "route") -> list[Message]:
    resources = translate(Gateway(GROUP, Listener("127.0.0.1", port), models, split_weights=split_weights))
    return [m for items in resources.by_type_url().values() for m in items.values()]


def _runtime_messages(models: tuple[Model, ...], port: int) -> list[Message]:
    return _messages(models, port, split_weights="runtime")


def _limited_route(models: tuple[Model, ...]) -> bytes:
    """The limited model's route as translated (its bucket included)."""
    (table,) = translate(Gateway(GROUP, Listener("127.0.0.1", 1), models)).by_type_url()[ROUTE].values()
    assert isinstance(table, route_pb2.RouteConfiguration)
    (route,) = [r for r in table_routes(table) if r.name == f"{LIMITED}/default"]
    return route.SerializeToString(deterministic=True)


def _edit_routes(table: route_pb2.RouteConfiguration, edit: Callable[[route_components_pb2.Route], None]) -> None:
    """Calls `edit` on every route of the table's matcher (each RouteList unpacked, edited, packed again)."""
    matcher = table.virtual_hosts[0].matcher
    by_model = matcher.on_no_match.matcher
    actions = [m.on_match.action for m in matcher.matcher_list.matchers]
    actions += [entry.action for entry in by_model.matcher_tree.exact_match_map.map.values()]
    actions.append(by_model.on_no_match.action)
    for action in actions:
        routes = route_components_pb2.RouteList()
        action.typed_config.Unpack(routes)
        for route in routes.routes:
            edit(route)
        action.typed_config.Pack(routes)


def _with_listener_buckets(models: tuple[Model, ...], port: int) -> list[Message]:
    """The translation with every route's bucket moved to a descriptor of the listener-level filter, the
    route naming its descriptor (a generic_key rate_limits action): the shape a fix would take, the
    listener-level config then coming over ECDS so that adding a model does not drain the listener."""
    messages = _messages(models, port)
    descriptors = []
    shared = local_rate_limit_pb2.LocalRateLimit()
    for message in messages:
        if isinstance(message, route_pb2.RouteConfiguration):

            def to_descriptor(route: route_components_pb2.Route) -> None:
                # A direct response (a model with no backend: 503) has no RouteAction to name a descriptor.
                if RATE_LIMIT_FILTER not in route.typed_per_filter_config or not route.HasField("route"):
                    return
                per_route = local_rate_limit_pb2.LocalRateLimit()
                route.typed_per_filter_config.pop(RATE_LIMIT_FILTER).Unpack(per_route)
                entry = ratelimit_pb2.RateLimitDescriptor.Entry(key=DESCRIPTOR_KEY, value=route.name)
                descriptors.append(
                    ratelimit_pb2.LocalRateLimitDescriptor(
                        entries=[entry], token_bucket=per_route.token_bucket
                    )
                )
                key = route_components_pb2.RateLimit.Action.GenericKey(
                    descriptor_key=DESCRIPTOR_KEY, descriptor_value=route.name
                )
                route.route.rate_limits.add(actions=[route_components_pb2.RateLimit.Action(generic_key=key)])
                shared.filter_enabled.CopyFrom(per_route.filter_enabled)
                shared.filter_enforced.CopyFrom(per_route.filter_enforced)
                shared.ClearField("response_headers_to_add")
                shared.response_headers_to_add.extend(per_route.response_headers_to_add)

            _edit_routes(message, to_descriptor)
    for message in messages:
        if isinstance(message, listener_pb2.Listener):
            network_filter = message.filter_chains[0].filters[0]
            manager = http_connection_manager_pb2.HttpConnectionManager()
            network_filter.typed_config.Unpack(manager)
            (limit,) = [f for f in manager.http_filters if f.name == RATE_LIMIT_FILTER]
            listener_level = local_rate_limit_pb2.LocalRateLimit()
            limit.typed_config.Unpack(listener_level)
            listener_level.MergeFrom(shared)
            listener_level.descriptors.extend(descriptors)
            # Requests without a descriptor (other models, the 404s) have no default bucket to take from.
            listener_level.always_consume_default_token_bucket.value = False
            limit.typed_config.Pack(listener_level)
            network_filter.typed_config.Pack(manager)
    return messages


def _over_ecds(messages: list[Message], path: Path) -> list[Message]:
    """The listener-level rate limit filter's config moved to an ECDS resource, written to `path` (a
    file config source: spillover's server does not serve ECDS); the listener only refers to it."""
    for message in messages:
        if isinstance(message, listener_pb2.Listener):
            network_filter = message.filter_chains[0].filters[0]
            manager = http_connection_manager_pb2.HttpConnectionManager()
            network_filter.typed_config.Unpack(manager)
            (limit,) = [f for f in manager.http_filters if f.name == RATE_LIMIT_FILTER]
            extension = extension_pb2.TypedExtensionConfig(name=ECDS_NAME, typed_config=limit.typed_config)
            response = discovery_pb2.DiscoveryResponse(resources=[pack(extension)])
            written = path.with_suffix(".tmp")
            written.write_text(json_format.MessageToJson(response))
            written.replace(path)  # Envoy watches for a move, not for writes
            limit.name = ECDS_NAME
            limit.ClearField("typed_config")
            limit.config_discovery.config_source.path_config_source.path = str(path)
            limit.config_discovery.type_urls.append(extension.typed_config.type_url)
            network_filter.typed_config.Pack(manager)
    return messages


def _limited(upstream: HttpUpstream, split: TrafficSplit, remote: HttpUpstream) -> Model:
    return Model(
        LIMITED,
        (Endpoint("127.0.0.1", upstream.port),),
        profiles=(
            Profile("default", "random", requests_per_second=RPS, total_requests_per_second=RPS, burst=BURST),
        ),
        remote=RemoteBackend(host="127.0.0.1", port=remote.port, scheme="http"),
        split=split,
    )


def _other(upstream: HttpUpstream, split: TrafficSplit, remote: HttpUpstream) -> Model:
    return Model(
        "mistral",
        (Endpoint("127.0.0.1", upstream.port),),
        remote=RemoteBackend(host="127.0.0.1", port=remote.port, scheme="http"),
        split=split,
    )


def _models(
    upstreams: dict[str, HttpUpstream],
    limited: TrafficSplit = ALL_LOCAL,
    other: TrafficSplit = ALL_LOCAL,
) -> tuple[Model, ...]:
    remote = upstreams["remote"]
    return (
        _limited(upstreams["llama-pod"], limited, remote),
        _other(upstreams["mistral-pod"], other, remote),
    )


def _earned(since: float) -> int:
    """The most a drained bucket can have gained since `since`: RPS a second, plus one for the edge."""
    return math.floor((time.monotonic() - since) * RPS) + 1


def _start_edge(
    delta: bool,
    xds_server: XdsThread,
    envoy_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
    split_weights: str = "route",
) -> Edge:
    port = free_port()
    upstreams = {name: upstream_factory(name) for name in ("llama-pod", "mistral-pod", "remote")}
    render = _runtime_messages if split_weights == "runtime" else _messages
    xds_server.set_snapshot(GROUP, render(_models(upstreams), port))
    bootstrap = build_bootstrap(
        NODE, GROUP, xds_server.xds_address, admin_port=0, delta=delta, split_weights=split_weights
    )
    edge_ = Edge(xds_server, envoy_factory(bootstrap, name=NODE), port, upstreams, delta)
    edge_.render = render
    wait_until(edge_.envoy.is_ready, timeout=15, message="envoy never became ready over ADS")
    wait_until(lambda: edge_.post("mistral").status == 200, timeout=10, message="mistral never served")
    return edge_


@pytest.fixture(params=["sotw", "delta"])
def edge(
    request: pytest.FixtureRequest,
    xds_server: XdsThread,
    envoy_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
) -> Edge:
    return _start_edge(request.param == "delta", xds_server, envoy_factory, upstream_factory)


@pytest.fixture(params=["sotw", "delta"])
def runtime_edge(
    request: pytest.FixtureRequest,
    xds_server: XdsThread,
    envoy_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
) -> Edge:
    """The same Envoy with the splits in runtime (its bootstrap with the RTDS layer)."""
    return _start_edge(request.param == "delta", xds_server, envoy_factory, upstream_factory, "runtime")


def test_the_probe_sees_a_full_and_a_drained_bucket(edge: Edge) -> None:
    """The measuring stick: a full bucket lets BURST through, a drained one only what RPS earned."""
    assert edge.burst() >= BURST
    drained_at = edge.drain()
    accepted = edge.burst()
    assert accepted <= _earned(drained_at), accepted


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=REFILL_REASON)
def test_another_models_flip_does_not_refill_the_bucket(edge: Edge) -> None:
    flipped = _models(edge.upstreams, other=OVERFLOW)
    # mistral overflows (half of its traffic to the remote); llama's route, bucket included, is unchanged.
    assert _limited_route(flipped) == _limited_route(_models(edge.upstreams))
    drained_at = edge.drain()
    edge.publish(flipped)
    accepted = edge.burst()
    assert accepted <= _earned(drained_at), f"{accepted} of {PROBE} accepted right after mistral's flip"


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=REFILL_REASON)
def test_the_models_own_flip_does_not_refill_its_bucket(edge: Edge) -> None:
    drained_at = edge.drain()
    edge.publish(_models(edge.upstreams, limited=OVERFLOW))
    accepted = edge.burst()
    assert accepted <= _earned(drained_at), f"{accepted} of {PROBE} accepted right after llama's own flip"


def test_with_the_splits_in_runtime_no_flip_refills_the_bucket(runtime_edge: Edge) -> None:
    """The fix for flips: another model's, then the model's own, reach Envoy as RTDS updates only; the
    route table and its buckets stay. The flips do take effect: the other model's traffic goes remote."""
    edge = runtime_edge
    remote = edge.upstreams["remote"]
    for change in ({"other": TrafficSplit(0, 100)}, {"other": TrafficSplit(0, 100), "limited": OVERFLOW}):
        drained_at = edge.drain()
        edge.publish_runtime(_models(edge.upstreams, **change))
        accepted = edge.burst()
        assert accepted <= _earned(drained_at), f"{accepted} of {PROBE} accepted right after {change}"
    before = remote.request_count
    assert all(edge.post("mistral").status == 200 for _ in range(5))
    assert remote.request_count == before + 5, "mistral's flip to the remote did not apply"


def test_an_endpoint_weight_change_does_not_refill_the_bucket(edge: Edge) -> None:
    """Weights (least-latency, throughput) travel over EDS: the route table, and the buckets, stay."""
    heavier = tuple(
        dataclasses.replace(m, endpoints=tuple(dataclasses.replace(e, weight=7) for e in m.endpoints))
        if m.name != LIMITED
        else m
        for m in _models(edge.upstreams)
    )
    drained_at = edge.drain()
    edge.publish_endpoints(heavier)
    accepted = edge.burst()
    assert accepted <= _earned(drained_at), f"{accepted} of {PROBE} accepted right after an EDS update"


def test_a_changed_limit_applies_at_once(edge: Edge) -> None:
    """A new limit is a new bucket, full at its new size (drained or not before)."""
    edge.drain()
    bigger = tuple(
        dataclasses.replace(m, profiles=(dataclasses.replace(m.profiles[0], burst=2 * BURST),))
        if m.name == LIMITED
        else m
        for m in _models(edge.upstreams)
    )
    edge.publish(bigger)
    assert edge.burst() >= 2 * BURST


def test_buckets_of_the_listener_level_filter_survive_rds_updates(edge: Edge) -> None:
    """What a fix can build on: the same buckets as descriptors of the listener-level filter keep their
    tokens across RDS updates (the model's own flip included), with the same 429 header and body. The
    costs, for the lead to weigh: the 429 stats are the filter's alone, no longer per model and profile
    (shown here); and, from Envoy's source (not shown here), its config must come over ECDS since an LDS
    change drains the listener, and each ECDS update (a model or limit added, removed or re-divided)
    builds the filter's config, hence all its buckets, anew."""
    edge.rerender(_with_listener_buckets)
    per_model, filter_wide = (
        f"spillover_model_rps{scope}.http_local_rate_limit.rate_limited" for scope in (".llama@default", "")
    )
    before = edge.envoy.stats()
    assert edge.burst() >= BURST
    limited = edge.post(LIMITED)
    assert limited.status == 429 and limited.headers.get(RATE_LIMIT_HEADER) == "true", limited.headers
    assert limited.body == (
        b'{"error":{"message":"model: llama has exceeded RPS: 1","type":"rate_limit_error",'
        b'"code":"rate_limit_exceeded","param":null}}'
    )
    for change in ({"other": OVERFLOW}, {"limited": OVERFLOW}):
        drained_at = edge.drain()
        edge.publish(_models(edge.upstreams, **change))
        accepted = edge.burst()
        assert accepted <= _earned(drained_at), f"{accepted} of {PROBE} accepted after {change}"
    # Requests without a descriptor are not limited (no default bucket), nor counted per model.
    assert sum(edge.post("mistral").status == 200 for _ in range(PROBE)) == PROBE
    after = edge.envoy.stats()
    assert after[filter_wide] > before.get(filter_wide, 0)
    assert after.get(per_model, 0) == before.get(per_model, 0)


def test_over_ecds_the_buckets_survive_rds_updates_not_their_own(edge: Edge, tmp_path: Path) -> None:
    """The same, with the listener-level config over ECDS (from a file here): a new descriptor (a model
    added) is an ECDS update that leaves the listener alone (no drain), and RDS updates keep the buckets;
    but the ECDS update builds them all anew, full."""
    path = tmp_path / "model_rps.json"
    edge.rerender(lambda models, port: _over_ecds(_with_listener_buckets(models, port), path))
    assert edge.burst() >= BURST
    drained_at = edge.drain()
    edge.publish(_models(edge.upstreams, other=OVERFLOW))
    accepted = edge.burst()
    assert accepted <= _earned(drained_at), f"{accepted} of {PROBE} accepted after an RDS update"

    reloads = f"extension_config_discovery.http_filter.{ECDS_NAME}.config_reload"
    # Counters of listener changes (the rerender above was one, an in-place filter chain update).
    listeners = [
        f"listener_manager.listener_{change}"
        for change in ("added", "modified", "removed", "in_place_updated")
    ]
    before = edge.envoy.stats()
    edge.drain()
    limited, other = _models(edge.upstreams, other=OVERFLOW)
    added = dataclasses.replace(other, name="phi", profiles=limited.profiles)
    # Only the filter's config is looked at here: the routes and listener stay as Envoy has them.
    _over_ecds(_with_listener_buckets((limited, other, added), edge.port), path)
    wait_until(lambda: edge.envoy.stats()[reloads] > before[reloads], timeout=10, message="no ECDS reload")
    after = edge.envoy.stats()
    assert [after[name] for name in listeners] == [before[name] for name in listeners]
    assert edge.burst() >= BURST, "the ECDS update kept the drained bucket"
