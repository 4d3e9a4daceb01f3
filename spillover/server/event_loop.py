"""The event loop the xDS server runs on: uvloop (the default) or the standard library's asyncio loop.

One place that knows how each kind is made, for `spillover serve` (its `--event-loop`), the xDS worker
processes (told by the main process on their command line) and the benchmarks, so they all run the same
loop. Why uvloop: benchmarks/results/peer-1000-uvloop-notes.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["ASYNCIO", "DEFAULT", "KINDS", "UVLOOP", "loop_factory", "run"]

UVLOOP = "uvloop"
ASYNCIO = "asyncio"
KINDS = (UVLOOP, ASYNCIO)
DEFAULT = UVLOOP  # what `spillover serve` and its xDS workers run unless told otherwise

T = TypeVar("T")


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new loop of this kind; a ValueError naming the kind and the known ones otherwise."""
    if kind == ASYNCIO:
        # The standard library's own loop, whatever event loop policy the process has set.
        return asyncio.SelectorEventLoop
    if kind == UVLOOP:
        import uvloop

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
