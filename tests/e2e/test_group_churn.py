"""2,000 node groups made by clients and dropped: after the grace period spillover is back where it was
(series, push latency to a real Envoy, memory), where it used to keep every group until a restart.

Memory is measured as the process's RSS. The first wave of groups raises CPython's allocator high-water
mark once (pymalloc arenas left partly used; the objects themselves are freed, see
tests/server/test_security.py's tracemalloc check): later waves reuse that memory, so the bound that
matters - RSS does not grow with every wave of groups - is checked from the second wave on, and the
first wave's rise is bounded and reported."""

from __future__ import annotations

import asyncio
import datetime
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2

from spillover.server.resources import CLUSTER
from tests.harness.ads import AdsClient
from tests.harness.envoy import Envoy
from tests.harness.policy_files import model_deployment, write
from tests.harness.polling import wait_until
from tests.harness.serve import Spillover
from tests.harness.upstream import HttpUpstream

pytestmark = pytest.mark.timeout(600)

GROUPS = 2000
GRACE_S = 3.0
TRIALS = 7
# Envoy's admin is polled this often for the new config: the resolution of the latency measured.
RESOLUTION_S = 0.005
BUILDS = "spillover_xds_snapshot_build_seconds_count"
MODELS = ("llama", "qwen", "mistral")


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _route_updates(envoy: Envoy) -> int:
    return sum(v for k, v in envoy.stats().items() if k.startswith("http.") and ".rds." in k and k.endswith(
        ".update_success"))


def _detected_at(server: Spillover, version: int) -> float:
    """When spillover saw policy version `version` (its log line's timestamp, ms resolution)."""
    marker = f"policies v{version}:"
    for line in server.log().splitlines():
        if marker in line:
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    raise AssertionError(f"no '{marker}' in the log")


class Pusher:
    """Changes a model's rate limit and measures how long until the Envoy applied it."""

    def __init__(self, policy_dir: Path, pod: HttpUpstream, server: Spillover, envoy: Envoy) -> None:
        self.policy_dir, self.pod, self.server, self.envoy = policy_dir, pod, server, envoy
        self.version = 1
        self.rps = 100
        self.builds_of_last_push = 0

    def builds(self) -> int:
        """Snapshots spillover built for the last push (one per node group it still keeps)."""
        return self.builds_of_last_push

    def push(self) -> float:
        """Seconds from spillover seeing the change to the Envoy having applied it."""
        built = self.server.metric(BUILDS)
        updates = _route_updates(self.envoy)
        self.rps += 1
        write(self.policy_dir / "llama.yaml", model_deployment("llama", [self.pod.address], rps=self.rps))
        self.version += 1
        deadline = time.monotonic() + 60
        while _route_updates(self.envoy) == updates:
            assert time.monotonic() < deadline, "the change never reached the Envoy"
            time.sleep(RESOLUTION_S)
        seen = time.time()
        wait_until(lambda: _has_line(self.server, self.version), timeout=10, message="detection logged")
        self.builds_of_last_push = round(self.server.metric(BUILDS) - built)
        return seen - _detected_at(self.server, self.version)

    def median(self, trials: int = TRIALS) -> float:
        return statistics.median(self.push() for _ in range(trials))


def _has_line(server: Spillover, version: int) -> bool:
    return f"policies v{version}:" in server.log()


async def _open_groups(
    address: str, count: int, wave: int, batch: int = 100
) -> tuple[list[AdsClient], list[grpc.aio.Channel]]:
    """`count` streams, each in a group of its own, opened a batch at a time (each new group costs the
    server a build while it accepts streams; a stream it had no time to accept is opened again)."""
    # One connection per channel (not gRPC's shared subchannel), `batch` streams on each.
    channels = [
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, count // batch))
    ]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), 30)
    clients: list[AdsClient] = []
    for start in range(0, count, batch):
        pending = list(range(start, min(count, start + batch)))
        for _attempt in range(5):
            opened = []
            for i in pending:
                client = AdsClient(address, channel=channels[(i // batch) % len(channels)])
                group = f"churn-{wave}-group-{i}"
                client.send(node=base_pb2.Node(id=f"churn-{wave}-{i}", cluster=group), type_url=CLUSTER)
                opened.append((i, client))
            pending = []
            for i, client in opened:
                try:
                    await client.recv(timeout=60)
                    clients.append(client)
                except grpc.aio.AioRpcError:
                    await client.close()
                    pending.append(i)
            if not pending:
                break
        assert not pending, f"streams {pending[:5]}... could not be opened"
    return clients, channels


async def _close(clients: list[AdsClient], channels: list[grpc.aio.Channel]) -> None:
    for client in clients:
        await client.close()
    for channel in channels:
        await channel.close()


def test_2000_groups_created_and_dropped_leave_memory_and_push_latency_as_before(
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    edge_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
) -> None:
    pod = upstream_factory("pod")
    for i, name in enumerate(MODELS):
        write(policy_dir / f"{name}.yaml", model_deployment(name, [pod.address], rps=100 + i))
    # Plain text on loopback, every group admitted: the clients here are not the point, the groups are.
    admission = policy_dir.parent / "admission.yaml"
    admission.write_text(yaml.safe_dump({
        "maxStreamsPerIdentity": 2 * GROUPS, "rules": [{"name": "loopback", "unauthenticated": True, "groups": ["*"]}]
    }))
    server = spillover_factory(
        policy_dir, debounce=0.02,
        extra_args=["--group-grace", str(GRACE_S), "--max-groups", str(GROUPS + 10), "--admission", str(admission)],
    )
    envoy = edge_factory(server, "edge-1")
    assert server.proc is not None
    pid = server.proc.pid
    pusher = Pusher(policy_dir, pod, server, envoy)
    pusher.median(3)  # warm up (first pushes allocate what every later push reuses)

    before_latency = pusher.median()
    before_builds = pusher.builds()
    before_rss = _rss_kib(pid)
    series_before = len(server.get("/metrics").text.splitlines())

    def wave(number: int, measure_with: bool) -> dict[str, float]:
        loop = asyncio.new_event_loop()
        try:
            started = time.monotonic()
            clients, channels = loop.run_until_complete(_open_groups(server.xds_address, GROUPS, number))
            opened_s = time.monotonic() - started
            assert server.metric("spillover_xds_groups") == GROUPS + 1
            figures = {
                "opened_s": opened_s,
                "rss_with": _rss_kib(pid),
                "series_with": len(server.get("/metrics").text.splitlines()),
                # One push with the groups present costs seconds (a build per group): measured once.
                "latency_with": pusher.push() if measure_with else float("nan"),
            }
            loop.run_until_complete(_close(clients, channels))
        finally:
            loop.close()
        wait_until(lambda: server.metric("spillover_xds_groups") == 1, timeout=GRACE_S + 60, interval=0.2,
                   message="the churned groups forgotten")
        figures["latency_after"] = pusher.median()
        figures["builds_after"] = pusher.builds()
        figures["rss_after"] = _rss_kib(pid)
        figures["series_after"] = len(server.get("/metrics").text.splitlines())
        return figures

    first = wave(1, measure_with=True)
    second = wave(2, measure_with=False)
    assert server.metric("spillover_xds_groups_expired_total") == 2 * GROUPS
    for number, figures in ((1, first), (2, second)):
        print(
            f"\nwave {number}: {GROUPS} groups opened in {figures['opened_s']:.1f}s; RSS {before_rss} KiB before, "
            f"{figures['rss_with']:.0f} KiB with them, {figures['rss_after']:.0f} KiB {GRACE_S:g}s after they left; "
            f"/metrics lines {series_before} -> {figures['series_with']:.0f} -> {figures['series_after']:.0f}; push "
            f"latency to the Envoy (median of {TRIALS}) {before_latency * 1000:.0f} ms before, "
            f"{figures['latency_with'] * 1000:.0f} ms with them (one push), {figures['latency_after'] * 1000:.0f} ms after"
        )
        assert figures["series_after"] == series_before
        # What made pushes 20-30x slower: a build for every group ever seen (2,001 here). The builds of a push
        # stay those of the one group left (a debounce may split a push in two); the latency itself only
        # within what a loaded machine's noise allows (a timed check of 1.1x failed on the suite's loaded
        # runs: 53 ms after against 39 ms before).
        assert 1 <= figures["builds_after"] <= 2 * max(before_builds, 1), (before_builds, figures)
        assert figures["latency_after"] <= before_latency * 2 + 0.05, (before_latency, figures)
    assert first["latency_with"] > 10 * before_latency, "the measurement does not see the cost of the groups"
    # No growth from one wave to the next (groups that were never freed grew it with every wave); the first
    # wave's rise of the allocator's high-water mark is bounded.
    assert second["rss_after"] <= first["rss_after"] * 1.10, (first, second)
    assert first["rss_after"] - before_rss < 64 * 1024, (before_rss, first)
    assert server.stop() == 0, server.log()[-3000:]
