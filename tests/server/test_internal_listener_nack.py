"""An Envoy whose bootstrap lacks `envoy.bootstrap.internal_listener`, told by its Listener NACK (real gRPC
streams, raw clients sending Envoy's reason; tests/translate/test_envoy_failover.py has a real Envoy send
it): one warning per stream naming the node and the remedy, the gauge
`spillover_xds_streams_without_internal_listener` while that NACK holds, `without_internal_listener` in
/debug/proxies. Any other NACK, or that text on another type, is only a NACK."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from spillover.ir import Endpoint, Gateway, Listener, Model, RemoteBackend, TrafficSplit
from spillover.server.resources import CLUSTER, LISTENER
from spillover.server.service import XdsOptions
from spillover.translate import translate
from tests.harness.ads import AdsClient
from tests.harness.polling import async_wait_until
from tests.harness.secure_xds import SecureServer, node

GAUGE = "spillover_xds_streams_without_internal_listener"
GROUP = "edge"
WARNING = "lacks the extension envoy.bootstrap.internal_listener"
# What Envoy 1.40 says (its LDS error lists each listener it refused).
ENVOY_REASON = "Error adding/updating listener(s) qwen/remote: InternalListener bootstrap extension is mandatory\n"


def resources(failover_remote: str = "internal-listener", listener_port: int = 10080) -> list[object]:
    model = Model(
        "qwen", (Endpoint("127.0.0.1", 8000),),
        remote=RemoteBackend(host="127.0.0.1", port=8001, scheme="http"),
        split=TrafficSplit(70, 30), failover=True,
    )
    gateway = Gateway(GROUP, Listener("127.0.0.1", listener_port), (model,), failover_remote=failover_remote)
    return list(translate(gateway).messages())


def subscribe(client: AdsClient, type_url: str, first: bool = False) -> None:
    fields: dict[str, object] = {"type_url": type_url}
    if first:
        fields["node"] = node(f"{client.mode}-{id(client)}", GROUP)
    client.send(**fields)


async def listeners(server: SecureServer, mode: str) -> tuple[AdsClient, object]:
    client = server.client(mode=mode)
    subscribe(client, LISTENER, first=True)
    response = await client.recv()
    assert response.type_url == LISTENER
    return client, response


def lds_nacks(server: SecureServer) -> float | None:
    return server.xds.metrics_registry.get_sample_value("spillover_xds_nacks_total", {"type": "LDS"})


async def counted(server: SecureServer, nacks: int) -> None:
    """Waits for the server to have handled `nacks` Listener NACKs (a publish before would make the last stale)."""
    await async_wait_until(lambda: lds_nacks(server) == nacks, message=f"{nacks} LDS NACKs never counted")


async def gauge(server: SecureServer) -> float | None:
    await server.xds.refresh_views()  # worker processes: their streams' states as of now
    return server.xds.metrics_registry.get_sample_value(GAUGE)


async def flagged(server: SecureServer) -> list[bool]:
    await server.xds.refresh_views(describe=True)
    return sorted(bool(stream.describe()["without_internal_listener"]) for stream in server.xds.proxies.streams())


@pytest.fixture
async def plain() -> AsyncIterator[SecureServer]:
    server = await SecureServer(None).start()
    yield server
    await server.close()


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and WARNING in r.getMessage()]


@pytest.mark.parametrize("mode", ["sotw", "delta"])
async def test_a_listener_nack_for_the_missing_extension_is_reported_once_per_stream(
    mode: str, plain: SecureServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="spillover.server.service")
    plain.publish(GROUP, resources())
    client, response = await listeners(plain, mode)
    assert await gauge(plain) == 0
    client.nack(response, ENVOY_REASON)
    await counted(plain, 1)
    assert len(warnings(caplog)) == 1
    assert await gauge(plain) == 1
    assert await flagged(plain) == [True]
    (line,) = warnings(caplog)
    assert f"node '{mode}-" in line and "group 'edge'" in line, line
    assert "--failover-remote in-place" in line and "bootstrap" in line, line
    # Every later listener update NACKed the same way: counted as NACKs, still one stream, one line.
    for count, port in ((2, 10081), (3, 10082)):
        plain.publish(GROUP, resources(listener_port=port))
        response = await client.recv()
        assert response.type_url == LISTENER
        client.nack(response, ENVOY_REASON)
        await counted(plain, count)
    assert await gauge(plain) == 1 and len(warnings(caplog)) == 1
    # The remedy: served in place, it has no internal listener to refuse and ACKs.
    plain.publish(GROUP, resources("in-place"))
    response = await client.recv()
    assert response.type_url == LISTENER
    client.ack(response)
    await async_wait_until(lambda: plain.xds.metrics_registry.get_sample_value(GAUGE) == 0, message="still counted")
    assert await flagged(plain) == [False]
    await client.close()


@pytest.mark.parametrize(
    ("type_url", "message"),
    [
        (LISTENER, "Error adding/updating listener(s) qwen: malformed IP address: 1.2.3"),
        (CLUSTER, ENVOY_REASON),  # only a listener is refused for it
    ],
    ids=["another-listener-error", "the-text-on-clusters"],
)
async def test_any_other_nack_is_only_a_nack(
    type_url: str, message: str, plain: SecureServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="spillover.server.service")
    plain.publish(GROUP, resources())
    client = plain.client(mode="sotw")
    subscribe(client, type_url, first=True)
    response = await client.recv()
    client.nack(response, message)
    await async_wait_until(
        lambda: any(s.status().value == "NACKED" for s in plain.xds.proxies.streams()), message="no NACK"
    )
    assert await gauge(plain) == 0
    assert await flagged(plain) == [False]
    assert warnings(caplog) == []


async def test_the_text_is_looked_for_only_in_the_kept_error(plain: SecureServer) -> None:
    # A client's error is cut (1,024 characters) before anything reads it: the reason past the cut is unseen.
    plain.publish(GROUP, resources())
    client, response = await listeners(plain, "sotw")
    client.nack(response, "x" * 5000 + ENVOY_REASON)
    await async_wait_until(
        lambda: any(s.status().value == "NACKED" for s in plain.xds.proxies.streams()), message="no NACK"
    )
    assert await gauge(plain) == 0


@pytest.mark.parametrize("mode", ["sotw", "delta"])
async def test_exact_across_xds_workers(mode: str) -> None:
    server = await SecureServer(None, options=XdsOptions(), workers=2).start()
    try:
        server.publish(GROUP, resources())
        for index in range(4):
            client, response = await listeners(server, mode)
            if index % 2:
                client.nack(response, ENVOY_REASON)
            else:
                client.ack(response)

        async def counted() -> bool:
            return await gauge(server) == 2

        await async_wait_until(counted, message="not counted across the workers")
        assert await flagged(server) == [False, False, True, True]
    finally:
        await server.close()
