"""Safety lives in Envoy: a model in OVERFLOW (half its traffic remote) loses its remote, or all of its
local pods, under load — with `spillover serve` running and with it killed (SIGKILL). Real Envoy, real
upstreams, health checks every second.

Before failover moved into Envoy, a dead remote failed its share (52% of requests) and dead local
pods 80%, for as long as spillover was down; with spillover up a dead remote still cost ~3.3 s of 503s
until the next push. Now every attempt at the dead side is retried on the other side and, once the
health check notices, the dead side gets nothing: no request sent once the side is dead may fail (one
being answered at the instant the side dies, its response already started, can't be retried),
whether spillover is up or not, and with spillover up the status says what Envoy does (FAILOVER,
remote unhealthy).
"""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from spillover.translate.bootstrap import build_bootstrap
from tests.harness.envoy import Envoy
from tests.harness.load import post_model
from tests.harness.model_traffic import ModelTraffic
from tests.harness.policy_files import write
from tests.harness.polling import wait_until
from tests.harness.serve import Spillover, start_edge
from tests.harness.upstream import HttpUpstream

MODEL = "failover-llm"
HEALTH = {"path": "/health", "interval": "1s", "timeout": "0.5s", "healthyThreshold": 1, "unhealthyThreshold": 2}
# What a failure of one side may cost, end to end: Envoy retries every attempt at the dead side on the
# other side, so nothing at all. The window is the health check's detection time plus a margin.
DETECTION_S = 1.0 * 2 + 1.0
MEASURED: dict[str, str] = {}


def served(port: int) -> str:
    response = post_model(port, MODEL)
    return response.headers.get("x-upstream-name", "") if response.status == 200 else f"HTTP {response.status}"


def policy(local: list[HttpUpstream], remote: HttpUpstream) -> dict[str, Any]:
    return {
        "apiVersion": "spillover.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL},
        "spec": {
            "model": MODEL,
            "localBackend": {"endpoints": [u.address for u in local], "healthCheck": HEALTH},
            "offloadingConfig": {
                "remoteBackend": {"host": "127.0.0.1", "port": remote.port, "healthCheck": HEALTH},
                "behavior": {"percentage": 50, "bufferDuration": "10m"},
                # Envoy's own `server.live` (1) at its threshold of 1: breached for as long as Envoy runs.
                "metrics": [{"query": "server.live", "source": "envoy", "threshold": 1}],
            },
        },
    }


@pytest.mark.parametrize("control_plane", ["up", "killed"])
@pytest.mark.parametrize("dead", ["remote", "local"])
def test_one_side_dies_under_load_and_no_request_fails(
    tmp_path: Path,
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    envoy_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
    dead: str,
    control_plane: str,
) -> None:
    local = [upstream_factory("local-0"), upstream_factory("local-1")]
    remote = upstream_factory("remote")
    write(policy_dir / "model.yaml", policy(local, remote))
    server = spillover_factory(policy_dir, evaluation_interval=0.25)
    start_edge(envoy_factory, server, "edge-1")
    server.wait_model(MODEL, lambda m: m["state"] == "OVERFLOW" and m["remote_share"] == 50, timeout=20)

    with ModelTraffic(server.listen_port, MODEL, workers=8) as traffic:
        traffic.wait_for(200)
        before = traffic.served()
        assert before["remote"] > 0 and before["local-0"] + before["local-1"] > 0, before
        if control_plane == "killed":
            assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        killed_at = time.monotonic()
        for upstream in [remote] if dead == "remote" else local:
            upstream.stop()
        # Requests being answered while the side died (their response already started: no retry is
        # possible) may be cut; everything sent once it is dead must be answered by the other side.
        dead_at = time.monotonic()
        time.sleep(DETECTION_S + 3.0)
        if control_plane == "up":
            expected = ("OVERFLOW", 0) if dead == "remote" else ("FAILOVER", 100)
            model = server.wait_model(MODEL, lambda m: (m["state"], m["remote_share"]) == expected, timeout=5)
            if dead == "remote":
                assert model["reason"].startswith("remote backend unhealthy"), model["reason"]
        ended = time.monotonic()
    answers = traffic.answers(killed_at)
    cut = [a for a in traffic.failures(killed_at) if a.at < dead_at]
    failures = traffic.failures(dead_at)
    late = [a for a in failures if a.at > killed_at + DETECTION_S]
    survivors = {"local-0", "local-1"} if dead == "remote" else {"remote"}
    after_detection = traffic.served(killed_at + DETECTION_S)
    MEASURED[f"dead {dead}, spillover {control_plane}"] = (
        f"{len(failures) + len(cut)} of {len(answers)} requests failed over {ended - killed_at:.1f}s "
        f"({len(cut)} cut while the side died, {len(late)} after {DETECTION_S:g}s); "
        f"served after detection: {dict(after_detection)}"
    )
    print(MEASURED)
    assert len(cut) <= 8, f"more requests cut than were in flight: {cut[:5]}"
    assert not failures, f"{len(failures)} of {len(answers)} failed once the side was dead: {failures[:5]}"
    assert set(after_detection) <= survivors and after_detection, after_detection


@pytest.mark.parametrize("given", ["flag", "config", "default"])
def test_an_envoy_without_the_internal_listener_extension_fails_over_with_failover_remote_in_place(
    tmp_path: Path,
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    envoy_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
    given: str,
) -> None:
    """An Envoy whose bootstrap lacks `envoy.bootstrap.internal_listener`: with `--failover-remote in-place`
    (or the config's `failoverRemote: in-place`) a STANDBY model whose local pods all die goes to the
    remote, spillover killed and all; by default its local-first aggregate has no remote to go to."""
    local = [upstream_factory("local-0"), upstream_factory("local-1")]
    remote = upstream_factory("remote")
    document = policy(local, remote)
    # Envoy's `server.live` (1) below its threshold: never breached, the model stays in STANDBY.
    document["spec"]["offloadingConfig"]["metrics"][0]["threshold"] = 5
    write(policy_dir / "model.yaml", document)
    config = tmp_path / "controller.yaml"
    config.write_text("failoverRemote: in-place\n")
    extra_args = {"flag": ["--failover-remote", "in-place"], "config": ["--config", str(config)], "default": []}
    server = spillover_factory(policy_dir, evaluation_interval=0.25, extra_args=extra_args[given])
    bootstrap = build_bootstrap("edge-1", "edge", server.xds_address, admin_port=0)
    del bootstrap["bootstrap_extensions"]
    edge = envoy_factory(bootstrap, name="edge-1")
    wait_until(edge.is_ready, timeout=20, message="envoy never became ready")
    server.wait_model(MODEL, lambda m: m["state"] == "STANDBY", timeout=20)
    wait_until(lambda: served(server.listen_port) in ("local-0", "local-1"), timeout=15, message="never served")

    def lds() -> str:
        states = [s for p in server.proxies() for s in p["types"].values() if s["type"] == "LDS"]
        return str(states[0]["status"]) if states else "PENDING"

    status = wait_until(lambda: lds() if lds() != "PENDING" else None, timeout=10, message="LDS never answered")
    assert status == ("NACKED" if given == "default" else "SYNCED"), status

    # Envoy alone, from here: its own health checks and aggregates.
    assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    for upstream in local:
        upstream.stop()
    def local_healthy() -> list[int]:
        stats = edge.stats()
        return [v for k, v in stats.items() if re.fullmatch(rf"cluster\.{MODEL}_local_[^.]+\.membership_healthy", k)]

    wait_until(lambda: local_healthy() and not any(local_healthy()), timeout=DETECTION_S + 2,
               message="the local pods' health check never failed")
    counts = Counter(served(server.listen_port) for _ in range(30))
    if given == "default":
        assert "remote" not in counts, counts
    else:
        assert counts == Counter({"remote": 30}), counts
