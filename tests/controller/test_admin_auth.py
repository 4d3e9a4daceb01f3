"""Who may read the admin endpoint's debug views: real HTTP(S) requests against a real AdminServer."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from spillover.controller.admin import AdminServer
from spillover.controller.admin_auth import AdminAuth, AdminOptions
from spillover.server.cache import SnapshotCache
from spillover.server.service import XdsServer
from spillover.server.tls import TlsFiles
from tests.harness.client import Response, request
from tests.harness.pki import Pki, serial_of, write_secret_volume
from tests.harness.polling import async_wait_until

TOKEN = "a-token-long-enough-0123456789"
OPEN = ("/healthz", "/readyz", "/metrics")
DEBUG = ("/debug/proxies", "/debug/config?node=x")

Start = Callable[..., Awaitable[AdminServer]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    servers: list[AdminServer] = []

    async def launch(options: AdminOptions) -> AdminServer:
        xds = XdsServer(SnapshotCache(debounce=0))
        admin = AdminServer(xds, [xds.metrics_registry], ready=lambda: True, options=options)
        await admin.start("127.0.0.1", 0)
        servers.append(admin)
        return admin

    yield launch
    for admin in servers:
        await admin.stop()


async def get(url: str, **kwargs: Any) -> Response:
    return await asyncio.get_running_loop().run_in_executor(None, lambda: request("GET", url, **kwargs))


async def test_on_loopback_without_a_credential_the_debug_views_are_open(start: Start) -> None:
    admin = await start(AdminOptions())
    for path in (*OPEN, *DEBUG[:1]):
        assert (await get(f"http://127.0.0.1:{admin.port}{path}")).status == 200, path


async def test_a_token_file_guards_the_debug_views_and_is_reread(start: Start, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    admin = await start(AdminOptions(token_file=token))
    base = f"http://127.0.0.1:{admin.port}"
    for path in OPEN:
        assert (await get(base + path)).status == 200, path
    for path in DEBUG:
        denied = await get(base + path)
        assert denied.status == 401 and denied.headers["www-authenticate"] == 'Bearer realm="spillover-admin"'
        assert (await get(base + path, headers={"Authorization": "Bearer wrong-token-0123456789"})).status == 401
    assert (await get(base + DEBUG[0], headers={"Authorization": f"Bearer {TOKEN}"})).status == 200
    # Rotated: the old token stops working, the new one works, without a restart.
    renewed = "another-token-long-enough-9876543210"
    token.write_text(renewed)
    assert (await get(base + DEBUG[0], headers={"Authorization": f"Bearer {TOKEN}"})).status == 401
    assert (await get(base + DEBUG[0], headers={"Authorization": f"Bearer {renewed}"})).status == 200
    # A missing or too short token file refuses everyone rather than letting anyone in.
    token.write_text("short")
    assert (await get(base + DEBUG[0], headers={"Authorization": "Bearer short"})).status == 401
    token.unlink()
    assert (await get(base + DEBUG[0], headers={"Authorization": f"Bearer {renewed}"})).status == 401
    assert admin.xds.metrics_registry.get_sample_value("spillover_admin_denied_total", {"reason": "invalid"})


def test_exposed_without_a_credential_the_debug_views_are_closed(tmp_path: Path) -> None:
    """Bound to an address other hosts reach (not testable on loopback, so the rule itself): 403."""
    auth = AdminAuth(AdminOptions(), loopback=False)
    denied = auth.check(make_mocked_request("GET", "/debug/proxies"))
    assert denied is not None and denied.status == 403
    assert "no admin token or admin client CA is configured" in str(denied.text)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    guarded = AdminAuth(AdminOptions(token_file=token), loopback=False)
    assert guarded.check(make_mocked_request("GET", "/debug/proxies", headers={"Authorization": f"Bearer {TOKEN}"})) is None
    missing = guarded.check(make_mocked_request("GET", "/debug/proxies"))
    assert missing is not None and missing.status == 401


def _files(directory: Path, pki: Pki) -> tuple[TlsFiles, int]:
    issued = pki.issue("admin", dns=["localhost"], ips=["127.0.0.1"], server=True)
    write_secret_volume(directory, pki.tls_secret(issued))
    return TlsFiles(directory / "tls.crt", directory / "tls.key", directory / "ca.crt"), issued.serial


async def test_client_certificates_open_the_debug_views_over_https(start: Start, tmp_path: Path) -> None:
    pki = Pki()
    files, first_serial = _files(tmp_path / "admin-tls", pki)
    admin = await start(AdminOptions(tls=files, tls_check_interval=0.05))
    base = f"https://127.0.0.1:{admin.port}"
    client = pki.issue("operator", uris=["spiffe://td/user/operator"], client=True)
    (tmp_path / "op.crt").write_bytes(client.cert_pem)
    (tmp_path / "op.key").write_bytes(client.key_pem)
    anonymous = ssl.create_default_context(cadata=pki.ca_pem.decode())
    with_cert = ssl.create_default_context(cadata=pki.ca_pem.decode())
    with_cert.load_cert_chain(tmp_path / "op.crt", tmp_path / "op.key")
    for path in OPEN:  # probes and Prometheus need no certificate
        assert (await get(base + path, ssl_context=anonymous)).status == 200, path
    assert (await get(base + DEBUG[0], ssl_context=anonymous)).status == 401
    assert (await get(base + DEBUG[0], ssl_context=with_cert)).status == 200

    def served_serial() -> int:
        import socket

        with socket.create_connection(("127.0.0.1", admin.port), timeout=5) as raw, anonymous.wrap_socket(
            raw, server_hostname="127.0.0.1"
        ) as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return serial_of(ssl.DER_cert_to_PEM_cert(der).encode())

    loop = asyncio.get_running_loop()
    assert await loop.run_in_executor(None, served_serial) == first_serial
    _, renewed = _files(tmp_path / "admin-tls", pki)
    await async_wait_until(
        lambda: loop.run_in_executor(None, lambda: served_serial() == renewed), message="renewed admin certificate"
    )
