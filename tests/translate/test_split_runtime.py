"""Splits in Envoy's runtime (`split_weights: runtime`): a real Envoy 1.40 on spillover's xDS server.

The routes carry weighted clusters with `runtime_key_prefix` and the fallback weights (all local); the
splits are the entries of one Runtime resource, which Envoy takes over ADS through the RTDS layer of
its bootstrap (`build_bootstrap(..., split_weights="runtime")`). What must hold, SotW and Delta alike:
a flip moves traffic without an RDS update (the route table Envoy runs keeps its version), a model's
return to all-local (its keys leave the layer) sends everything local again, an Envoy waits for the
layer before it takes any traffic, an Envoy that starts while spillover serves gets the current
splits before its first request, and an Envoy whose bootstrap lacks the layer (it serves, all local) is
reported: a warning, `spillover_xds_streams_without_split_layer`, /debug/proxies and `spillover status`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable

import pytest

from spillover.cli.status import format_status
from spillover.ir import Endpoint, Gateway, Listener, Model, RemoteBackend, TrafficSplit
from spillover.names import SPLIT_RUNTIME_LAYER
from spillover.server.resources import ROUTE, RUNTIME
from spillover.translate import translate
from spillover.translate.bootstrap import build_bootstrap
from tests.harness.client import request as http_request
from tests.harness.envoy import Envoy
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.upstream import HttpUpstream
from tests.harness.xds import XdsThread

CHAT = "/v1/chat/completions"
GROUP = "edge"
MODEL = "qwen"
ALL_LOCAL = TrafficSplit()
ALL_REMOTE = TrafficSplit(0, 100)
HALF = TrafficSplit(50, 50)
PROBES = 60
RDS_UPDATES = "http.spillover.rds.spillover_routes.update_success"
WITHOUT_LAYER = "spillover_xds_streams_without_split_layer"


class Edge:
    def __init__(self, xds: XdsThread, port: int, local: HttpUpstream, remote: HttpUpstream, delta: bool) -> None:
        self.xds, self.port, self.local, self.remote, self.delta = xds, port, local, remote, delta
        self.envoy: Envoy | None = None
        self.node = ""

    def messages(self, split: TrafficSplit, split_weights: str = "runtime") -> list[object]:
        model = Model(
            MODEL,
            (Endpoint("127.0.0.1", self.local.port),),
            remote=RemoteBackend(host="127.0.0.1", port=self.remote.port, scheme="http"),
            split=split,
        )
        gateway = Gateway(GROUP, Listener("127.0.0.1", self.port), (model,), split_weights=split_weights)
        return list(translate(gateway).messages())

    def start(self, factory: Callable[..., Envoy], node: str, ready: bool = True, layer: bool = True) -> Envoy:
        """`layer=False`: a bootstrap without the RTDS layer (the default mode's)."""
        bootstrap = build_bootstrap(node, GROUP, self.xds.xds_address, admin_port=0, delta=self.delta,
                                    split_weights="runtime" if layer else "route")
        self.envoy, self.node = factory(bootstrap, name=node), node
        if ready:
            self.wait_serving()
        return self.envoy

    def wait_serving(self) -> None:
        assert self.envoy is not None
        wait_until(self.envoy.is_ready, timeout=15, message=f"{self.node} never became ready over ADS")
        url = f"http://127.0.0.1:{self.port}{CHAT}"
        wait_until(
            lambda: http_request("POST", url, body={"model": MODEL}, headers={"x-model": MODEL}).status == 200,
            timeout=10, message=f"{self.node} never served {MODEL}",
        )

    def sides(self) -> Counter[str]:
        """Who served each of PROBES requests (the upstreams answer with their name)."""
        served: Counter[str] = Counter()
        for _ in range(PROBES):
            response = http_request(
                "POST", f"http://127.0.0.1:{self.port}{CHAT}", body={"model": MODEL}, headers={"x-model": MODEL},
                timeout=5,
            )
            assert response.status == 200, (response.status, response.body)
            served[json.loads(response.body)["upstream"]] += 1
        return served

    def without_layer(self) -> float:
        """spillover_xds_streams_without_split_layer, as of now (worker processes asked)."""
        return self.xds.metric(WITHOUT_LAYER)

    def rds_version(self) -> str | None:
        assert self.envoy is not None
        for entry in self.envoy.config_dump(resource="dynamic_route_configs").get("configs", []):
            return str(entry.get("version_info"))
        return None

    def acked(self, short_type: str) -> str | None:
        state = self.xds.type_state(self.node, short_type)
        return None if state is None else str(state["acked_version"])

    def flip(self, split: TrafficSplit) -> None:
        """Publish `split`; return once Envoy ACKed the new layer. Asserts the route table is unchanged."""
        routes, running = self.acked("RDS"), self.rds_version()
        snapshot = self.xds.set_snapshot(GROUP, self.messages(split))
        assert snapshot.version(ROUTE) == routes, "the flip changed the route table"
        version = snapshot.version(RUNTIME)
        wait_until(lambda: self.acked("RTDS") == version, timeout=10, message=f"RTDS {version} never ACKed")
        assert self.rds_version() == running


@pytest.fixture(params=["sotw", "delta"])
def edge(request: pytest.FixtureRequest, xds_server: XdsThread, upstream_factory: Callable[..., HttpUpstream]) -> Edge:
    return Edge(xds_server, free_port(), upstream_factory("local"), upstream_factory("remote"), request.param == "delta")


def test_a_flip_moves_the_traffic_without_an_rds_update(edge: Edge, envoy_factory: Callable[..., Envoy]) -> None:
    edge.xds.set_snapshot(GROUP, edge.messages(ALL_LOCAL))
    envoy = edge.start(envoy_factory, "edge-flip")
    assert edge.sides() == {"local": PROBES}
    updates = envoy.stats()["runtime.update_success"]
    rds_updates = envoy.stats()[RDS_UPDATES]
    edge.flip(ALL_REMOTE)
    assert edge.sides() == {"remote": PROBES}
    # The debug views show the layer as sent, and the stream's RTDS state.
    (sent,) = edge.xds.config(edge.node)["resources"]["RTDS"]
    assert sent["name"] == SPLIT_RUNTIME_LAYER
    assert sent["resource"] == {
        "name": SPLIT_RUNTIME_LAYER,
        "layer": {"spillover.split.qwen/local/random": 0.0, "spillover.split.qwen/remote": 100.0},
    }
    state = edge.xds.type_state(edge.node, "RTDS")
    assert state is not None and state["status"] == "SYNCED" and state["acked_version"] == state["current_version"]
    table = format_status(edge.xds.proxies()).splitlines()
    assert table[0].split() == ["NODE", "GROUP", "MODE", "STATUS", "CDS", "EDS", "SDS", "RTDS", "LDS", "RDS"]
    (row,) = [line for line in table if line.startswith(edge.node)]
    assert f"SYNCED {state['acked_version'][:8]}" in row, table
    # It asked for the layer before its clusters: not reported as lacking it.
    assert edge.without_layer() == 0 and edge.xds.proxy(edge.node)["without_split_layer"] is False  # type: ignore[index]
    edge.flip(HALF)
    half = edge.sides()
    assert set(half) == {"local", "remote"} and min(half.values()) >= PROBES // 5, half
    edge.flip(ALL_LOCAL)  # the model's keys leave the layer: the route's fallback weights apply
    assert edge.sides() == {"local": PROBES}
    after = envoy.stats()
    assert after["runtime.update_success"] == updates + 3
    assert after[RDS_UPDATES] == rds_updates
    entries = json.loads(envoy.admin_get("/runtime"))["entries"]
    assert not [key for key in entries if key.startswith("spillover.split.")], entries


def test_envoy_waits_for_the_layer_before_it_serves(edge: Edge, envoy_factory: Callable[..., Envoy]) -> None:
    # The same resources without their layer (what a spillover serving the splits in the routes sends).
    edge.xds.set_snapshot(GROUP, edge.messages(ALL_REMOTE, split_weights="route"))
    envoy = edge.start(envoy_factory, "edge-wait", ready=False)
    wait_until(lambda: edge.xds.type_state(edge.node, "RTDS") is not None, timeout=15, message="no RTDS request")
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # not a sleep: each look could fail
        assert envoy.server_info()["state"] == "PRE_INITIALIZING"
        # Its clusters are asked for only once the layer is there: nothing can route on fallback weights.
        assert edge.xds.type_state(edge.node, "CDS") is None
        time.sleep(0.2)
    edge.xds.set_snapshot(GROUP, edge.messages(ALL_REMOTE))
    edge.wait_serving()
    assert edge.sides() == {"remote": PROBES}
    assert envoy.stats()["runtime.init_fetch_timeout"] == 0


def test_an_envoy_started_while_spilling_gets_the_current_split(
    edge: Edge, envoy_factory: Callable[..., Envoy]
) -> None:
    edge.xds.set_snapshot(GROUP, edge.messages(ALL_LOCAL))
    first = edge.start(envoy_factory, "edge-restart")
    edge.flip(ALL_REMOTE)
    assert edge.sides() == {"remote": PROBES}
    first.stop()
    # The same node again (a restarted pod), spillover serving all along: its first requests go remote.
    second = edge.start(envoy_factory, "edge-restart")
    assert second.pid != first.pid
    assert edge.sides() == {"remote": PROBES}
    layer = json.loads(second.admin_get("/runtime"))["layers"]
    assert SPLIT_RUNTIME_LAYER in layer, layer


def test_an_envoy_without_the_layer_is_reported(
    edge: Edge, envoy_factory: Callable[..., Envoy], caplog: pytest.LogCaptureFixture
) -> None:
    """The danger: it serves, and serves everything locally whatever the split. The server tells it from the
    order of its requests (its clusters asked for without the layer) and says so."""
    caplog.set_level(logging.WARNING, logger="spillover.server.service")
    edge.xds.set_snapshot(GROUP, edge.messages(ALL_REMOTE))
    edge.start(envoy_factory, "edge-no-layer", layer=False)
    assert edge.sides() == {"local": PROBES}  # the routes' fallback weights: no spill ever
    assert edge.without_layer() == 1
    proxy = edge.xds.proxy(edge.node)
    assert proxy is not None and proxy["without_split_layer"] is True and edge.xds.type_state(edge.node, "RTDS") is None
    (line,) = [r.getMessage() for r in caplog.records if "RTDS layer" in r.getMessage()]
    assert "node 'edge-no-layer' (group 'edge'" in line and "bootstrap" in line, line
    table = format_status(edge.xds.proxies()).splitlines()
    (row,) = [line for line in table if line.startswith(edge.node)]
    assert row.find("MISSING") == table[0].index("RTDS"), table  # in the RTDS column (the table is aligned)
    assert any(line.startswith("warning: edge-no-layer has no RTDS layer") for line in table), table
    assert edge.envoy is not None
    edge.envoy.stop()
    wait_until(lambda: edge.xds.proxy(edge.node) is None, timeout=10, message="its stream never ended")
    assert edge.without_layer() == 0


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_a_flip_through_xds_workers(
    delta: bool, envoy_factory: Callable[..., Envoy], upstream_factory: Callable[..., HttpUpstream]
) -> None:
    """The layer is one more type to the worker processes (`--xds-workers`): shipped and served alike."""
    with XdsThread(workers=2) as xds:
        edge = Edge(xds, free_port(), upstream_factory("local"), upstream_factory("remote"), delta)
        xds.set_snapshot(GROUP, edge.messages(ALL_LOCAL))
        edge.start(envoy_factory, "edge-workers")
        assert edge.sides() == {"local": PROBES}
        edge.flip(ALL_REMOTE)
        assert edge.sides() == {"remote": PROBES}
        proxy = xds.proxy(edge.node)
        assert proxy is not None and proxy.get("worker") in (0, 1), proxy  # served by a worker process
        assert edge.without_layer() == 0
        # The same gateway restarted without the layer, on whichever worker: reported by the main process.
        assert edge.envoy is not None
        edge.envoy.stop()
        wait_until(lambda: xds.proxy(edge.node) is None, timeout=10, message="its stream never ended")
        edge.start(envoy_factory, "edge-workers-no-layer", layer=False)
        assert edge.sides() == {"local": PROBES}  # all remote decided, all local served
        assert edge.without_layer() == 1
        proxy = xds.proxy(edge.node)
        assert proxy is not None and proxy["without_split_layer"] is True and proxy.get("worker") in (0, 1), proxy
