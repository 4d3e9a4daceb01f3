"""Snapshot build time and serialization (upb against betterproto2), each against a same-run baseline."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any

from benchmarks import fixtures
from spillover.server.cache import Snapshot


def _timeit(fn: Callable[[], Any], min_reps: int, budget_s: float) -> list[float]:
    """Run fn at least min_reps times and until budget_s has been spent; GC is off while timing."""
    times: list[float] = []
    spent_start = time.perf_counter()
    gc_was_enabled = gc.isenabled()
    try:
        while len(times) < min_reps or time.perf_counter() - spent_start < budget_s:
            gc.collect()
            gc.disable()
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
            gc.enable()
            if len(times) >= 200:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def snapshot_build(sizes: list[int], quick: bool) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        msgs = fixtures.messages(n)
        reps = 2 if n >= 10_000 else 3
        budget = 0.2 if quick else 1.0

        def ours(msgs: list[Any] = msgs) -> None:
            Snapshot.from_messages(msgs)

        def floor(msgs: list[Any] = msgs) -> None:
            for m in msgs:
                m.SerializeToString()

        # Interleave so that both see the same machine state.
        floor_t = _timeit(floor, reps, budget)
        ours_t = _timeit(ours, reps, budget)
        floor_t += _timeit(floor, reps, budget / 2)
        snap = Snapshot.from_messages(msgs)
        total_bytes = sum(len(r.body) for t in snap.resources.values() for r in t.values())
        ours_s, floor_s = statistics.median(ours_t), statistics.median(floor_t)
        rows.append(
            {
                "clusters": n,
                "resources": len(msgs),
                "bytes": total_bytes,
                "ours_s": ours_s,
                "ours_min_s": min(ours_t),
                "floor_s": floor_s,
                "ratio": ours_s / floor_s,
                "reps": len(ours_t),
            }
        )
    return rows


def serialization(n: int, quick: bool) -> dict[str, Any]:
    """Serialize the same n clusters with xds-protos (upb) and envoy-data-plane (betterproto2)."""
    try:
        from envoy_data_plane.envoy.config.cluster.v3 import Cluster as BpCluster
    except ImportError as error:  # pragma: no cover - the bench extra is missing
        return {
            "error": f"envoy-data-plane not installed ({error}); pip install 'envoy-data-plane>=2.2,<2.3'"
        }
    upb = [fixtures.cluster(i) for i in range(n)]
    bp = [BpCluster.parse(m.SerializeToString()) for m in upb]
    # Same content: betterproto2's bytes parse back to the very same upb message.
    for a, b in zip(upb[:50], bp[:50], strict=True):
        if type(a).FromString(bytes(b)) != a:
            raise AssertionError("betterproto2 and upb clusters differ")

    for m in bp[:20]:  # betterproto2 builds its per-class field caches on first use: keep that out
        bytes(m)

    def run_upb() -> None:
        for m in upb:
            m.SerializeToString()

    def run_bp() -> None:
        for m in bp:
            bytes(m)

    upb_t = _timeit(run_upb, 5, 0.2 if quick else 1.0)
    bp_t = _timeit(run_bp, 1 if quick else 3, 0.0)
    upb_s, bp_s = statistics.median(upb_t), statistics.median(bp_t)
    return {
        "clusters": n,
        "bytes": sum(len(m.SerializeToString()) for m in upb),
        "upb_s": upb_s,
        "betterproto2_s": bp_s,
        "ratio": bp_s / upb_s,
        "upb_reps": len(upb_t),
        "betterproto2_reps": len(bp_t),
    }
