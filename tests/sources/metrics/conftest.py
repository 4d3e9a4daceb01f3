"""Fixtures of the metrics tests (candidates for tests/conftest.py): real Prometheus, model servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.modelserver import ModelServer
from tests.harness.prometheus import Prometheus


@pytest.fixture
def model_server_factory() -> Iterator[Callable[..., ModelServer]]:
    """``model_server_factory(name, model="test-model", pod=None)`` starts a ModelServer on loopback."""
    started: list[ModelServer] = []

    def factory(name: str, model: str = "test-model", **kwargs: Any) -> ModelServer:
        server = ModelServer(name, model, **kwargs)
        started.append(server)
        return server.start()

    yield factory
    for server in reversed(started):
        server.stop()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """``prometheus_factory(targets)`` starts the real Prometheus (1 s scrapes) with its data in tmp_path."""
    started: list[Prometheus] = []

    def factory(targets: list[str], **kwargs: Any) -> Prometheus:
        prom = Prometheus(tmp_path / f"prometheus-{len(started)}", targets, **kwargs)
        started.append(prom)
        return prom.start()

    yield factory
    for prom in reversed(started):
        prom.stop()
        print(prom.log_tail(20))
