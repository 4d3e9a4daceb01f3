"""The xDS layer's own series for dashboards: per-type counters exist from the start, and
spillover_xds_proxy_sync counts the streams of each group SYNCED, STALE or NACKED per type, read when
Prometheus scrapes (driven by a raw gRPC client, tests/harness/ads.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from spillover.server.cache import Snapshot, SnapshotCache
from spillover.server.resources import CLUSTER
from spillover.server.service import XdsServer
from tests.harness.ads import AdsClient, node
from tests.harness.envoyconfig import eds_cluster
from tests.harness.polling import async_wait_until

GROUP = "gateway"


@pytest.fixture
async def xds() -> AsyncIterator[tuple[XdsServer, SnapshotCache, str]]:
    cache = SnapshotCache(debounce=0)
    server = XdsServer(cache)
    port = await server.start("127.0.0.1:0")
    yield server, cache, f"127.0.0.1:{port}"
    await server.stop(0)


def sync(server: XdsServer, status: str) -> float | None:
    return server.metrics_registry.get_sample_value(
        "spillover_xds_proxy_sync", {"group": GROUP, "type": "CDS", "status": status}
    )


async def test_sync_states_are_counted_per_group_and_type(xds: tuple[XdsServer, SnapshotCache, str]) -> None:
    server, cache, address = xds
    for type_name in ("CDS", "EDS", "SDS", "LDS", "RDS"):
        assert server.metrics_registry.get_sample_value("spillover_xds_nacks_total", {"type": type_name}) == 0
    assert sync(server, "SYNCED") is None  # nobody connected: no series at all

    cache.set_snapshot(GROUP, Snapshot.from_messages([eds_cluster("a")]))
    client = AdsClient(address, "sotw", None)
    try:
        client.send(node=node(), type_url=CLUSTER)
        first = await client.recv()
        assert sync(server, "STALE") == 1  # sent, not acknowledged yet
        client.ack(first)
        await async_wait_until(lambda: sync(server, "SYNCED") == 1, message="ACK counted")
        assert (sync(server, "STALE"), sync(server, "NACKED")) == (0, 0)

        good = first.version_info
        cache.set_snapshot(GROUP, Snapshot.from_messages([eds_cluster("bad")]))
        rejected = await client.recv()
        client.nack(rejected, "invalid cluster 'bad'", last_good_version=good)
        await async_wait_until(lambda: sync(server, "NACKED") == 1, message="NACK counted")
        assert sync(server, "SYNCED") == 0
        assert server.metrics_registry.get_sample_value("spillover_xds_nacks_total", {"type": "CDS"}) == 1
    finally:
        await client.close()
    await async_wait_until(lambda: sync(server, "NACKED") is None, message="the gone stream leaves no series")
