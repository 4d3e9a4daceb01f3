"""The `gateway` fixture of the real-Envoy translation tests (a module may define its own)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest

from tests.harness.envoy import Envoy
from tests.harness.translated import Gw, start_gateway


@pytest.fixture
def gateway(envoy_factory: Callable[..., Envoy]) -> Callable[..., Gw]:
    return partial(start_gateway, envoy_factory)
