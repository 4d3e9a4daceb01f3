"""The xDS port as an attacker on the network sees it: mTLS, admission per identity, secrets only where
they are used, and the refusals (status, message, metric). Real gRPC streams against a real server."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from spillover.server.resources import CLUSTER, ENDPOINT, SECRET
from tests.harness.ads import AdsClient
from tests.harness.polling import async_wait_until
from tests.harness.secure_xds import (
    GATEWAY_ID,
    OTHER_ID,
    TOKEN,
    Certificates,
    Start,
    edge_resources,
    node,
    other_resources,
    served_serial,
)

MODES = pytest.mark.parametrize("mode", ["sotw", "delta"])


def subscribe(client: AdsClient, type_url: str, names: list[str], first: base_pb2.Node | None = None) -> None:
    fields: dict[str, Any] = {"type_url": type_url}
    if first is not None:
        fields["node"] = first
    if client.mode == "sotw":
        client.send(resource_names=names, **fields)
    else:
        client.send(resource_names_subscribe=names, **fields)


def secret_names(response: Any) -> list[str]:
    if hasattr(response, "removed_resources"):
        return sorted(secret_pb2.Secret.FromString(r.resource.value).name for r in response.resources)
    return sorted(secret_pb2.Secret.FromString(r.value).name for r in response.resources)


# -- mTLS -----------------------------------------------------------------------------------------------


async def test_without_a_valid_client_certificate_there_is_no_stream(start: Start, certificates: Certificates) -> None:
    server = await start()
    server.publish("edge", edge_resources())
    attempts = {
        "plain text": AdsClient(server.address),
        "TLS, no client certificate": server.client(certificates.anonymous()),
        "a certificate from another CA": server.client(certificates.foreign(GATEWAY_ID)),
    }
    for what, client in attempts.items():
        client.send(node=node(), type_url=CLUSTER)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.recv()
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, what
        await client.close()
    assert server.xds.proxies.streams() == []
    good = server.client()
    good.send(node=node(), type_url=CLUSTER)
    assert (await good.recv()).resources
    (stream,) = server.xds.proxies.streams()
    assert stream.identity == GATEWAY_ID and stream.admitted_by == "gateways"


@MODES
async def test_sds_token_theft_is_refused(start: Start, certificates: Certificates, mode: str,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """The issue's attack: ask CDS for the group, then SDS for spillover-token-*."""
    server = await start()
    server.publish("edge", edge_resources())
    server.publish("other", other_resources())

    # An admitted identity of another group may not join the group that holds the token...
    intruder = server.client(certificates.client(OTHER_ID), mode)
    subscribe(intruder, CLUSTER, [], node("edge-1", "edge"))
    assert await intruder.ended() == grpc.StatusCode.PERMISSION_DENIED
    assert "node group 'edge' is not admitted for this identity" in await intruder.details()
    assert server.refused("group_not_admitted") == 1

    # ...and in its own group, which holds the secret but does not use it, SDS sends nothing.
    caplog.set_level(logging.WARNING, "spillover.server.service")
    tenant = server.client(certificates.client(OTHER_ID), mode)
    subscribe(tenant, CLUSTER, [], node("b-1", "other"))
    await tenant.recv()
    subscribe(tenant, SECRET, [TOKEN, "evil\nname" + "x" * 1000])
    if mode == "sotw":
        response = await tenant.recv()  # the first SDS request is answered: with nothing
        assert secret_names(response) == []
    else:
        await tenant.expect_silence(0.5)
    assert server.counter("spillover_xds_refused_secrets_total") == 2
    logged = [r.getMessage() for r in caplog.records if "asked for secret" in r.getMessage()]
    assert len(logged) == 2 and all("\n" not in line and len(line) < 500 for line in logged)
    assert any(f"'{TOKEN}'" in line for line in logged) and any("evil\\nname" in line for line in logged)

    # The gateway the token is for gets it.
    gateway = server.client(certificates.client(GATEWAY_ID), mode)
    subscribe(gateway, CLUSTER, [], node("edge-1", "edge"))
    await gateway.recv()
    subscribe(gateway, SECRET, [TOKEN])
    assert secret_names(await gateway.recv()) == [TOKEN]


async def test_a_secret_follows_its_references(start: Start) -> None:
    """Published without a reference, a secret is held back; once a resource of the group uses it, it is sent."""
    server = await start(rules=None, tls=False)
    resources = edge_resources()
    with_reference = server.publish("edge", resources)
    assert with_reference.referenced_secrets() == {TOKEN}
    unreferenced = [m for m in resources if m.DESCRIPTOR.full_name != "envoy.config.cluster.v3.Cluster"]
    server.publish("edge", unreferenced)
    client = server.client()
    client.send(node=node(), type_url=SECRET, resource_names=[TOKEN])
    assert secret_names(await client.recv()) == []
    server.publish("edge", resources)
    assert secret_names(await client.recv()) == [TOKEN]


# -- refusals -------------------------------------------------------------------------------------------


async def test_identities_no_rule_admits_are_refused_at_once(start: Start, certificates: Certificates) -> None:
    server = await start()
    stranger = server.client(certificates.client("spiffe://elsewhere/sa/x"))
    stranger.send(node=node(), type_url=CLUSTER)
    assert await stranger.ended() == grpc.StatusCode.PERMISSION_DENIED
    assert "identity 'spiffe://elsewhere/sa/x' is not admitted by any rule" in await stranger.details()
    node_refused = server.client()
    node_refused.send(node=node("attacker", "edge"), type_url=CLUSTER)
    assert await node_refused.ended() == grpc.StatusCode.PERMISSION_DENIED
    assert "node id 'attacker' is not admitted in this group (rules: gateways)" in await node_refused.details()
    assert server.refused("identity_not_admitted") == 1 and server.refused("node_not_admitted") == 1


async def test_plain_text_with_a_policy_needs_an_unauthenticated_rule(start: Start) -> None:
    server = await start(tls=False)
    client = server.client()
    client.send(node=node(), type_url=CLUSTER)
    assert await client.ended() == grpc.StatusCode.UNAUTHENTICATED
    allowed = await start(rules=[{"unauthenticated": True, "groups": ["dev"]}], tls=False)
    allowed.publish("dev", edge_resources())
    ok = allowed.client()
    ok.send(node=node("n", "dev"), type_url=CLUSTER)
    assert (await ok.recv()).resources


async def test_a_stream_refused_before_its_first_request_is_not_kept_waiting_for_one(start: Start) -> None:
    # A stream refused on its identity alone has its first request read before the status goes out (a
    # status that overtakes it can make a gRPC client report INTERNAL instead), but one that never sends a
    # request gets the status after a short wait, not after the whole first-request deadline.
    from spillover.server.bounds import StreamLimits

    server = await start(tls=False, limits=StreamLimits(first_request_timeout=120))
    silent = server.client()
    assert await silent.ended(timeout=15) == grpc.StatusCode.UNAUTHENTICATED
    assert server.refused("unauthenticated") == 1


async def test_streams_per_identity_are_bounded(start: Start, certificates: Certificates) -> None:
    server = await start()
    server.publish("edge", edge_resources())
    clients = [server.client() for _ in range(4)]
    for i, client in enumerate(clients):
        client.send(node=node(f"edge-{i}"), type_url=CLUSTER)
        await client.recv()
    fifth = server.client()
    fifth.send(node=node("edge-5"), type_url=CLUSTER)
    assert await fifth.ended() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "at most 4 streams at once for this identity" in await fifth.details()
    # Another identity has its own share; a stream that ends frees its place.
    other = server.client(certificates.client(OTHER_ID))
    other.send(node=node("b", "other"), type_url=CLUSTER)
    server.publish("other", other_resources())
    assert await other.recv()
    await clients[0].close()
    await async_wait_until(lambda: len(server.xds.proxies.streams()) == 4, message="a place freed")
    again = server.client()
    again.send(node=node("edge-9"), type_url=CLUSTER)
    assert (await again.recv()).resources


def _big_metadata(size: int) -> base_pb2.Node:
    return node(blob="x" * size)


@pytest.mark.parametrize(
    ("request_fields", "code", "reason", "detail"),
    [
        ({"type_url": CLUSTER}, grpc.StatusCode.INVALID_ARGUMENT, "no_node", "must carry a node with an id"),
        ({"node": _big_metadata(1_000_000), "type_url": CLUSTER}, grpc.StatusCode.RESOURCE_EXHAUSTED, "node_limit",
         "limit: node.metadata: at most 65536 bytes"),
        ({"node": node("edge-" + "x" * 300), "type_url": CLUSTER}, grpc.StatusCode.RESOURCE_EXHAUSTED, "node_limit",
         "limit: node.id: at most 256 characters"),
        ({"node": node("edge-1\nforged"), "type_url": CLUSTER}, grpc.StatusCode.INVALID_ARGUMENT, "node_limit",
         "limit: node.id: control characters are not allowed"),
        ({"node": node(), "type_url": "type.googleapis.com/" + "x" * 300}, grpc.StatusCode.INVALID_ARGUMENT,
         "request_limit", "limit: type_url: at most 256 characters"),
        ({"node": node(), "type_url": CLUSTER, "response_nonce": "n" * 200}, grpc.StatusCode.INVALID_ARGUMENT,
         "request_limit", "limit: response_nonce: at most 128 characters"),
        ({"node": node(), "type_url": CLUSTER, "version_info": "v" * 300}, grpc.StatusCode.INVALID_ARGUMENT,
         "request_limit", "limit: version_info: at most 256 characters"),
        ({"node": node(), "type_url": ENDPOINT, "resource_names": [str(i) for i in range(50_001)]},
         grpc.StatusCode.RESOURCE_EXHAUSTED, "request_limit", "limit: resource names: at most 50000 per type"),
        ({"node": node(), "type_url": ENDPOINT, "resource_names": ["n" * 1025]},
         grpc.StatusCode.RESOURCE_EXHAUSTED, "request_limit", "limit: resource names: at most 1024 characters"),
    ],
    ids=["no-node", "metadata", "node-id", "node-id-newline", "type-url", "nonce", "version", "names", "name"],
)
async def test_bounds_end_the_stream_with_a_status_naming_the_rule(
    start: Start, request_fields: dict[str, Any], code: grpc.StatusCode, reason: str, detail: str
) -> None:
    server = await start()
    server.publish("edge", edge_resources())
    client = server.client()
    client.send(**request_fields)
    assert await client.ended() == code
    details = await client.details()
    assert details.startswith(detail) or detail in details, details
    assert len(details) < 200  # never the client's text
    assert server.refused(reason) == 1
    # The status goes out before the handler's cleanup has run: the stream is unregistered right after.
    await async_wait_until(lambda: server.xds.proxies.streams() == [], timeout=5, message="the stream forgotten")


async def test_a_10_mb_node_is_refused_before_it_is_read(start: Start) -> None:
    server = await start()
    client = server.client()
    client.send(node=_big_metadata(10 * 1024 * 1024), type_url=CLUSTER)
    assert await client.ended() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await async_wait_until(lambda: server.xds.proxies.streams() == [], timeout=5, message="the stream forgotten")
    # gRPC refuses it by its declared length: the message never reaches the parser.
    assert server.xds.metrics_registry.get_sample_value(
        "spillover_xds_request_size_bytes_count", {}
    ) == 0


async def test_only_admitted_streams_count(start: Start, certificates: Certificates) -> None:
    """Refused streams are never replicas (which divide rate limits) nor scraped (admin port metadata)."""
    server = await start()
    server.publish("edge", edge_resources())
    gateway = server.client()
    gateway.send(node=node("edge-1", "edge", **{"spillover.admin_port": 24901}), type_url=CLUSTER)
    await gateway.recv()
    before = (server.xds.proxies.replicas("edge"), server.xds.proxies.admin_urls())
    attackers = []
    for i in range(48):
        credentials = [certificates.client(OTHER_ID), certificates.anonymous(), None][i % 3]
        attacker = server.client(credentials) if credentials is not None else AdsClient(server.address)
        if credentials is None:
            server.clients.append(attacker)
        attacker.send(node=node(f"edge-{100 + i}", "edge", **{"spillover.admin_port": 6666}), type_url=CLUSTER)
        attackers.append(attacker)
    codes = await asyncio.gather(*(a.ended() for a in attackers))
    assert set(codes) == {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE}
    assert (server.xds.proxies.replicas("edge"), server.xds.proxies.admin_urls()) == before == (
        1, ["http://127.0.0.1:24901"]
    )
    assert server.refused("group_not_admitted") == 16


# -- client text --------------------------------------------------------------------------------------


async def test_nack_text_is_escaped_and_cut(start: Start, caplog: pytest.LogCaptureFixture) -> None:
    server = await start(rules=None, tls=False)
    server.publish("edge", edge_resources())
    client = server.client()
    client.send(node=node(), type_url=CLUSTER)
    response = await client.recv()
    caplog.set_level(logging.WARNING, "spillover.server.service")
    client.nack(response, "bad cluster\n2026-01-01 INFO forged line\x1b[2J" + "y" * 1_000_000)
    (stream,) = server.xds.proxies.streams()
    await async_wait_until(lambda: stream.types[CLUSTER].nack_error, message="NACK recorded")
    shown = stream.describe()["types"][CLUSTER]["nack_error"]  # type: ignore[index]
    assert shown.startswith("bad cluster\\n2026-01-01 INFO forged line\\x1b[2J")
    assert "\n" not in shown and shown.endswith("more characters]") and len(shown) < 1100
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("NACK for CDS")]
    assert "\n" not in line and len(line) < 1200


async def test_a_rotated_server_certificate_is_served_to_new_connections(start: Start, certificates: Certificates) -> None:
    server = await start()
    server.publish("edge", edge_resources())
    first = await served_serial(server.port, certificates)
    open_stream = server.client()
    open_stream.send(node=node(), type_url=CLUSTER)
    response = await open_stream.recv()

    rotated_at = time.monotonic()
    new_serial = certificates.rotate_server()
    await async_wait_until(
        lambda: served_serial(server.port, certificates), interval=0.02, message="a served certificate"
    )
    served = await async_wait_until(
        lambda: _serial_is(server.port, certificates, new_serial), interval=0.02, timeout=10,
        message="the rotated certificate served",
    )
    took = time.monotonic() - rotated_at
    print(f"rotated certificate served to a new connection after {took * 1000:.0f} ms")
    assert served and first != new_serial
    assert server.counter("spillover_xds_tls_reloads_total", result="ok") >= 1
    # The stream opened before keeps working.
    open_stream.ack(response)
    server.publish("edge", other_resources())
    assert (await open_stream.recv()).version_info != response.version_info

    # A half-written rotation (a key that does not match) is not taken: the last good one stays.
    broken = certificates.pki.issue("spillover-xds", dns=["localhost"], ips=["127.0.0.1"], server=True)
    other = certificates.pki.issue("spillover-xds", dns=["localhost"], ips=["127.0.0.1"], server=True)
    from tests.harness.pki import write_secret_volume

    write_secret_volume(
        certificates.server_dir,
        {"tls.crt": broken.cert_pem, "tls.key": other.key_pem, "ca.crt": certificates.pki.ca_pem},
    )


    async def refused_and_still_served() -> bool:
        # Files are looked at when a handshake asks for the certificate: each probe is one.
        serial = await served_serial(server.port, certificates)
        return serial == new_serial and server.counter("spillover_xds_tls_reloads_total", result="error") >= 1

    await async_wait_until(refused_and_still_served, interval=0.05, message="the broken set refused")


async def _serial_is(port: int, certificates: Certificates, serial: int) -> bool:
    return await served_serial(port, certificates) == serial




def test_a_refused_set_of_certificate_files_is_counted_once_until_it_changes(certificates: Certificates) -> None:
    """However often the files are looked at (every handshake, or the poll of the xDS workers' main process)."""
    from spillover.server.tls import CertificateReloader
    from tests.harness.pki import write_secret_volume

    now = [0.0]
    results: list[bool] = []
    reloader = CertificateReloader(certificates.files, check_interval=1.0, on_reload=results.append, clock=lambda: now[0])

    def look() -> Any:
        now[0] += 1.0
        return reloader.fetch()

    broken = certificates.pki.issue("spillover-xds", dns=["localhost"], server=True)
    other = certificates.pki.issue("spillover-xds", dns=["localhost"], server=True)
    write_secret_volume(
        certificates.server_dir, {"tls.crt": broken.cert_pem, "tls.key": other.key_pem, "ca.crt": certificates.pki.ca_pem}
    )
    assert [look() for _ in range(5)] == [None] * 5
    assert results == [False] and "do not form a pair" in reloader.last_error
    certificates.rotate_server()  # a good set: taken at the next look, once
    assert look() is not None and look() is None
    assert results == [False, True] and reloader.reloads == 1 and reloader.last_error == ""
