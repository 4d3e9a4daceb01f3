"""Continuous model requests through Envoy from background threads, recording when each was sent, how it
ended and who served it: for "how many requests did this failure cost, and when" tests."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass

from tests.harness.load import post_model, served_by

__all__ = ["Answer", "ModelTraffic"]


@dataclass(frozen=True)
class Answer:
    at: float  # monotonic time the request was sent
    status: int  # 0: no HTTP answer (refused, reset, timeout)
    served_by: str  # x-upstream-name of a 200, else "" (or the error)
    body: str = ""  # the first bytes of a non-200's body


class ModelTraffic:
    """`workers` threads, each posting one request for `model` after the other until stopped."""

    def __init__(self, port: int, model: str, workers: int = 8, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.model = model
        self.headers = dict(headers or {})
        self._answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True, name=f"model-traffic-{n}") for n in range(workers)]

    def _run(self) -> None:
        while not self._stop.is_set():
            at = time.monotonic()
            try:
                response = post_model(self.port, self.model, self.headers)
                body = "" if response.status == 200 else response.text[:200]
                answer = Answer(at, response.status, served_by(response) or "", body)
            except Exception as error:  # every failure is a lost request, recorded as such
                answer = Answer(at, 0, f"{type(error).__name__}: {error}")
            with self._lock:
                self._answers.append(answer)

    def __enter__(self) -> ModelTraffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def answers(self, since: float = 0.0) -> list[Answer]:
        with self._lock:
            return [a for a in self._answers if a.at >= since]

    def failures(self, since: float = 0.0) -> list[Answer]:
        return [a for a in self.answers(since) if a.status != 200]

    def served(self, since: float = 0.0) -> Counter[str]:
        return Counter(a.served_by for a in self.answers(since) if a.status == 200)

    def wait_for(self, count: int, since: float = 0.0, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.answers(since)) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(self.answers(since))} of {count} answers in {timeout:g}s")
            time.sleep(0.02)
