"""`spillover serve --xds-workers 2` with real Envoys: the model-wide rate limit is divided by the Envoys
of the group whichever worker serves them, the server stops with every worker, and `--event-loop` picks
the loop of the server and of every worker."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spillover.server import event_loop
from tests.harness.envoy import Envoy
from tests.harness.policy_files import model_deployment, write
from tests.harness.polling import wait_until
from tests.harness.rate_limit import envoy_bucket, sent_bucket
from tests.harness.serve import Spillover
from tests.harness.upstream import HttpUpstream

RPS = 40


def _bucket(rps: int) -> dict[str, Any]:
    return {"max_tokens": rps, "tokens_per_fill": rps, "fill_interval": "1s"}


def enforces(envoy: Envoy, rps: int) -> bool:
    return envoy_bucket(envoy) == [_bucket(rps)]


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(child) for child in f.read().split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _serve_llama(
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    upstream_factory: Callable[..., HttpUpstream],
    *args: str,
) -> tuple[Spillover, list[int]]:
    """`spillover serve *args` with one rate-limited model on one pod, and the pids of its worker processes."""
    pod = upstream_factory("pod")
    write(policy_dir / "llama.yaml", model_deployment("llama", [pod.address], rps=RPS))
    server = spillover_factory(policy_dir, extra_args=list(args))
    assert server.proc is not None
    return server, children(server.proc.pid)


def test_rate_limits_are_divided_by_the_envoys_of_every_worker(
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    edge_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
) -> None:
    server, workers = _serve_llama(policy_dir, spillover_factory, upstream_factory, "--xds-workers", "2")
    assert len(workers) == 2, workers

    # Four Envoys of one group: the kernel spreads their connections over the two workers, and the main
    # process counts all four, so each enforces a quarter.
    envoys = [edge_factory(server, f"edge-{i}") for i in range(4)]
    for envoy in envoys:
        wait_until(functools.partial(enforces, envoy, RPS // 4), timeout=10, message=envoy.name)
        assert sent_bucket(server, envoy.name) == [_bucket(RPS // 4)]
    proxies = server.proxies()
    assert sorted(p["node_id"] for p in proxies) == [f"edge-{i}" for i in range(4)]
    assert {p["worker"] for p in proxies} <= {0, 1}
    assert server.metric("spillover_xds_workers") == 2

    # Two leave: the other two get half each, wherever each was served.
    for envoy in envoys[2:]:
        assert envoy.stop() == 0
    for envoy in envoys[:2]:
        wait_until(functools.partial(enforces, envoy, RPS // 2), timeout=10, message=envoy.name)
    assert sorted(p["node_id"] for p in server.proxies()) == ["edge-0", "edge-1"]

    assert server.stop() == 0, server.log()
    wait_until(lambda: not any(alive(pid) for pid in workers), timeout=10, message=f"workers {workers} left running")


def loads_uvloop(pid: int) -> bool:
    """Whether the process has uvloop's extension mapped (imported only to run a uvloop loop)."""
    with open(f"/proc/{pid}/maps") as f:
        return "/uvloop/" in f.read()


@pytest.mark.parametrize("kind", event_loop.KINDS)
def test_the_event_loop_option_picks_the_loop_of_the_server_and_of_every_worker(
    kind: str,
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    edge_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
) -> None:
    server, workers = _serve_llama(
        policy_dir, spillover_factory, upstream_factory, "--xds-workers", "2", "--event-loop", kind
    )
    assert len(workers) == 2, workers
    assert server.proc is not None
    assert [loads_uvloop(pid) for pid in [server.proc.pid, *workers]] == [kind == event_loop.UVLOOP] * 3
    envoy = edge_factory(server, "edge-0")
    wait_until(functools.partial(enforces, envoy, RPS), timeout=10, message=envoy.name)
    assert server.stop() == 0, server.log()
