"""The latency estimate behind least-latency weights (Little's law over Envoy counters), and the loads and
health it reads from Envoy's /clusters."""

from __future__ import annotations

import pytest

from spillover.sources.metrics.health import (
    ClusterHealth,
    HostLoad,
    merge,
    parse_clusters,
    parse_loads,
    sum_loads,
)
from spillover.sources.metrics.latency import LatencyEstimator


def test_littles_law_from_counters() -> None:
    estimator = LatencyEstimator(window=10)
    # 20 completions per second with 2 in flight on average: 100 ms per request.
    for second in range(6):
        estimator.observe(float(second), {"m/local/round_robin_latency": {"h:1": HostLoad(rq_total=20 * second, rq_active=2)}})
    assert estimator.latency(["m/local/round_robin_latency"], "h:1") == pytest.approx(0.1)
    assert estimator.latency(["m/local/round_robin_latency"], "other:1") is None
    assert estimator.local_clusters_of("m") == ["m/local/round_robin_latency"]


def test_local_clusters_of_a_model_leave_out_a_model_named_after_its_prefix() -> None:
    estimator = LatencyEstimator()
    loads = {"m/local/random": {"h:1": HostLoad(1, 1)}, "m/local/x/local/random": {"h:1": HostLoad(1, 1)}}
    estimator.observe(0.0, loads)
    assert estimator.local_clusters_of("m") == ["m/local/random"]
    assert estimator.local_clusters_of("m/local/x") == ["m/local/x/local/random"]


def test_a_counter_reset_starts_the_history_again() -> None:
    estimator = LatencyEstimator()
    estimator.observe(0.0, {"c": {"h:1": HostLoad(100, 1)}})
    estimator.observe(1.0, {"c": {"h:1": HostLoad(5, 1)}})  # an Envoy restarted
    assert estimator.latency(["c"], "h:1") is None
    estimator.observe(2.0, {"c": {"h:1": HostLoad(15, 1)}})
    assert estimator.latency(["c"], "h:1") == pytest.approx(0.1)


CLUSTERS = {
    "cluster_statuses": [
        {
            "name": "m/local/rr",
            "host_statuses": [
                {
                    "address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}},
                    "stats": [{"name": "rq_total", "value": "7"}, {"name": "rq_active", "type": "GAUGE", "value": "2"}],
                    "health_status": {"eds_health_status": "HEALTHY"},
                },
                {
                    "address": {"socket_address": {"address": "10.0.0.2", "port_value": 80}},
                    "stats": [{"name": "rq_total"}],
                    "health_status": {"eds_health_status": "HEALTHY", "failed_active_health_check": True},
                },
            ],
        }
    ]
}


def test_envoy_cluster_health_and_loads_are_parsed() -> None:
    assert parse_clusters(CLUSTERS) == {"m/local/rr": ClusterHealth(healthy=1, total=2)}
    loads = parse_loads(CLUSTERS)["m/local/rr"]
    assert loads == {"10.0.0.1:80": HostLoad(7, 2), "10.0.0.2:80": HostLoad(0, 0)}
    assert sum_loads([parse_loads(CLUSTERS)] * 2)["m/local/rr"]["10.0.0.1:80"] == HostLoad(14, 4)
    # The most optimistic Envoy's view wins: one lagging Envoy must not cause a failover.
    worse = {"m/local/rr": ClusterHealth(healthy=0, total=2)}
    assert merge([worse, parse_clusters(CLUSTERS)]) == {"m/local/rr": ClusterHealth(1, 2)}
