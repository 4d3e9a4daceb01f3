"""The collector's pause during a fan-out (spillover/server/gc_tuning.py PushPause) survives servers stopped
mid-fan-out and event loops closed under them: the collector comes back as it was, and later fan-outs, in
another loop, pause again.

Each scenario runs on an event loop of its own that is closed right after its last step (an embedder
stopping its XdsServer and closing its loop): what was still pending then (push tasks, their done callbacks,
the pause's timer) never runs. The streams that hold the fan-out's writes are real gRPC clients in another
thread that stop reading, so their writes stay in flight until the server ends them.
"""

from __future__ import annotations

import asyncio
import gc
import queue
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import grpc
import pytest

from spillover.server import gc_tuning
from spillover.server.cache import SnapshotCache
from spillover.server.gc_tuning import PushPause
from spillover.server.resources import CLUSTER
from spillover.server.service import XdsServer
from tests.harness.ads import METHODS, AdsClient, node
from tests.harness.clock import FakeClock
from tests.harness.polling import async_wait_until
from tests.harness.ports import free_port
from tests.server.test_stream_path import GROUP, NAMES, snapshot

T = TypeVar("T")

# What a dropped loop leaves is finalized outside any loop (in the fixtures' collection below): gRPC's
# handler coroutines closed there end in errors Python can only report as unraisable.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

# A CDS response far larger than the stalled clients' HTTP/2 window: its write stays in flight.
LARGE = [f"model-{i:04d}-" + "x" * 200 for i in range(1_000)]
STREAMS = 3
# Longer than any test: no pause ends at its limit unless the test moves its clock there.
LIMIT = 30.0


def run_then_drop_the_loop(main: Coroutine[Any, Any, T]) -> T:
    """Runs `main` on a new event loop and closes the loop at once: no step runs after main's last."""
    loop = asyncio.new_event_loop()

    async def last_step() -> T:
        result = await main
        loop.stop()  # the loop ends with this step, whatever is ready or scheduled
        return result

    try:
        return loop.run_until_complete(last_step())
    finally:
        loop.close()


class StalledClient:
    """A Delta stream of a blocking gRPC client in its own threads: it reads its first response, ACKs it,
    and reads nothing more. Without BDP probing its window stays small, so a large response's write
    waits on it."""

    def __init__(self, address: str, node_id: str) -> None:
        path, request, response = METHODS["delta"]
        self.channel = grpc.insecure_channel(
            address, options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 16_384)]
        )
        self._requests: queue.Queue[Any] = queue.Queue()
        self._requests.put(request(node=node(node_id, GROUP), type_url=CLUSTER))
        self.call = self.channel.stream_stream(
            path, request_serializer=request.SerializeToString, response_deserializer=response.FromString
        )(iter(self._requests.get, None))
        first = next(self.call)
        self._requests.put(request(type_url=CLUSTER, response_nonce=first.nonce))

    def close(self) -> None:
        self._requests.put(None)
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def stalled() -> Iterator[list[StalledClient]]:
    clients: list[StalledClient] = []
    yield clients
    for client in clients:
        client.close()
    gc.collect()  # the dropped loops' tasks and coroutines go now, not in whichever test comes next


@pytest.fixture
def collector_on() -> Iterator[None]:
    gc.enable()
    yield
    gc.enable()


async def _serving_stalled_clients(clients: list[StalledClient], pause: PushPause) -> tuple[SnapshotCache, XdsServer]:
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, snapshot())
    server = XdsServer(cache, push_pause=pause)
    port = await server.start(f"127.0.0.1:{free_port()}")
    loop = asyncio.get_running_loop()
    for i in range(STREAMS):
        clients.append(await loop.run_in_executor(None, StalledClient, f"127.0.0.1:{port}", f"stalled-{i}"))
    await async_wait_until(
        lambda: len(server.proxies.streams()) == STREAMS
        and all(s.types[CLUSTER].acked_nonce for s in server.proxies.streams()),
        message="every stalled stream registered and ACKed",
    )
    return cache, server


async def _fan_out_held(cache: SnapshotCache, server: XdsServer, pause: PushPause) -> None:
    """Publishes the large snapshot and waits until its writes are in flight (the stalled clients hold them)."""
    streams = server.proxies.streams()
    before = {id(s): s.types[CLUSTER].nonce for s in streams}
    cache.set_snapshot(GROUP, snapshot(LARGE))
    assert pause.pushes == STREAMS
    await async_wait_until(
        lambda: all(s.types[CLUSTER].nonce != before[id(s)] for s in streams), message="every push writing"
    )
    assert pause.pushes == STREAMS, "a large write finished: the stalled clients' window let it through"


async def _fan_out_pauses(pause: PushPause) -> tuple[bool, bool, int]:
    """A new server with a live client: whether its publish turned the collector off, whether the collector
    was on again once the push was read, and the pause's count then."""
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, snapshot())
    server = XdsServer(cache, push_pause=pause)
    port = await server.start(f"127.0.0.1:{free_port()}")
    client = AdsClient(f"127.0.0.1:{port}", "delta")
    try:
        client.send(node=node("live", GROUP), type_url=CLUSTER)
        client.ack(await client.recv())
        await async_wait_until(
            lambda: all(s.types[CLUSTER].acked_nonce for s in server.proxies.streams()) and server.proxies.streams(),
            message="the live stream ACKed",
        )
        pauses = pause.pauses
        cache.set_snapshot(GROUP, snapshot([*NAMES, "model-new"]))
        paused = not gc.isenabled() and pause.pauses == pauses + 1
        response = await client.recv()
        assert [r.name for r in response.resources] == ["model-new"]
        await async_wait_until(lambda: pause.pushes == 0, message="the push counted out")
        return paused, gc.isenabled(), pause.pushes
    finally:
        await client.close()
        await server.stop(0)


def test_a_server_stopped_mid_fan_out_leaves_the_collector_on_and_the_next_fan_out_pauses(
    collector_on: None, stalled: list[StalledClient]
) -> None:
    pause = PushPause(max_pause=LIMIT)

    async def stopped_mid_fan_out() -> tuple[bool, int]:
        cache, server = await _serving_stalled_clients(stalled, pause)
        await _fan_out_held(cache, server, pause)
        assert not gc.isenabled()
        await server.stop(0)
        return gc.isenabled(), pause.pushes

    assert run_then_drop_the_loop(stopped_mid_fan_out()) == (True, 0)
    assert gc.isenabled()
    assert run_then_drop_the_loop(_fan_out_pauses(pause)) == (True, True, 0)


@pytest.mark.parametrize("loop_end", ["closed", "never run again"])
def test_a_pause_whose_loop_is_gone_ends_at_the_next_fan_out_of_another_loop(
    collector_on: None, stalled: list[StalledClient], loop_end: str
) -> None:
    """The server is never stopped: its loop ends mid-fan-out with the writes in flight and the pause's
    timer pending. The next fan-out (another loop, another server) ends that pause and pauses itself."""
    clock = FakeClock()
    pause = PushPause(max_pause=LIMIT, clock=clock)

    async def dropped_mid_fan_out() -> None:
        cache, server = await _serving_stalled_clients(stalled, pause)
        await _fan_out_held(cache, server, pause)

    if loop_end == "closed":
        run_then_drop_the_loop(dropped_mid_fan_out())
    else:
        kept = asyncio.new_event_loop()  # stopped, not closed: only the deadline says it is gone
        kept.run_until_complete(dropped_mid_fan_out())
    assert not gc.isenabled() and pause.pushes == STREAMS  # held by a pause nothing will end
    if loop_end != "closed":
        clock.advance(LIMIT)  # the kept loop's timer would have ended the pause by now, had it run
    assert run_then_drop_the_loop(_fan_out_pauses(pause)) == (True, True, 0)
    if loop_end != "closed":
        kept.close()


def test_a_collector_off_before_stays_off_through_an_abrupt_stop_and_pauses_work_once_it_is_on(
    collector_on: None, stalled: list[StalledClient]
) -> None:
    pause = PushPause(max_pause=LIMIT)

    async def stopped_mid_fan_out() -> int:
        cache, server = await _serving_stalled_clients(stalled, pause)
        gc.disable()  # someone else's choice: the pause must leave it as it is
        await _fan_out_held(cache, server, pause)
        await server.stop(0)
        return pause.pauses

    assert run_then_drop_the_loop(stopped_mid_fan_out()) == 0
    assert not gc.isenabled()
    gc.enable()
    assert run_then_drop_the_loop(_fan_out_pauses(pause)) == (True, True, 0)


def test_servers_share_the_process_wide_pause_unless_given_one_and_its_limit_is_bounded() -> None:
    assert XdsServer(SnapshotCache()).push_pause is gc_tuning.PUSH_PAUSE  # the collector is process-wide
    for bad in (0, -1, 61):
        with pytest.raises(ValueError, match="max_pause"):
            PushPause(max_pause=bad)

