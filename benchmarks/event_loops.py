"""The event loops a benchmark's Python server can run on: uvloop or the standard library's asyncio loop.

`spillover serve` runs asyncio's (asyncio.run); the peer benchmark (benchmarks/peer.py, `peer_focus
--event-loops`) also runs spillover and the floor on uvloop, alternated with the others, to measure what
the loop itself costs. Measured at 1,000 Delta streams, uvloop did not make spillover cheaper
(benchmarks/results/peer-1000-uvloop-notes.md), so the server keeps asyncio's loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["ASYNCIO", "DEFAULT", "KINDS", "UVLOOP", "loop_factory", "run"]

UVLOOP = "uvloop"
ASYNCIO = "asyncio"
KINDS = (UVLOOP, ASYNCIO)
DEFAULT = ASYNCIO  # what `spillover serve` runs

T = TypeVar("T")


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new loop of this kind; a ValueError naming the kind and the known ones otherwise."""
    if kind == ASYNCIO:
        # The standard library's own loop, whatever event loop policy the process has set.
        return asyncio.SelectorEventLoop
    if kind == UVLOOP:
        import uvloop  # the benchmarks' extra (pyproject.toml [bench])

        return uvloop.new_event_loop
    raise ValueError(f"event loop {kind!r}: must be one of {', '.join(KINDS)}")


def run(main: Coroutine[Any, Any, T], kind: str = DEFAULT) -> T:
    """asyncio.run(main) on a new loop of this kind (asyncio.Runner: the same clean-up as asyncio.run)."""
    try:
        factory = loop_factory(kind)
    except BaseException:
        main.close()  # never awaited: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
