"""Real Envoys through an xDS server of two worker processes: config, traffic and an update reach them,
and the main process's views (admin endpoint, metrics, registry) show them wherever they landed."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest

from spillover.server.resources import ROUTE
from spillover.translate.bootstrap import build_bootstrap
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.xds import XdsThread
from tests.server.test_envoy_xds import (
    GROUP,
    EnvoyFactory,
    UpstreamFactory,
    resources,
    served_by,
    synced,
)


@pytest.fixture
def workers_server() -> Iterator[XdsThread]:
    server = XdsThread(workers=2)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_envoys_are_served_through_two_workers(
    workers_server: XdsThread, envoy_factory: EnvoyFactory, upstream_factory: UpstreamFactory, delta: bool
) -> None:
    xds = workers_server
    upstreams = {"a": upstream_factory("a"), "b": upstream_factory("b")}
    port = free_port()
    xds.set_snapshot(GROUP, resources(port, {"a": 1}, upstreams))
    admin_ports = {f"n{i}": free_port() for i in range(3)}
    envoys = []
    for node_id, admin_port in admin_ports.items():
        bootstrap = build_bootstrap(node_id, GROUP, xds.xds_address, admin_port=admin_port, delta=delta)
        envoys.append(envoy_factory(bootstrap, name=node_id))
    for envoy in envoys:
        wait_until(envoy.is_ready, timeout=15, message=f"envoy {envoy.name} never became ready")

    assert wait_until(lambda: served_by(port) == "a", timeout=10)
    for node_id in admin_ports:
        wait_until(functools.partial(synced, xds, node_id), timeout=15, message=f"{node_id} not SYNCED")
    proxies = {p["node_id"]: p for p in xds.proxies()}
    assert sorted(proxies) == ["n0", "n1", "n2"]
    assert all(p["worker"] in (0, 1) for p in proxies.values())
    # The admin address each Envoy advertises, as the metric sources read it from the registry.
    assert {n: p["admin_url"] for n, p in proxies.items()} == {
        n: f"http://127.0.0.1:{port}" for n, port in admin_ports.items()
    }
    server = xds.server
    assert server is not None
    admin_urls = xds.call_soon(lambda: server.proxies.admin_urls(GROUP))
    assert admin_urls == [f"http://127.0.0.1:{admin_ports[n]}" for n in sorted(admin_ports)]
    assert xds.call_soon(lambda: server.proxies.replicas(GROUP)) == 3
    assert xds.metric("spillover_xds_connected_proxies", {"group": GROUP, "mode": "delta" if delta else "sotw"}) == 3

    # A change reaches every Envoy, at the version the main process published.
    snapshot = xds.set_snapshot(GROUP, resources(port, {"b": 1}, upstreams))
    assert wait_until(lambda: served_by(port) == "b", timeout=15)
    for node_id in admin_ports:
        states = wait_until(functools.partial(synced, xds, node_id), timeout=15, message=f"{node_id} not SYNCED")
        assert states["RDS"]["acked_version"] == snapshot.version(ROUTE)
    assert xds.metric("spillover_xds_nacks_total", {"type": "CDS"}) == 0
    # Counted by the worker that sent them, summed: the clusters once per Envoy, the routes twice.
    assert xds.responses("CDS") == 3
    assert xds.responses("RDS") >= 6
