"""spillover's own per-model series (controller/model_metrics.py), read from a provider's /metrics text:
the `model` label Envoy's stats carry, every state as 0/1, metric against threshold, time in state on the
decisions' clock, and nothing left of a model once it is no longer served."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from spillover import ir
from spillover.controller.model_metrics import ModelSeries
from spillover.controller.policies import PolicyProvider
from spillover.decide import Evaluator
from spillover.policy import ModelDeployment
from spillover.sources.metrics.prometheus import PrometheusSource
from tests.harness.clock import FakeClock
from tests.harness.policy_files import write
from tests.harness.polling import async_wait_until
from tests.harness.slow_prometheus import SlowPrometheus

MODEL = "llama-3.1-8b"
LABEL = "llama-3_1-8b"  # the model as Envoy's stats tag it (names.model_label)


@pytest.fixture
def prometheus() -> Iterator[SlowPrometheus]:
    server = SlowPrometheus(value=9.0, delay_s=0.0).start()
    yield server
    server.stop()


def write_policy(directory: Path, model: str) -> None:
    write(directory / "m.yaml", {
        "apiVersion": "spillover.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "llama", "namespace": "ml"},
        "spec": {
            "model": model,
            "localBackend": {"endpoints": ["10.0.0.1:8000"]},
            "offloadingConfig": {
                "remoteBackend": {"host": "10.9.0.1:80"},
                "behavior": {"percentage": 30},
                "metrics": [{"metric": "queue_length", "target": 5}],
            },
        },
    })


def samples(provider: PolicyProvider) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(provider.registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith(("spillover_model_", "spillover_metric_errors")):
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(provider: PolicyProvider, series: str, **labels: str) -> float | None:
    return samples(provider).get((series, frozenset(labels.items())))


async def test_per_model_series_follow_the_decisions_and_go_with_the_model(
    tmp_path: Path, prometheus: SlowPrometheus
) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    write_policy(policies, MODEL)
    clock = FakeClock(1_000_000.0)
    provider = PolicyProvider(
        policies, ir.Listener("127.0.0.1", 24010), evaluation_interval=0.05, clock=clock,
        prometheus=PrometheusSource(prometheus.url, timeout=5.0), poll_interval=0.05, removal_grace=0.0,
    )
    running = asyncio.get_running_loop().create_task(provider.run())
    try:
        # The metric (9) is past its threshold (5): OVERFLOW at 30 %.
        await async_wait_until(
            lambda: value(provider, "spillover_model_state", model=LABEL, state="OVERFLOW") == 1, timeout=10
        )
        assert value(provider, "spillover_model_info", model=LABEL, name=MODEL, deployment="llama", namespace="ml") == 1
        for state in ("STANDBY", "FAILOVER", "DISABLED"):
            assert value(provider, "spillover_model_state", model=LABEL, state=state) == 0
        assert value(provider, "spillover_model_remote_share_percent", model=LABEL) == 30
        assert value(provider, "spillover_model_metric_value", model=LABEL, metric="queue_length") == 9
        assert value(provider, "spillover_model_metric_threshold", model=LABEL, metric="queue_length") == 5
        assert value(provider, "spillover_model_transitions_total", model=LABEL,
                     from_state="STANDBY", to_state="OVERFLOW") == 1
        before = value(provider, "spillover_model_time_in_state_seconds", model=LABEL, state="OVERFLOW")
        assert before is not None
        clock.advance(42)
        assert value(provider, "spillover_model_time_in_state_seconds", model=LABEL, state="OVERFLOW") == before + 42

        # Another model takes its place: nothing of the first is left, not even its counters.
        write_policy(policies, "qwen")
        await async_wait_until(
            lambda: value(provider, "spillover_model_state", model="qwen", state="OVERFLOW") == 1, timeout=10
        )
        left = [key for key in samples(provider) if ("model", LABEL) in key[1]]
        assert left == []
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)


def test_a_models_copy_on_a_destination_cluster_is_a_series_with_the_model_label() -> None:
    """The copy's replicas and its cluster's reachability, read from the copy's status at scrape time:
    what the status says now, nothing for a model without a copy or a field the status lacks."""
    def deployment(model: str) -> ModelDeployment:
        return ModelDeployment.model_validate({
            "apiVersion": "spillover.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "llama", "namespace": "ml"},
            "spec": {"model": model, "localBackend": {"endpoints": ["10.0.0.1:8000"]}},
        })

    models = {"meta/llama-3.1": deployment("meta/llama-3.1"), "qwen": deployment("qwen")}
    copies: dict[str, dict[str, object]] = {"meta/llama-3.1": {"desiredReplicas": 2, "readyReplicas": 1,
                                                               "reachable": True}}
    registry, evaluator = CollectorRegistry(), Evaluator()  # no decisions: only the copy series are drawn
    ModelSeries(registry, lambda: models, lambda: evaluator, lambda: 0.0, copies.get)

    def copy_series() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        text = generate_latest(registry).decode()
        return {(s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text)
                for s in f.samples if s.name.startswith(("spillover_copy_", "spillover_destination_"))}

    label = "meta_llama-3_1"
    assert copy_series() == {
        ("spillover_copy_replicas", frozenset({("model", label), ("kind", "desired")})): 2,
        ("spillover_copy_replicas", frozenset({("model", label), ("kind", "ready")})): 1,
        ("spillover_destination_reachable", frozenset({("model", label)})): 1,
    }
    copies["meta/llama-3.1"] = {"desiredReplicas": 2, "reachable": False}  # not read yet: no ready count
    assert copy_series() == {
        ("spillover_copy_replicas", frozenset({("model", label), ("kind", "desired")})): 2,
        ("spillover_destination_reachable", frozenset({("model", label)})): 0,
    }
