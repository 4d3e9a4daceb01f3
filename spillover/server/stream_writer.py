"""The write side of one xDS stream on grpc.aio, so that a stream costs one task, not three.

A stream's own task (service.py) reads requests with `context.read()` and answers them through its
StreamWriter. Pushes (a published snapshot, the warming deadline) do not go through that task, which is
waiting for the next request: the writer runs a short push task, created only when a push is due and
ended when its responses are written. Before, every stream held a reader task, a queue and a response
async generator for its whole life, and every ACK crossed two tasks.

gRPC allows one write in flight per call, and responses must leave in the order the protocol produced
them: whoever writes first (the stream's task or the push task) writes everything, the other hands its
responses over without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from spillover.server.gc_tuning import PUSH_PAUSE, PushPause
from spillover.server.streams import BaseStream, Outgoing

log = logging.getLogger("spillover.server.service")


class StreamWriter:
    """Writes one stream's responses and runs its pushes.

    write:        the call's `context.write` (bytes in: the response serializer is the identity)
    count:        told the type URL of every response handed to gRPC (the responses counter)
    published_at: monotonic time of a group's last publish (SnapshotCache.published_at)
    observe_push: told the seconds from a snapshot's publish to its responses being handed over
    on_failure:   called when a push fails (the call is broken): ends the stream's own task
    pause:        keeps the collector off while pushes are written (gc_tuning.PUSH_PAUSE, process-wide)

    The cache notifies it like a queue (`put_nowait(snapshot)`), so it is what service.py watches a
    group with.
    """

    __slots__ = (
        "_backlog", "_closed", "_count", "_counted_in", "_idle", "_loop", "_observe_push", "_on_failure", "_pause",
        "_published_at", "_push_task", "_scheduled_wake", "_snapshot_due", "_tick_due", "_timer", "_write",
        "_writing", "stream",
    )

    def __init__(
        self,
        stream: BaseStream,
        write: Callable[[bytes], Awaitable[None]],
        loop: asyncio.AbstractEventLoop,
        count: Callable[[str], None],
        published_at: Callable[[str], float | None],
        observe_push: Callable[[float], None],
        on_failure: Callable[[], object],
        pause: PushPause = PUSH_PAUSE,
    ) -> None:
        self.stream = stream
        self._write = write
        self._loop = loop
        self._count = count
        self._published_at = published_at
        self._observe_push = observe_push
        self._on_failure = on_failure
        self._pause = pause
        self._counted_in = 0  # the pause round the push task is counted in; 0: not counted
        self._backlog: deque[bytes] = deque()
        self._writing = False
        self._closed = False
        self._push_task: asyncio.Task[None] | None = None
        self._snapshot_due = False
        self._tick_due = False
        self._timer: asyncio.TimerHandle | None = None
        self._scheduled_wake: float | None = None
        self._idle: asyncio.Future[None] | None = None

    def put_nowait(self, item: object) -> None:
        """A snapshot was published for the stream's group (the cache's watcher interface)."""
        self._snapshot_due = True
        self._start_push()

    def _tick(self) -> None:
        self._timer = None
        wake_at = self.stream.wake_at
        if wake_at is None:
            # Nothing waits any more: a request answered it meanwhile. A push now would only look again.
            return
        if wake_at > time.monotonic():
            # Early: the timer was set from the loop's clock, which may lag the stream's (uvloop's is
            # cached per iteration; a read preempted between the two clocks). The stream would find its
            # deadline not yet passed and set none again, and what waited for it would wait for the next
            # request: arm again for the rest.
            self._scheduled_wake = None
            self.schedule_wake()
            return
        self._tick_due = True
        self._start_push()

    def _start_push(self) -> None:
        # One push task at most: pushes due while it writes are coalesced into its next round (the
        # stream always answers with the newest snapshot anyway).
        if not self._closed and self._push_task is None:
            # No collection while a fan-out is written: counted from here (the tasks of one publish are
            # made at once), uncounted by the task when it ends, or by close() (a task cancelled before
            # it ran never runs its finally; a loop closed never runs its done callbacks). No done
            # callback: it cost ~1 µs per push (benchmarks.push_pause), and the one case it would add, a
            # task cancelled before its first step by someone else than close() (asyncio.run's end gives
            # every task a step first), is bounded anyway: its round ends at the pause's limit.
            self._counted_in = self._pause.started(self._loop)
            self._push_task = self._loop.create_task(self._push())

    async def _push(self) -> None:
        stream = self.stream
        try:
            while (self._snapshot_due or self._tick_due) and not self._closed:
                snapshot = self._snapshot_due
                self._snapshot_due = self._tick_due = False
                published = self._published_at(stream.group) if snapshot else None
                outgoing = stream.on_snapshot() if snapshot else stream.on_tick()
                if outgoing:
                    await self.send(outgoing)
                    if published is not None:
                        self._observe_push(time.monotonic() - published)
                self.schedule_wake()
        except Exception:
            if not self._closed:
                log.warning("xDS stream of node '%s': push failed; ending the stream", stream.node_id, exc_info=True)
                self._closed = True
                self._on_failure()
        finally:
            self._push_task = None
            self._uncount()

    def _uncount(self) -> None:
        counted_in = self._counted_in
        if counted_in:
            self._counted_in = 0
            self._pause.ended(counted_in)

    async def send(self, outgoing: list[Outgoing]) -> None:
        """Writes these responses after any handed over before; returns at once when another write is
        in flight (that writer sends them)."""
        count = self._count
        for response in outgoing:
            count(response.type_url)
        if self._writing:
            self._backlog.extend(response.payload for response in outgoing)
            return
        self._writing = True
        try:
            for response in outgoing:
                if self._closed:
                    return
                await self._write(response.payload)
            backlog = self._backlog
            while backlog and not self._closed:
                await self._write(backlog.popleft())
        finally:
            self._writing = False
            idle = self._idle
            if idle is not None and not idle.done():
                idle.set_result(None)

    def schedule_wake(self) -> None:
        """Looks at the stream again at its deadline (warming) even if nothing arrives."""
        wake_at = self.stream.wake_at
        if wake_at is None or wake_at == self._scheduled_wake or self._closed:
            return
        self._scheduled_wake = wake_at
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(self._loop.time() + max(0.0, wake_at - time.monotonic()), self._tick)

    def close(self) -> None:
        """No more pushes. A push not yet writing is called off; one writing finishes its write."""
        self._closed = True
        self._backlog.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._push_task is not None and not self._writing:
            self._push_task.cancel()
        # At once, not when the task is seen done: the loop may never run again (stopped and closed with
        # the server). A write still in flight only stops holding the collector off.
        self._uncount()

    async def quiesce(self, timeout: float) -> None:
        """Closes, then waits (at most `timeout` seconds) until no write is in flight: the call's status
        must not race a write (gRPC's client would report INTERNAL instead of the status)."""
        self.close()
        if not self._writing:
            return
        self._idle = self._loop.create_future()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle
