"""The SRDS benchmark's apply part at a tiny size, against real Envoys: per layout, what a flip sent and how
many tables Envoy rebuilt (the figures themselves belong to benchmarks/results/scoped-routes.md)."""

from __future__ import annotations

from benchmarks import scoped_routes


def test_over_delta_a_flip_sends_and_rebuilds_one_table_with_srds_and_the_whole_table_without() -> None:
    data = scoped_routes.apply_run(20, 1, delta=True, log=lambda _line: None)
    table, over_rds, inline = (data["layouts"][name] for name in ("table", "srds+rds", "srds-inline"))
    assert table["types"] == over_rds["types"] == ["RDS"]
    assert inline["types"] == ["ScopedRouteConfiguration"]
    assert table["sent_resources"] == over_rds["sent_resources"] == inline["sent_resources"] == 1
    # The one table holds all 20 models; a scope's table, one.
    assert table["bytes_median"] > 5 * over_rds["bytes_median"]
    # Envoy's own counters: one table rebuilt per flip; inline, the scope set instead.
    assert table["reloads_per_flip"] == {"rds": 1, "srds": 0}
    assert over_rds["reloads_per_flip"] == {"rds": 1, "srds": 0}
    assert inline["reloads_per_flip"] == {"rds": 0, "srds": 1}
    for row in (table, over_rds, inline):
        assert row["run_s"]["median"] > 0
    text = scoped_routes.markdown(
        {
            "apply": [data],
            "machine": {"date": "d", "git": "g", "summary": "s", "kernel": "k"},
            "command": "c",
            "envoy_version": "1.40.0",
        }
    )
    assert "| 1 | delta | srds+rds | RDS: 1 resources, " in text
