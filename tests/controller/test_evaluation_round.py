"""The evaluation round against a slow metric source (a wire-level Prometheus that answers late): a
round never waits longer than `metrics_wait` for samples, a slow source's queries are not piled up, and
its answer is used by the first round after it arrives."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spillover import ir
from spillover.controller.policies import PolicyProvider
from spillover.sources.metrics.prometheus import PrometheusSource
from tests.harness.policy_files import write
from tests.harness.slow_prometheus import SlowPrometheus


@pytest.fixture
def prometheus() -> Iterator[SlowPrometheus]:
    server = SlowPrometheus(value=9.0, delay_s=1.5).start()
    yield server
    server.stop()


def policy(directory: Path) -> Path:
    directory.mkdir()
    write(directory / "m.yaml", {
        "apiVersion": "spillover.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "slow-metric"},
        "spec": {
            "model": "slow-metric",
            "localBackend": {"endpoints": ["10.0.0.1:8000"]},
            "offloadingConfig": {
                "remoteBackend": {"host": "10.9.0.1:80"},
                "behavior": {"percentage": 30},
                "metrics": [{"metric": "queue_length", "target": 5}],
            },
        },
    })
    return directory


async def test_a_round_does_not_wait_for_a_slow_source(tmp_path: Path, prometheus: SlowPrometheus) -> None:
    provider = PolicyProvider(
        policy(tmp_path / "policies"), ir.Listener("127.0.0.1", 24010), evaluation_interval=0.2,
        prometheus=PrometheusSource(prometheus.url, timeout=5.0),
    )
    try:
        started = time.monotonic()
        await provider.evaluate_once()
        took = time.monotonic() - started
        assert took < 0.5, f"the round waited {took:.2f}s for Prometheus"
        assert provider.statuses()["slow-metric"]["metrics"][0]["condition"] == "unknown"  # not sampled yet
        # Rounds while the query is still out: no second query is sent, nothing waits.
        for _ in range(3):
            started = time.monotonic()
            await provider.evaluate_once()
            assert time.monotonic() - started < 0.5
        assert len(prometheus.queries) == 1
        # Once Prometheus has answered, the next round decides on its value.
        while time.monotonic() - prometheus.queries[0][0] < 1.7:
            await provider.evaluate_once()
        await provider.evaluate_once()
        decision = provider.evaluator.decision("slow-metric")
        assert decision is not None and (decision.state.value, decision.remote_share) == ("OVERFLOW", 30)
        assert provider.statuses()["slow-metric"]["metrics"][0]["value"] == 9.0
    finally:
        await provider.sampler.close()
