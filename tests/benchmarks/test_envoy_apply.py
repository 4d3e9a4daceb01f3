"""The Envoy-side benchmark at a tiny size, against a real Envoy: it reports the initial load and each
change's row with its figures (the figures themselves belong to benchmarks/results/)."""

from __future__ import annotations

from benchmarks import envoy_apply


def test_reports_the_initial_load_and_a_row_per_change_with_envoys_cpu() -> None:
    data = envoy_apply.run(20, 1, log=lambda _line: None, load_timeout=300.0)
    assert data["initial"]["run_s"] > 0
    assert data["initial"]["rss_after_mib"] > data["initial"]["rss_before_mib"]
    assert set(data["initial"]["first_ack"]) >= {"CDS", "EDS", "LDS", "RDS"}
    decision, endpoint = data["changes"]["decision"], data["changes"]["endpoint"]
    # A flip re-sends the route table only; a new endpoint its ClusterLoadAssignments only.
    assert decision["types"] == ["RDS"]
    assert endpoint["types"] == ["EDS"]
    for row in (decision, endpoint):
        assert row["n"] == 1
        assert row["wall_s"]["median"] > 0
        assert row["run_s"]["median"] > 0  # Envoy parsed something before it ACKed
        assert row["bytes_median"] > 0
    assert data["flip_peak"]["peak_mib"] >= data["flip_peak"]["rss_at_reset_mib"]
    text = envoy_apply.markdown(
        {
            "runs": [data],
            "machine": {"date": "d", "git": "g", "summary": "s", "kernel": "k", "usable_cores": 2},
            "command": "c",
            "envoy_version": "1.40.0",
        }
    )
    assert "## 20 models (sotw, without active health checks, splits in the route)" in text
    assert "| decision | RDS: " in text
    assert "| endpoint | EDS: " in text
    assert "Initial load (publish -> every type ACKed): " in text


def test_with_the_splits_in_runtime_a_flip_is_an_rtds_update_beside_the_route_modes_row() -> None:
    route, runtime = (
        envoy_apply.run(20, 1, log=lambda _line: None, load_timeout=300.0, split_weights=mode, changes=("decision",))
        for mode in ("route", "runtime")
    )
    assert "RTDS" in runtime["initial"]["first_ack"]
    assert route["changes"]["decision"]["types"] == ["RDS"]
    decision = runtime["changes"]["decision"]
    assert decision["types"] == ["RTDS"]
    assert decision["run_s"]["median"] > 0
    # The layer holds the few spilling models' weights, not every model's routes.
    assert decision["bytes_median"] < route["changes"]["decision"]["bytes_median"] / 4
    text = envoy_apply.markdown(
        {
            "runs": [route, runtime],
            "machine": {"date": "d", "git": "g", "summary": "s", "kernel": "k", "usable_cores": 2},
            "command": "c",
            "envoy_version": "1.40.0",
        }
    )
    assert "## Decision flips, splits in the route vs in runtime" in text
    assert "| 20 | runtime | RTDS " in text
