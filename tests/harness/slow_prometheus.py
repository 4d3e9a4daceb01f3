"""A Prometheus stand-in at the wire level: it speaks the HTTP API's instant query (`POST/GET
/api/v1/query`, a vector answer) and takes `delay_s` seconds to answer, for tests of what a slow metric
source must not hold up. Runs on its own event loop thread; stopped by `stop()`."""

from __future__ import annotations

import asyncio
import threading
import time

from aiohttp import web

__all__ = ["SlowPrometheus"]


class SlowPrometheus:
    def __init__(self, value: float = 1.0, delay_s: float = 10.0) -> None:
        self.value = value
        self.delay_s = delay_s
        self.queries: list[tuple[float, str]] = []  # (monotonic time received, query)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="slow-prometheus")
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _query(self, request: web.Request) -> web.Response:
        form = await request.post() if request.method == "POST" else request.query
        self.queries.append((time.monotonic(), str(form.get("query", ""))))
        await asyncio.sleep(self.delay_s)
        result = [{"metric": {}, "value": [time.time(), str(self.value)]}]
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": result}})

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/api/v1/query", self._query)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(self._runner.addresses[0][1])

    def start(self) -> SlowPrometheus:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
