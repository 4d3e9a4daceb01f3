"""Bounds that take time or volume to show: types per stream, the first-request deadline, groups at once
and their expiry (and the memory they leave), memoized subsets, the request rate, metric labels. Real
gRPC streams against a real server (fixtures in conftest.py)."""

from __future__ import annotations

import asyncio

import grpc

from spillover.server.registry import GroupTracker
from spillover.server.resources import CLUSTER, ENDPOINT
from tests.harness.ads import AdsClient
from tests.harness.clock import FakeClock
from tests.harness.polling import async_wait_until
from tests.harness.secure_xds import Start, edge_resources, node


async def test_more_types_than_a_stream_may_hold(start: Start) -> None:
    server = await start(rules=None, tls=False)
    client = server.client(mode="delta")
    client.send(node=node(), type_url=CLUSTER)
    for i in range(31):
        client.send(type_url=f"type.googleapis.com/made.up.Type{i}")
    client.send(type_url="type.googleapis.com/one.too.Many")
    assert await client.ended() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 32 resource types" in await client.details()


async def test_a_stream_without_a_first_request_is_ended(start: Start) -> None:
    from spillover.server.bounds import StreamLimits

    server = await start(limits=StreamLimits(first_request_timeout=0.3))
    silent = server.client()  # opens the stream and sends nothing
    assert await silent.ended(timeout=5) == grpc.StatusCode.DEADLINE_EXCEEDED
    assert server.refused("first_request_timeout") == 1


async def test_node_groups_at_once_are_bounded(start: Start) -> None:
    server = await start(rules=None, tls=False, max_groups=2, group_grace=60)
    for group in ("g1", "g2"):
        server.publish(group, edge_resources())
        client = server.client()
        client.send(node=node(f"n-{group}", group), type_url=CLUSTER)
        await client.recv()  # admitted: its group counts
        assert group in server.xds.groups
    third = server.client()
    third.send(node=node("n-g3", "g3"), type_url=CLUSTER)
    assert await third.ended() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 2 node groups at once" in await third.details()
    # An existing group takes more streams.
    more = server.client()
    more.send(node=node("n-g1b", "g1"), type_url=CLUSTER)
    await async_wait_until(lambda: len(server.xds.proxies.streams()) == 3, message="joined g1")


async def test_metric_labels_are_never_client_text(start: Start) -> None:
    server = await start(rules=None, tls=False)
    server.publish("edge", edge_resources())
    client = server.client(mode="delta")
    client.send(node=node(), type_url=CLUSTER)
    await client.recv()
    for i in range(10):
        client.send(type_url=f"type.googleapis.com/attacker.Label{i}", response_nonce=f"n{i}")
    await async_wait_until(lambda: server.counter("spillover_xds_acks_total", type="other") == 10, message="acks")
    labels = {
        sample.labels.get("type")
        for family in server.xds.metrics_registry.collect()
        for sample in family.samples
        if "type" in sample.labels
    }
    assert labels <= {"CDS", "EDS", "LDS", "RDS", "SDS", "RTDS", "other"}


async def test_memoized_subsets_are_bounded(start: Start) -> None:
    server = await start(rules=None, tls=False)
    snapshot = server.publish("edge", edge_resources())
    client = server.client()
    client.send(node=node(), type_url=ENDPOINT, resource_names=["n-0"])
    response = await client.recv()
    for i in range(1, 1500):
        client.send(type_url=ENDPOINT, response_nonce=response.nonce, resource_names=[f"n-{i}"])
        response = await client.recv()
    assert len(snapshot._subsets) <= 1024 and len(snapshot._responses) <= 1024
    # Large subscriptions fill it by their names, not by their number.
    for i in range(8):
        names = [f"n{i}-{j}" for j in range(50_000)]
        client.send(type_url=ENDPOINT, response_nonce=response.nonce, resource_names=names)
        response = await client.recv()
    assert sum(len(names) for _, names in snapshot._subsets) <= 200_000


# -- certificates and groups over time --------------------------------------------------------------


async def test_groups_without_streams_are_forgotten_after_their_grace(start: Start) -> None:
    server = await start(rules=None, tls=False, group_grace=0.3)
    client = server.client()
    client.send(node=node("n", "transient"), type_url=CLUSTER)
    await async_wait_until(lambda: "transient" in server.xds.groups, message="group joined")
    server.publish("transient", edge_resources())
    await client.recv()
    series = lambda: [  # noqa: E731
        s for f in server.xds.metrics_registry.collect() for s in f.samples if s.labels.get("group") == "transient"
    ]
    assert series()
    await client.close()
    await async_wait_until(lambda: "transient" not in server.xds.groups, timeout=5, message="forgotten")
    assert server.cache.get("transient") is None
    assert series() == []
    assert server.counter("spillover_xds_groups_expired_total") == 1

    # A stream back within the grace keeps its group.
    server.publish("steady", edge_resources())
    first = server.client()
    first.send(node=node("s1", "steady"), type_url=CLUSTER)
    await first.recv()
    await first.close()
    second = server.client()
    second.send(node=node("s2", "steady"), type_url=CLUSTER)
    await second.recv()
    await asyncio.sleep(0.6)  # past the grace of the first stream's departure: still there
    assert server.cache.get("steady") is not None and "steady" in server.xds.groups


async def test_forgotten_groups_leave_no_python_memory_behind(start: Start) -> None:
    """What a group and its streams held is freed (tracemalloc: Python allocations, not allocator pages)."""
    import gc
    import tracemalloc

    server = await start(rules=None, tls=False, group_grace=0.2, max_groups=1000)
    resources = edge_resources()

    async def wave(tag: str, count: int = 200) -> None:
        clients = []
        for i in range(count):
            group = f"{tag}-{i}"
            server.publish(group, resources)
            client = AdsClient(server.address)
            client.send(node=node(f"n-{i}", group), type_url=CLUSTER)
            clients.append(client)
        for client in clients:
            await client.recv()
        for client in clients:
            await client.close()
        await async_wait_until(lambda: len(server.xds.groups) == 0, timeout=60, message=f"wave {tag} forgotten")

    from spillover.server.cache import Snapshot
    from spillover.server.streams import BaseStream, TypeState

    def alive() -> dict[str, int]:
        gc.collect()
        counts = {"Snapshot": 0, "BaseStream": 0, "TypeState": 0}
        for obj in gc.get_objects():
            for kind in (Snapshot, BaseStream, TypeState):
                if isinstance(obj, kind):
                    counts[kind.__name__] += 1
        return counts

    await wave("warm")  # first use of every code path allocates what stays (caches, interned strings)
    baseline = alive()
    tracemalloc.start()
    try:
        held = []
        for tag in ("churn", "again", "more"):
            await wave(tag)
            assert alive() == baseline, tag
            held.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    print(f"Python memory traced after each wave of 200 groups: {[round(h / 1024) for h in held]} KiB")
    # A wave kept would hold about 1 MiB (its snapshots' bookkeeping, streams, series); noise stays below.
    assert max(held) < 2 * 1024 * 1024, held
    assert all(server.cache.get(f"churn-{i}") is None for i in range(200))


async def test_a_stream_spinning_the_server_is_ended(start: Start) -> None:
    from spillover.server.bounds import StreamLimits

    server = await start(rules=None, tls=False, limits=StreamLimits(requests_per_second=10, request_burst=20))
    server.publish("edge", edge_resources())
    client = server.client()
    client.send(node=node(), type_url=CLUSTER)
    response = await client.recv()
    for _ in range(60):  # ACKs of the same response, as fast as the client can write
        client.ack(response)
    code = await client.ended()
    # (gRPC's client says INTERNAL instead when one of its writes races the server's status.)
    assert code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert "at most 10 requests per second on a stream (bursts of 20)" in await client.details()
    assert server.refused("request_rate") == 1
    # The status goes out before the handler's cleanup has run: the stream is unregistered right after.
    await async_wait_until(lambda: server.xds.proxies.streams() == [], timeout=5, message="the stream forgotten")


def test_a_group_waiting_to_be_forgotten_is_forgotten_after_a_stop_and_start() -> None:
    """A replica that hands its Envoys over stops its xDS server and starts it again later: the groups left
    without streams must still be forgotten, a whole grace after the restart."""
    clock = FakeClock()
    forgotten: list[str] = []
    groups = GroupTracker(10, 5.0, forgotten.append, call_later=clock.call_later)
    assert groups.join("left") and groups.join("kept")
    groups.leave("left")
    clock.advance(2.0)
    groups.close()  # the server stops: no timer may fire while it is down
    clock.advance(60.0)
    assert forgotten == [] and "left" in groups and len(groups) == 2
    groups.resume()
    clock.advance(4.9)
    assert forgotten == []
    clock.advance(0.2)
    assert forgotten == ["left"] and "left" not in groups and "kept" in groups

    # A stream back while the server was down (or right after) keeps its group.
    groups.leave("kept")
    groups.close()
    assert groups.join("kept")
    groups.resume()
    clock.advance(10.0)
    assert forgotten == ["left"] and "kept" in groups
