"""An Envoy without the split weights' RTDS layer, told apart by the order of its requests (real gRPC
streams, raw clients): in runtime mode (`--split-weights runtime`, the group's snapshot holds the layer) an
Envoy with the layer asks for it before anything else (tests/translate/test_split_runtime.py shows it on a
real Envoy), so a stream that asks for clusters, listeners or routes first lacks it: one warning, the gauge
`spillover_xds_streams_without_split_layer`, `without_split_layer` in /debug/proxies. In the default mode
(the splits in the routes), never."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from spillover.ir import Endpoint, Gateway, Listener, Model, RemoteBackend, TrafficSplit
from spillover.names import SPLIT_RUNTIME_LAYER
from spillover.server.resources import CLUSTER, LISTENER, RUNTIME
from spillover.server.service import XdsOptions
from spillover.translate import translate
from tests.harness.ads import AdsClient
from tests.harness.polling import async_wait_until
from tests.harness.secure_xds import SecureServer, node

GAUGE = "spillover_xds_streams_without_split_layer"
GROUP = "edge"
WARNING = "without the split weights' RTDS layer"


def resources(split_weights: str, remote_port: int = 8001) -> list[object]:
    model = Model(
        "qwen", (Endpoint("127.0.0.1", 8000),),
        remote=RemoteBackend(host="127.0.0.1", port=remote_port, scheme="http"),
        split=TrafficSplit(70, 30),
    )
    gateway = Gateway(GROUP, Listener("127.0.0.1", 10080), (model,), split_weights=split_weights)
    return list(translate(gateway).messages())


def subscribe(client: AdsClient, type_url: str, names: list[str], first: bool = False) -> None:
    fields: dict[str, object] = {"type_url": type_url}
    if first:
        fields["node"] = node(f"{client.mode}-{type_url.rsplit('.', 1)[-1]}-{id(client)}", GROUP)
    if client.mode == "sotw":
        client.send(resource_names=names, **fields)
    else:
        client.send(resource_names_subscribe=names, **fields)


async def with_layer(server: SecureServer, mode: str) -> AdsClient:
    """Like an Envoy whose bootstrap has the layer: the layer first, its clusters once it has it."""
    client = server.client(mode=mode)
    subscribe(client, RUNTIME, [SPLIT_RUNTIME_LAYER], first=True)
    layer = await client.recv()
    assert layer.type_url == RUNTIME
    client.ack(layer, **({"resource_names": [SPLIT_RUNTIME_LAYER]} if mode == "sotw" else {}))
    subscribe(client, CLUSTER, [])
    assert (await client.recv()).type_url == CLUSTER
    return client


async def without_layer(server: SecureServer, mode: str) -> AdsClient:
    """Like an Envoy whose bootstrap lacks it: its clusters first."""
    client = server.client(mode=mode)
    subscribe(client, CLUSTER, [], first=True)
    clusters = await client.recv()
    assert clusters.type_url == CLUSTER
    client.ack(clusters)
    return client


async def gauge(server: SecureServer) -> float | None:
    await server.xds.refresh_views()  # worker processes: their streams' states as of now
    return server.xds.metrics_registry.get_sample_value(GAUGE)


async def flagged(server: SecureServer) -> list[bool]:
    await server.xds.refresh_views(describe=True)
    return sorted(bool(stream.describe()["without_split_layer"]) for stream in server.xds.proxies.streams())


@pytest.fixture
async def plain() -> AsyncIterator[SecureServer]:
    server = await SecureServer(None).start()
    yield server
    await server.close()


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and WARNING in r.getMessage()]


@pytest.mark.parametrize("mode", ["sotw", "delta"])
async def test_a_stream_asking_for_clusters_before_the_layer_is_reported(
    mode: str, plain: SecureServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="spillover.server.service")
    plain.publish(GROUP, resources("runtime"))
    await with_layer(plain, mode)
    assert await gauge(plain) == 0
    assert warnings(caplog) == []
    lacking = await without_layer(plain, mode)
    assert await gauge(plain) == 1
    assert await flagged(plain) == [False, True]
    (line,) = warnings(caplog)  # one per stream, though it asked for more types since
    assert "node '" + f"{mode}-Cluster" in line and "group 'edge'" in line and "bootstrap" in line, line
    # More requests and publishes keep it reported, and logged once.
    subscribe(lacking, LISTENER, [])
    plain.publish(GROUP, resources("runtime", remote_port=8002))
    assert (await lacking.recv()).type_url == CLUSTER
    assert await gauge(plain) == 1 and len(warnings(caplog)) == 1
    await lacking.close()
    await async_wait_until(lambda: len(plain.xds.proxies.streams()) == 1, message="stream left")
    assert await gauge(plain) == 0


async def test_the_warnings_are_rate_limited(plain: SecureServer, caplog: pytest.LogCaptureFixture) -> None:
    # A fleet rolled out with the wrong bootstrap must not flood the log: every stream counted, 20 lines a minute.
    caplog.set_level(logging.WARNING, logger="spillover.server.service")
    plain.publish(GROUP, resources("runtime"))
    for _ in range(23):
        await without_layer(plain, "sotw")
    assert await gauge(plain) == 23
    assert len(warnings(caplog)) == 20


@pytest.mark.parametrize("mode", ["sotw", "delta"])
async def test_the_gauge_counts_streams_lacking_it_now(mode: str, plain: SecureServer) -> None:
    # Not an Envoy's order (its layers are fixed at start), but the gauge says what holds now.
    plain.publish(GROUP, resources("runtime"))
    client = await without_layer(plain, mode)
    assert await gauge(plain) == 1
    subscribe(client, RUNTIME, [SPLIT_RUNTIME_LAYER])
    assert (await client.recv()).type_url == RUNTIME
    assert await gauge(plain) == 0
    assert await flagged(plain) == [False]


@pytest.mark.parametrize("mode", ["sotw", "delta"])
async def test_never_in_the_default_mode(mode: str, plain: SecureServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="spillover.server.service")
    plain.publish(GROUP, resources("route"))
    await without_layer(plain, mode)
    assert await gauge(plain) == 0
    assert await flagged(plain) == [False]
    assert warnings(caplog) == []


@pytest.mark.parametrize("mode", ["sotw", "delta"])
async def test_a_stream_connected_before_the_group_has_a_snapshot(
    mode: str, plain: SecureServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="spillover.server.service")
    client = plain.client(mode=mode)
    subscribe(client, CLUSTER, [], first=True)
    await async_wait_until(lambda: len(plain.xds.proxies.streams()) == 1, message="stream admitted")
    assert await gauge(plain) == 0  # nothing to tell yet: the group's mode is not known
    plain.publish(GROUP, resources("runtime"))
    assert (await client.recv()).type_url == CLUSTER
    assert await gauge(plain) == 1
    assert len(warnings(caplog)) == 1


async def test_a_per_type_stream_is_not_judged(plain: SecureServer, caplog: pytest.LogCaptureFixture) -> None:
    # A CDS-only stream (the Envoy's other types, the layer among them, would come over other streams).
    caplog.set_level(logging.WARNING, logger="spillover.server.service")
    plain.publish(GROUP, resources("runtime"))
    client = AdsClient(plain.address, "sotw", "/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters")
    plain.clients.append(client)
    client.send(node=node("per-type", GROUP), type_url=CLUSTER)
    assert (await client.recv()).type_url == CLUSTER
    assert await gauge(plain) == 0
    assert warnings(caplog) == []


@pytest.mark.parametrize("mode", ["sotw", "delta"])
async def test_exact_across_xds_workers(mode: str) -> None:
    server = await SecureServer(None, options=XdsOptions(), workers=2).start()
    try:
        server.publish(GROUP, resources("runtime"))
        # Enough streams that both workers serve some (the kernel spreads the connections).
        for _ in range(3):
            await with_layer(server, mode)
        for _ in range(4):
            await without_layer(server, mode)
        assert await gauge(server) == 4
        assert await flagged(server) == [False] * 3 + [True] * 4
        assert {stream.describe().get("worker") for stream in server.xds.proxies.streams()} <= {0, 1}
    finally:
        await server.close()
