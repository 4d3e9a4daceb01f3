"""Garbage collection tuned for a process holding thousands of xDS streams (`spillover serve --gc tuned`).

With Python's defaults the cyclic collector ran a young collection every 700 allocations and a full one
every few pushes, each scanning every stream's state and every snapshot: at 1,000 Delta streams about a
fifth of the server's CPU per push went there (benchmarks/results/streams.md). Almost nothing the server
keeps forms reference cycles, so it needs the collector rarely:

- the first generation's threshold is raised (fewer, larger young collections; cyclic garbage waits a
  little longer to be freed, a few MiB at most);
- `gc.freeze()` after start-up and after each published snapshot moves what exists then (modules, stream
  state, the snapshots) out of the collector's sight: no collection scans it again. Objects freed by
  reference counting are still freed at once; only frozen *cyclic* garbage waits;
- that waiting is bounded: once the frozen objects have doubled since the last full collection, they are
  unfrozen and collected once (the memory side of the trade-off: at most about as many objects as the
  live set wait for it). Counting them walks every frozen object, so it is done at most every
  `check_interval` seconds, not on every publish (a change in a fleet of 2,000 groups publishes 2,000 times).

It is a trade-off, so it is opt-in (`--gc python`, Python's defaults, is the default): at 1,000 streams the
collector's time per push fell from 31-40 ms to 5-6 ms, but frozen cyclic garbage waits for the bounded
collection (memory), and in tests/e2e/test_group_churn.py (2,000 node groups made and dropped) forgetting the
groups ran about 2.4 times slower, past that test's deadline on a loaded machine.

Process-wide, as the collector is: `install()` once, when the server has started; `after_publish()` is
called by the xDS server on every publish and does nothing unless installed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GcSettings:
    """threshold0: allocations between young collections (Python's default is 700; 0 keeps it).
    freeze: freeze after start-up and after each publish, with the bounded full collection above.
    growth: the full collection comes once the frozen objects grew this many times since the last one
    (the memory/CPU trade-off: larger waits longer and may hold more cyclic garbage)."""

    threshold0: int = 10_000
    threshold1: int = 20
    threshold2: int = 100
    freeze: bool = True
    growth: float = 2.0
    check_interval: float = 10.0

    def __post_init__(self) -> None:
        if min(self.threshold0, self.threshold1, self.threshold2) < 0:
            raise ValueError("GC thresholds must be >= 0")
        if self.growth <= 1 or self.check_interval < 0:
            raise ValueError("growth must be > 1 and check_interval >= 0")


class _Tuning:
    def __init__(self, settings: GcSettings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.clock = clock
        self.baseline = 0
        self.full_collections = 0
        self.checked_at = clock()

    def start(self) -> None:
        settings = self.settings
        if settings.threshold0:
            gc.set_threshold(settings.threshold0, settings.threshold1, settings.threshold2)
        if settings.freeze:
            gc.collect()
            gc.freeze()
            self.baseline = gc.get_freeze_count()

    def after_publish(self) -> None:
        if not self.settings.freeze:
            return
        gc.freeze()
        now = self.clock()
        if now - self.checked_at < self.settings.check_interval:
            return
        self.checked_at = now
        if gc.get_freeze_count() > self.settings.growth * self.baseline:
            # Frozen cyclic garbage is never collected: once the frozen set doubled, collect it once.
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self.baseline = gc.get_freeze_count()
            self.full_collections += 1
            log.debug("GC: full collection after the frozen objects doubled; %d frozen now", self.baseline)


_installed: _Tuning | None = None


def install(settings: GcSettings | None = None, clock: Callable[[], float] = time.monotonic) -> None:
    """Tunes the collector of this process (see the module docstring); again replaces the settings."""
    global _installed
    _installed = _Tuning(settings or GcSettings(), clock)
    _installed.start()


def uninstall() -> None:
    """Python's default collector behaviour again (everything frozen is unfrozen)."""
    global _installed
    _installed = None
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)


def after_publish() -> None:
    if _installed is not None:
        _installed.after_publish()


# The longest the collector waits for a fan-out's writes (a stream whose client stops reading may hold its
# write for as long as it likes).
MAX_PUSH_PAUSE_S = 0.5


class PushPause:
    """Whatever the settings, no collection runs while pushes are being written (the default too): a publish
    starts one short push task per stream at once, and each holds its response and gRPC's write state until
    the write is done. A collection in the middle of that (at 1,000 Delta streams, ~26 young ones per push
    with Python's thresholds, and every eight pushes or so a full one of ~100 ms) walks all of it and moves
    what is still in flight into older generations, where a full collection walks it again; the full one
    also delays the streams not yet written (benchmarks/results/peer-1000-delta-notes.md). So the first push
    task to start turns the collector off and the last to end turns it back on, at most `max_pause` seconds
    later: garbage made meanwhile waits that long, and a collection due runs right after the fan-out. A
    collector that was off already is left as it was.

    The tasks are counted in rounds: `started()` returns the round a task was counted in and `ended()`
    takes it back, so a count can only end the round it belongs to. A round ends when its last task ends
    or at its limit, and with it every count it still holds: a write stuck past the limit (a client that
    stopped reading) or counts whose tasks will never end (their event loop was closed, or stopped for
    good, before their done-ness was seen) cannot keep later fan-outs from pausing, nor the collector off.
    The limit is the round's timer on the loop of its first task; a loop that will not run the timer again
    is noticed by the next task of another loop (the loop closed, or the deadline past). The owners of the
    counts (StreamWriter, XdsServer.stop) give them back without waiting for the loop when they close, so a
    server stopped is never still pausing the collector."""

    __slots__ = ("clock", "deadline", "loop", "max_pause", "paused", "pauses", "pushes", "round", "timer")

    def __init__(self, max_pause: float = MAX_PUSH_PAUSE_S, clock: Callable[[], float] = time.monotonic) -> None:
        if not 0 < max_pause <= 60:
            raise ValueError(f"max_pause must be > 0 and <= 60 seconds, not {max_pause!r}")
        self.max_pause = max_pause
        self.clock = clock
        self.pushes = 0  # the tasks counted in the current round
        self.round = 1  # never 0: a writer holds 0 for "not counted"
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop of the round's timer
        self.deadline = 0.0
        self.paused = False
        self.timer: asyncio.TimerHandle | None = None
        self.pauses = 0  # rounds that turned the collector off (for tests and benchmarks)

    def started(self, loop: asyncio.AbstractEventLoop) -> int:
        """A push task of `loop` starts: counted in; returns its round, for `ended()`."""
        if self.pushes:
            # The fast path (every task of a fan-out but the first): the round's own loop is running, so
            # its timer ends the round in time.
            if loop is self.loop:
                self.pushes += 1
                return self.round
            owner = self.loop
            if owner is not None and (owner.is_closed() or self.clock() >= self.deadline):
                self._end_round()  # counts of a loop that is gone (or no longer run): they would never end
            else:
                self.pushes += 1
                return self.round
        self.pushes = 1
        self.loop = loop
        self.deadline = self.clock() + self.max_pause
        # Whether or not the collector is paused: the round's counts must end at the limit either way.
        self.timer = loop.call_later(self.max_pause, self._end_round)
        if gc.isenabled():
            gc.disable()
            self.paused = True
            self.pauses += 1
        return self.round

    def ended(self, counted_in: int) -> None:
        """A push task counted in round `counted_in` is done (or will never run)."""
        if counted_in == self.round:
            self.pushes -= 1
            if self.pushes <= 0:
                self._end_round()

    def _end_round(self) -> None:
        self.round += 1
        self.pushes = 0
        self.loop = None
        timer, self.timer = self.timer, None
        if timer is not None:
            timer.cancel()  # safe on a closed loop: it only marks the handle
        if self.paused:
            self.paused = False
            gc.enable()


PUSH_PAUSE = PushPause()


def full_collections() -> int:
    """Full collections made because the frozen objects doubled (for tests and benchmarks)."""
    return _installed.full_collections if _installed is not None else 0
