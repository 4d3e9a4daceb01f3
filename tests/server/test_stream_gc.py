"""The collector and the xDS stream path (issue 15): no collection while a fan-out is written, and the tuned
collector (gc_tuning) freezing what start-up and each publish leave."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Awaitable, Callable, Iterator

import pytest

from spillover.server import gc_tuning
from spillover.server.cache import SnapshotCache
from spillover.server.resources import CLUSTER
from spillover.server.stream_writer import StreamWriter
from tests.harness.ads import node
from tests.harness.clock import FakeClock
from tests.harness.polling import async_wait_until
from tests.server.test_stream_path import GROUP, NAMES, as_received, snapshot, sotw_stream

# --- no collection while a fan-out is written ------------------------------------------------------------


def _watching_writers(
    cache: SnapshotCache,
    count: int,
    write: Callable[[bytes], Awaitable[None]],
    pause: gc_tuning.PushPause = gc_tuning.PUSH_PAUSE,
) -> list[StreamWriter]:
    writers = []
    for _ in range(count):
        stream = sotw_stream(cache)
        as_received(stream, node=node(cluster=GROUP), type_url=CLUSTER)
        writer = StreamWriter(
            stream, write, asyncio.get_running_loop(), lambda t: None, cache.published_at, lambda s: None, lambda: None,
            pause=pause,
        )
        cache.watch(GROUP, writer)
        writers.append(writer)
    return writers


@pytest.fixture
def collections() -> Iterator[list[int]]:
    """The generations of the collections that run, as the collector starts them."""
    seen: list[int] = []

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append(info["generation"])

    gc.enable()
    gc.callbacks.append(on_gc)
    yield seen
    gc.callbacks.remove(on_gc)
    gc.enable()


async def test_no_collection_runs_while_a_publish_is_being_written(collections: list[int]) -> None:
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, snapshot())
    release = asyncio.Event()
    during: list[bool] = []

    async def write(payload: bytes) -> None:
        during.append(gc.isenabled())
        garbage = [_Cycle() for _ in range(5_000)]  # past the young threshold: a collection is due
        del garbage
        await release.wait()

    writers = _watching_writers(cache, 3, write)
    collections.clear()
    cache.set_snapshot(GROUP, snapshot([*NAMES, "model-new"]))
    await async_wait_until(lambda: len(during) == 3, message="every push writing")
    assert during == [False] * 3 and collections == []
    release.set()
    await async_wait_until(lambda: all(w._push_task is None for w in writers), message="the pushes done")
    assert gc.isenabled()
    [_Cycle() for _ in range(5_000)]
    assert collections  # the collection that was due runs once the fan-out is written


async def test_a_write_that_never_ends_holds_the_collector_off_for_a_bounded_time(collections: list[int]) -> None:
    pause = gc_tuning.PushPause(max_pause=0.05)
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, snapshot())
    stuck = asyncio.Event()

    async def write(payload: bytes) -> None:
        await stuck.wait()  # a client that stopped reading

    writers = _watching_writers(cache, 2, write, pause)
    cache.set_snapshot(GROUP, snapshot([*NAMES, "model-new"]))
    await asyncio.sleep(0)
    assert not gc.isenabled()
    await async_wait_until(gc.isenabled, message="the collector on again after max_pause")
    for writer in writers:
        writer.close()
    stuck.set()
    await async_wait_until(lambda: all(w._push_task is None for w in writers), message="the pushes done")
    assert pause.pushes == 0 and gc.isenabled()


async def test_a_stream_whose_write_is_stuck_does_not_keep_later_fan_outs_from_pausing(collections: list[int]) -> None:
    """One client that stopped reading holds its push task for as long as it likes: past the pause's limit
    its count no longer holds the collector off, nor keeps the next publish's fan-out from pausing."""
    pause = gc_tuning.PushPause(max_pause=0.05)
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, snapshot())
    stuck = asyncio.Event()
    written: list[bytes] = []

    async def stuck_write(payload: bytes) -> None:
        await stuck.wait()

    async def write(payload: bytes) -> None:
        written.append(payload)

    (stalled,) = _watching_writers(cache, 1, stuck_write, pause)
    cache.set_snapshot(GROUP, snapshot([*NAMES, "model-a"]))
    await async_wait_until(gc.isenabled, message="the first pause over at its limit")
    assert stalled._push_task is not None  # still writing
    live = _watching_writers(cache, 2, write, pause)
    cache.set_snapshot(GROUP, snapshot([*NAMES, "model-b"]))
    assert not gc.isenabled() and pause.pauses == 2
    await async_wait_until(lambda: len(written) == 2, message="the live streams written")
    await async_wait_until(gc.isenabled, message="the collector on again")
    stuck.set()  # the stuck write of the first round ends now: it uncounts nothing of a later round
    await async_wait_until(lambda: stalled._push_task is None, message="the stuck push done")
    assert pause.pushes == 0 and gc.isenabled()
    for writer in (stalled, *live):
        writer.close()


async def test_pushes_called_off_before_they_ran_turn_the_collector_back_on(collections: list[int]) -> None:
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, snapshot())
    written: list[bytes] = []

    async def write(payload: bytes) -> None:
        written.append(payload)

    writers = _watching_writers(cache, 2, write)
    cache.set_snapshot(GROUP, snapshot([*NAMES, "model-new"]))
    assert not gc.isenabled()
    for writer in writers:
        writer.close()  # before the push tasks ran a step
    await async_wait_until(gc.isenabled, message="the collector on again")
    assert written == [] and gc_tuning.PUSH_PAUSE.pushes == 0


async def test_pushes_called_off_count_out_at_once(collections: list[int]) -> None:
    """close() gives the count back without waiting for the loop to see the task done (a loop stopped and
    closed with the server never does)."""
    pause = gc_tuning.PushPause()
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, snapshot())

    async def write(payload: bytes) -> None:
        pass

    writers = _watching_writers(cache, 2, write, pause)
    cache.set_snapshot(GROUP, snapshot([*NAMES, "model-new"]))
    assert pause.pushes == 2 and not gc.isenabled()
    for writer in writers:
        writer.close()
    assert pause.pushes == 0 and gc.isenabled()  # no step of the loop in between


async def test_a_collector_turned_off_by_someone_else_stays_off(collections: list[int]) -> None:
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, snapshot())
    written: list[bytes] = []

    async def write(payload: bytes) -> None:
        written.append(payload)

    _watching_writers(cache, 2, write)
    gc.disable()
    cache.set_snapshot(GROUP, snapshot([*NAMES, "model-new"]))
    await async_wait_until(lambda: len(written) == 2, message="both pushes written")
    await asyncio.sleep(0)
    assert not gc.isenabled()


# --- garbage collection --------------------------------------------------------------------------------


class _Cycle:
    __slots__ = ("__weakref__", "me")

    def __init__(self) -> None:
        self.me = self


GROWTH = 1.05  # the test process holds many objects: a small growth keeps the garbage it makes small


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def tuned_gc(clock: FakeClock) -> Iterator[None]:
    before = gc.get_threshold()
    gc_tuning.install(gc_tuning.GcSettings(threshold0=5_000, growth=GROWTH, check_interval=10), clock=clock)
    yield
    gc_tuning.uninstall()
    gc.set_threshold(*before)


def test_tuned_gc_freezes_what_start_up_and_each_publish_leave(tuned_gc: None) -> None:
    assert gc.get_threshold()[0] == 5_000
    frozen = gc.get_freeze_count()
    assert frozen > 0
    kept = [[i] for i in range(1_000)]  # lists are tracked by the collector
    gc_tuning.after_publish()
    assert gc.get_freeze_count() >= frozen + len(kept)


def test_frozen_cyclic_garbage_is_collected_once_the_frozen_set_doubles(tuned_gc: None, clock: FakeClock) -> None:
    frozen = gc.get_freeze_count()
    before = gc_tuning.full_collections()
    garbage = [_Cycle() for _ in range(int(frozen * (GROWTH - 1) / 4))]
    watched = [weakref.ref(o) for o in garbage[:10]]
    gc_tuning.after_publish()  # frozen with the rest: cycles no collection looks at
    del garbage
    gc.collect()
    clock.advance(10)
    gc_tuning.after_publish()  # checked: not grown enough yet
    assert gc_tuning.full_collections() == before
    assert all(ref() is not None for ref in watched), "frozen cycles wait for the bounded full collection"
    more = [_Cycle() for _ in range(int(frozen * (GROWTH - 1)))]
    gc_tuning.after_publish()
    # Counting the frozen objects walks them all: it waits for the check interval, not every publish.
    assert gc_tuning.full_collections() == before
    clock.advance(10)
    gc_tuning.after_publish()  # the frozen set grew past GROWTH times the last full collection's
    assert gc_tuning.full_collections() == before + 1
    assert all(ref() is None for ref in watched)
    assert more
