"""The xDS server's gRPC transport settings, shared by the one-process server and the xDS workers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["GRPC_SERVER_OPTIONS", "grpc_server_options"]

# Thousands of long-lived streams: detect dead peers with keepalives, accept Envoy's own keepalive
# pings, never cap stream lifetime, and allow large snapshots. An Envoy holds one ADS stream per
# connection; the per-connection cap only stops one connection from holding a whole identity's share.
GRPC_SERVER_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.max_concurrent_streams", 1024),
    ("grpc.max_send_message_length", 512 * 1024 * 1024),
    ("grpc.so_reuseport", 0),
    # Calls the event loop has not picked up yet: gRPC core's default (1,000 soft, 3,000 hard) cancels the
    # rest while thousands of Envoys reconnect at once (a restart, a rollout); measured at 5,000 streams,
    # 545 were cancelled and retried with back-off, none with these. Still a bound: a few KiB per call.
    ("grpc.server.max_pending_requests", 20_000),
    ("grpc.server.max_pending_requests_hard_limit", 40_000),
    # No bandwidth-delay probes: with them every connection answers a burst of incoming data (each Envoy's
    # ACK of a push) with a PING of its own and reads its answer, and keeps probing while idle. They size
    # only the window of what Envoys send here, and xDS requests are small. At 1,000 Delta streams: 0.76x
    # the floor's CPU per push, 0.91x spillover's (medians of 8 and 12 alternated pairs), idle CPU 1 % -> 0.2 %
    # of a core (benchmarks/results/peer-1000-uvloop-notes.md).
    ("grpc.http2.bdp_probe", 0),
]


def grpc_server_options(overrides: Iterable[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """GRPC_SERVER_OPTIONS with the keys of `overrides` set to their values instead."""
    overrides = list(overrides)
    keys = {key for key, _ in overrides}
    return [(k, v) for k, v in GRPC_SERVER_OPTIONS if k not in keys] + overrides
