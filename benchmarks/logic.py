"""Transport-free cost of the per-stream xDS protocol logic (spillover.server.streams) for one push.

The same streams the push benchmark runs, without gRPC: N SotW/Delta streams subscribed to wildcard CDS +
named EDS for every cluster, fully ACKed; then ONE ClusterLoadAssignment changes and every stream gets
`on_snapshot()` and then its ACK (parsed from bytes, as the server does) through `on_request()`. It shows
how that cost grows with the number of resources a stream holds, although only one resource changed.
Memory per stream is measured with tracemalloc (Python allocations made by the streams' own state).
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2 as d

from benchmarks import fixtures
from spillover.server.cache import Snapshot, SnapshotCache
from spillover.server.resources import CLUSTER, ENDPOINT, Resource
from spillover.server.streams import DeltaStream, SotwStream


def _streams(protocol: str, n_streams: int, names: list[str], cache: SnapshotCache) -> list[Any]:
    streams: list[Any] = []
    current = _Current(cache)
    for i in range(n_streams):
        node = base_pb2.Node(id=f"bench-{i}", cluster="bench")
        if protocol == "sotw":
            s: Any = SotwStream("bench", lambda n: "bench", cache.get)
            s.on_request(d.DiscoveryRequest(node=node, type_url=CLUSTER))
            s.on_request(d.DiscoveryRequest(type_url=ENDPOINT, resource_names=names))
            for type_url in (CLUSTER, ENDPOINT):
                s.on_request(
                    d.DiscoveryRequest(
                        type_url=type_url,
                        version_info=current[0].version(type_url),
                        response_nonce=s.types[type_url].nonce,
                        resource_names=names if type_url == ENDPOINT else (),
                    )
                )
        else:
            s = DeltaStream("bench", lambda n: "bench", cache.get)
            s.on_request(d.DeltaDiscoveryRequest(node=node, type_url=CLUSTER))
            s.on_request(d.DeltaDiscoveryRequest(type_url=ENDPOINT, resource_names_subscribe=names))
            for type_url in (CLUSTER, ENDPOINT):
                s.on_request(
                    d.DeltaDiscoveryRequest(type_url=type_url, response_nonce=s.types[type_url].nonce)
                )
        streams.append(s)
    return streams


class _Current:
    """`current[0]`: the snapshot the cache publishes for the benchmark group."""

    def __init__(self, cache: SnapshotCache) -> None:
        self.cache = cache

    def __getitem__(self, index: int) -> Snapshot:
        snapshot = self.cache.get("bench")
        assert snapshot is not None
        return snapshot


def measure(protocol: str, n_clusters: int, n_streams: int, pushes: int) -> dict[str, Any]:
    resources = [Resource.from_message(m) for m in fixtures.messages(n_clusters)]
    # Published through a real SnapshotCache, so snapshots carry generations exactly as in the server.
    cache = SnapshotCache(debounce=0)
    cache.set_snapshot("bench", Snapshot.from_resources(resources))
    current = _Current(cache)
    names = [fixtures.cluster_name(i) for i in range(n_clusters)]

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    streams = _streams(protocol, n_streams, names, cache)
    gc.collect()
    per_stream_bytes = (tracemalloc.get_traced_memory()[0] - before) / n_streams
    tracemalloc.stop()

    push_s = ack_s = 0.0
    parse = d.DiscoveryRequest.FromString if protocol == "sotw" else d.DeltaDiscoveryRequest.FromString
    for p in range(pushes):
        target = (7 * p + 3) % n_clusters
        changed = list(resources)
        changed[2 * target + 1] = Resource.from_message(fixtures.load_assignment(target, generation=p + 1))
        cache.set_snapshot("bench", Snapshot.from_resources(changed))
        gc.disable()
        started = time.perf_counter()
        outgoing = [s.on_snapshot() for s in streams]
        push_s += time.perf_counter() - started
        if protocol == "sotw":
            acks = [
                d.DiscoveryRequest(
                    type_url=ENDPOINT,
                    version_info=current[0].version(ENDPOINT),
                    response_nonce=s.types[ENDPOINT].nonce,
                    resource_names=names,
                ).SerializeToString()
                for s in streams
            ]
        else:
            acks = [
                d.DeltaDiscoveryRequest(
                    type_url=ENDPOINT, response_nonce=s.types[ENDPOINT].nonce
                ).SerializeToString()
                for s in streams
            ]
        started = time.perf_counter()
        for s, ack in zip(streams, acks, strict=True):
            s.on_request(parse(ack), ack)  # with its bytes, as the server hands them
        ack_s += time.perf_counter() - started
        gc.enable()
        if not all(len(o) == 1 for o in outgoing):
            raise AssertionError(f"expected exactly one EDS response per stream, got {len(outgoing[0])}")
    return {
        "protocol": protocol,
        "clusters": n_clusters,
        "streams": n_streams,
        "on_snapshot_us": push_s / pushes / n_streams * 1e6,
        "ack_us": ack_s / pushes / n_streams * 1e6,
        "per_push_per_stream_us": (push_s + ack_s) / pushes / n_streams * 1e6,
        "per_push_1000_streams_ms": (push_s + ack_s) / pushes / n_streams * 1000 * 1e3,
        "state_bytes_per_stream": per_stream_bytes,
    }


def run(cluster_counts: list[int], n_streams: int, pushes: int) -> list[dict[str, Any]]:
    return [measure(p, n, n_streams, pushes) for n in cluster_counts for p in ("sotw", "delta")]
