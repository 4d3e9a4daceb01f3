"""Requests to spillover's model listener (through Envoy): one at a time, and a closed-loop load
generator that measures accepted request rates."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tests.harness.client import Response, request

CHAT = "/v1/chat/completions"


def post_model(
    port: int, model: str | None, headers: dict[str, str] | None = None, path: str = CHAT
) -> Response:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if model is not None:
        body["model"] = model
    hdrs = {"content-type": "application/json", **(headers or {})}
    return request("POST", f"http://127.0.0.1:{port}{path}", body=body, headers=hdrs, timeout=10)


def served_by(response: Response) -> str | None:
    return response.headers.get("x-upstream-name") if response.status == 200 else None


@dataclass
class Load:
    """What a closed-loop load run saw: (monotonic time, status) of every answer."""

    answers: list[tuple[float, int]] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    samples: dict[int, Response] = field(default_factory=dict)

    @property
    def statuses(self) -> Counter[int]:
        return Counter(status for _, status in self.answers)

    def accepted_rate(self, bucket: float) -> float:
        """Accepted requests per second over the run, minus the bucket that was full at the start."""
        return (self.statuses[200] - bucket) / (self.ended - self.started)


def drive(port: int, model: str, seconds: float, workers: int = 4) -> Load:
    """Offers far more than the limit (each worker sends back to back, one fresh connection per
    request so that SO_REUSEPORT spreads them over every Envoy bound to the port)."""
    load = Load()
    lock = threading.Lock()
    body = json.dumps({"model": model, "messages": []}).encode()
    headers = {"content-type": "application/json"}

    def worker() -> None:
        while True:
            now = time.monotonic()
            if now >= load.ended:
                return
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                conn.request("POST", CHAT, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                status = resp.status
                sample = Response(status, {k.lower(): v for k, v in resp.getheaders()}, data)
            except (OSError, http.client.HTTPException):
                status, sample = -1, None
            finally:
                conn.close()
            with lock:
                load.answers.append((time.monotonic(), status))
                if sample is not None:
                    load.samples.setdefault(status, sample)

    load.started = time.monotonic()
    load.ended = load.started + seconds
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(worker) for _ in range(workers)]:
            future.result()
    load.ended = max(load.ended, max((t for t, _ in load.answers), default=load.ended))
    return load
