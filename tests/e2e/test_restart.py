"""Restarts are invisible: `spillover serve` stopped (SIGTERM) or killed (SIGKILL) and started again on the
same ports, with real Envoys connected to it and a wire-level Prometheus stand-in whose value the test
sets (tests/harness/slow_prometheus.py, answering at once).

Before decisions survived restarts, a model in OVERFLOW snapped to STANDBY at once, losing its buffer; each
Envoy reloaded its routes twice, and the first Envoy back got the limit meant for the whole group (2x for
0.3-3.7 s). Now: the state, share and remaining buffer come back from the state file, the group keeps its
size until its Envoys are back, and a reconnecting Envoy is sent nothing it already has: no reload."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spillover.translate.bootstrap import build_bootstrap
from tests.harness.envoy import Envoy
from tests.harness.load import post_model, served_by
from tests.harness.policy_files import write
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.serve import Spillover
from tests.harness.slow_prometheus import SlowPrometheus
from tests.harness.upstream import HttpUpstream

MODEL = "restart-llm"
BUFFER_S = 16.0
RPS = 20


@pytest.fixture
def prometheus() -> Iterator[SlowPrometheus]:
    server = SlowPrometheus(value=10.0, delay_s=0.0).start()
    yield server
    server.stop()


def policy(local: HttpUpstream, remote: HttpUpstream) -> dict[str, Any]:
    return {
        "apiVersion": "spillover.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL},
        "spec": {
            "model": MODEL,
            "localBackend": {"endpoints": [local.address]},
            "routing": {"profiles": {"default": {"routingStrategy": "round-robin", "requestsPerSecond": RPS}}},
            "offloadingConfig": {
                "remoteBackend": {"host": "127.0.0.1", "port": remote.port},
                "behavior": {"percentage": 40, "bufferDuration": f"{BUFFER_S:g}s"},
                "metrics": [{"metric": "queue_length", "target": 5}],
            },
        },
    }


def edge(envoy_factory: Callable[..., Envoy], server: Spillover, node: str) -> Envoy:
    envoy = envoy_factory(build_bootstrap(node, "edge", server.xds_address, admin_port=free_port()), name=node)
    wait_until(envoy.is_ready, timeout=20, message=f"{node} never became ready")
    return envoy


def reloads(envoy: Envoy) -> dict[str, int]:
    """Counters of configuration Envoy applied: they move only when it was sent something new."""
    stats = envoy.stats()
    names = ["cluster_manager.cds.update_success", "listener_manager.lds.update_success",
             "http.spillover.rds.spillover_routes.update_success"]
    missing = [n for n in names if n not in stats]
    assert not missing, f"no such Envoy stats: {missing}"
    return {n: stats[n] for n in names}


def rate_limit(server: Spillover, node: str) -> list[int]:
    """The token bucket sizes of the model's routes as sent to `node`."""
    text = json.dumps(server.get_json(f"/debug/config?node={node}")["resources"].get("RDS", []))
    return [int(v) for v in re.findall(r'"max_tokens": (\d+)', text)]


def synced(server: Spillover, nodes: set[str]) -> bool:
    try:
        proxies = server.proxies()
    except (AssertionError, OSError):
        return False
    return {p["node_id"] for p in proxies if p["status"] == "SYNCED"} >= nodes


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_restart_keeps_overflow_its_buffer_and_the_group_and_reloads_nothing(
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    envoy_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
    prometheus: SlowPrometheus,
    sig: signal.Signals,
) -> None:
    local, remote = upstream_factory("local"), upstream_factory("remote")
    write(policy_dir / "model.yaml", policy(local, remote))
    server = spillover_factory(policy_dir, evaluation_interval=0.25, prometheus_url=prometheus.url)
    one, two = edge(envoy_factory, server, "edge-1"), edge(envoy_factory, server, "edge-2")
    server.wait_model(MODEL, lambda m: m["state"] == "OVERFLOW" and m["remote_share"] == 40, timeout=15)
    wait_until(lambda: rate_limit(server, "edge-1") == [RPS // 2], timeout=10, message="limit never divided")
    wait_until(lambda: synced(server, {"edge-1", "edge-2"}), timeout=10)

    prometheus.value = 1.0  # calm: the buffer starts
    calm = server.wait_model(MODEL, lambda m: "buffer duration" in m["reason"], timeout=10)
    assert calm["state"] == "OVERFLOW", calm
    calm_since = time.monotonic()
    time.sleep(6.0)
    before = {e.name: reloads(e) for e in (one, two)}

    killed = time.monotonic()
    server.stop(sig)
    # edge-2 stays away for a while: edge-1 alone must not get the whole group's limit.
    os.kill(two.pid or 0, signal.SIGSTOP)
    again = server.successor()
    try:
        _after_the_restart(again, one, two, before, killed, calm_since, sig)
    finally:
        os.kill(two.pid or 0, signal.SIGCONT)
        again.stop()  # by pid; a no-op when the test stopped it already


def _after_the_restart(
    again: Spillover, one: Envoy, two: Envoy, before: dict[str, dict[str, int]], killed: float, calm_since: float,
    sig: signal.Signals,
) -> None:
    again.launch().wait_ready(timeout=20)
    restarted = time.monotonic()
    model = again.model(MODEL)
    assert (model["state"], model["remote_share"]) == ("OVERFLOW", 40), model
    # Synced once it acknowledged what it asked for so far: its routes may be asked for a moment later.
    wait_until(lambda: synced(again, {"edge-1"}) and rate_limit(again, "edge-1"), timeout=10,
               message="edge-1 never reconnected and got its routes")
    assert rate_limit(again, "edge-1") == [RPS // 2]
    time.sleep(1.0)
    os.kill(two.pid or 0, signal.SIGCONT)
    wait_until(lambda: synced(again, {"edge-1", "edge-2"}), timeout=15, message="edge-2 never reconnected")
    time.sleep(0.5)
    after = {e.name: reloads(e) for e in (one, two)}
    assert after == before, f"Envoys reloaded config across the restart: {before} -> {after}"
    assert served_by(post_model(again.listen_port, MODEL)) in {"local", "remote"}

    # The buffer resumes with what was left of it: about BUFFER_S - 6 s after the restart.
    standby = again.wait_model(MODEL, lambda m: m["state"] == "STANDBY", timeout=BUFFER_S + 10)
    took = time.monotonic() - restarted
    left = BUFFER_S - (killed - calm_since)
    print(f"STANDBY {took:.1f}s after the restart ({left:.1f}s of buffer were left; down {restarted - killed:.1f}s)")
    slack = 2.5 if sig == signal.SIGTERM else 2.5 + 5.0  # SIGKILL: the last heartbeat is up to 5 s old
    assert left - 2.5 <= took <= left + slack, (took, left, standby["reason"])
    assert again.stop() == 0, again.log()
