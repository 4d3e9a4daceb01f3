"""Shared fixtures. Everything a test starts here is stopped at teardown, by pid for processes."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from spillover.server import event_loop
from tests.harness import event_loops
from tests.harness.envoy import Envoy
from tests.harness.ports import free_port
from tests.harness.upstream import HttpsUpstream, HttpUpstream

__all__ = ["free_port"]

# The Kubernetes fixtures (a real API server per set of CRDs), for every directory that needs them.
pytest_plugins = ["tests.harness.kube_fixtures"]

# `make fuzz` (pytest --hypothesis-profile=fuzz): the fuzz tests with a long, seeded budget. Tests that
# fix their own max_examples keep it; the fuzz tests (tests/policy/test_fuzz.py) take the profile's.
settings.register_profile("fuzz", max_examples=4000, derandomize=True, deadline=None, print_blob=True)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """Async tests run on the loop `spillover serve` runs by default (tests/harness/event_loops.py)."""
    return {event_loops.KIND: event_loop.loop_factory(event_loops.KIND)}


@pytest.fixture
def envoy_factory(tmp_path: Path) -> Iterator[Callable[..., Envoy]]:
    """``envoy_factory(bootstrap, name="envoy", log_level="info", timeout=20.0, **Envoy kwargs)``
    starts a real Envoy with its files in tmp_path/<name> and returns it."""
    started: list[Envoy] = []

    def factory(
        bootstrap: dict[str, Any], name: str = "envoy", timeout: float = 20.0, **kwargs: Any
    ) -> Envoy:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        taken = {e.name for e in started}
        unique, n = safe, 1
        while unique in taken:
            n += 1
            unique = f"{safe}-{n}"
        envoy = Envoy(bootstrap, tmp_path / unique, name=unique, **kwargs)
        started.append(envoy)
        envoy.start(timeout=timeout)
        return envoy

    yield factory
    for envoy in reversed(started):
        envoy.stop()
        # Shown by pytest only when the test failed: the Envoy side of the story.
        print(envoy.log_tail(40))


@pytest.fixture
def upstream_factory() -> Iterator[Callable[..., HttpUpstream]]:
    """``upstream_factory(name, delay_s=0.0, status=200, cert_path=None, key_path=None)`` starts an
    HttpUpstream (HttpsUpstream when cert_path and key_path are given) on a free loopback port."""
    started: list[HttpUpstream] = []

    def factory(
        name: str = "upstream",
        delay_s: float = 0.0,
        status: int = 200,
        cert_path: str | Path | None = None,
        key_path: str | Path | None = None,
        **kwargs: Any,
    ) -> HttpUpstream:
        upstream: HttpUpstream
        if cert_path is not None or key_path is not None:
            if cert_path is None or key_path is None:
                raise ValueError("upstream_factory: cert_path and key_path go together")
            upstream = HttpsUpstream(name, cert_path, key_path, delay_s=delay_s, status=status, **kwargs)
        else:
            upstream = HttpUpstream(name, delay_s=delay_s, status=status, **kwargs)
        started.append(upstream)
        return upstream.start()

    yield factory
    for upstream in reversed(started):
        upstream.stop()


@pytest.fixture
def xds_server() -> Iterator[Any]:
    """A running spillover xDS + admin server (an ``XdsThread``, see tests/harness/xds.py) on its own
    event loop thread; stopped at teardown."""
    from tests.harness.xds import XdsThread

    server = XdsThread()
    try:
        server.start()
        yield server
    finally:
        server.close()
