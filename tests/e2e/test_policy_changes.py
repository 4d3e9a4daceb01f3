"""Policy directory changes that can't hurt, with `spillover serve`, a real Envoy and real upstreams.

Before: a non-atomic redeploy (rm, then cp 0.6 s later) removed every model from Envoy (162 x 404); a
file that became unreadable was noticed only after the next restart, as a missing model while /readyz
said 200; deleting a file let a previously rejected duplicate silently take over the model."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tests.harness.envoy import Envoy
from tests.harness.load import post_model, served_by
from tests.harness.model_traffic import ModelTraffic
from tests.harness.policy_files import model_deployment, write
from tests.harness.polling import wait_until
from tests.harness.serve import Spillover
from tests.harness.upstream import HttpUpstream

MODELS = ("alpha-llm", "beta-llm", "gamma-llm")


def deploy(directory: Path, upstreams: dict[str, HttpUpstream]) -> None:
    for name, upstream in upstreams.items():
        write(directory / f"{name}.yaml", model_deployment(name, [upstream.address]))


def test_rm_then_cp_redeploy_costs_no_request(
    tmp_path: Path,
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    edge_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
) -> None:
    upstreams = {name: upstream_factory(name) for name in MODELS}
    release = tmp_path / "release"
    release.mkdir()
    deploy(release, upstreams)
    for file in release.iterdir():
        shutil.copy(file, policy_dir / file.name)
    server = spillover_factory(policy_dir)
    edge_factory(server, "edge-1")
    wait_until(lambda: served_by(post_model(server.listen_port, "alpha-llm")) == "alpha-llm", timeout=10)

    with ModelTraffic(server.listen_port, "alpha-llm", workers=4) as traffic:
        traffic.wait_for(50)
        started = time.monotonic()
        for file in policy_dir.glob("*.yaml"):
            file.unlink()
        held = server.wait_model("alpha-llm", lambda m: m.get("held") is True, timeout=5)
        assert held["stale"] is True
        # The files go one by one: the hold may start on two of them and take in the third a moment later.
        wait_until(
            lambda: (server.models()["held_removal"] or {}).get("models") == sorted(MODELS), timeout=5,
            message="the hold taking in all three removals",
        )
        assert server.metric("spillover_policy_removal_held") == 3
        ready = server.get("/readyz")
        assert ready.status == 200 and "warning: removal of 3 of 3 models held" in ready.text, ready.text
        time.sleep(max(0.0, 0.6 - (time.monotonic() - started)))
        for file in release.iterdir():
            shutil.copy(file, policy_dir / file.name)
        wait_until(lambda: server.models()["held_removal"] is None, timeout=5, message="the hold never ended")
        time.sleep(1.0)
    failures = traffic.failures()
    print(f"{len(failures)} of {len(traffic.answers())} requests failed during the redeploy")
    assert not failures, failures[:5]
    assert server.metric("spillover_policy_removal_held") == 0
    assert "policy change held" in server.log()


def test_a_removal_that_persists_is_applied_after_the_grace(
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    edge_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
) -> None:
    deploy(policy_dir, {name: upstream_factory(name) for name in MODELS})
    server = spillover_factory(policy_dir, extra_args=["--removal-grace", "2"])
    edge_factory(server, "edge-1")
    wait_until(lambda: post_model(server.listen_port, "beta-llm").status == 200, timeout=10)
    # One model of three is not "most": it goes at once.
    (policy_dir / "gamma-llm.yaml").unlink()
    wait_until(lambda: post_model(server.listen_port, "gamma-llm").status == 404, timeout=5)
    assert server.models()["held_removal"] is None
    removed = time.monotonic()
    for file in policy_dir.glob("*.yaml"):
        file.unlink()
    assert server.wait_model("beta-llm", lambda m: m.get("held") is True, timeout=5)
    assert post_model(server.listen_port, "beta-llm").status == 200  # still served meanwhile
    wait_until(lambda: post_model(server.listen_port, "beta-llm").status == 404, timeout=10)
    assert time.monotonic() - removed >= 1.9
    assert server.models()["models"] == {} and server.models()["held_removal"] is None
    assert "policy change applied after 2s" in server.log()


def test_an_unreadable_file_keeps_its_models_and_says_so_and_a_restart_is_not_ready(
    tmp_path: Path,
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    edge_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
) -> None:
    upstreams = {name: upstream_factory(name) for name in MODELS}
    # As a ConfigMap mount does it: the files are symlinks into a directory that is swapped.
    data = tmp_path / "data"
    data.mkdir()
    deploy(data, upstreams)
    for name in MODELS:
        os.symlink(data / f"{name}.yaml", policy_dir / f"{name}.yaml")
    server = spillover_factory(policy_dir)
    edge_factory(server, "edge-1")
    wait_until(lambda: served_by(post_model(server.listen_port, "beta-llm")) == "beta-llm", timeout=10)

    (data / "beta-llm.yaml").unlink()  # beta-llm.yaml is still there, but can't be read
    model = server.wait_model("beta-llm", lambda m: m["stale"] is True, timeout=5)
    assert model["errors"] == [] and model["state"] == "STANDBY"
    document = server.models()
    assert document["unreadable_files"] == [{
        "file": "beta-llm.yaml", "errors": ["beta-llm.yaml: cannot read: No such file or directory"],
        "kept": ["beta-llm"],
    }]
    assert server.metric("spillover_policy_unreadable_files") == 1
    ready = server.get("/readyz")
    assert ready.status == 200, ready.text
    assert "warning: beta-llm.yaml: cannot read: No such file or directory; still served from the last good " \
           "config: beta-llm" in ready.text
    assert served_by(post_model(server.listen_port, "beta-llm")) == "beta-llm"

    # After a restart nothing of it is known: not ready (this replica would serve without beta-llm).
    assert server.stop() == 0
    again = server.successor()
    try:
        again.launch()
        wait_until(lambda: again.get("/readyz").status == 503, timeout=20, message="the restart said ready")
        assert "beta-llm.yaml: cannot read: No such file or directory; none of the models it defines is served" \
               in again.get("/readyz").text
        assert sorted(again.models()["models"]) == ["alpha-llm", "gamma-llm"]
        # Readable again: ready again.
        write(data / "beta-llm.yaml", model_deployment("beta-llm", [upstreams["beta-llm"].address]))
        wait_until(lambda: again.get("/readyz").status == 200, timeout=10)
        assert again.stop() == 0
    finally:
        again.stop()


def test_a_refused_duplicate_that_takes_over_is_reported(
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    edge_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
) -> None:
    first, second, other = upstream_factory("first"), upstream_factory("second"), upstream_factory("other")
    write(policy_dir / "a.yaml", model_deployment("shared-llm", [first.address]))
    write(policy_dir / "o.yaml", model_deployment("other-llm", [other.address]))
    server = spillover_factory(policy_dir)
    write(policy_dir / "b.yaml", model_deployment("shared-copy", [second.address], model="shared-llm"))
    wait_until(lambda: any("duplicate model" in e for e in server.models()["errors"]), timeout=5)
    edge_factory(server, "edge-1")
    assert served_by(post_model(server.listen_port, "shared-llm")) == "first"

    (policy_dir / "a.yaml").unlink()
    model = server.wait_model("shared-llm", lambda m: m["origin"] == "b.yaml[0]", timeout=5)
    assert model["errors"] == []
    wait_until(lambda: served_by(post_model(server.listen_port, "shared-llm")) == "second", timeout=5)
    notices = [n["message"] for n in server.models()["notices"]]
    assert "model shared-llm: now defined by b.yaml[0]; its definition in a.yaml[0] is gone or no longer valid" \
           in notices, notices
    assert server.metric("spillover_policy_takeovers_total") == 1
    assert "model shared-llm: now defined by b.yaml[0]" in server.log()
