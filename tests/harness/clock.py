"""A fake monotonic clock with timers: tests move time instead of waiting for it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FakeClock", "FakeTimer"]


@dataclass(eq=False)
class FakeTimer:
    when: float
    callback: Callable[[], object]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Call it for the time; `call_later` schedules like `loop.call_later`, on this clock; `advance`
    moves the time forward, running every timer it passes (in time order, at its own time)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self._timers: list[FakeTimer] = []

    def __call__(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], object]) -> FakeTimer:
        timer = FakeTimer(self.now + max(0.0, delay), callback)
        self._timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        assert seconds >= 0, "a monotonic clock does not go back"
        target = self.now + seconds
        while True:
            due = [t for t in self._timers if not t.cancelled and t.when <= target]
            if not due:
                break
            timer = min(due, key=lambda t: t.when)  # the earliest; ties in scheduling order
            self._timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback()
        self.now = target
        self._timers = [t for t in self._timers if not t.cancelled]

    @property
    def scheduled(self) -> int:
        """Timers not yet run nor cancelled."""
        return sum(1 for t in self._timers if not t.cancelled)
