"""least-latency weights (pure): inverse-latency endpoint weights with hysteresis."""

from __future__ import annotations

from spillover.decide.latency_weights import latency_weights


def test_faster_endpoints_weigh_proportionally_more() -> None:
    weights = latency_weights({"a": 0.1, "b": 0.2, "c": 0.4}, {})
    assert weights == {"a": 100, "b": 50, "c": 25}


def test_unmeasured_endpoints_get_the_median_so_they_are_measured() -> None:
    assert latency_weights({"a": 0.1, "b": 0.5, "new": None}, {}) == {"a": 100, "b": 20, "new": 60}
    assert latency_weights({"a": None, "b": None}, {}) == {"a": 1, "b": 1}


def test_small_changes_keep_the_current_weights() -> None:
    current = {"a": 100, "b": 50}
    assert latency_weights({"a": 0.1, "b": 0.18}, current) == current  # 55: within the hysteresis
    assert latency_weights({"a": 0.1, "b": 0.4}, current) == {"a": 100, "b": 25}
    assert latency_weights({"a": 0.1, "b": 0.2, "c": 0.2}, current) == {"a": 100, "b": 50, "c": 50}
