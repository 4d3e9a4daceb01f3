"""The event loop tests run servers on: the one `spillover serve` runs by default
(spillover/server/event_loop.py), or another with SPILLOVER_TEST_EVENT_LOOP=asyncio or uvloop.

tests/conftest.py makes pytest-asyncio's loops of this kind, XdsThread its server loop and its xDS worker
processes', and the `spillover serve` processes of tests/harness/serve.py get it with `--event-loop`.
"""

from __future__ import annotations

import asyncio
import os

from spillover.server import event_loop

__all__ = ["KIND", "new_loop"]

KIND = os.environ.get("SPILLOVER_TEST_EVENT_LOOP", event_loop.DEFAULT)
event_loop.loop_factory(KIND)  # an unknown kind fails at collection, naming the kinds


def new_loop() -> asyncio.AbstractEventLoop:
    return event_loop.loop_factory(KIND)()
