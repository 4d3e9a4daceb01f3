"""Model-wide `requestsPerSecond` through the real control plane: enforced by Envoy's local rate limit,
divided among the connected Envoys of a node group, and re-divided when one leaves."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.harness.envoy import Envoy
from tests.harness.load import Load, drive, post_model, served_by
from tests.harness.policy_files import model_deployment, write
from tests.harness.polling import wait_until
from tests.harness.rate_limit import envoy_bucket, sent_bucket
from tests.harness.serve import Spillover
from tests.harness.upstream import HttpUpstream

MODEL = "llama"
RPS = 20
WINDOW_S = 3.0
TOLERANCE = 0.10
RL_BODY = (
    b'{"error":{"message":"model: llama has exceeded RPS: 20","type":"rate_limit_error",'
    b'"code":"rate_limit_exceeded","param":null}}'
)

# Measured figures, printed at the end of the module's run (pytest -s) and kept for the report.
MEASURED: dict[str, float] = {}


def _bucket(rps: int) -> dict[str, Any]:
    return {"max_tokens": rps, "tokens_per_fill": rps, "fill_interval": "1s"}


def accepted_rate(load: Load, bucket: float) -> float:
    """Accepted per second after the first answer, minus the bucket that was full when the load began."""
    first = min(t for t, _ in load.answers)
    return (load.statuses[200] - bucket) / (load.ended - first)


def _rq_2xx(envoy: Envoy) -> int:
    return envoy.stats().get("http.spillover.downstream_rq_2xx", 0)


def _within(value: float, target: float) -> bool:
    return abs(value - target) <= TOLERANCE * target


def test_model_rps_is_enforced_and_divided_among_the_envoys_of_a_group(
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    edge_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
) -> None:
    pod = upstream_factory("pod")
    write(policy_dir / "llama.yaml", model_deployment(MODEL, [pod.address], rps=RPS))
    server = spillover_factory(policy_dir)
    port = server.listen_port

    # -- one Envoy: the whole model-wide rate ------------------------------------------------------
    one = edge_factory(server, "edge-1")
    assert envoy_bucket(one) == [_bucket(RPS)]
    assert sent_bucket(server, "edge-1") == [_bucket(RPS)]
    assert served_by(post_model(port, MODEL)) == "pod"

    load = drive(port, MODEL, WINDOW_S)
    statuses = load.statuses
    assert set(statuses) == {200, 429}, statuses
    assert statuses[429] > 5 * statuses[200], f"the offered load did not exceed the limit: {statuses}"
    limited = load.samples[429]
    assert limited.headers.get("x-error-model-rps-exceeded") == "true", limited.headers
    assert limited.headers["content-type"] == "application/json"
    assert limited.body == RL_BODY
    parsed = json.loads(limited.body, object_pairs_hook=list)
    assert parsed == [
        ("error", [
            ("message", "model: llama has exceeded RPS: 20"),
            ("type", "rate_limit_error"),
            ("code", "rate_limit_exceeded"),
            ("param", None),
        ])
    ]  # fmt: skip
    assert "x-error-model-rps-exceeded" not in load.samples[200].headers
    rate_one = accepted_rate(load, bucket=RPS)
    MEASURED["one_envoy_rps"] = rate_one
    assert _within(rate_one, RPS), f"one Envoy accepted {rate_one:.2f}/s, want {RPS}/s ±10% ({statuses})"
    assert pod.request_count == statuses[200] + 1

    # -- two Envoys of the same group: each enforces half ----------------------------------------------
    two = edge_factory(server, "edge-2")
    half = RPS // 2
    for envoy in (one, two):

        def enforces_half(envoy: Envoy = envoy) -> bool:
            return envoy_bucket(envoy) == [_bucket(half)]

        wait_until(enforces_half, timeout=5, message=envoy.name)
    assert sent_bucket(server, "edge-1") == sent_bucket(server, "edge-2") == [_bucket(half)]
    both_synced = [("edge-1", "edge", "SYNCED"), ("edge-2", "edge", "SYNCED")]
    wait_until(
        lambda: sorted((p["node_id"], p["group"], p["status"]) for p in server.proxies()) == both_synced,
        timeout=5,
        message="both Envoys SYNCED in /debug/proxies",
    )

    # Both Envoys listen on the same port (SO_REUSEPORT): fresh connections are spread over both.
    # Each one's accepted rate is measured from its own stats, the sum from the client's view.
    before = {e.name: _rq_2xx(e) for e in (one, two)}
    load = drive(port, MODEL, WINDOW_S)
    per_envoy = {}
    for envoy in (one, two):
        accepted = _rq_2xx(envoy) - before[envoy.name]
        per_envoy[envoy.name] = (accepted - half) / (load.ended - min(t for t, _ in load.answers))
    total = accepted_rate(load, bucket=2 * half)
    MEASURED["two_envoys_total_rps"] = total
    MEASURED.update({f"two_envoys_{name}_rps": rate for name, rate in per_envoy.items()})
    assert all(_within(rate, half) for rate in per_envoy.values()), f"per Envoy {per_envoy}, want {half}/s"
    assert _within(total, RPS), f"two Envoys accepted {total:.2f}/s together, want {RPS}/s ±10%"
    # Each Envoy enforces its share, but the 429 body quotes the model-wide figure users configured.
    assert load.samples[429].body == RL_BODY

    # -- one Envoy leaves: the remaining one gets the whole rate back ------------------------------------
    assert two.stop() == 0
    wait_until(lambda: envoy_bucket(one) == [_bucket(RPS)], timeout=5, message="edge-1 never got 20/s back")
    assert sent_bucket(server, "edge-1") == [_bucket(RPS)]
    assert [p["node_id"] for p in server.proxies()] == ["edge-1"]
    print(f"\nmeasured accepted rates: {MEASURED}")
    assert server.stop() == 0, server.log()


def test_burst_sets_the_token_bucket_size(
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    edge_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
) -> None:
    pod = upstream_factory("pod")
    document = model_deployment(MODEL, [pod.address], rps=RPS)
    document["spec"]["routing"]["profiles"]["default"]["burst"] = 2 * RPS
    write(policy_dir / "llama.yaml", document)
    server = spillover_factory(policy_dir)
    edge = edge_factory(server, "edge-1")
    try:
        # A full bucket of 40 answers a burst of 40 at once; 20/s refill after that.
        load = drive(server.listen_port, MODEL, 0.5)
        assert load.statuses[200] >= 2 * RPS, load.statuses
        assert envoy_bucket(edge) == [{"max_tokens": 2 * RPS, "tokens_per_fill": RPS, "fill_interval": "1s"}]
    finally:
        assert server.stop() == 0, server.log()
