"""least-latency end to end: spillover estimates each endpoint's latency from Envoy's per-host stats and
pushes inverse-latency weights over EDS, so a slow endpoint gets little traffic."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from spillover.translate.bootstrap import build_bootstrap
from tests.harness.envoy import Envoy
from tests.harness.load import post_model, served_by
from tests.harness.policy_files import model_deployment, write
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.serve import Spillover

CLUSTER = "fastest/local/round_robin_latency"


def _weights(server: Spillover, node: str) -> dict[int, int]:
    sent = server.get_json(f"/debug/config?node={node}")["resources"]["EDS"]
    (cla,) = [r["resource"] for r in sent if r["name"] == CLUSTER]
    return {
        e["endpoint"]["address"]["socket_address"]["port_value"]: e.get("load_balancing_weight", 1)
        for e in cla["endpoints"][0]["lb_endpoints"]
    }


def test_a_slow_endpoint_gets_little_traffic(
    policy_dir: Path,
    spillover_factory: Callable[..., Spillover],
    envoy_factory: Callable[..., Envoy],
    upstream_factory: Callable[..., object],
) -> None:
    fast = upstream_factory("fast", delay_s=0.01)
    slow = upstream_factory("slow", delay_s=0.25)
    document = model_deployment("fastest", [fast.address, slow.address])  # type: ignore[attr-defined]
    document["spec"]["routing"] = {"profiles": {"default": {"routingStrategy": "least-latency"}}}
    write(policy_dir / "fastest.yaml", document)
    server = spillover_factory(policy_dir, extra_args=["--evaluation-interval", "0.25"])
    envoy = envoy_factory(
        build_bootstrap("e1", "edge", server.xds_address, admin_port=free_port()), name="e1"
    )
    wait_until(envoy.is_ready, timeout=20, message="envoy ready")
    wait_until(lambda: post_model(server.listen_port, "fastest").status == 200, timeout=15, message="model served")
    # No preference before the load: 1 each while nothing is measured, or, once the requests that found the
    # model served were (one endpoint measured, the other given the median), equal weights of 100.
    before = _weights(server, "e1")
    assert set(before) == {fast.port, slow.port} and len(set(before.values())) == 1, before  # type: ignore[attr-defined]

    served: Counter[str] = Counter()
    lock = threading.Lock()
    stop = time.monotonic() + 12

    def client() -> None:
        while time.monotonic() < stop:
            who = served_by(post_model(server.listen_port, "fastest")) or "error"
            with lock:
                served[who] += 1

    workers = [threading.Thread(target=client) for _ in range(6)]
    for worker in workers:
        worker.start()
    try:
        weights = wait_until(
            lambda: (w := _weights(server, "e1"))[fast.port] >= 5 * w[slow.port] and w,  # type: ignore[attr-defined]
            timeout=10,
            message="latency weights favour the fast endpoint",
        )
        with lock:
            served.clear()
        time.sleep(2)  # a measured window under the new weights
        with lock:
            window = Counter(served)
    finally:
        stop = 0
        for worker in workers:
            worker.join()
    assert window["error"] == 0, window
    assert window["fast"] >= 0.8 * (window["fast"] + window["slow"]), (window, weights)
    assert window["slow"] > 0, "the slow endpoint still gets some traffic, so it keeps being measured"
