"""`spillover serve --policies DIR` end to end: policy files -> the real control plane -> a real Envoy.

What tests/translate/test_envoy_e2e.py proved with a static bootstrap is proven here through the
whole chain (file source, planning, translation, xDS over gRPC) as a user runs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.harness.envoy import Envoy
from tests.harness.load import post_model, served_by
from tests.harness.policy_files import beamlit_example, model_deployment, write
from tests.harness.polling import wait_until
from tests.harness.serve import Spillover
from tests.harness.upstream import HttpUpstream


def _not_found(model: str) -> dict:
    return {
        "error": {
            "message": f"The model `{model}` does not exist",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


def test_body_routing_two_policy_files_beamlit_document_and_openai_404(
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    edge_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
) -> None:
    alpha, beta, beamlit = (
        upstream_factory("alpha-pod"),
        upstream_factory("beta-pod"),
        upstream_factory("beamlit"),
    )
    write(policy_dir / "alpha.yaml", model_deployment("alpha", [alpha.address]))
    write(policy_dir / "beta.yaml", model_deployment("beta", [beta.address], model="org/beta-7B"))
    (policy_dir / "beamlit.yaml").write_text(beamlit_example(beamlit.address))
    server = spillover_factory(policy_dir)
    models = server.models()
    assert models["errors"] == []
    assert sorted(models["models"]) == ["alpha", "my-model", "org/beta-7B"]
    assert models["models"]["my-model"]["origin"] == "beamlit.yaml[0]"

    envoy = edge_factory(server, "edge-1")
    port = server.listen_port
    # The Beamlit document lists no local endpoint (its serviceRef needs Kubernetes): all traffic remote.
    beamlit_model = server.models()["models"]["my-model"]
    assert (beamlit_model["state"], beamlit_model["remote_share"]) == ("FAILOVER", 100)

    assert served_by(post_model(port, "alpha")) == "alpha-pod"
    assert served_by(post_model(port, "org/beta-7B")) == "beta-pod"
    assert served_by(post_model(port, "my-model")) == "beamlit"
    assert [served_by(post_model(port, m)) for m in ("alpha", "org/beta-7B", "my-model") * 3] == [
        "alpha-pod", "beta-pod", "beamlit"
    ] * 3  # fmt: skip
    assert beamlit.requests[-1]["path"] == "/v1/chat/completions"
    assert '"model": "my-model"' in beamlit.requests[-1]["body"]

    for unknown in ("gamma", "alpha ", "ALPHA"):
        response = post_model(port, unknown)
        assert response.status == 404, (unknown, response.status, response.text)
        assert response.headers["content-type"] == "application/json"
        assert response.json() == _not_found(unknown)
    missing = post_model(port, None)
    assert missing.status == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert (alpha.request_count, beta.request_count, beamlit.request_count) == (4, 4, 4)

    proxies = server.proxies()
    assert [(p["node_id"], p["group"], p["status"]) for p in proxies] == [("edge-1", "edge", "SYNCED")]
    assert envoy.listener_names()
    assert server.stop() == 0, server.log()


def test_file_edits_reach_envoy_invalid_files_keep_last_good_config_and_deletes_remove(
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    edge_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
) -> None:
    a1, a2 = upstream_factory("alpha-1"), upstream_factory("alpha-2")
    b1, b2, g = upstream_factory("beta-1"), upstream_factory("beta-2"), upstream_factory("gamma")
    gamma = model_deployment("gamma", [g.address])
    alpha_file = write(policy_dir / "alpha.yaml", model_deployment("alpha", [a1.address]))
    # Two documents in one file: gamma at index 0, beta at index 1.
    beta_file = write(policy_dir / "beta.yaml", gamma, model_deployment("beta", [b1.address]))
    server = spillover_factory(policy_dir)
    edge_factory(server, "edge-1")
    port = server.listen_port
    assert served_by(post_model(port, "alpha")) == "alpha-1"
    assert served_by(post_model(port, "beta")) == "beta-1"
    assert served_by(post_model(port, "gamma")) == "gamma"
    assert server.metric("spillover_policy_errors") == 0

    # 1. An edit: the model's endpoint moves to another upstream, Envoy follows within about a second.
    write(alpha_file, model_deployment("alpha", [a2.address]))
    edited = time.monotonic()
    wait_until(lambda: served_by(post_model(port, "alpha")) == "alpha-2", timeout=5, interval=0.02)
    took = time.monotonic() - edited
    print(f"\nedit -> Envoy routes to the new upstream: {took:.3f}s")
    assert took < 1.5, f"the edit took {took:.2f}s to reach Envoy"
    served = {served_by(post_model(port, "alpha")) for _ in range(10)}
    assert served == {"alpha-2"}, served

    # 2. An invalid version of beta (which would also move it to beta-2): beta keeps its last good
    # config, alpha (another file) and gamma (another document of the same file) are unaffected, and
    # the error names file, document index and field path.
    write(beta_file, gamma, model_deployment("beta", [b2.address], rps=-1))

    def beta_error() -> list[str]:
        return server.models()["models"]["beta"]["errors"]

    errors = wait_until(beta_error, timeout=5, message="the invalid beta.yaml never reported")
    assert errors == ["beta.yaml[1] spec.routing.profiles.default.requestsPerSecond: must be >= 0"], errors
    models = server.models()
    assert models["errors"] == errors
    assert models["models"]["beta"]["stale"] is True
    for other in ("alpha", "gamma"):
        assert models["models"][other]["stale"] is False and models["models"][other]["errors"] == []
    assert server.metric("spillover_policy_errors") == 1
    assert 'spillover_policy_errors{file="beta.yaml"} 1.0' in server.get("/metrics").text
    assert "beta.yaml[1] spec.routing.profiles.default.requestsPerSecond" in server.log()
    b1_before = b1.request_count
    for _ in range(5):
        assert served_by(post_model(port, "beta")) == "beta-1"
        assert served_by(post_model(port, "alpha")) == "alpha-2"
        assert served_by(post_model(port, "gamma")) == "gamma"
    assert b2.request_count == 0 and b1.request_count == b1_before + 5

    # 3. A deleted file: its model is gone (OpenAI 404); the other one still serves.
    alpha_file.unlink()
    wait_until(lambda: post_model(port, "alpha").status == 404, timeout=5, interval=0.02)
    assert post_model(port, "alpha").json() == _not_found("alpha")
    assert "alpha" not in server.models()["models"]
    assert served_by(post_model(port, "beta")) == "beta-1"

    # 4. The fix: beta moves to beta-2 and the error is cleared.
    write(beta_file, gamma, model_deployment("beta", [b2.address]))
    wait_until(lambda: served_by(post_model(port, "beta")) == "beta-2", timeout=5, interval=0.02)
    wait_until(lambda: server.metric("spillover_policy_errors") == 0, timeout=5)
    assert server.models()["errors"] == [] and server.models()["models"]["beta"]["stale"] is False
    assert server.stop() == 0, server.log()


def test_model_states_are_reported_before_any_envoy_connects(
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    upstream_factory: Callable[..., HttpUpstream],
) -> None:
    pod = upstream_factory("pod")
    write(policy_dir / "alpha.yaml", model_deployment("alpha", [pod.address]))
    server = spillover_factory(policy_dir)
    try:
        wait_until(lambda: server.models()["models"]["alpha"]["state"] == "STANDBY", timeout=3)
        assert 'spillover_model_state{model="alpha",state="STANDBY"} 1.0' in server.get("/metrics").text
    finally:
        assert server.stop() == 0, server.log()
