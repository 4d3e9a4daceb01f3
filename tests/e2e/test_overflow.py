"""Overflow with real parts: `spillover serve` + a real Envoy + real Prometheus (Debian's) scraping vLLM-like
model servers, real upstreams. Each test drives a metric or a backend's health at run time and checks both
what spillover says (/debug/models, /metrics) and where Envoy actually sends the requests.

1. Prometheus `queue_length` crossing its target: OVERFLOW sends the configured fixed share remote; lowering
   it returns traffic local only after `bufferDuration`; a second model's resources are not touched.
2. Local health checks failing (all local upstreams killed): FAILOVER, 100% remote; back when they return.
3. The remote's health check failing while in OVERFLOW: no traffic to it, all served locally; it returns.
4. The `envoy` source (no Prometheus): `concurrency` from Envoy's own upstream_rq_active.
5. `onMetricError` when Prometheus dies: `overflow` overflows, `hold` keeps the state and reports unknown
   (in OVERFLOW and in STANDBY), and `overflow` does not overflow before the first sample.
Models served alongside must not see their resources re-sent (same versions, same routes) in 1-3.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.envoy import Envoy
from tests.harness.modelserver import ModelServer
from tests.harness.overflow_traffic import REMOTE, Bystander, InFlight, remote_percent, send_batch
from tests.harness.policy_files import write
from tests.harness.polling import wait_until
from tests.harness.prometheus import Prometheus
from tests.harness.serve import Launcher, Spillover, start_edge
from tests.harness.upstream import HttpUpstream

EVALUATION_INTERVAL = 0.25
SHARE_TOLERANCE = 10.0  # percentage points
BATCH = 300

# Measured figures, printed at the end of each test (pytest -s shows them) and kept for the report.
MEASURED: dict[str, float] = {}


# -- fixtures --------------------------------------------------------------------------------------------


def route_versions(edge: Envoy) -> list[str]:
    """The versions of the route tables the Envoy runs."""
    return [str(c.get("version_info")) for c in edge.config_dump(resource="dynamic_route_configs").get("configs", [])]


@pytest.fixture
def overflow_spillover(tmp_path: Path) -> Iterator[Callable[..., Spillover]]:
    """``overflow_spillover(policies, prometheus_url=None)``: `spillover serve` evaluating every 0.25 s."""
    launch = Launcher(tmp_path, evaluation_interval=EVALUATION_INTERVAL)

    def factory(policies: Path, **kwargs: Any) -> Spillover:
        return launch(policies=policies, **kwargs)

    yield factory
    launch.stop_all()


@pytest.fixture
def model_servers() -> Iterator[Callable[..., ModelServer]]:
    started: list[ModelServer] = []

    def factory(name: str, model: str) -> ModelServer:
        server = ModelServer(name, model)
        started.append(server)
        return server.start()

    yield factory
    for server in reversed(started):
        server.stop()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    started: list[Prometheus] = []

    def factory(targets: list[str]) -> Prometheus:
        prom = Prometheus(tmp_path / f"prometheus-{len(started)}", targets, scrape_interval="1s")
        started.append(prom)
        return prom.start()

    yield factory
    for prom in reversed(started):
        prom.stop()
        print(prom.log_tail(20))


# -- policies --------------------------------------------------------------------------------------------


def overflow_model(
    model: str,
    endpoints: list[str],
    remote: Any,
    behavior: dict[str, Any],
    metrics: list[dict[str, Any]],
    local_health: dict[str, Any] | None = None,
    remote_health: dict[str, Any] | None = None,
) -> dict[str, Any]:
    remote_backend: dict[str, Any] = {"host": "127.0.0.1", "port": remote.port}
    if remote_health is not None:
        remote_backend["healthCheck"] = remote_health
    local: dict[str, Any] = {"endpoints": endpoints}
    if local_health is not None:
        local["healthCheck"] = local_health
    name = re.sub(r"[^a-z0-9-]", "-", model.lower())
    return {
        "apiVersion": "spillover.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": model,
            "localBackend": local,
            "offloadingConfig": {"remoteBackend": remote_backend, "behavior": behavior, "metrics": metrics},
        },
    }


def plain_model(model: str, local: HttpUpstream) -> dict[str, Any]:
    """A model with one local endpoint and no offloading: it must never be touched by others' transitions."""
    return {
        "apiVersion": "spillover.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": model},
        "spec": {"model": model, "localBackend": {"endpoints": [local.address]}},
    }


FAST_HEALTH = {
    "path": "/health",
    "interval": "500ms",
    "timeout": "400ms",
    "healthyThreshold": 1,
    "unhealthyThreshold": 1,
}


# -- reading spillover -----------------------------------------------------------------------------------


def metric_samples(server: Spillover, name: str) -> list[tuple[dict[str, str], float]]:
    out = []
    for line in server.get("/metrics").text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        sample, _, value = line.rpartition(" ")
        family, _, labels = sample.partition("{")
        if family == name:
            out.append((dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels)), float(value)))
    return out


def metric_value(server: Spillover, name: str, **labels: str) -> float:
    return sum(v for ls, v in metric_samples(server, name) if all(ls.get(k) == w for k, w in labels.items()))


def local_stat(edge: Envoy, model: str, stat: str) -> dict[str, int]:
    """`stat` of every local cluster of `model` in Envoy's own stats (stat names `<model>_local_<lb tag>`)."""
    pattern = re.compile(rf"cluster\.{re.escape(model)}_local_[A-Za-z0-9_-]+\.{re.escape(stat)}")
    found = {name: value for name, value in edge.stats().items() if pattern.fullmatch(name)}
    assert found, f"no cluster.{model}_local_*.{stat} in Envoy's stats"
    return found


def reading(model_doc: dict[str, Any], metric: str) -> dict[str, Any]:
    (found,) = [m for m in model_doc["status"]["metrics"] if m["name"] == metric]
    return found


def wait_batch_all(
    port: int, model: str, pick: Callable[[str], bool], message: str, timeout: float = 15.0
) -> None:
    """Until a small batch is answered entirely by backends `pick` accepts (Envoy has the new routes)."""
    wait_until(
        lambda: (b := send_batch(port, model, 30, workers=2)) and all(pick(k) for k in b) and b,
        timeout=timeout,
        interval=0.1,
        message=message,
    )


def report(test: str, **figures: float) -> None:
    MEASURED.update({f"{test}.{k}": round(v, 3) for k, v in figures.items()})
    print(f"\nmeasured {test}: {figures}")


# -- 1. Prometheus queue length -------------------------------------------------------------------------


def test_prometheus_queue_length_overflows_a_fixed_share_and_returns_after_the_buffer(
    policy_dir: Path,
    overflow_spillover: Callable[..., Spillover],
    envoy_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
    model_servers: Callable[..., ModelServer],
    prometheus: Callable[..., Prometheus],
) -> None:
    model, other = "qwen", "bystander"
    target, buffer_s = 5, 3.0
    locals_ = [model_servers("qwen-0", model), model_servers("qwen-1", model)]
    other_local = model_servers("bystander-0", other)
    remote = upstream_factory(REMOTE)
    other_remote = upstream_factory("bystander-remote")
    prom = prometheus([s.address for s in (*locals_, other_local)])
    behavior = {"percentage": 30, "bufferDuration": f"{buffer_s:g}s", "strategy": "fixed"}
    queue = [{"metric": "queue_length", "target": target}]
    write(
        policy_dir / "qwen.yaml", overflow_model(model, [s.address for s in locals_], remote, behavior, queue)
    )
    write(
        policy_dir / "bystander.yaml",
        overflow_model(other, [other_local.address], other_remote, behavior, queue),
    )
    server = overflow_spillover(policy_dir, prometheus_url=prom.url)
    start_edge(envoy_factory, server, "edge-1")
    port = server.listen_port

    # STANDBY on a known, calm metric (Prometheus scraped the servers and spillover read it).
    wait_until(
        lambda: reading(server.model(model), "queue_length")["value"] == 0,
        timeout=20,
        message="never sampled",
    )
    wait_until(lambda: reading(server.model(other), "queue_length")["value"] == 0, timeout=20)
    standby = server.model(model)
    assert (standby["state"], standby["remote_share"]) == ("STANDBY", 0), standby
    batch = send_batch(port, model, 100)
    assert set(batch) == {"qwen-0", "qwen-1"}, batch
    bystander = Bystander(server, "edge-1", other).snapshot()

    # Queue above target on both servers (average 12 >= 5).
    for s in locals_:
        s.set_load(waiting=12)
    raised = time.monotonic()

    def first_remote() -> bool:
        return send_batch(port, model, 4, workers=1)[REMOTE] > 0

    wait_until(
        first_remote, timeout=25, interval=0.0, message="no request reached the remote after the queue rose"
    )
    to_first_remote = time.monotonic() - raised
    overflow = server.wait_state(model, "OVERFLOW", timeout=5)
    assert overflow["remote_share"] == 30, overflow
    # Prometheus scrapes the two servers at different instants: the first breached average may be 6
    # (12 and a not yet re-scraped 0). The reason always quotes the value the status shows.
    value = reading(overflow, "queue_length")["value"]
    assert f"queue_length at {value:g} >= threshold 5" in overflow["reason"], overflow
    overflow = server.wait_model(model, lambda m: reading(m, "queue_length")["value"] == 12, timeout=10)
    assert overflow["state"] == "OVERFLOW", overflow
    assert "queue_length at 12 >= threshold 5" in overflow["reason"], overflow["reason"]
    q = reading(overflow, "queue_length")
    assert (q["value"], q["threshold"], q["condition"], q["source"]) == (12, 5, "breached", "prometheus"), q
    assert overflow["status"]["lastTransition"]["from"] == "STANDBY", overflow["status"]
    assert overflow["status"]["lastTransition"]["to"] == "OVERFLOW", overflow["status"]
    assert metric_value(server, "spillover_model_state", model=model, state="OVERFLOW") == 1
    assert metric_value(server, "spillover_model_remote_share_percent", model=model) == 30
    assert metric_value(server, "spillover_model_transitions_total", model=model, to_state="OVERFLOW") == 1

    # The configured share, measured at the upstreams.
    batch = send_batch(port, model, BATCH)
    assert set(batch) <= {REMOTE, "qwen-0", "qwen-1"}, batch  # every request answered 200
    share = remote_percent(batch)
    assert abs(share - 30) <= SHARE_TOLERANCE, (share, batch)

    # The other model's resources (clusters, endpoints, its routes) were not re-sent with a new version.
    assert server.model(other)["state"] == "STANDBY"
    bystander.assert_unchanged()
    assert set(send_batch(port, other, 40)) == {"bystander-0"}

    # Queue back to 0: still OVERFLOW once spillover has seen the calm value (buffer running) ...
    for s in locals_:
        s.set_load(waiting=0)
    lowered = time.monotonic()
    calm = server.wait_model(
        model, lambda m: reading(m, "queue_length")["condition"] == "calm", message="never saw the queue fall"
    )
    calm_seen = time.monotonic()
    assert calm["state"] == "OVERFLOW" and calm["remote_share"] == 30, calm
    assert "buffer duration" in calm["reason"], calm["reason"]
    during_buffer = send_batch(port, model, 40, workers=4)
    assert during_buffer[REMOTE] > 0, during_buffer
    # ... and STANDBY only once it stayed calm for the buffer duration.
    standby = server.wait_state(model, "STANDBY", timeout=20)
    back = time.monotonic()
    assert back - lowered >= buffer_s, (back - lowered, standby)
    assert standby["status"]["lastTransition"]["reason"].endswith(f"for the {buffer_s:g}s buffer duration")
    wait_batch_all(port, model, lambda k: k != REMOTE, "traffic never came back local")
    batch = send_batch(port, model, 200)
    assert batch[REMOTE] == 0 and set(batch) == {"qwen-0", "qwen-1"}, batch
    assert metric_value(server, "spillover_model_transitions_total", model=model, to_state="STANDBY") == 1
    bystander.assert_unchanged()
    report(
        "prometheus_queue",
        remote_share_percent=share,
        raise_to_first_remote_s=to_first_remote,
        lower_to_calm_seen_s=calm_seen - lowered,
        lower_to_standby_s=back - lowered,
    )


# -- 2. failover on local health ---------------------------------------------------------------------------


@pytest.mark.parametrize("split_weights", ["route", "runtime"])
def test_local_health_checks_failing_fail_over_to_the_remote_and_back(
    policy_dir: Path,
    overflow_spillover: Callable[..., Spillover],
    envoy_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
    split_weights: str,
) -> None:
    """With `--split-weights runtime` too: the same traffic, and the flips leave Envoy's route table as it
    was (the splits go over RTDS)."""
    model = "llama"
    locals_ = [upstream_factory("local-0"), upstream_factory("local-1")]
    remote = upstream_factory(REMOTE)
    behavior = {"percentage": 30, "bufferDuration": "1s"}
    document = overflow_model(
        model, [u.address for u in locals_], remote, behavior, [], local_health=FAST_HEALTH
    )
    write(policy_dir / "llama.yaml", document)
    write(policy_dir / "other.yaml", plain_model("other", upstream_factory("other-0")))
    server = overflow_spillover(policy_dir, extra_args=["--split-weights", split_weights])
    edge = start_edge(envoy_factory, server, "edge-1", split_weights=split_weights)
    port = server.listen_port

    wait_until(lambda: server.model(model)["status"]["conditions"], timeout=10)
    assert server.model(model)["state"] == "STANDBY"
    routes = route_versions(edge)
    assert set(send_batch(port, model, 40)) == {"local-0", "local-1"}
    bystander = Bystander(server, "edge-1", "other").snapshot()

    for u in locals_:
        u.stop()
    killed = time.monotonic()
    failover = server.wait_state(model, "FAILOVER", timeout=20)
    to_failover = time.monotonic() - killed
    assert failover["remote_share"] == 100, failover
    assert "no ready local endpoint" in failover["reason"], failover["reason"]
    assert set(local_stat(edge, model, "membership_healthy").values()) == {0}
    wait_batch_all(port, model, lambda k: k == REMOTE, "failover traffic never all remote")
    batch = send_batch(port, model, 100)
    assert batch == {REMOTE: 100}, batch
    bystander.assert_unchanged()
    if split_weights == "runtime":
        assert route_versions(edge) == routes, "the flip changed the route table"

    remote.reset()
    for u in locals_:
        u.start()  # same port
    returned = time.monotonic()
    # Back through OVERFLOW (the machine was frozen at the percentage), STANDBY after the 1 s buffer.
    standby = server.wait_state(model, "STANDBY", timeout=20)
    to_standby = time.monotonic() - returned
    assert standby["remote_share"] == 0, standby
    wait_batch_all(port, model, lambda k: k != REMOTE, "traffic never came back local")
    batch = send_batch(port, model, 100)
    assert set(batch) == {"local-0", "local-1"}, batch
    bystander.assert_unchanged()
    assert set(send_batch(port, "other", 20)) == {"other-0"}
    if split_weights == "runtime":
        assert route_versions(edge) == routes, "the flip back changed the route table"
    transitions = {
        (ls["from_state"], ls["to_state"]): v
        for ls, v in metric_samples(server, "spillover_model_transitions_total")
    }
    assert transitions.get(("STANDBY", "FAILOVER")) == 1, transitions
    report("failover", kill_to_failover_s=to_failover, restart_to_standby_s=to_standby)


# -- 3. remote health ---------------------------------------------------------------------------------------


def test_unhealthy_remote_gets_no_traffic_while_overflowing_and_gets_its_share_back(
    policy_dir: Path,
    overflow_spillover: Callable[..., Spillover],
    envoy_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
) -> None:
    model = "mistral"
    locals_ = [upstream_factory("local-0"), upstream_factory("local-1")]
    remote = upstream_factory(REMOTE)
    # Always breached, from Envoy's own stats: the model stays in OVERFLOW for the whole test.
    always = [{"query": "server.live", "threshold": 1, "source": "envoy", "name": "live"}]
    behavior = {"percentage": 50, "bufferDuration": "1s"}
    document = overflow_model(
        model, [u.address for u in locals_], remote, behavior, always, remote_health=FAST_HEALTH
    )
    write(policy_dir / "mistral.yaml", document)
    write(policy_dir / "other.yaml", plain_model("other", upstream_factory("other-0")))
    server = overflow_spillover(policy_dir)
    edge = start_edge(envoy_factory, server, "edge-1")
    port = server.listen_port

    overflow = server.wait_state(model, "OVERFLOW", timeout=20)
    bystander = Bystander(server, "edge-1", "other").snapshot()
    assert overflow["remote_share"] == 50, overflow
    wait_until(
        lambda: send_batch(port, model, 20)[REMOTE] > 0, timeout=15, message="the remote never got traffic"
    )
    batch = send_batch(port, model, BATCH)
    assert set(batch) <= {REMOTE, "local-0", "local-1"}, batch
    assert abs(remote_percent(batch) - 50) <= SHARE_TOLERANCE, batch
    share_before = remote_percent(batch)

    remote.status = 503  # its health check (and anything else) now fails
    failed = time.monotonic()
    unhealthy = server.wait_model(model, lambda m: m["remote_share"] == 0, message="remote never unhealthy")
    to_unhealthy = time.monotonic() - failed
    assert unhealthy["state"] == "OVERFLOW", unhealthy
    assert unhealthy["reason"].startswith("remote backend unhealthy"), unhealthy["reason"]
    assert unhealthy["status"]["wantedShare"] == 50, unhealthy["status"]
    overflowing = {c["type"]: c for c in unhealthy["status"]["conditions"]}["Overflowing"]
    assert (overflowing["status"], overflowing["reason"]) == ("False", "RemoteUnhealthy"), overflowing
    assert edge.stat("cluster.mistral_remote.membership_healthy") == 0
    wait_batch_all(
        port, model, lambda k: k in ("local-0", "local-1"), "traffic never left the unhealthy remote"
    )
    remote.reset()
    batch = send_batch(port, model, 200)
    assert set(batch) == {"local-0", "local-1"}, batch  # all 200, all local
    traffic = [r for r in remote.requests if r["path"] != "/health"]
    assert traffic == [], traffic[:3]
    bystander.assert_unchanged()
    wait_until(
        lambda: any(r["path"] == "/health" for r in remote.requests),
        timeout=10,
        message="the remote is not being health checked",
    )

    remote.status = 200
    healed = time.monotonic()
    back = server.wait_model(model, lambda m: m["remote_share"] == 50, message="the share never came back")
    to_healthy = time.monotonic() - healed
    assert back["state"] == "OVERFLOW" and back["reason"].startswith("live at 1 >= threshold 1"), back
    wait_until(
        lambda: send_batch(port, model, 20)[REMOTE] > 0,
        timeout=15,
        message="the remote never got traffic back",
    )
    batch = send_batch(port, model, BATCH)
    assert set(batch) <= {REMOTE, "local-0", "local-1"}, batch
    assert abs(remote_percent(batch) - 50) <= SHARE_TOLERANCE, batch
    bystander.assert_unchanged()
    report(
        "remote_health",
        share_before_percent=share_before,
        share_after_percent=remote_percent(batch),
        fail_to_share_0_s=to_unhealthy,
        heal_to_share_back_s=to_healthy,
    )


# -- 4. envoy source: concurrency -----------------------------------------------------------------------------


def test_envoy_concurrency_overflows_without_prometheus(
    policy_dir: Path,
    overflow_spillover: Callable[..., Spillover],
    envoy_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
    model_servers: Callable[..., ModelServer],
) -> None:
    model, buffer_s = "phi", 2.0
    # The locals honour the x-upstream-delay-s header (slow requests); the remote (a model server) does not,
    # so a slow request that goes remote comes back at once and local in-flight stays high.
    locals_ = [upstream_factory("local-0"), upstream_factory("local-1")]
    remote_server = model_servers(REMOTE, model)
    behavior = {"percentage": 40, "bufferDuration": f"{buffer_s:g}s"}
    concurrency = [{"metric": "concurrency", "target": 2}]  # in-flight per healthy local endpoint
    write(
        policy_dir / "phi.yaml",
        overflow_model(model, [u.address for u in locals_], remote_server, behavior, concurrency),
    )
    server = overflow_spillover(policy_dir)  # no --prometheus-url at all
    edge = start_edge(envoy_factory, server, "edge-1")
    port = server.listen_port

    wait_until(
        lambda: reading(server.model(model), "concurrency")["value"] == 0, timeout=20, message="never sampled"
    )
    assert server.model(model)["state"] == "STANDBY"
    assert set(send_batch(port, model, 60, workers=2)) == {"local-0", "local-1"}

    load = InFlight(port, model, workers=8, delay_s=2.0).start()
    started = time.monotonic()
    try:
        overflow = server.wait_state(model, "OVERFLOW", timeout=20)
        to_overflow = time.monotonic() - started
        c = reading(overflow, "concurrency")
        assert c["source"] == "envoy" and c["value"] >= 2, c
        assert "concurrency at" in overflow["reason"] and ">= threshold 2" in overflow["reason"], overflow
        active = local_stat(edge, model, "upstream_rq_active")
        assert sum(active.values()) >= 4, active
        wait_until(lambda: send_batch(port, model, 10, workers=2)[REMOTE] > 0, timeout=15)
        batch = send_batch(port, model, BATCH, workers=2)
        assert set(batch) <= {REMOTE, "local-0", "local-1"}, batch
        share = remote_percent(batch)
        assert abs(share - 40) <= SHARE_TOLERANCE, batch
        assert server.model(model)["state"] == "OVERFLOW"
        # The slow requests spill too: each has a 40 % chance, and a loaded machine sends few meanwhile.
        wait_until(lambda: load.answers[REMOTE] > 0, timeout=15, message=f"no slow request went remote: {load.answers}")
    finally:
        load.stop()
    released = time.monotonic()

    calm = server.wait_model(model, lambda m: reading(m, "concurrency")["condition"] == "calm")
    calm_seen = time.monotonic()
    assert calm["state"] == "OVERFLOW", calm
    standby = server.wait_state(model, "STANDBY", timeout=20)
    back = time.monotonic()
    # The calm reading was taken at most one evaluation (plus this poll) before we saw it.
    assert back - calm_seen >= buffer_s - 2 * EVALUATION_INTERVAL - 0.1, (back - calm_seen, standby)
    wait_batch_all(port, model, lambda k: k != REMOTE, "traffic never came back local")
    batch = send_batch(port, model, 100, workers=2)
    assert batch[REMOTE] == 0 and set(batch) == {"local-0", "local-1"}, batch
    assert load.answers[REMOTE] > 0 and sum(load.answers.values()) == sum(
        v for k, v in load.answers.items() if k in (REMOTE, "local-0", "local-1")
    ), load.answers
    report(
        "envoy_concurrency",
        remote_share_percent=share,
        load_to_overflow_s=to_overflow,
        release_to_standby_s=back - released,
        calm_seen_to_standby_s=back - calm_seen,
    )


# -- 5. onMetricError ---------------------------------------------------------------------------------------


def test_prometheus_down_overflow_mode_overflows_and_hold_keeps_the_state(
    policy_dir: Path,
    overflow_spillover: Callable[..., Spillover],
    envoy_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
    model_servers: Callable[..., ModelServer],
    prometheus: Callable[..., Prometheus],
) -> None:
    eager, holder, buffer_s = "eager", "holder", 1.0
    eager_local = model_servers("eager-0", eager)
    holder_local = model_servers("holder-0", holder)
    remote = upstream_factory(REMOTE)
    prom = prometheus([eager_local.address, holder_local.address])
    queue = [{"metric": "queue_length", "target": 5}]
    write(
        policy_dir / "eager.yaml",
        overflow_model(
            eager, [eager_local.address], remote,
            {"percentage": 30, "bufferDuration": f"{buffer_s:g}s", "onMetricError": "overflow"}, queue,
        ),
    )  # fmt: skip
    write(
        policy_dir / "holder.yaml",
        overflow_model(
            holder,
            [holder_local.address],
            remote,
            {"percentage": 30, "bufferDuration": f"{buffer_s:g}s"},
            queue,
        ),
    )
    server = overflow_spillover(policy_dir, prometheus_url=prom.url)
    start_edge(envoy_factory, server, "edge-1")
    port = server.listen_port

    # holder in OVERFLOW on a real reading, eager in STANDBY on a real calm one.
    holder_local.set_load(waiting=9)
    server.wait_state(holder, "OVERFLOW", timeout=20)
    # (eager reads 0 before Prometheus goes down: onMetricError overflow applies to a metric once read.)
    server.wait_model(eager, lambda m: m["state"] == "STANDBY" and reading(m, "queue_length")["value"] == 0)
    errors_before = metric_value(server, "spillover_metric_errors_total", model=holder)

    prom.stop()
    holder_local.set_load(waiting=0)  # unseen: nobody scrapes it any more
    stopped = time.monotonic()
    eager_doc = server.wait_state(eager, "OVERFLOW", timeout=20)
    to_overflow = time.monotonic() - stopped
    assert eager_doc["remote_share"] == 30, eager_doc
    assert "read as breached (onMetricError: overflow)" in eager_doc["reason"], eager_doc["reason"]
    assert reading(eager_doc, "queue_length")["condition"] == "unknown"
    wait_until(lambda: send_batch(port, eager, 10)[REMOTE] > 0, timeout=15, message="eager never sent remote")

    # hold: OVERFLOW is kept well past the buffer duration; the metric is unknown with an error and its
    # last good value.
    held_until = time.monotonic() + buffer_s + 2.0
    while time.monotonic() < held_until:
        doc = server.model(holder)
        assert doc["state"] == "OVERFLOW" and doc["remote_share"] == 30, doc
        time.sleep(0.1)
    q = reading(doc, "queue_length")
    assert q["condition"] == "unknown" and q["error"], q
    assert q["error"].startswith("prometheus:"), q
    assert q["value"] == 9, q  # the last value Prometheus gave
    assert "holding OVERFLOW" in doc["reason"], doc["reason"]
    assert metric_value(server, "spillover_metric_errors_total", model=holder) > errors_before
    batch = send_batch(port, holder, 100)
    assert batch[REMOTE] > 0, batch
    report("on_metric_error", prometheus_down_to_overflow_s=to_overflow)


def test_hold_keeps_standby_while_prometheus_is_down(
    policy_dir: Path,
    overflow_spillover: Callable[..., Spillover],
    envoy_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
) -> None:
    """hold in STANDBY: an unreachable Prometheus (never started: a closed port) neither triggers overflow
    nor is taken as calm; the metric is reported unknown with the connection error."""
    from tests.harness.ports import free_port

    model = "quiet"
    local = upstream_factory("local-0")
    remote = upstream_factory(REMOTE)
    queue = [{"metric": "queue_length", "target": 5}]
    write(
        policy_dir / "quiet.yaml", overflow_model(model, [local.address], remote, {"percentage": 30}, queue)
    )
    server = overflow_spillover(policy_dir, prometheus_url=f"http://127.0.0.1:{free_port()}")
    start_edge(envoy_factory, server, "edge-1")
    doc = server.wait_model(
        model, lambda m: m["status"].get("metrics") and reading(m, "queue_length")["error"]
    )
    assert doc["state"] == "STANDBY" and doc["remote_share"] == 0, doc
    q = reading(doc, "queue_length")
    assert q["condition"] == "unknown" and q["value"] is None and q["error"].startswith("prometheus:"), q
    assert "holding STANDBY" in doc["reason"], doc["reason"]
    assert set(send_batch(server.listen_port, model, 40)) == {"local-0"}


def test_on_metric_error_overflow_does_not_overflow_before_the_first_sample(
    policy_dir: Path,
    overflow_spillover: Callable[..., Spillover],
    envoy_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., HttpUpstream],
    model_servers: Callable[..., ModelServer],
    prometheus: Callable[..., Prometheus],
) -> None:
    """A (re)started spillover has no sample yet: that is not a metric error. With Prometheus up and the
    queue known to be 0, a model with `onMetricError: overflow` must not start in OVERFLOW (and then
    send its share remote for a whole bufferDuration)."""
    model = "eager"
    local = model_servers("eager-0", model)
    remote = upstream_factory(REMOTE)
    prom = prometheus([local.address])
    prom.wait_for_value('vllm:num_requests_waiting{model_name="eager"}', lambda v: v == [0.0], timeout=20)
    behavior = {"percentage": 30, "bufferDuration": "30s", "onMetricError": "overflow"}
    write(
        policy_dir / "eager.yaml",
        overflow_model(model, [local.address], remote, behavior, [{"metric": "queue_length", "target": 5}]),
    )
    server = overflow_spillover(policy_dir, prometheus_url=prom.url)
    start_edge(envoy_factory, server, "edge-1")
    doc = server.wait_model(model, lambda m: reading(m, "queue_length")["value"] == 0, timeout=20)
    transitions = metric_value(server, "spillover_model_transitions_total", model=model)
    assert (doc["state"], doc["remote_share"], transitions) == ("STANDBY", 0, 0), doc
    assert send_batch(server.listen_port, model, 40)[REMOTE] == 0
