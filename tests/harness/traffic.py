"""Continuous HTTP traffic through Envoy from a background thread, for "no request dropped" tests."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from tests.harness import client

__all__ = ["Result", "Traffic"]


@dataclass(frozen=True)
class Result:
    at: float  # monotonic time the request was sent
    status: int  # 0 when the request failed below HTTP (refused, reset, timeout)
    upstream: str  # x-upstream-name of the answer, or the error for status 0
    body: str = ""  # the answer's body when it was not a 200 (why it failed, in Envoy's words)


class Traffic:
    """Sends GET requests to ``url`` from ``workers`` threads, each one request after the other, until
    stopped; records every outcome in the order they completed."""

    def __init__(self, url: str, workers: int = 4, pause_s: float = 0.002, timeout: float = 5.0) -> None:
        self.url = url
        self.pause_s = pause_s
        self.timeout = timeout
        self._results: list[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, name=f"traffic-{n}", daemon=True) for n in range(workers)
        ]

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            try:
                response = client.request("GET", self.url, timeout=self.timeout)
                body = response.text[:300] if response.status != 200 else ""
                result = Result(at, response.status, response.headers.get("x-upstream-name", ""), body)
            except Exception as error:  # every failure is a dropped request, recorded as such
                result = Result(at, 0, f"{type(error).__name__}: {error}")
            with self._lock:
                self._results.append(result)
            self._stop.wait(self.pause_s)

    def start(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Result]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)
        return self.results()

    def __enter__(self) -> Traffic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def results(self) -> list[Result]:
        with self._lock:
            return list(self._results)

    def since(self, at: float) -> list[Result]:
        return [r for r in self.results() if r.at >= at]

    def failures(self) -> list[Result]:
        return [r for r in self.results() if r.status != 200]

    def last(self, n: int) -> list[Result]:
        results = self.results()
        return results[-n:] if len(results) >= n else []
