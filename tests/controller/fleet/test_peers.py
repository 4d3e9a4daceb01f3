"""The peer channel: requests and answers signed under the shared token (which never crosses the
network), a rotated token file read again, anything unsigned or forged refused, at most 8 at a time."""

from __future__ import annotations

import os
import time
from pathlib import Path

import aiohttp
import pytest

from spillover.controller.fleet.fleet import peer_token
from spillover.controller.fleet.peers import INPUTS_PATH, MEMBER_PATH, PeerClient, PeerServer, PeerToken

A, B = "a" * 32, "b" * 32


def token(path: Path, *lines: str) -> PeerToken:
    path.write_text("\n".join(lines) + "\n")
    return PeerToken(path, clock=time.monotonic)


def test_a_signature_is_of_the_method_path_and_time_under_a_known_token(tmp_path: Path) -> None:
    ours = token(tmp_path / "t", A)
    header, stamp = ours.sign("GET", INPUTS_PATH, at=1000.0)
    assert A not in header and stamp == "1000.000"
    assert ours.verify(header, "GET", INPUTS_PATH, now=1030.0) == (A.encode(), "1000.000")
    assert ours.verify(header, "GET", MEMBER_PATH, now=1030.0) is None  # another path
    assert ours.verify(header, "GET", INPUTS_PATH, now=1061.0) is None  # too old: a replay
    assert ours.verify(header.replace("sig=", "sig=0"), "GET", INPUTS_PATH, now=1030.0) is None
    theirs = token(tmp_path / "u", B)
    assert theirs.verify(header, "GET", INPUTS_PATH, now=1030.0) is None
    assert ours.verify(f"Bearer {A}", "GET", INPUTS_PATH, now=1030.0) is None
    with pytest.raises(ValueError, match="holds no token of 16 characters or more"):
        token(tmp_path / "v", "short")


def test_a_token_file_not_created_yet_leaves_the_channel_off_and_one_without_a_token_is_refused(tmp_path: Path) -> None:
    # manifests/ mounts the token's Secret as optional: until it is created the file does not exist.
    assert peer_token(tmp_path / "secret" / "token") is None
    assert peer_token(None) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="holds no token"):
        peer_token(tmp_path / "empty")
    (tmp_path / "t").write_text(A + "\n")
    found = peer_token(tmp_path / "t")
    assert found is not None and found.verify(found.sign("GET", INPUTS_PATH)[0], "GET", INPUTS_PATH) is not None


def test_a_rotated_token_file_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "t"
    ours = token(path, A)
    path.write_text(f"{B}\n{A}\n")  # the new token first: sent; the old one still accepted
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    ours._checked = -1e9
    signed, _ = ours.sign("GET", INPUTS_PATH)
    assert token(tmp_path / "b", B).verify(signed, "GET", INPUTS_PATH) is not None
    old = token(tmp_path / "a", A).sign("GET", INPUTS_PATH)[0]
    assert ours.verify(old, "GET", INPUTS_PATH) is not None


async def test_the_peer_endpoint_answers_only_signed_requests_and_signs_its_answers(tmp_path: Path) -> None:
    ours = token(tmp_path / "t", A)
    server = PeerServer(ours, lambda: {"v": 1, "identity": "me"}, lambda: {"member": True})
    port = await server.start("127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    client, stranger = PeerClient(ours), PeerClient(token(tmp_path / "u", B))
    try:
        assert await client.get(base, INPUTS_PATH) == {"v": 1, "identity": "me"}
        assert (await client.get(base, MEMBER_PATH))["member"] is True
        with pytest.raises(ValueError, match="HTTP 401"):
            await stranger.get(base, INPUTS_PATH)
        async with aiohttp.ClientSession() as http:
            async with http.get(base + INPUTS_PATH, headers={"Authorization": f"Bearer {A}"}) as response:
                assert response.status == 401  # the token itself is no credential
            header, _ = ours.sign("GET", INPUTS_PATH)
            async with http.post(base + INPUTS_PATH, headers={"Authorization": header}, data=b"x") as response:
                assert response.status in (401, 405)
        assert server.refused >= 2
    finally:
        await client.close()
        await stranger.close()
        await server.stop()


async def test_an_answer_not_signed_with_the_token_is_not_taken(tmp_path: Path) -> None:
    """A stand-in at a peer's address (it accepts anything) cannot feed the leader readings."""
    from aiohttp import web

    async def anything(request: web.Request) -> web.Response:
        return web.json_response({"v": 1, "identity": "replica-b", "metrics": {}})

    app = web.Application()
    app.router.add_get(INPUTS_PATH, anything)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    client = PeerClient(token(tmp_path / "t", A))
    try:
        with pytest.raises(ValueError, match="not signed with the fleet's token"):
            await client.get(f"http://127.0.0.1:{runner.addresses[0][1]}", INPUTS_PATH)
    finally:
        await client.close()
        await runner.cleanup()


async def test_at_most_eight_requests_are_served_at_once(tmp_path: Path) -> None:
    ours = token(tmp_path / "t", A)
    server = PeerServer(ours, lambda: {"v": 1}, lambda: {"member": True})
    port = await server.start("127.0.0.1", 0)
    client = PeerClient(ours, timeout=5.0)
    try:
        for _ in range(8):  # eight requests being served
            await server._slots.acquire()
        with pytest.raises(ValueError, match="HTTP 503"):
            await client.get(f"http://127.0.0.1:{port}", MEMBER_PATH)
        server._slots.release()
        assert (await client.get(f"http://127.0.0.1:{port}", MEMBER_PATH))["member"] is True
    finally:
        await client.close()
        await server.stop()
