"""The leader's view of every Envoy: peers' inputs checked and bounded, holes in the fleet's view make
Envoy metrics and endpoint health unknown (never a decision on part of the fleet)."""

from __future__ import annotations

from typing import Any

import pytest

from spillover.controller.fleet.inputs import FleetEnvoySource, FleetInputs, metric_key, parse_inputs
from spillover.controller.fleet.membership import FleetEnvoy
from spillover.sources.metrics.envoy import EnvoyPartial, EnvoyScrape, ProxyStats
from spillover.sources.metrics.render import EnvoyQuery
from tests.harness.clock import FakeClock

QUERY = EnvoyQuery("http.ingress.downstream_rq_active", "gauge", "pods")
KEY = metric_key(QUERY, 60.0)


def document(identity: str = "replica-b", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "v": 1, "identity": identity, "age": 0.1, "envoys": ["e-2"],
        "metrics": {KEY: [1, 7.0, 7.0, 0.0, 1, 1, "", ""]},
        "health": {"llama/local/rr": [2, 2]}, "loads": {"llama/local/rr": {"10.0.0.1:80": [10, 1]}},
    }
    return {**base, **changes}


def test_a_peers_inputs_are_read_back() -> None:
    inputs = parse_inputs(document(), "replica-b", received=5.0)
    assert inputs.envoys == frozenset({"e-2"}) and inputs.metrics[KEY] == EnvoyPartial(1, 7.0, 7.0, 0.0, 1, 1)
    assert inputs.health is not None and inputs.health["llama/local/rr"].healthy == 2
    assert inputs.loads["llama/local/rr"]["10.0.0.1:80"].rq_total == 10


@pytest.mark.parametrize("changes", [
    {"v": 2}, {"identity": "someone-else"}, {"age": "old"}, {"metrics": {KEY: [1, 2]}},
    {"metrics": {KEY: [-1, 7.0, 7.0, 0.0, 1, 1, "", ""]}}, {"metrics": {KEY: [1, float("inf"), 7.0, 0.0, 1, 1, "", ""]}},
    {"health": {"c": [1]}}, {"loads": {"c": {"a": ["x", 1]}}}, {"metrics": {str(i): [] for i in range(100_001)}},
])
def test_malformed_or_unbounded_inputs_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        parse_inputs(document(**changes), "replica-b", received=5.0)


class Fleet:
    """What FleetInputs asks of the fleet, set by the test."""

    def __init__(self) -> None:
        self.local = {"e-1"}
        self.peers = [("replica-b", "http://b")]
        # Connected at 10 (the wall clock of the replica serving them; the test's clock is both).
        self.envoys = [FleetEnvoy("e-1", "edge", ("me",), 10.0), FleetEnvoy("e-2", "edge", ("replica-b",), 10.0)]
        self.unnamed: dict[str, int] = {}

    def inputs(self, clock: FakeClock) -> FleetInputs:
        return FleetInputs(
            "me", local_envoys=lambda: self.local, peers=lambda: self.peers, fleet_envoys=lambda: self.envoys,
            unnamed=lambda: self.unnamed, deciding=lambda: True, client=None, max_age=2.0, join_grace=2.0,
            clock=clock, wall=clock,
        )


def test_an_envoy_nobody_read_is_a_hole_once_past_its_join_grace() -> None:
    clock = FakeClock(10.0)
    fleet = Fleet()
    inputs = fleet.inputs(clock)
    assert inputs.missing() == ""  # e-2 just connected: its replica's next round will read it
    clock.now = 12.0
    assert inputs.missing() == "1 Envoy(s) of replica replica-b: no peer channel"
    inputs.received["replica-b"] = parse_inputs(document(), "replica-b", received=12.0)
    assert inputs.missing() == ""
    clock.now = 13.95  # 1.95 s since received + 0.1 s old when sent: too old
    assert "replica-b" in inputs.missing()
    # Unnamed Envoys (beyond a Lease's budget) are covered only by their replica's fresh inputs.
    inputs.received["replica-b"] = parse_inputs(document(), "replica-b", received=13.95)
    fleet.unnamed = {"replica-c": 3}
    assert inputs.missing() == "3 Envoy(s) of replica replica-c: no peer channel"


def test_the_leaders_envoy_metric_is_every_replicas_or_unknown() -> None:
    clock = FakeClock(12.0)
    fleet = Fleet()
    inputs = fleet.inputs(clock)
    source = FleetEnvoySource(lambda: [], inputs)
    scrape = EnvoyScrape(12.0, 12.0, {"http://e1": ProxyStats({QUERY.stat: 3.0})})
    clock.now = 15.0
    hole = source.evaluate(scrape, QUERY, "sum")
    assert hole.value is None and "not every Envoy of the fleet reported" in hole.error
    inputs.received["replica-b"] = parse_inputs(document(), "replica-b", received=15.0)
    assert source.evaluate(scrape, QUERY, "sum").value == 10.0  # 3 here + 7 on replica-b's Envoy
    assert source.evaluate(scrape, QUERY, "max").value == 7.0
    # What it read itself is kept for the leader of another time (the peer channel serves it).
    served = inputs.document()["metrics"][KEY]
    assert served[:3] == [1, 3.0, 3.0]
    without = parse_inputs(document(metrics={}), "replica-b", received=15.0)
    inputs.received["replica-b"] = without
    assert "has not read this metric yet" in source.evaluate(scrape, QUERY, "sum").error
