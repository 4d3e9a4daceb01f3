"""`spillover bootstrap --stats-port`: a real Envoy serves GET /stats/prometheus on that port, with the
per-model tags, and nothing else of its admin (which can drain listeners or stop Envoy)."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from typing import Any

import pytest

from spillover.translate.bootstrap import ADMIN_CLUSTER_NAME, STATS_LISTENER_NAME, build_bootstrap
from tests.harness.envoy import Envoy
from tests.harness.polling import wait_until
from tests.harness.ports import free_port


def ask(port: int, method: str, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@pytest.mark.timeout(90)
def test_only_prometheus_stats_are_served_on_the_stats_port(
    envoy_factory: Callable[..., Envoy], xds_server: Any
) -> None:
    stats_port, admin_port = free_port(), free_port()
    xds_server.set_snapshot("edge", [])  # an empty config at once: Envoy's init does not wait for one
    bootstrap = build_bootstrap("stats-1", "edge", xds_server.xds_address, admin_port=admin_port, stats_port=stats_port)
    assert bootstrap["static_resources"]["listeners"][0]["name"] == STATS_LISTENER_NAME
    assert [c["name"] for c in bootstrap["static_resources"]["clusters"]][-1] == ADMIN_CLUSTER_NAME
    envoy = envoy_factory(bootstrap, name="stats-1")
    wait_until(lambda: ask(stats_port, "GET", "/stats/prometheus")[0] == 200, timeout=20, message="stats port")

    status, body = ask(stats_port, "GET", "/stats/prometheus")
    assert status == 200 and b"# TYPE envoy_server_uptime gauge" in body
    assert ask(stats_port, "GET", "/stats/prometheus?usedonly")[0] == 200
    for method, path in [("POST", "/quitquitquit"), ("POST", "/drain_listeners"), ("POST", "/logging?level=trace"),
                         ("GET", "/clusters"), ("GET", "/config_dump"), ("GET", "/stats"), ("POST", "/stats/prometheus"),
                         ("GET", "/stats/prometheus/../../quitquitquit")]:
        assert ask(stats_port, method, path)[0] == 404, (method, path)
    assert envoy.is_running()
    # The admin itself still answers where it was.
    assert ask(admin_port, "GET", "/ready")[0] == 200


@pytest.mark.parametrize(("stats_port", "admin_port"), [(24901, 24901), (24902, 0), (70000, 24901)])
def test_a_stats_port_needs_a_port_of_its_own(stats_port: int, admin_port: int) -> None:
    with pytest.raises(ValueError, match="stats_port"):
        build_bootstrap("n", "c", "127.0.0.1:24018", admin_port=admin_port, stats_port=stats_port)
