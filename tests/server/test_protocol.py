"""xDS protocol rules, each driven through a real gRPC stream by a raw client (tests/harness/ads.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.runtime.v3 import rtds_pb2

from spillover.server.cache import Snapshot, SnapshotCache
from spillover.server.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    RUNTIME,
    Resource,
    delta_payload,
    sotw_payload,
)
from spillover.server.service import XdsServer
from spillover.server.streams import TypeState
from tests.harness.ads import AdsClient, node
from tests.harness.clock import FakeClock
from tests.harness.envoyconfig import eds_cluster, endpoints, http_listener, weighted_route
from tests.harness.polling import async_wait_until

GROUP = "gateway"


class Server:
    def __init__(self, cache: SnapshotCache, xds: XdsServer, address: str) -> None:
        self.cache, self.xds, self.address = cache, xds, address
        self.clients: list[AdsClient] = []

    def client(self, mode: str = "sotw", method: str | None = None) -> AdsClient:
        client = AdsClient(self.address, mode, method)
        self.clients.append(client)
        return client

    def publish(self, *messages: object, group: str = GROUP) -> Snapshot:
        snapshot = Snapshot.from_messages(messages)  # type: ignore[arg-type]
        self.cache.set_snapshot(group, snapshot)
        return snapshot

    def state(self, type_url: str, node_id: str = "envoy-1") -> TypeState:
        (stream,) = [s for s in self.xds.proxies.streams() if s.node_id == node_id]
        return stream.types[type_url]

    async def acked(self, response: object, node_id: str = "envoy-1") -> None:
        """Waits until the server has processed the client's ACK of `response`."""
        type_url, nonce = response.type_url, response.nonce  # type: ignore[attr-defined]
        await async_wait_until(
            lambda: self.state(type_url, node_id).acked_nonce == nonce, message=f"ACK of {nonce} processed"
        )

    def counter(self, name: str, **labels: str) -> float:
        return self.xds.metrics_registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    cache = SnapshotCache(debounce=0)
    xds = XdsServer(cache)
    port = await xds.start("127.0.0.1:0")
    harness = Server(cache, xds, f"127.0.0.1:{port}")
    yield harness
    for client in harness.clients:
        await client.close()
    await xds.stop(0)


def cluster(name: str, timeout_s: float = 1.0) -> cluster_pb2.Cluster:
    return eds_cluster(name, connect_timeout_s=timeout_s)


def cla(name: str, port: int = 8000) -> endpoint_pb2.ClusterLoadAssignment:
    return endpoints(name, [("127.0.0.1", port)])


def names(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    out = []
    for packed in response.resources:
        if packed.type_url == CLUSTER:
            out.append(cluster_pb2.Cluster.FromString(packed.value).name)
        elif packed.type_url == ENDPOINT:
            out.append(endpoint_pb2.ClusterLoadAssignment.FromString(packed.value).cluster_name)
        elif packed.type_url == ROUTE:
            out.append(route_pb2.RouteConfiguration.FromString(packed.value).name)
        else:
            out.append(packed.type_url)
    return sorted(out)


# --- encoding -----------------------------------------------------------------------------------


def test_shared_entries_decode_to_the_same_messages_as_protobuf_builds_them() -> None:
    resource = Resource.from_message(cluster("a"))
    header = discovery_pb2.DiscoveryResponse(version_info="v1", type_url=CLUSTER, nonce="n")
    decoded = discovery_pb2.DiscoveryResponse.FromString(header.SerializeToString() + resource.sotw_entry)
    assert decoded.version_info == "v1" and decoded.nonce == "n"
    assert [cluster_pb2.Cluster.FromString(r.value) for r in decoded.resources] == [cluster("a")]
    delta = discovery_pb2.DeltaDiscoveryResponse.FromString(resource.delta_entry)
    assert delta.resources[0].name == "a"
    assert delta.resources[0].version == resource.version
    assert cluster_pb2.Cluster.FromString(delta.resources[0].resource.value) == cluster("a")


def test_responses_joined_from_heads_and_bodies_are_what_protobuf_serializes() -> None:
    # A body over 127 bytes (two-byte lengths) and a small one. (Not the same bytes: the header's fields come
    # first, where protobuf writes them in field-number order; parsers take either.)
    messages = [cluster("a"), cluster("b" * 300)]
    resources = [Resource.from_message(m) for m in messages]
    header = discovery_pb2.DiscoveryResponse(version_info="v1", type_url=CLUSTER, nonce="n")
    expected = discovery_pb2.DiscoveryResponse(version_info="v1", type_url=CLUSTER, nonce="n")
    for message in messages:
        expected.resources.add().Pack(message)
    assert discovery_pb2.DiscoveryResponse.FromString(sotw_payload(header.SerializeToString(), resources)) == expected
    delta_header = discovery_pb2.DeltaDiscoveryResponse(system_version_info="v1", type_url=CLUSTER, nonce="n")
    delta = discovery_pb2.DeltaDiscoveryResponse(system_version_info="v1", type_url=CLUSTER, nonce="n")
    for message, resource in zip(messages, resources, strict=True):
        entry = delta.resources.add(name=resource.name, version=resource.version)
        entry.resource.Pack(message)
    payload = delta_payload(delta_header.SerializeToString(), resources)
    assert discovery_pb2.DeltaDiscoveryResponse.FromString(payload) == delta


def test_versions_are_content_hashes_stable_across_builds() -> None:
    first = Snapshot.from_messages([cluster("a"), cluster("b")])
    second = Snapshot.from_messages([cluster("b"), cluster("a")])
    changed = Snapshot.from_messages([cluster("a"), cluster("b", timeout_s=2)])
    assert first.version(CLUSTER) == second.version(CLUSTER)
    assert first.version(CLUSTER) != changed.version(CLUSTER)
    assert first.get(CLUSTER)["a"].version == changed.get(CLUSTER)["a"].version


def test_duplicate_names_in_a_snapshot_are_refused() -> None:
    with pytest.raises(ValueError, match=r"duplicate .*Cluster resource named 'a'"):
        Snapshot.from_messages([cluster("a"), cluster("a", 2)])


# --- SotW -----------------------------------------------------------------------------------------


async def test_node_is_remembered_from_the_first_request(server: Server) -> None:
    server.publish(cluster("a"), cla("a"))
    client = server.client()
    client.send(node=node("envoy-1", GROUP), type_url=CLUSTER)
    response = await client.recv()
    assert names(response) == ["a"]
    # Later requests carry no node (set_node_on_first_message_only), yet stay in the right group.
    client.ack(response)
    client.send(type_url=ENDPOINT, resource_names=["a"])
    eds = await client.recv()
    assert eds.type_url == ENDPOINT and names(eds) == ["a"]
    (stream,) = server.xds.proxies.streams()
    assert (stream.node_id, stream.group) == ("envoy-1", GROUP)


async def test_a_stream_without_node_is_refused_and_others_are_unaffected(server: Server) -> None:
    server.publish(cluster("a"))
    bad = server.client()
    bad.send(type_url=CLUSTER)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await bad.recv()
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node" in (error.value.details() or "")
    good = server.client()
    good.send(node=node(), type_url=CLUSTER)
    assert names(await good.recv()) == ["a"]


async def test_wildcard_cds_carries_the_full_set_and_a_missing_cluster_is_a_delete(server: Server) -> None:
    server.publish(cluster("a"), cluster("b"))
    client = server.client()
    client.send(node=node(), type_url=CLUSTER)
    first = await client.recv()
    assert names(first) == ["a", "b"]
    client.ack(first)
    server.publish(cluster("a"), cluster("c"))
    second = await client.recv()
    assert names(second) == ["a", "c"]
    assert second.version_info != first.version_info


async def test_explicit_star_is_wildcard_too(server: Server) -> None:
    server.publish(cluster("a"), cluster("b"))
    client = server.client()
    client.send(node=node(), type_url=CLUSTER, resource_names=["*"])
    assert names(await client.recv()) == ["a", "b"]


async def test_names_that_do_not_exist_yet_are_sent_when_they_appear(server: Server) -> None:
    server.publish(cluster("a"), cla("a"))
    client = server.client()
    client.send(node=node(), type_url=ENDPOINT, resource_names=["a", "later"])
    first = await client.recv()
    assert names(first) == ["a"]
    client.ack(first, resource_names=["a", "later"])
    await client.expect_silence()
    server.publish(cluster("a"), cla("a"), cluster("later"), cla("later"))
    second = await client.recv()
    assert names(second) == ["a", "later"]


async def test_newly_requested_names_are_answered_even_when_unchanged(server: Server) -> None:
    server.publish(cla("a"), cla("b"))
    client = server.client()
    client.send(node=node(), type_url=ENDPOINT, resource_names=["a"])
    first = await client.recv()
    client.ack(first, resource_names=["a", "b"])
    second = await client.recv()
    assert names(second) == ["a", "b"]
    assert second.nonce != first.nonce


async def test_only_changes_are_sent(server: Server) -> None:
    server.publish(cluster("a"), cla("a"))
    client = server.client()
    client.send(node=node(), type_url=CLUSTER)
    cds = await client.recv()
    client.ack(cds)
    client.send(type_url=ENDPOINT, resource_names=["a"])
    eds = await client.recv()
    client.ack(eds, resource_names=["a"])
    # The same content again, as a new snapshot object: nothing to send.
    server.publish(cluster("a"), cla("a"))
    await client.expect_silence()
    # Only endpoints change: only EDS goes out.
    server.publish(cluster("a"), cla("a", port=9000))
    update = await client.recv()
    assert update.type_url == ENDPOINT
    await client.expect_silence()


async def test_a_nack_holds_the_rejected_version_until_the_config_changes(server: Server) -> None:
    good = server.publish(cluster("a"))
    client = server.client()
    client.send(node=node(), type_url=CLUSTER)
    first = await client.recv()
    client.ack(first)
    await server.acked(first)
    server.publish(cluster("bad"))
    rejected = await client.recv()
    nacks_before = server.counter("spillover_xds_nacks_total", type="CDS")
    client.nack(rejected, "invalid cluster 'bad'", last_good_version=good.version(CLUSTER))
    await async_wait_until(
        lambda: server.xds.proxies.streams()[0].types[CLUSTER].nack_error, message="NACK recorded"
    )
    state = server.xds.proxies.streams()[0].types[CLUSTER]
    assert state.status().value == "NACKED"
    assert state.nack_error == "invalid cluster 'bad'"
    assert state.acked_version == first.version_info
    assert server.counter("spillover_xds_nacks_total", type="CDS") == nacks_before + 1
    # Not resent: neither spontaneously nor when the same content is published again.
    await client.expect_silence()
    server.publish(cluster("bad"))
    await client.expect_silence()
    # A corrected configuration goes out and clears the NACK once acknowledged.
    server.publish(cluster("fixed"))
    corrected = await client.recv()
    assert names(corrected) == ["fixed"]
    client.ack(corrected)
    await async_wait_until(lambda: state.status().value == "SYNCED", message="SYNCED after the fix")


async def test_a_stale_nonce_is_ignored(server: Server) -> None:
    server.publish(cla("a"), cla("b"))
    client = server.client()
    client.send(node=node(), type_url=ENDPOINT, resource_names=["a"])
    first = await client.recv()
    server.publish(cla("a", port=9001), cla("b"))
    second = await client.recv()
    # Answers the superseded response and asks for more names: ignored as a whole.
    client.ack(first, resource_names=["a", "b"])
    await client.expect_silence()
    assert server.counter("spillover_xds_stale_nonce_total", type="EDS") == 1
    client.ack(second, resource_names=["a", "b"])
    third = await client.recv()
    assert names(third) == ["a", "b"]


async def test_eds_is_resent_after_a_cds_change_so_the_cluster_can_warm(server: Server) -> None:
    server.publish(cluster("a"), cla("a"))
    client = server.client()
    client.send(node=node(), type_url=CLUSTER)
    cds = await client.recv()
    client.ack(cds)
    client.send(type_url=ENDPOINT, resource_names=["a"])
    eds = await client.recv()
    client.ack(eds, resource_names=["a"])
    server.publish(cluster("a", timeout_s=3), cla("a"))  # the cluster changes, its endpoints don't
    cds2 = await client.recv()
    eds2 = await client.recv()
    assert (cds2.type_url, eds2.type_url) == (CLUSTER, ENDPOINT)
    assert eds2.version_info == eds.version_info and eds2.nonce != eds.nonce
    assert names(eds2) == ["a"]


async def test_one_push_is_ordered_and_clusters_are_removed_only_in_a_later_push(server: Server) -> None:
    listener = http_listener("main", "127.0.0.1", 24010, route_config="main")
    server.publish(cluster("old"), cla("old"), listener, weighted_route("main", {"old": 1}))
    client = server.client()
    # Envoy's order: clusters, their endpoints, then listeners and routes.
    client.send(node=node(), type_url=CLUSTER)
    cds = await client.recv()
    client.ack(cds)
    client.send(type_url=ENDPOINT, resource_names=["old"])
    eds = await client.recv()
    client.ack(eds, resource_names=["old"])
    client.send(type_url=LISTENER)
    lds = await client.recv()
    client.ack(lds)
    client.send(type_url=ROUTE, resource_names=["main"])
    rds = await client.recv()
    client.ack(rds, resource_names=["main"])
    await client.expect_silence()

    # Switch the route to a new cluster and drop the old one in the same snapshot.
    await server.acked(rds)
    server.publish(cluster("new"), cla("new"), listener, weighted_route("main", {"new": 1}))
    cds2, eds2 = await client.recv(), await client.recv()
    assert (cds2.type_url, eds2.type_url) == (CLUSTER, ENDPOINT)
    assert names(cds2) == ["new", "old"], "the old cluster stays until the route has moved"
    assert names(eds2) == [], "the subscribed 'old' endpoints are gone"
    # The route waits: 'new' is not warm until its endpoints are acknowledged.
    await client.expect_silence()
    client.ack(cds2)
    client.ack(eds2, resource_names=["new", "old"])  # Envoy asks for the new cluster's endpoints
    eds_new = await client.recv()
    assert eds_new.type_url == ENDPOINT and names(eds_new) == ["new"]
    await client.expect_silence()
    client.ack(eds_new, resource_names=["new", "old"])
    rds2 = await client.recv()
    assert rds2.type_url == ROUTE, "the route is sent once the new cluster is warm"
    await client.expect_silence(0.2)
    client.ack(rds2, resource_names=["main"])
    later = await client.recv()
    assert later.type_url == CLUSTER and names(later) == ["new"]


def runtime_layer(name: str = "split", **weights: int) -> rtds_pb2.Runtime:
    layer = rtds_pb2.Runtime(name=name)
    for key, weight in weights.items():
        layer.layer.fields[key].number_value = weight
    return layer


async def test_a_runtime_layer_goes_before_the_routes_and_a_nack_of_it_is_held(server: Server) -> None:
    """RTDS (the split weights of `--split-weights runtime`): pushed after the clusters and before the
    listeners and routes that read it, and NACKs of it tracked as of any type."""
    listener = http_listener("main", "127.0.0.1", 24010, route_config="main")
    server.publish(cluster("a"), cla("a"), listener, weighted_route("main", {"a": 1}), runtime_layer(a=1))
    client = server.client()
    # Envoy's order with an RTDS layer: the layer first, then clusters, endpoints, listeners and routes.
    subscriptions = {RUNTIME: ["split"], CLUSTER: [], ENDPOINT: ["a"], LISTENER: [], ROUTE: ["main"]}
    for type_url, subscribed in subscriptions.items():
        client.send(node=node(), type_url=type_url, resource_names=subscribed)
        response = await client.recv()
        assert response.type_url == type_url
        client.ack(response, resource_names=subscribed)
    await client.expect_silence()
    assert server.state(RUNTIME).status().value == "SYNCED"

    server.publish(cluster("a"), cla("a"), listener, weighted_route("main", {"a": 1}, prefix="/v1"), runtime_layer(a=5))
    first, routes = await client.recv(), await client.recv()
    assert (first.type_url, routes.type_url) == (RUNTIME, ROUTE)  # one push, the layer first
    client.ack(first, resource_names=["split"])
    client.ack(routes, resource_names=["main"])
    await server.acked(routes)

    good = first.version_info
    server.publish(cluster("a"), cla("a"), listener, weighted_route("main", {"a": 1}, prefix="/v1"), runtime_layer(a=7))
    rejected = await client.recv()
    assert rejected.type_url == RUNTIME
    client.nack(rejected, "bad layer", last_good_version=good, resource_names=["split"])
    state = server.state(RUNTIME)
    await async_wait_until(lambda: state.nack_error, message="NACK recorded")
    assert state.status().value == "NACKED" and state.acked_version == good
    assert server.counter("spillover_xds_nacks_total", type="RTDS") == 1
    await client.expect_silence()  # the rejected layer is not resent


async def test_routes_are_not_held_forever_by_a_cluster_that_never_warms() -> None:
    cache = SnapshotCache(debounce=0)
    xds = XdsServer(cache, warm_timeout=0.5)
    port = await xds.start("127.0.0.1:0")
    harness = Server(cache, xds, f"127.0.0.1:{port}")
    try:
        listener = http_listener("main", "127.0.0.1", 24010, route_config="main")
        harness.publish(cluster("a"), cla("a"), listener, weighted_route("main", {"a": 1}))
        client = harness.client()
        client.send(node=node(), type_url=CLUSTER)
        cds = await client.recv()
        client.ack(cds)
        client.send(type_url=ROUTE, resource_names=["main"])  # never subscribes to EDS
        await client.expect_silence(0.3)
        rds = await client.recv(timeout=2)
        assert rds.type_url == ROUTE
    finally:
        for client in harness.clients:
            await client.close()
        await xds.stop(0)


@pytest.mark.parametrize("mode", ["sotw", "delta"])
async def test_a_stream_of_clusters_only_sets_no_warming_deadline(server: Server, mode: str) -> None:
    """Benchmark clients ask for clusters and endpoints, never for listeners or routes: nothing waits for
    their clusters to warm, so no deadline wakes a push task that has nothing to send. Once listeners are
    asked for, the deadline counts again."""
    server.publish(cluster("a"), cla("a"), http_listener("main", "127.0.0.1", 24010, route_config="main"))
    client = server.client(mode)
    client.send(node=node(), type_url=CLUSTER)
    cds = await client.recv()
    client.ack(cds)
    client.send(type_url=ENDPOINT, **({"resource_names": ["a"]} if mode == "sotw" else {"resource_names_subscribe": ["a"]}))
    eds = await client.recv()
    client.ack(eds)
    await server.acked(eds)
    (stream,) = server.xds.proxies.streams()
    assert stream.warming_since is not None  # the cluster was sent as added: it warms (for listeners to come)
    assert stream.wake_at is None
    assert all(writer._timer is None for writer in server.xds._writers)
    server.publish(cluster("a", timeout_s=2.0), cla("a"), http_listener("main", "127.0.0.1", 24010, route_config="main"))
    changed = await client.recv()
    while changed.type_url != CLUSTER:  # SotW may resend the endpoints first (a new version of each type)
        client.ack(changed)
        changed = await client.recv()
    client.ack(changed)
    await server.acked(changed)
    assert stream.wake_at is None  # a changed cluster warms again, and sets no deadline either
    client.send(type_url=LISTENER)  # listeners wait for the clusters to warm, for at most warm_timeout
    await async_wait_until(lambda: LISTENER in stream.types, message="the LDS request processed")
    assert stream.wake_at == stream.warming_since + stream.warm_timeout  # type: ignore[operator]
    await async_wait_until(
        lambda: all(writer._timer is not None for writer in server.xds._writers), message="the deadline scheduled"
    )


async def test_a_reconnecting_envoy_with_the_current_version_is_sent_nothing(server: Server) -> None:
    snapshot = server.publish(cluster("a"), cla("a"))
    client = server.client()
    client.send(node=node(), type_url=CLUSTER, version_info=snapshot.version(CLUSTER))
    await client.expect_silence()
    client.send(type_url=ENDPOINT, resource_names=["a"], version_info=snapshot.version(ENDPOINT))
    await client.expect_silence()
    # And it still gets the next change.
    server.publish(cluster("a"), cla("a", port=9999))
    assert (await client.recv()).type_url == ENDPOINT


async def test_streams_of_one_group_share_one_encoded_response(server: Server) -> None:
    server.publish(cluster("a"), cluster("b"))
    one, two = server.client(), server.client()
    one.send(node=node("envoy-1"), type_url=CLUSTER)
    two.send(node=node("envoy-2"), type_url=CLUSTER)
    first, second = await one.recv(), await two.recv()
    # The nonce is part of the shared encoding: equal nonces mean the bytes were built once.
    assert first.nonce == second.nonce
    assert first.SerializeToString() == second.SerializeToString()


async def test_groups_are_isolated(server: Server) -> None:
    server.publish(cluster("for-a"), group="a")
    server.publish(cluster("for-b"), group="b")
    client_a, client_b = server.client(), server.client()
    client_a.send(node=node("x", "a"), type_url=CLUSTER)
    client_b.send(node=node("y", "b"), type_url=CLUSTER)
    assert names(await client_a.recv()) == ["for-a"]
    assert names(await client_b.recv()) == ["for-b"]
    server.publish(cluster("for-b2"), group="b")
    assert names(await client_b.recv()) == ["for-b2"]
    await client_a.expect_silence()


async def test_a_group_without_a_snapshot_gets_its_config_when_one_is_published(server: Server) -> None:
    client = server.client()
    client.send(node=node("late", "new-group"), type_url=CLUSTER)
    await client.expect_silence()
    server.publish(cluster("a"), group="new-group")
    assert names(await client.recv()) == ["a"]


async def test_per_type_service_streams_work_without_a_type_url(server: Server) -> None:
    server.publish(cluster("a"))
    client = server.client(method="/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters")
    client.send(node=node())
    response = await client.recv()
    assert response.type_url == CLUSTER and names(response) == ["a"]


# --- bad input -----------------------------------------------------------------------------------


async def test_unknown_type_urls_are_ignored_without_harm(server: Server) -> None:
    server.publish(cluster("a"))
    client = server.client()
    client.send(node=node(), type_url="type.googleapis.com/not.a.Real")
    await client.expect_silence()
    client.send(type_url="")
    client.send(type_url=CLUSTER)
    assert names(await client.recv()) == ["a"]
    assert server.counter("spillover_xds_ignored_requests_total", reason="missing_type_url") == 1


async def _drain(call: grpc.aio.StreamStreamCall) -> list[object]:
    received = []
    try:
        async for item in call:
            received.append(item)
    except grpc.aio.AioRpcError:
        pass
    return received


async def test_malformed_request_bytes_end_only_that_stream(server: Server) -> None:
    server.publish(cluster("a"))
    healthy = server.client()
    healthy.send(node=node("healthy"), type_url=CLUSTER)
    assert names(await healthy.recv()) == ["a"]
    channel = grpc.aio.insecure_channel(server.address)
    rpc = channel.stream_stream(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )

    async def garbage() -> AsyncIterator[bytes]:
        yield b"\xff\xff\xff\xff not a protobuf"

    call = rpc(garbage())
    received = await asyncio.wait_for(_drain(call), 5)
    assert received == [], "garbage gets no configuration"
    assert await call.code() != grpc.StatusCode.OK
    await channel.close()
    server.publish(cluster("b"))
    assert names(await healthy.recv()) == ["b"]


async def test_clients_that_never_ack_or_vanish_mid_push_do_not_disturb_others(server: Server) -> None:
    server.publish(cluster("c0"))
    quiet = [server.client() for _ in range(5)]
    for index, client in enumerate(quiet):
        client.send(node=node(f"quiet-{index}"), type_url=CLUSTER)
    watcher = server.client()
    watcher.send(node=node("watcher"), type_url=CLUSTER)
    await watcher.recv()
    await async_wait_until(lambda: len(server.xds.proxies.streams()) == 6, message="6 streams")
    for step in range(1, 20):
        server.publish(cluster(f"c{step}"))
        if step == 5:
            for client in quiet[:3]:  # vanish in the middle of the pushes
                client.call.cancel()
        latest = await watcher.recv()
        watcher.ack(latest)
    assert names(latest) == ["c19"]
    await async_wait_until(lambda: len(server.xds.proxies.streams()) == 3, message="vanished streams cleaned up")
    await server.acked(latest, node_id="watcher")
    statuses = {s.node_id: s.status().value for s in server.xds.proxies.streams()}
    assert statuses["watcher"] == "SYNCED"
    assert statuses["quiet-3"] == "STALE"
    assert server.counter("spillover_xds_connected_proxies", group=GROUP, mode="sotw") == 3


# --- Delta ----------------------------------------------------------------------------------------


def delta_names(response: discovery_pb2.DeltaDiscoveryResponse) -> list[str]:
    return sorted(r.name for r in response.resources)


async def test_delta_sends_updates_and_removals(server: Server) -> None:
    server.publish(cluster("a"), cluster("b"))
    client = server.client("delta")
    client.send(node=node(), type_url=CLUSTER)
    first = await client.recv()
    assert delta_names(first) == ["a", "b"] and not first.removed_resources
    client.ack(first)
    server.publish(cluster("a"), cluster("b", timeout_s=5), cluster("c"))
    second = await client.recv()
    assert delta_names(second) == ["b", "c"], "only what changed"
    client.ack(second)
    server.publish(cluster("a"), cluster("c"))
    third = await client.recv()
    assert not third.resources and list(third.removed_resources) == ["b"]


async def test_delta_honours_initial_resource_versions_on_reconnect(server: Server) -> None:
    snapshot = server.publish(cluster("a"), cluster("b"))
    current_a = snapshot.get(CLUSTER)["a"].version
    client = server.client("delta")
    client.send(
        node=node(),
        type_url=CLUSTER,
        initial_resource_versions={"a": current_a, "b": "stale", "gone": "old"},
    )
    response = await client.recv()
    assert delta_names(response) == ["b"]
    assert list(response.removed_resources) == ["gone"]


async def test_delta_up_to_date_reconnect_gets_nothing(server: Server) -> None:
    snapshot = server.publish(cluster("a"))
    client = server.client("delta")
    client.send(node=node(), type_url=CLUSTER, initial_resource_versions={"a": snapshot.get(CLUSTER)["a"].version})
    await client.expect_silence()


async def test_delta_does_not_reject_on_nonce_and_handles_subscriptions(server: Server) -> None:
    server.publish(cla("a"), cla("b"))
    client = server.client("delta")
    client.send(node=node(), type_url=ENDPOINT, resource_names_subscribe=["a"])
    first = await client.recv()
    assert delta_names(first) == ["a"]
    # A request with an unknown nonce still changes the subscription.
    client.send(type_url=ENDPOINT, response_nonce="not-a-nonce-we-sent", resource_names_subscribe=["b"])
    second = await client.recv()
    assert delta_names(second) == ["b"]
    client.send(type_url=ENDPOINT, resource_names_unsubscribe=["a"])
    await async_wait_until(lambda: server.state(ENDPOINT).names == {"b"}, message="unsubscribe processed")
    server.publish(cla("a", port=1), cla("b"))
    await client.expect_silence()
    client.send(type_url=ENDPOINT, resource_names_subscribe=["a"])
    again = await client.recv()
    assert delta_names(again) == ["a"], "re-subscribing is answered even though it was sent before"


async def test_delta_nack_holds_the_rejected_version(server: Server) -> None:
    server.publish(cluster("a"))
    client = server.client("delta")
    client.send(node=node(), type_url=CLUSTER)
    first = await client.recv()
    client.ack(first)
    await server.acked(first)
    server.publish(cluster("a", timeout_s=9))
    rejected = await client.recv()
    client.nack(rejected, "bad timeout")
    await client.expect_silence()
    server.publish(cluster("a", timeout_s=9))
    await client.expect_silence()
    state = server.xds.proxies.streams()[0].types[CLUSTER]
    assert state.status().value == "NACKED" and state.nack_error == "bad timeout"
    server.publish(cluster("a", timeout_s=2))
    assert delta_names(await client.recv()) == ["a"]


async def test_delta_eds_is_resent_after_a_cluster_changes(server: Server) -> None:
    server.publish(cluster("a"), cla("a"))
    client = server.client("delta")
    client.send(node=node(), type_url=CLUSTER)
    client.ack(await client.recv())
    client.send(type_url=ENDPOINT, resource_names_subscribe=["a"])
    client.ack(await client.recv())
    server.publish(cluster("a", timeout_s=4), cla("a"))
    cds, eds = await client.recv(), await client.recv()
    assert (cds.type_url, eds.type_url) == (CLUSTER, ENDPOINT)
    assert delta_names(eds) == ["a"]


# --- debounce ---------------------------------------------------------------------------------------


async def test_a_burst_of_changes_becomes_one_push() -> None:
    clock = FakeClock()
    cache = SnapshotCache(debounce=0.1, max_delay=1.0, clock=clock, call_later=clock.call_later)
    published: list[Snapshot] = []
    cache.on_publish.append(lambda group, snapshot: published.append(snapshot))
    # Ten changes 50 ms apart: 0.45 s in all, but never 0.1 s of quiet.
    for step in range(10):
        cache.update(GROUP, Snapshot.from_messages([cluster(f"c{step}")]))
        clock.advance(0.05)
    assert published == [], "published before 0.1 s of quiet"
    clock.advance(0.1)
    assert len(published) == 1, "the burst was not published after 0.1 s of quiet"
    assert list(published[0].get(CLUSTER)) == ["c9"], "the newest snapshot of the burst wins"
    clock.advance(10)
    assert len(published) == 1 and clock.scheduled == 0, "a second push followed the burst"


async def test_debounce_is_capped_by_max_delay() -> None:
    clock = FakeClock()
    cache = SnapshotCache(debounce=0.1, max_delay=0.5, clock=clock, call_later=clock.call_later)
    published: list[float] = []
    cache.on_publish.append(lambda group, snapshot: published.append(clock()))
    # Changes every 50 ms for 1.2 s never leave a 100 ms quiet period: only the cap can publish.
    for step in range(24):
        cache.update(GROUP, Snapshot.from_messages([cluster(f"c{step}")]))
        clock.advance(0.05)
    assert published, "max_delay must force a publish during a continuous stream of changes"
    assert published[0] == pytest.approx(0.5), "the first push waited longer than max_delay"
    assert len(published) == 2, "one push per max_delay while the changes go on"


async def test_debounce_runs_on_the_event_loop_by_default() -> None:
    cache = SnapshotCache(debounce=0.01, max_delay=0.05)
    published: list[Snapshot] = []
    cache.on_publish.append(lambda group, snapshot: published.append(snapshot))
    cache.update(GROUP, Snapshot.from_messages([cluster("a")]))
    assert published == []
    await async_wait_until(lambda: published, timeout=5, message="the debounced snapshot was published")
    assert list(published[0].get(CLUSTER)) == ["a"]


async def test_the_admin_address_advertised_in_node_metadata_is_known(server: Server) -> None:
    server.publish(cluster("a"))
    with_admin = node("with-admin")
    with_admin.metadata.update({"spillover.admin_port": 9911})
    client, other = server.client(), server.client()
    client.send(node=with_admin, type_url=CLUSTER)
    other.send(node=node("without-admin"), type_url=CLUSTER)
    await client.recv()
    await other.recv()
    assert server.xds.proxies.admin_urls() == ["http://127.0.0.1:9911"]
    assert server.xds.proxies.admin_urls(group="elsewhere") == []


async def test_delta_stream_that_skips_a_snapshot_still_gets_every_change(server: Server) -> None:
    server.publish(cluster("a"), cluster("b"), cluster("c"))
    client = server.client("delta")
    client.send(node=node(), type_url=CLUSTER)
    first = await client.recv()
    client.ack(first)
    await server.acked(first)
    # Two publishes in a row: the stream may wake once, two generations behind.
    server.publish(cluster("a", timeout_s=2), cluster("b"), cluster("c"))
    server.publish(cluster("a", timeout_s=2), cluster("b"), cluster("d"))
    seen: dict[str, str] = {r.name: r.version for r in first.resources}
    removed: set[str] = set()
    while set(seen) - removed != {"a", "b", "d"} or seen["a"] == first.resources[0].version:
        response = await client.recv()
        seen.update({r.name: r.version for r in response.resources})
        removed.update(response.removed_resources)
        removed.difference_update(r.name for r in response.resources)
        client.ack(response)
    assert removed == {"c"}


async def test_republishing_a_snapshot_object_is_safe(server: Server) -> None:
    snapshot = Snapshot.from_messages([cluster("a")])
    server.cache.set_snapshot(GROUP, snapshot)
    server.cache.set_snapshot("other", snapshot)
    client = server.client("delta")
    client.send(node=node(), type_url=CLUSTER)
    response = await client.recv()
    client.ack(response)
    await server.acked(response)
    server.cache.set_snapshot(GROUP, snapshot)
    await client.expect_silence()
    server.publish(cluster("a"), cluster("b"))
    assert delta_names(await client.recv()) == ["b"]
