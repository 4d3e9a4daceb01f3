"""The cheap per-stream path (issue 15): one task per stream, ACKs in O(1), ordered writes (the collector
during fan-outs and gc_tuning: test_stream_gc.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from prometheus_client import CollectorRegistry

from spillover.server.cache import Snapshot, SnapshotCache
from spillover.server.metrics import StreamMetricEvents, XdsMetrics
from spillover.server.resources import CLUSTER, ENDPOINT, LISTENER
from spillover.server.service import XdsServer
from spillover.server.stream_writer import StreamWriter
from spillover.server.streams import DeltaStream, Outgoing, SotwStream
from tests.harness.ads import AdsClient, node
from tests.harness.envoyconfig import eds_cluster, endpoints, http_listener
from tests.harness.polling import async_wait_until

GROUP = "gateway"
NAMES = [f"model-{i:03d}" for i in range(20)]


def snapshot(names: list[str] = NAMES, port: int = 8000) -> Snapshot:
    messages = [eds_cluster(n) for n in names] + [endpoints(n, [("127.0.0.1", port)]) for n in names]
    return Snapshot.from_messages(messages)


def sotw_stream(cache: SnapshotCache) -> SotwStream:
    return SotwStream("ipv4:127.0.0.1:1", lambda n: n.cluster, cache.get)


def as_received(stream: SotwStream, **fields: object) -> list[Outgoing]:
    """Hands the stream a request the way the server does: parsed, with its bytes."""
    raw = discovery_pb2.DiscoveryRequest(**fields).SerializeToString()  # type: ignore[arg-type]
    return stream.on_request(discovery_pb2.DiscoveryRequest.FromString(raw), raw)


def ack_fields(out: Outgoing, names: list[str]) -> dict[str, object]:
    response = discovery_pb2.DiscoveryResponse.FromString(out.payload)
    return {
        "type_url": response.type_url, "version_info": response.version_info, "response_nonce": response.nonce,
        "resource_names": names,
    }


# --- ACKs --------------------------------------------------------------------------------------------


def subscribed_eds() -> tuple[SnapshotCache, SotwStream, Outgoing]:
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, snapshot())
    stream = sotw_stream(cache)
    as_received(stream, node=node(cluster=GROUP), type_url=CLUSTER)
    (eds,) = as_received(stream, type_url=ENDPOINT, resource_names=NAMES)
    return cache, stream, eds


def test_an_ack_repeating_the_names_keeps_the_subscription_as_it_was() -> None:
    _, stream, eds = subscribed_eds()
    state = stream.types[ENDPOINT]
    key, names = state.names_key, state.names
    assert state.requested_span is not None  # the fast path is armed for the next request
    assert as_received(stream, **ack_fields(eds, NAMES)) == []
    # The same objects, not equal copies: the memo lookups keyed by them stay O(1).
    assert state.names_key is key and state.names is names
    assert state.acked_nonce == state.nonce


def test_an_ack_with_as_many_names_but_one_swapped_is_a_new_subscription() -> None:
    cache, stream, eds = subscribed_eds()
    cache.set_snapshot(GROUP, snapshot([*NAMES, "model-new"]))
    stream.on_snapshot()  # CDS (and EDS) of the new cluster go out...
    state = stream.types[ENDPOINT]
    swapped = [*NAMES[:-1], "model-new"]  # same count, same length of each name
    out = as_received(stream, **ack_fields(_newest(stream, ENDPOINT, eds), swapped))
    assert state.names == set(swapped)
    assert [o.type_url for o in out] == [ENDPOINT]
    response = discovery_pb2.DiscoveryResponse.FromString(out[0].payload)
    assert len(response.resources) == len(swapped)


def test_reordered_names_are_the_same_subscription_and_send_nothing() -> None:
    _, stream, eds = subscribed_eds()
    state = stream.types[ENDPOINT]
    key = state.names_key
    assert as_received(stream, **ack_fields(eds, list(reversed(NAMES)))) == []
    assert state.names_key is key


def test_names_written_in_an_unusual_field_order_still_count() -> None:
    """Another serializer may write type_url before the names: the bytes check then falls back to the
    names themselves (never a wrong answer, only a slower one)."""
    _, stream, eds = subscribed_eds()
    fields = ack_fields(eds, NAMES[:5])
    head = discovery_pb2.DiscoveryRequest(
        type_url=str(fields["type_url"]), version_info=str(fields["version_info"]),
        response_nonce=str(fields["response_nonce"]),
    ).SerializeToString()
    tail = discovery_pb2.DiscoveryRequest(resource_names=NAMES[:5]).SerializeToString()
    raw = head + tail  # names after every other field
    stream.on_request(discovery_pb2.DiscoveryRequest.FromString(raw), raw)
    assert stream.types[ENDPOINT].names == set(NAMES[:5])


def test_subscribed_names_are_shared_across_streams() -> None:
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, snapshot())
    first, second = sotw_stream(cache), sotw_stream(cache)
    for stream in (first, second):
        as_received(stream, node=node(cluster=GROUP), type_url=CLUSTER)
        as_received(stream, type_url=ENDPOINT, resource_names=[f"model-{i:03d}" for i in range(20)])
    a, b = sorted(first.types[ENDPOINT].names), sorted(second.types[ENDPOINT].names)
    assert a == b and all(x is y for x, y in zip(a, b, strict=True))
    delta = [DeltaStream("ipv4:127.0.0.1:1", lambda n: n.cluster, cache.get) for _ in range(2)]
    for delta_stream in delta:
        delta_stream.on_request(discovery_pb2.DeltaDiscoveryRequest(node=node(cluster=GROUP), type_url=CLUSTER))
        delta_stream.on_request(
            discovery_pb2.DeltaDiscoveryRequest(
                type_url=ENDPOINT, resource_names_subscribe=[f"model-{i:03d}" for i in range(20)]
            )
        )
    c, d = (sorted(s.types[ENDPOINT].names) for s in delta)
    assert all(x is y for x, y in zip(c, d, strict=True))


def _newest(stream: SotwStream, type_url: str, fallback: Outgoing) -> Outgoing:
    """An Outgoing carrying the stream's newest nonce for the type (what the client ACKs next)."""
    state = stream.types[type_url]
    header = discovery_pb2.DiscoveryResponse(type_url=type_url, version_info=state.sent_version, nonce=state.nonce)
    return Outgoing(type_url, header.SerializeToString(), fallback.resources)


# --- Delta: an ACK that says nothing else is known by its bytes -------------------------------------------

DeltaRequest = discovery_pb2.DeltaDiscoveryRequest


def delta_stream(cache: SnapshotCache, events: StreamMetricEvents | None = None) -> DeltaStream:
    return DeltaStream("ipv4:127.0.0.1:1", lambda n: n.cluster, cache.get, events=events)


def delta_received(stream: DeltaStream, **fields: object) -> list[Outgoing]:
    """A request the way the server hands it over: by its bytes when they are a plain ACK, else parsed."""
    raw = DeltaRequest(**fields).SerializeToString()  # type: ignore[arg-type]
    plain = stream.plain_ack(raw)
    return stream.on_plain_ack(plain) if plain is not None else stream.on_request(DeltaRequest.FromString(raw), raw)


def delta_parsed(stream: DeltaStream, **fields: object) -> list[Outgoing]:
    raw = DeltaRequest(**fields).SerializeToString()  # type: ignore[arg-type]
    return stream.on_request(DeltaRequest.FromString(raw), raw)


def nonce_of(out: Outgoing) -> str:
    return str(discovery_pb2.DeltaDiscoveryResponse.FromString(out.payload).nonce)


def plain(type_url: str, nonce: str) -> bytes:
    return DeltaRequest(type_url=type_url, response_nonce=nonce).SerializeToString()


def test_only_a_delta_ack_of_the_newest_nonce_that_says_nothing_else_skips_parsing() -> None:
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, snapshot())
    stream = delta_stream(cache)
    assert stream.plain_ack(plain(CLUSTER, "")) is None  # no node yet: the first request is always parsed
    (cds,) = delta_parsed(stream, node=node(cluster=GROUP), type_url=CLUSTER)
    (eds,) = delta_parsed(stream, type_url=ENDPOINT, resource_names_subscribe=NAMES)
    assert stream.plain_ack(plain(CLUSTER, nonce_of(cds))) == CLUSTER
    assert stream.plain_ack(plain(ENDPOINT, nonce_of(eds))) == ENDPOINT
    not_plain = [
        plain(ENDPOINT, nonce_of(cds)),  # another type's nonce
        plain(ENDPOINT, "other"),
        DeltaRequest(
            type_url=ENDPOINT, response_nonce=nonce_of(eds), error_detail={"code": 3, "message": "bad"}
        ).SerializeToString(),  # a NACK of the newest response
        DeltaRequest(type_url=ENDPOINT, response_nonce=nonce_of(eds), node=node(cluster=GROUP)).SerializeToString(),
        DeltaRequest(
            type_url=ENDPOINT, response_nonce=nonce_of(eds), resource_names_unsubscribe=NAMES[:1]
        ).SerializeToString(),
        # The same two fields, nonce first: a valid ACK, parsed like any other request.
        DeltaRequest(response_nonce=nonce_of(eds)).SerializeToString()
        + DeltaRequest(type_url=ENDPOINT).SerializeToString(),
    ]
    assert [stream.plain_ack(raw) for raw in not_plain] == [None] * len(not_plain)
    # A newer response of the type: an ACK of the one before is no longer the plain one.
    cache.set_snapshot(GROUP, snapshot(port=8001))
    (newer,) = stream.on_snapshot()
    assert newer.type_url == ENDPOINT and nonce_of(newer) != nonce_of(eds)
    assert stream.plain_ack(plain(ENDPOINT, nonce_of(eds))) is None
    assert stream.plain_ack(plain(ENDPOINT, nonce_of(newer))) == ENDPOINT


def test_streams_sent_different_responses_know_only_their_own_acks() -> None:
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, snapshot())
    few, all_names = delta_stream(cache), delta_stream(cache)
    for stream, names in ((few, NAMES[:3]), (all_names, NAMES)):
        delta_parsed(stream, node=node(cluster=GROUP), type_url=ENDPOINT, resource_names_subscribe=names)
    few_nonce, all_nonce = few.types[ENDPOINT].nonce, all_names.types[ENDPOINT].nonce
    assert few_nonce != all_nonce
    assert few.plain_ack(plain(ENDPOINT, all_nonce)) is None and all_names.plain_ack(plain(ENDPOINT, few_nonce)) is None
    # A change that only one subscription sees: the other stream's ACK bytes stay those of its last response.
    cache.set_snapshot(GROUP, snapshot([*NAMES[:3], *NAMES[4:]]))
    assert few.on_snapshot() == [] and len(all_names.on_snapshot()) == 1
    assert few.plain_ack(plain(ENDPOINT, few_nonce)) == ENDPOINT
    assert all_names.plain_ack(plain(ENDPOINT, all_names.types[ENDPOINT].nonce)) == ENDPOINT


def _state_view(stream: DeltaStream) -> dict[str, object]:
    described = stream.describe()
    described.pop("connected_at")
    return described


def test_a_plain_ack_leaves_a_stream_as_the_parsed_request_would() -> None:
    """Twin streams get the same requests, one through plain_ack where it applies and one always parsed:
    the same responses (listeners waiting for the clusters to warm go out on the same ACK), the same state
    for the debug views and the same ACK counts."""
    listener = http_listener("main", "127.0.0.1", 24010, route_config="main")
    cache = SnapshotCache(debounce=0)
    messages = [eds_cluster(n) for n in NAMES] + [endpoints(n, [("127.0.0.1", 8000)]) for n in NAMES]
    cache.set_snapshot(GROUP, Snapshot.from_messages([*messages, listener]))
    registries = [CollectorRegistry(), CollectorRegistry()]
    twins = [delta_stream(cache, StreamMetricEvents(XdsMetrics(r))) for r in registries]
    feeds = (delta_received, delta_parsed)

    def both(**fields: object) -> list[list[bytes]]:
        outs = [[o.payload for o in feed(stream, **fields)] for feed, stream in zip(feeds, twins, strict=True)]
        assert outs[0] == outs[1]
        assert _state_view(twins[0]) == _state_view(twins[1])
        return outs

    both(node=node(cluster=GROUP), type_url=CLUSTER)
    both(type_url=ENDPOINT, resource_names_subscribe=NAMES)
    assert both(type_url=LISTENER) == [[], []]  # waits for the clusters to warm
    for type_url in (CLUSTER, ENDPOINT):
        assert twins[0].plain_ack(plain(type_url, twins[0].types[type_url].nonce)) == type_url
        got = both(type_url=type_url, response_nonce=twins[0].types[type_url].nonce)
    assert len(got[0]) == 1 and discovery_pb2.DeltaDiscoveryResponse.FromString(got[0][0]).type_url == LISTENER
    both(type_url=LISTENER, response_nonce=twins[0].types[LISTENER].nonce)
    both(type_url=LISTENER, response_nonce=twins[0].types[LISTENER].nonce)  # a repeated ACK, counted again
    both(type_url=ENDPOINT, response_nonce=twins[0].types[ENDPOINT].nonce, error_detail={"code": 3, "message": "no"})
    both(type_url=ENDPOINT, response_nonce=twins[0].types[ENDPOINT].nonce)  # the NACKed nonce ACKed after all
    assert twins[0].types[ENDPOINT].nack_error == "" and twins[0].types[LISTENER].acked_nonce
    acks = [
        {t: r.get_sample_value("spillover_xds_acks_total", {"type": t}) for t in ("CDS", "EDS", "LDS")}
        for r in registries
    ]
    assert acks[0] == acks[1] == {"CDS": 1.0, "EDS": 2.0, "LDS": 2.0}


# --- one task per stream ----------------------------------------------------------------------------------


@pytest.fixture
async def xds() -> AsyncIterator[tuple[SnapshotCache, XdsServer, str]]:
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, snapshot())
    server = XdsServer(cache)
    port = await server.start("127.0.0.1:0")
    yield cache, server, f"127.0.0.1:{port}"
    await server.stop(0)


async def test_a_connected_stream_holds_no_task_of_its_own(xds: tuple[SnapshotCache, XdsServer, str]) -> None:
    """gRPC runs each call's handler as a task; the stream adds none for its life (it used to add a reader
    task, a queue and a response generator). A push runs a short task that ends with its write."""
    cache, server, address = xds
    streams = 12
    clients = [AdsClient(address, "delta") for _ in range(streams)]
    try:
        for i, client in enumerate(clients):
            client.send(node=node(f"envoy-{i}", GROUP), type_url=CLUSTER)
            client.ack(await client.recv())
        await async_wait_until(
            lambda: len(server.proxies.streams()) == streams
            and all(s.types[CLUSTER].acked_nonce for s in server.proxies.streams()),
            message="every stream registered and ACKed",
        )
        assert spillover_tasks() == []
        cache.set_snapshot(GROUP, snapshot([*NAMES, "model-new"]))
        for client in clients:
            response = await client.recv()
            assert [r.name for r in response.resources] == ["model-new"]
            client.ack(response)
        await async_wait_until(lambda: spillover_tasks() == [], message="the push tasks ended")
    finally:
        for client in clients:
            await client.close()


def spillover_tasks() -> list[str]:
    """The running tasks whose coroutine is spillover's server code (not gRPC's, not the clients')."""
    names = []
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        if code is not None and "/spillover/server/" in code.co_filename:
            names.append(code.co_qualname)
    return names


# --- the writer ----------------------------------------------------------------------------------------------


async def test_writes_leave_one_at_a_time_in_the_order_they_were_produced() -> None:
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, snapshot())
    stream = sotw_stream(cache)
    as_received(stream, node=node(cluster=GROUP), type_url=CLUSTER)
    written: list[bytes] = []
    in_flight = 0
    most_in_flight = 0
    release = asyncio.Event()

    async def write(payload: bytes) -> None:
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        await release.wait()
        written.append(payload)
        in_flight -= 1

    loop = asyncio.get_running_loop()
    counted: list[str] = []
    writer = StreamWriter(stream, write, loop, counted.append, cache.published_at, lambda s: None, lambda: None)
    first = asyncio.ensure_future(writer.send([Outgoing(CLUSTER, b"1", 1), Outgoing(ENDPOINT, b"2", 1)]))
    await asyncio.sleep(0)  # "1" is being written
    await writer.send([Outgoing(CLUSTER, b"3", 1)])  # handed over: returns without waiting
    assert written == [] and not first.done()
    release.set()
    await first
    assert written == [b"1", b"2", b"3"]
    assert most_in_flight == 1
    assert counted == [CLUSTER, ENDPOINT, CLUSTER]


class _Deadline:
    """A stream that only has a deadline: what the writer's ticks find."""

    group = GROUP
    node_id = "envoy-1"

    def __init__(self, wake_at: float) -> None:
        self.wake_at: float | None = wake_at
        self.ticks = 0

    def on_tick(self) -> list[Outgoing]:
        self.ticks += 1
        self.wake_at = None
        return []


async def test_a_tick_before_the_stream_s_deadline_arms_again_instead_of_being_lost() -> None:
    """The timer is set from the loop's clock, which may lag the stream's monotonic one (uvloop caches it
    per iteration): it can fire a moment before the deadline. The stream then finds its deadline not yet
    passed; the tick used to be spent on it and the deadline (listeners waiting for warming clusters) was
    not looked at again until the next request."""
    stream = _Deadline(time.monotonic() + 0.05)

    async def write(payload: bytes) -> None:
        pass

    writer = StreamWriter(
        stream, write, asyncio.get_running_loop(), lambda t: None, lambda g: None, lambda s: None,  # type: ignore[arg-type]
        lambda: None,
    )
    writer.schedule_wake()
    timer = writer._timer
    assert timer is not None
    timer.cancel()  # it fires early, now: one timer, as in the loop (a second left pending would tick too)
    writer._tick()
    assert writer._push_task is None and stream.ticks == 0
    await async_wait_until(lambda: stream.ticks == 1, timeout=5, message="the tick at the deadline")
    writer.close()


async def test_a_tick_after_the_deadline_was_answered_pushes_nothing() -> None:
    """A timer left over (its deadline answered by a request meanwhile, or a second one armed while the
    first was pending) finds no deadline: it used to push anyway and tick the stream a second time."""
    stream = _Deadline(time.monotonic())
    stream.wake_at = None

    async def write(payload: bytes) -> None:
        pass

    writer = StreamWriter(
        stream, write, asyncio.get_running_loop(), lambda t: None, lambda g: None, lambda s: None,  # type: ignore[arg-type]
        lambda: None,
    )
    writer._tick()
    assert writer._push_task is None and stream.ticks == 0
    writer.close()


async def test_a_closed_writer_starts_no_push() -> None:
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, snapshot())
    stream = sotw_stream(cache)
    as_received(stream, node=node(cluster=GROUP), type_url=CLUSTER)
    written: list[bytes] = []

    async def write(payload: bytes) -> None:
        written.append(payload)

    writer = StreamWriter(
        stream, write, asyncio.get_running_loop(), lambda t: None, cache.published_at, lambda s: None, lambda: None
    )
    cache.watch(GROUP, writer)
    cache.set_snapshot(GROUP, snapshot([*NAMES, "model-x"]))
    writer.close()
    await asyncio.sleep(0.05)
    assert written == []
    writer = StreamWriter(
        stream, write, asyncio.get_running_loop(), lambda t: None, cache.published_at, lambda s: None, lambda: None
    )
    cache.watch(GROUP, writer)
    cache.set_snapshot(GROUP, snapshot([*NAMES, "model-y"]))
    await async_wait_until(lambda: len(written) == 1, message="the push of an open writer")
