"""The peer benchmark's own logic: go-control-plane fed the fixtures' bytes, the comparison's arithmetic."""

from __future__ import annotations

import queue
import struct
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.service.discovery.v3 import discovery_pb2

from benchmarks import fixtures, peer, push, scale
from spillover.server.resources import CLUSTER, ENDPOINT


def _run(server: str, protocol: str, streams: int, **figures: float) -> dict[str, Any]:
    return {"server": server, "protocol": protocol, "streams": streams, "idle_cpu_per_s": 0.0,
            "connect_s": 1.0, "reconnects_total": 1, **figures}


def test_summary_gives_medians_minimums_and_ratios_to_go_control_plane() -> None:
    runs = []
    for p99, cpu in ((0.30, 0.10), (0.10, 0.30), (0.20, 0.20)):
        runs.append(_run(peer.GO_CONTROL_PLANE, "delta", 100, p50_s=0.1, p99_s=p99, cpu_per_push_s=cpu,
                         rss_per_stream_bytes=1000.0))
    for p99 in (0.05, 0.15):
        runs.append(_run(peer.SPILLOVER, "delta", 100, p50_s=0.05, p99_s=p99, cpu_per_push_s=0.1,
                         rss_per_stream_bytes=500.0))
    runs.append(_run(peer.FLOOR, "delta", 100, p50_s=0.02, p99_s=0.04, cpu_per_push_s=0.05,
                     rss_per_stream_bytes=250.0))
    runs.append({"server": peer.FLOOR, "protocol": "delta", "streams": 100, "error": "died"})

    [row] = peer.summarize(runs)

    go = row["servers"][peer.GO_CONTROL_PLANE]
    assert (go["p99_s_median"], go["p99_s_min"], go["repetitions"], go["reconnects"]) == (0.2, 0.1, 3, 3)
    ratios = row["ratios"]
    assert ratios["spillover/go-control-plane"]["p99_s"] == pytest.approx(0.5)
    assert ratios["spillover/go-control-plane"]["cpu_per_push_s"] == pytest.approx(0.5)
    assert ratios["floor/go-control-plane"]["rss_per_stream_bytes"] == pytest.approx(0.25)
    assert ratios["spillover/floor"]["p50_s"] == pytest.approx(2.5)
    assert row["servers"][peer.FLOOR]["repetitions"] == 1  # the failed run counts for nothing


def test_repetitions_alternate_the_order_of_the_servers() -> None:
    assert peer.order_of(0) == (peer.GO_CONTROL_PLANE, peer.SPILLOVER, peer.FLOOR)
    assert peer.order_of(1) == (peer.FLOOR, peer.SPILLOVER, peer.GO_CONTROL_PLANE)
    assert peer.order_of(2) == peer.order_of(0)


def test_projection_multiplies_per_stream_costs_out_and_divides_by_cores() -> None:
    measured = {"streams": 10_000, "cpu_per_push_s": 2.0, "idle_cpu_per_s": 0.1,
                "rss_empty_bytes": 50 * 2**20, "rss_per_stream_bytes": 40 * 1024}
    projected = scale.project(measured, 25_000, 16)
    assert projected["push_cpu_s"] == pytest.approx(5.0)
    assert projected["push_wall_s"] == pytest.approx(5.0 / 16)
    assert projected["pushes_per_s"] == pytest.approx(16 / 5.0)
    assert projected["idle_cores"] == pytest.approx(0.25)
    assert projected["rss_bytes"] == 50 * 2**20 + 25_000 * 40 * 1024


def test_resources_file_frames_the_fixtures_and_every_push(tmp_path: Path) -> None:
    path = tmp_path / "resources.bin"
    peer.write_resources(str(path), n_clusters=3, changes=4)
    data = path.read_bytes()
    parts = []
    while data:
        (size,) = struct.unpack(">I", data[:4])
        parts.append(discovery_pb2.DiscoveryResponse.FromString(data[4 : 4 + size]))
        data = data[4 + size :]
    clusters, assignments, pushes = parts
    assert [a.type_url for a in clusters.resources] == [f"type.googleapis.com/{c.DESCRIPTOR.full_name}"
                                                       for c in [fixtures.cluster(0)] * 3]
    assert assignments.resources[2].value == fixtures.load_assignment(2).SerializeToString()
    # push i changes cluster i % n, as push.py's servers do
    assert pushes.resources[3].value == fixtures.load_assignment(0, generation=4).SerializeToString()


@pytest.fixture(scope="module")
def peer_binary() -> str:
    return peer.build_peer()  # go-control-plane from the module proxy into .cache/peer (cached after once)


def test_go_control_plane_peer_serves_the_snapshot_and_changes_one_assignment(
    peer_binary: str, tmp_path: Path
) -> None:
    n = 3
    server = peer.GoServer(peer_binary, n, 2, str(tmp_path / "peer.log"), str(tmp_path))
    port, version0, rss = server.start()
    try:
        assert (version0, rss > 0) == ("e0", True)
        outbox: queue.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = queue.Queue()
        node = base_pb2.Node(id="test-envoy", cluster=push.GROUP)
        outbox.put(discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=CLUSTER))
        outbox.put(discovery_pb2.DeltaDiscoveryRequest(
            type_url=ENDPOINT, resource_names_subscribe=[fixtures.cluster_name(i) for i in range(n)]))

        def requests() -> Any:
            while (request := outbox.get(timeout=30)) is not None:
                yield request

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = channel.stream_stream(
                push.DELTA_METHOD,
                request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
            )(requests(), timeout=30)
            got: dict[str, discovery_pb2.DeltaDiscoveryResponse] = {}
            responses = iter(stream)
            while len(got) < 2:
                response = next(responses)
                got[response.type_url] = response
                outbox.put(discovery_pb2.DeltaDiscoveryRequest(type_url=response.type_url,
                                                               response_nonce=response.nonce))
            assert sorted(r.name for r in got[CLUSTER].resources) == [fixtures.cluster_name(i) for i in range(n)]
            assert got[ENDPOINT].system_version_info == "e0"

            cpu_before, _ = server.stats()
            assert server.change(1) == "e2"  # push 1 changes cluster 1 only
            response = next(responses)
            assert (response.type_url, response.system_version_info) == (ENDPOINT, "e2")
            [changed] = response.resources
            cla = endpoint_pb2.ClusterLoadAssignment.FromString(changed.resource.value)
            assert cla == fixtures.load_assignment(1, generation=2)
            cpu_after, status = server.stats()
            assert cpu_after >= cpu_before > 0 and status["VmHWM"] >= status["VmRSS"] > 0
            outbox.put(None)
            stream.cancel()
    finally:
        server.stop()
    assert server.process is not None and server.process.returncode is not None


def test_report_lists_each_server_and_the_ratios_in_a_fixed_order() -> None:
    from benchmarks import peer_report

    runs = [
        _run(name, "sotw", 100, p50_s=0.1, p99_s=0.2, cpu_per_push_s=cpu, rss_per_stream_bytes=1024.0)
        | {"reconnects_total": 0}
        for name, cpu in ((peer.FLOOR, 0.05), (peer.SPILLOVER, 0.1), (peer.GO_CONTROL_PLANE, 0.2))
    ]
    results = {
        "command": "python -m benchmarks --only peer",
        "machine": {"date": "today", "git": "abc", "summary": "2 cores", "kernel": "6", "usable_cores": 2},
        "peer": {"sizes": [{"streams": 100, "procs": 2, "changes": 1, "repetitions": 1}], "clusters": 100,
                 "warmup": 1, "peer": "go-control-plane", "settle_s": 0.3, "elapsed_s": 1.0,
                 "protocols": ["sotw", "delta"], "runs": runs, "summary": peer.summarize(runs)},
    }
    text = peer_report.peer_markdown(results)
    ratio_rows = [line for line in text.splitlines() if line.startswith("| 100 |") and "/" in line]
    # Only these three servers ran (not the gc-tuned one, nor those on a given event loop or with other
    # gRPC options): the ratio rows of the others are left out, these keep their order.
    ran = {peer.FLOOR, peer.SPILLOVER, peer.GO_CONTROL_PLANE}
    assert [row.split(" | ")[1] for row in ratio_rows] == [
        label for label in peer_report.RATIOS if set(label.split("/")) <= ran
    ]
    assert len(ratio_rows) == 3
    assert "| 100 | spillover/go-control-plane | 1.00\u00d7 | 1.00\u00d7 | 0.50\u00d7 | 1.00\u00d7 |" in ratio_rows
    assert "## Delta" not in text  # no Delta runs, no Delta section
