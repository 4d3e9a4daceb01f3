"""The xDS server on each event loop it can run on (spillover/server/event_loop.py).

grpc.aio brings its own loop integration (a thread polls gRPC core's completion queue and wakes the loop
through a socket it reads): streams, pushes, a client's cancellation and the server's shutdown must work
the same on uvloop as on asyncio's own loop. Each loop runs in a thread of its own, as `spillover serve`
and an xDS worker run theirs, with a real server and real gRPC clients on it.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
import pytest
import uvloop
from envoy.config.cluster.v3 import cluster_pb2

from benchmarks import peer
from spillover.server import event_loop as event_loops
from spillover.server.cache import Snapshot, SnapshotCache
from spillover.server.resources import CLUSTER
from spillover.server.service import XdsServer
from spillover.server.workers import WorkerPool
from tests.harness.ads import AdsClient, node
from tests.harness.envoyconfig import eds_cluster, endpoints
from tests.harness.polling import async_wait_until

GROUP = "gateway"
STREAMS = 6


def snapshot(names: list[str]) -> Snapshot:
    return Snapshot.from_messages([eds_cluster(n) for n in names] + [endpoints(n, [("127.0.0.1", 8000)]) for n in names])


def names_of(response: Any) -> list[str]:
    """The clusters of a response: Delta's resources carry their names, SotW's are packed Clusters."""
    if hasattr(response, "system_version_info"):
        return sorted(r.name for r in response.resources)
    out = []
    for packed in response.resources:
        cluster = cluster_pb2.Cluster()
        packed.Unpack(cluster)
        out.append(cluster.name)
    return sorted(out)


def run_in_thread(kind: str, coroutine: Any, timeout: float = 60.0) -> Any:
    """event_loops.run(coroutine, kind) in a thread of its own; its result or its exception here."""
    outcome: dict[str, Any] = {}

    def main() -> None:
        try:
            outcome["result"] = event_loops.run(coroutine, kind)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=main, name=f"loop-{kind}", daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the {kind} loop did not finish within {timeout}s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


async def serve_push_cancel_stop(mode: str) -> dict[str, Any]:
    seen: dict[str, Any] = {"loop": type(asyncio.get_running_loop())}
    names = [f"model-{i}" for i in range(5)]
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, snapshot(names))
    server = XdsServer(cache)
    port = await server.start("127.0.0.1:0")
    clients = [AdsClient(f"127.0.0.1:{port}", mode) for _ in range(STREAMS)]
    try:
        for i, client in enumerate(clients):
            client.send(node=node(f"envoy-{i}", GROUP), type_url=CLUSTER)
            first = await client.recv()
            assert names_of(first) == names
            client.ack(first)
        await async_wait_until(lambda: len(server.proxies.streams()) == STREAMS, message="every stream registered")

        # A push reaches every stream.
        cache.set_snapshot(GROUP, snapshot([*names, "model-new"]))
        pushed = []
        for client in clients:
            response = await client.recv()
            pushed.append(names_of(response))
            client.ack(response)
        seen["pushed"] = pushed

        # Clients that let go: the server forgets their streams (gRPC cancels the handlers' tasks).
        for client in clients[:2]:
            await client.close()
        await async_wait_until(lambda: len(server.proxies.streams()) == STREAMS - 2, message="cancelled streams forgotten")
        seen["after_cancel"] = len(server.proxies.streams())

        # The streams still open when the server stops end with a status, and stop() returns.
        async with asyncio.timeout(10):
            await server.stop(0.5)
        seen["ended"] = [await client.ended(timeout=10) for client in clients[2:]]
        seen["after_stop"] = len(server.proxies.streams())
    finally:
        for client in clients:
            await client.close()
        await server.stop(0)
    return seen


@pytest.mark.parametrize("mode", ["delta", "sotw"])
@pytest.mark.parametrize("kind", event_loops.KINDS)
def test_the_server_streams_pushes_forgets_cancelled_streams_and_stops_on_each_loop(kind: str, mode: str) -> None:
    seen = run_in_thread(kind, serve_push_cancel_stop(mode))

    assert seen["loop"] is (uvloop.Loop if kind == event_loops.UVLOOP else asyncio.SelectorEventLoop)
    if mode == "delta":
        assert seen["pushed"] == [["model-new"]] * STREAMS  # Delta: only the new cluster
    else:
        assert seen["pushed"] == [sorted([*(f"model-{i}" for i in range(5)), "model-new"])] * STREAMS
    assert seen["after_cancel"] == STREAMS - 2
    assert seen["ended"] == [grpc.StatusCode.UNAVAILABLE] * (STREAMS - 2)
    assert seen["after_stop"] == 0


def test_an_unknown_loop_is_refused_by_name() -> None:
    async def never() -> None:
        raise AssertionError("not run")

    with pytest.raises(ValueError, match=r"event loop 'trio': must be one of uvloop, asyncio"):
        event_loops.run(never(), "trio")


def test_a_server_name_says_its_kind_its_loop_and_its_grpc_options() -> None:
    assert [peer.kind_of(n) for n in ("spillover uvloop", "floor asyncio", "floor no-bdp", peer.SPILLOVER)] == [
        "xds", "floor", "floor", "xds",
    ]
    assert peer.loop_of("floor uvloop") == event_loops.UVLOOP
    assert peer.loop_of(peer.SPILLOVER) == peer.loop_of("spillover no-bdp") == event_loops.DEFAULT
    assert peer.grpc_options_of("spillover no-bdp") == (("grpc.http2.bdp_probe", 0),)
    assert peer.grpc_options_of("floor bdp") == (("grpc.http2.bdp_probe", 1),)
    assert peer.grpc_options_of("spillover uvloop") == ()
    # Every server the benchmark can run is one of these names, and every ratio compares two of them.
    assert all(a in peer.ALL_SERVERS and b in peer.ALL_SERVERS for a, b in peer.RATIO_PAIRS)


def loads_uvloop(pid: int) -> bool:
    """Whether the process has uvloop's extension mapped (it is imported only to run a uvloop loop)."""
    with open(f"/proc/{pid}/maps") as f:
        return "/uvloop/" in f.read()


@pytest.mark.parametrize("kind", event_loops.KINDS)
async def test_xds_worker_processes_run_the_loop_they_are_given_and_serve(kind: str) -> None:
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot(GROUP, snapshot(["model-a"]))
    pool = WorkerPool(cache, 2, event_loop=kind)
    await pool.start("127.0.0.1:0")
    clients: list[AdsClient] = []
    try:
        pids = pool.worker_pids()
        assert len(pids) == 2
        assert [loads_uvloop(pid) for pid in pids] == [kind == event_loops.UVLOOP] * 2
        for i in range(4):  # connections of their own: the kernel spreads them over the workers
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{pool.port}", options=[("grpc.use_local_subchannel_pool", 1)])
            client = AdsClient(f"127.0.0.1:{pool.port}", "delta", channel=channel)
            clients.append(client)
            client.send(node=node(f"envoy-{i}", GROUP), type_url=CLUSTER)
            assert names_of(await client.recv(timeout=10)) == ["model-a"]
    finally:
        for client in clients:
            await client.close()
            await client.channel.close()
        await pool.stop(0)


def test_a_worker_pool_refuses_an_unknown_loop_before_any_worker_starts() -> None:
    with pytest.raises(ValueError, match=r"event loop 'trio'"):
        WorkerPool(SnapshotCache(debounce=0), 2, event_loop="trio")
