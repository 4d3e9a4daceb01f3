"""`spillover load`: a small load generator that shows who served the requests, second by second."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import aiohttp


async def run_load(url: str, model: str, concurrency: int, seconds: float) -> int:
    """`concurrency` clients sending back to back for `seconds`; prints who served what, every second."""
    deadline = time.monotonic() + seconds
    served: Counter[str] = Counter()
    window: Counter[str] = Counter()
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            try:
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
                    payload = await response.json(content_type=None)
                    who = payload.get("served_by") if response.status == 200 else f"HTTP {response.status}"
            except (aiohttp.ClientError, ValueError) as error:
                who = type(error).__name__
            served[str(who)] += 1
            window[str(who)] += 1

    async def report() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
            total = sum(window.values()) or 1
            parts = ", ".join(f"{who} {100 * n // total}%" for who, n in sorted(window.items()))
            print(f"{sum(window.values()):4d} req/s  {parts}", flush=True)
            window.clear()

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(report(), *(client(session) for _ in range(concurrency)))
    print("total:", dict(served))
    return 0
