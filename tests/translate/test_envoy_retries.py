"""A model route's retry policy (spillover.translate.retries) on a real Envoy 1.40 with real upstreams: the
parts it carries only where they do something must do it there. (Failover's retries to the other side:
tests/translate/test_envoy_failover.py.)"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from spillover.ir import Endpoint, Gateway, Listener, Model, Profile, Retries
from spillover.translate import translate
from tests.harness.client import Response, request
from tests.harness.envoy import Envoy
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.static_bootstrap import to_static_bootstrap
from tests.harness.upstream import HttpUpstream

CHAT = "/v1/chat/completions"


def _start(envoy_factory: Callable[..., Envoy], model: Model) -> tuple[Envoy, int]:
    port = free_port()
    resources = translate(Gateway("test", Listener("127.0.0.1", port), (model,)))
    envoy = envoy_factory(to_static_bootstrap(resources), name="retries")
    wait_until(envoy.is_ready, timeout=15, message="envoy never became ready")
    wait_until(lambda: _post(port, "__probe__").status == 404, timeout=15, message="listener")
    return envoy, port


def _post(port: int, model: str) -> Response:
    return request("POST", f"http://127.0.0.1:{port}{CHAT}", body={"model": model},
                   headers={"content-type": "application/json", "x-model": model}, timeout=10)  # fmt: skip


def test_with_several_endpoints_a_retry_avoids_the_endpoint_that_just_failed(
    envoy_factory: Callable[..., Envoy], upstream_factory: Callable[..., HttpUpstream]
) -> None:
    """A random pick would send a retry back to the dead endpoint half the time; the previous_hosts
    predicate has Envoy pick again (up to 3 times) instead. Measured by Envoy's own counts: retries per
    request that needed any (upstream_rq_retry / upstream_rq_retry_success) are 1 + 1/16 + ... (1.07) expected
    with the predicate, 1 + 1/2 + 1/4 + 1/8 without it (and 1 such request in 16 would fail)."""
    alive = upstream_factory("alive")
    dead = Endpoint("127.0.0.1", free_port())  # nothing listens: connection refused
    retries = Retries(4, ("connect-failure",))
    envoy, port = _start(envoy_factory, Model("m", (dead, Endpoint("127.0.0.1", alive.port)),
                                              profiles=(Profile("default", "random"),), retries=retries))  # fmt: skip
    statuses = Counter(_post(port, "m").status for _ in range(120))
    assert statuses == Counter({200: 120}), statuses
    stats = envoy.stats()
    retried = stats.get("cluster.m_local_random.upstream_rq_retry_success", 0)
    retries_made = stats.get("cluster.m_local_random.upstream_rq_retry", 0)
    # About half the requests start at the dead endpoint; at least some must have.
    assert retried >= 30, stats
    assert retries_made / retried <= 1.3, (retries_made, retried)
