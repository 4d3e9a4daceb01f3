"""Fixtures of the xDS server's security tests: a test CA, and servers with mTLS and admission on the
test's loop (tests/harness/secure_xds.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from spillover.server.service import XdsOptions
from tests.harness.secure_xds import RULES, Certificates, SecureServer, Start, policy


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return Certificates(tmp_path)


@pytest.fixture
async def start(certificates: Certificates) -> AsyncIterator[Start]:
    servers: list[SecureServer] = []

    async def launch(rules: list[dict[str, Any]] | None = RULES, tls: bool = True, **options: Any) -> SecureServer:
        server = SecureServer(
            certificates if tls else None,
            admission=policy(rules) if rules is not None else None,
            options=XdsOptions(**options),
        )
        servers.append(await server.start())
        return server

    yield launch
    for server in servers:
        await server.close()
