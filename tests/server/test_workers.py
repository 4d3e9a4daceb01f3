"""The xDS server across worker processes (spillover.server.workers): real worker processes on one port,
real gRPC streams on connections of their own (the kernel spreads them over the workers), the main
process's views read through the real admin endpoint."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from prometheus_client.parser import text_string_to_metric_families

from spillover.controller.admin import AdminServer
from spillover.server.admission import AdmissionPolicy
from spillover.server.cache import Snapshot, SnapshotCache
from spillover.server.resources import CLUSTER
from spillover.server.service import XdsOptions
from spillover.server.workers import WorkerPool
from spillover.server.workers.views import RemoteStream
from tests.harness.ads import AdsClient, node
from tests.harness.polling import async_wait_until
from tests.harness.secure_xds import GATEWAY_ID, RULES, Certificates, SecureServer, edge_resources, policy
from tests.harness.secure_xds import node as edge_node

GROUP = "gateway"


def clusters(*names: str) -> Snapshot:
    return Snapshot.from_messages([cluster_pb2.Cluster(name=name) for name in names])


class Fleet:
    """Streams on connections of their own (gRPC would otherwise share one connection, one worker)."""

    def __init__(self, address: str, credentials: Any = None) -> None:
        self.address = address
        self.credentials = credentials
        self.clients: list[tuple[AdsClient, grpc.aio.Channel]] = []

    def open(self, mode: str = "sotw") -> AdsClient:
        options = [("grpc.use_local_subchannel_pool", 1)]
        if self.credentials is not None:
            channel = grpc.aio.secure_channel(
                self.address, self.credentials, options=[*options, ("grpc.ssl_target_name_override", "localhost")]
            )
        else:
            channel = grpc.aio.insecure_channel(self.address, options=options)
        client = AdsClient(self.address, mode, channel=channel)
        self.clients.append((client, channel))
        return client

    async def close(self) -> None:
        for client, channel in self.clients:
            await client.close()
            await channel.close()
        self.clients.clear()


@pytest.fixture
async def pool() -> AsyncIterator[WorkerPool]:
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, clusters("a"))
    server = WorkerPool(cache, 2)
    await server.start("127.0.0.1:0")
    yield server
    await server.stop(0)


@pytest.fixture
async def fleet(pool: WorkerPool) -> AsyncIterator[Fleet]:
    streams = Fleet(f"127.0.0.1:{pool.port}")
    yield streams
    await streams.close()


def workers_of(pool: WorkerPool) -> dict[str, int]:
    """Node id -> the index of the worker serving its stream, from the main process's registry."""
    return {s.node_id: s.worker for s in pool.proxies.streams() if isinstance(s, RemoteStream)}


async def connect(fleet: Fleet, node_id: str, group: str = GROUP) -> tuple[AdsClient, Any]:
    client = fleet.open()
    client.send(node=node(node_id, group), type_url=CLUSTER)
    response = await client.recv(timeout=15)
    client.ack(response)
    return client, response


async def spread(pool: WorkerPool, fleet: Fleet, at_least: int = 2, most: int = 40) -> dict[str, AdsClient]:
    """Streams of GROUP until both workers serve some (at least `at_least` streams)."""
    clients: dict[str, AdsClient] = {}
    for i in range(most):
        node_id = f"envoy-{i}"
        clients[node_id], _ = await connect(fleet, node_id)
        if len(clients) >= at_least and set(workers_of(pool).values()) == {0, 1}:
            return clients
    raise AssertionError(f"{most} connections all landed on one worker: {workers_of(pool)}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_one_group_on_both_workers_gets_one_version_sequence_and_counts_every_replica(
    pool: WorkerPool, fleet: Fleet
) -> None:
    clients = await spread(pool, fleet, at_least=4)
    assert pool.proxies.replicas(GROUP) == len(clients)

    for names in (("a", "b"), ("a", "b", "c")):
        snapshot = clusters(*names)
        pool.cache.set_snapshot(GROUP, snapshot)
        got = {}
        for node_id, client in clients.items():
            response = await client.recv(timeout=15)
            got[node_id] = (response.version_info, sorted(r.value for r in response.resources))
            client.ack(response)
        expected = snapshot.version(CLUSTER)
        assert {version for version, _ in got.values()} == {expected}, got
        assert all(len(resources) == len(names) for _, resources in got.values())


async def admin_for(pool: WorkerPool) -> tuple[AdminServer, str]:
    admin = AdminServer(pool, [pool.metrics_registry], ready=lambda: True)
    port = await admin.start("127.0.0.1", 0)
    return admin, f"http://127.0.0.1:{port}"


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def test_a_nack_on_a_worker_shows_in_the_main_process_views_and_metrics(pool: WorkerPool, fleet: Fleet) -> None:
    clients = await spread(pool, fleet)
    workers = workers_of(pool)
    nacking = next(n for n, w in workers.items() if w == 1)
    other = next(n for n, w in workers.items() if w == 0)
    admin, url = await admin_for(pool)
    try:
        # Every stream's first ACK counted before the push: one still unread when the push goes out answers
        # an old nonce, and is rightly counted as stale instead.
        async with aiohttp.ClientSession() as session:

            async def first_acks() -> float | None:
                async with session.get(url + "/metrics") as answer:
                    acks = sample(await answer.text(), "spillover_xds_acks_total", type="CDS")
                return acks if acks == len(clients) else None

            await async_wait_until(first_acks, timeout=20, message="every stream's first ACK in /metrics")
        pool.cache.set_snapshot(GROUP, clusters("a", "broken"))
        for node_id, client in clients.items():
            response = await client.recv(timeout=15)
            if node_id == nacking:
                client.nack(response, "cluster broken: no endpoints", last_good_version=response.version_info)
            else:
                client.ack(response)
        async with aiohttp.ClientSession() as session:

            async def nacked_view() -> dict[str, Any] | None:
                async with session.get(url + "/debug/proxies") as answer:
                    proxies = (await answer.json())["proxies"]
                mine = [p for p in proxies if p["node_id"] == nacking]
                return mine[0] if mine and mine[0]["status"] == "NACKED" else None

            proxy = await async_wait_until(nacked_view, timeout=20, message="the NACK in /debug/proxies")
            assert proxy["worker"] == 1
            (cds,) = proxy["types"].values()
            assert cds["nack_error"] == "cluster broken: no endpoints"
            assert cds["current_version"] == pool.cache.get(GROUP).version(CLUSTER)  # type: ignore[union-attr]

            seen: list[str] = []

            async def metrics_with_every_ack() -> str | None:
                # The other streams' ACKs may still be on their way through their worker.
                async with session.get(url + "/metrics") as answer:
                    seen[:] = [await answer.text()]
                acks = sample(seen[0], "spillover_xds_acks_total", type="CDS")
                return seen[0] if acks is not None and acks >= 2 * len(clients) - 1 else None

            try:
                text = await async_wait_until(metrics_with_every_ack, timeout=20, message="every ACK in /metrics")
            except AssertionError as failure:  # what the main process last said, to tell a lost ACK from a late one
                raise AssertionError(f"{failure}\n{seen[0] if seen else ''}") from None
            assert sample(text, "spillover_xds_nacks_total", type="CDS") == 1
            assert sample(text, "spillover_xds_stale_nonce_total", type="CDS") == 0
            assert sample(text, "spillover_xds_proxy_sync", group=GROUP, type="CDS", status="NACKED") == 1
            assert sample(text, "spillover_xds_connected_proxies", group=GROUP, mode="sotw") == len(clients)
            # Every stream's first request and ACKs, counted by the worker that got it, summed here.
            acks = sample(text, "spillover_xds_acks_total", type="CDS")
            assert acks == 2 * len(clients) - 1, text

            async with session.get(url + "/debug/config", params={"node": other}) as answer:
                config = await answer.json()
            assert [r["name"] for r in config["resources"]["CDS"]] == ["a", "broken"]
    finally:
        await admin.stop()


async def test_streams_per_identity_are_bounded_across_workers() -> None:
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, clusters("a"))
    pool = WorkerPool(cache, 2, options=XdsOptions(admission=AdmissionPolicy.admit_all(max_streams_per_identity=3)))
    await pool.start("127.0.0.1:0")
    fleet = Fleet(f"127.0.0.1:{pool.port}")
    try:
        admitted: list[int] = []
        refused: list[tuple[int, grpc.StatusCode, str | None]] = []
        # 8 connections: the kernel puts some on each worker (all on one: 1 in 128).
        for i in range(8):
            client = fleet.open()
            client.send(node=node(f"envoy-{i}", GROUP), type_url=CLUSTER)
            try:
                await client.recv(timeout=15)
                admitted.append(i)
            except grpc.aio.AioRpcError as error:
                refused.append((i, error.code(), error.details()))
        assert len(admitted) == 3, (admitted, refused)
        assert [code for _, code, _ in refused] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 5, "; ".join(map(str, refused))
        await pool.refresh_views()
        assert pool.metrics_registry.get_sample_value(
            "spillover_xds_refused_streams_total", {"reason": "too_many_streams"}
        ) == 5
        # A stream that ends gives its place back, whichever worker served it.
        first, channel = fleet.clients[admitted[0]]
        await first.close()
        await channel.close()
        await async_wait_until(lambda: pool.proxies.replicas(GROUP) == 2, timeout=20, message="the closed stream leaving the registry")
        again = fleet.open()
        again.send(node=node("envoy-again", GROUP), type_url=CLUSTER)
        assert (await again.recv(timeout=15)).version_info == cache.get(GROUP).version(CLUSTER)  # type: ignore[union-attr]
    finally:
        await fleet.close()
        await pool.stop(0)


async def test_node_groups_are_bounded_across_workers() -> None:
    cache = SnapshotCache(debounce=0)
    pool = WorkerPool(cache, 2, options=XdsOptions(max_groups=2))

    def first_snapshot(group: str) -> None:  # what the control plane does for a group's first stream
        if cache.get(group) is None:
            cache.set_snapshot(group, clusters(group))

    pool.proxies.on_change.append(first_snapshot)
    await pool.start("127.0.0.1:0")
    fleet = Fleet(f"127.0.0.1:{pool.port}")
    try:
        for group in ("one", "two"):
            _, response = await connect(fleet, f"envoy-{group}", group)
            assert response.version_info == clusters(group).version(CLUSTER)
        codes = []
        for i in range(6):  # a third group, on either worker, is one too many
            client = fleet.open()
            client.send(node=node(f"extra-{i}", f"third-{i}"), type_url=CLUSTER)
            codes.append(await client.ended(timeout=15))
        assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 6
        assert len(pool.groups) == 2
    finally:
        await fleet.close()
        await pool.stop(0)


async def test_a_worker_that_dies_is_restarted_and_its_streams_leave_the_registry(
    pool: WorkerPool, fleet: Fleet
) -> None:
    clients = await spread(pool, fleet, at_least=4)
    workers = workers_of(pool)
    doomed = [n for n, w in workers.items() if w == 0]
    survivors = [n for n, w in workers.items() if w == 1]
    pids = pool.worker_pids()
    assert len(pids) == 2
    dead_pid = pids[0]
    os.kill(dead_pid, signal.SIGKILL)

    await async_wait_until(lambda: set(workers_of(pool)) == set(survivors), timeout=20, message="the dead worker's streams dropped")
    assert pool.proxies.replicas(GROUP) == len(survivors)
    for node_id in doomed:
        assert await clients[node_id].ended(timeout=15) == grpc.StatusCode.UNAVAILABLE
    # A restart is counted once the new worker said it serves, a moment after its process exists.
    restarted = await async_wait_until(
        lambda: len(pool.worker_pids()) == 2 and dead_pid not in pool.worker_pids()
        and pool.metrics_registry.get_sample_value("spillover_xds_worker_restarts_total") == 1
        and pool.worker_pids(),
        timeout=20, message="the worker restarted",
    )
    assert not pid_alive(dead_pid)
    await pool.refresh_views()
    assert pool.metrics_registry.get_sample_value("spillover_xds_worker_restarts_total") == 1

    # The restarted worker serves the current snapshot, pushes included.
    for i in range(40):
        await connect(fleet, f"late-{i}")
        if 0 in {w for n, w in workers_of(pool).items() if n.startswith("late-")}:
            break
    else:
        raise AssertionError(f"no new connection reached the restarted worker {restarted}")
    snapshot = clusters("a", "z")
    pool.cache.set_snapshot(GROUP, snapshot)
    late = [c for (c, _) in fleet.clients[len(clients):]]
    for client in late:
        assert (await client.recv(timeout=15)).version_info == snapshot.version(CLUSTER)


async def test_stop_stops_every_worker(pool: WorkerPool, fleet: Fleet) -> None:
    await spread(pool, fleet)
    pids = pool.worker_pids()
    assert len(pids) == 2 and all(pid_alive(pid) for pid in pids)
    await pool.stop(0)
    await async_wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=10, message=f"workers {pids} gone")
    assert pool.worker_pids() == []
    assert pool.proxies.streams() == []


async def test_mtls_and_admission_hold_in_every_worker(tmp_path: Path) -> None:
    certificates = Certificates(tmp_path)
    server = await SecureServer(certificates, admission=policy(RULES), workers=2).start()
    assert isinstance(server.xds, WorkerPool)
    pool = server.xds
    server.publish("edge", edge_resources())
    fleet = Fleet(server.address, certificates.client(GATEWAY_ID))
    strangers = Fleet(server.address, certificates.anonymous())
    try:
        for i in range(4):  # the rule's maxStreams
            client = fleet.open()
            client.send(node=edge_node(f"edge-{i}"), type_url=CLUSTER)
            response = await client.recv(timeout=15)
            assert response.resources
        identities = {s.identity for s in pool.proxies.streams()}
        assert identities == {GATEWAY_ID}
        assert {s.admitted_by for s in pool.proxies.streams()} == {"gateways"}
        # A fifth stream of the same identity, on any worker, is over the rule's bound.
        client = fleet.open()
        client.send(node=edge_node("edge-9"), type_url=CLUSTER)
        assert await client.ended(timeout=15) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Without a client certificate no worker completes the handshake.
        for _ in range(4):
            stranger = strangers.open()
            stranger.send(node=edge_node("edge-x"), type_url=CLUSTER)
            assert await stranger.ended(timeout=15) == grpc.StatusCode.UNAVAILABLE
    finally:
        await strangers.close()
        await fleet.close()
        await server.close()


_ORPHAN_SCRIPT = """
import asyncio, sys
from spillover.server.cache import SnapshotCache
from spillover.server.workers import WorkerPool

async def main():
    pool = WorkerPool(SnapshotCache(debounce=0), 2)
    await pool.start("127.0.0.1:0")
    print(" ".join(str(pid) for pid in pool.worker_pids()), flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_workers_end_when_the_main_process_is_killed() -> None:
    main = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _ORPHAN_SCRIPT, stdout=asyncio.subprocess.PIPE, cwd=str(Path(__file__).parents[2])
    )
    try:
        assert main.stdout is not None
        line = await asyncio.wait_for(main.stdout.readline(), 30)
        pids = [int(pid) for pid in line.split()]
        assert len(pids) == 2 and all(pid_alive(pid) for pid in pids)
        main.kill()  # SIGKILL: no chance to stop them
        await main.wait()
        # Their channel to the main process ends: each worker stops serving and exits on its own.
        await async_wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=15, message=f"workers {pids} gone")
    finally:
        if main.returncode is None:
            main.kill()
            await main.wait()


async def test_a_group_is_forgotten_only_when_no_worker_serves_it() -> None:
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, clusters("a"))
    pool = WorkerPool(cache, 2, options=XdsOptions(group_grace=0.3))
    expired: list[str] = []
    pool.on_group_expired.append(expired.append)
    await pool.start("127.0.0.1:0")
    fleet = Fleet(f"127.0.0.1:{pool.port}")
    try:
        clients = await spread(pool, fleet)
        workers = workers_of(pool)
        channels = dict(fleet.clients)
        for node_id, client in clients.items():
            if workers[node_id] == 0:
                await client.close()
                await channels[client].close()
        await async_wait_until(lambda: set(workers_of(pool).values()) == {1}, timeout=20, message="worker 0's streams gone")
        await asyncio.sleep(0.6)  # twice the grace: the streams left on worker 1 keep the group
        assert expired == [] and cache.get(GROUP) is not None
        await fleet.close()
        await async_wait_until(lambda: expired == [GROUP], timeout=20, message="the group forgotten once its last stream left")
        assert cache.get(GROUP) is None and len(pool.groups) == 0
    finally:
        await fleet.close()
        await pool.stop(0)


async def test_a_certificate_rotation_is_counted_once_whatever_the_number_of_workers(tmp_path: Path) -> None:
    certificates = Certificates(tmp_path)
    server = await SecureServer(certificates, workers=2).start()
    assert isinstance(server.xds, WorkerPool)
    pool = server.xds
    server.publish(GROUP, [cluster_pb2.Cluster(name="a")])
    fleet = Fleet(server.address, certificates.client("spiffe://test/envoy"))

    async def reloads(result: str) -> float:
        await pool.refresh_views()
        return server.counter("spillover_xds_tls_reloads_total", result=result)

    try:
        for rotation in (1, 2):
            certificates.rotate_server()
            # Every worker takes the new files at its next handshake: a stream on each, opened after the
            # rotation, spaced beyond the check interval (0.05 s) so that no handshake skips the look.
            reached: set[int] = set()
            for i in range(40):
                await asyncio.sleep(0.06)
                node_id = f"envoy-{rotation}-{i}"
                await connect(fleet, node_id)
                reached.add(workers_of(pool)[node_id])
                if reached == {0, 1}:
                    break
            else:
                raise AssertionError(f"40 connections all landed on worker {reached}")
            # Both workers loaded the files; the change is one.
            async def counted(rotation: int = rotation) -> bool:
                return await reloads("ok") >= rotation

            await async_wait_until(counted, timeout=10, message=f"rotation {rotation} counted")
            assert await reloads("ok") == rotation
            assert await reloads("error") == 0
    finally:
        await fleet.close()
        await server.close()


async def test_the_restart_delay_grows_while_a_worker_keeps_dying_and_resets_once_it_served_a_while(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, "spillover.server.workers")
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, clusters("a"))
    healthy_after = 2.0
    pool = WorkerPool(cache, 1, restart_backoff=(0.05, 0.3, 0.6), healthy_after=healthy_after)
    await pool.start("127.0.0.1:0")
    restarts = 0

    def delays() -> list[float]:
        found = (re.search(r"restarting it in ([0-9.]+)s$", r.getMessage()) for r in caplog.records)
        return [float(match[1]) for match in found if match]

    async def kill_and_wait() -> float:
        """Kills the worker, waits for its restart; returns the delay the pool logged."""
        nonlocal restarts
        (pid,) = pool.worker_pids()
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        restarts += 1
        await async_wait_until(
            lambda: pool.metrics_registry.get_sample_value("spillover_xds_worker_restarts_total") == restarts
            and len(pool.worker_pids()) == 1 and pid not in pool.worker_pids(),
            timeout=30, message=f"restart {restarts}",
        )
        delay = delays()[-1]
        assert time.monotonic() - killed_at >= delay  # it did wait (at least) that long
        return delay

    try:
        # Killed as soon as it serves again: each death in a row waits longer, up to the last delay.
        assert [await kill_and_wait() for _ in range(4)] == [0.05, 0.3, 0.6, 0.6]
        # A worker that served the healthy period before dying is restarted quickly again...
        await asyncio.sleep(healthy_after)
        assert await kill_and_wait() == 0.05
        # ...and one that dies at once after that starts growing again.
        assert await kill_and_wait() == 0.3
        # The restarted worker serves.
        client = AdsClient(f"127.0.0.1:{pool.port}", "sotw")
        try:
            client.send(node=node("envoy-after", GROUP), type_url=CLUSTER)
            assert (await client.recv(timeout=15)).version_info == clusters("a").version(CLUSTER)
        finally:
            await client.close()
    finally:
        await pool.stop(0)
