"""The incremental benchmark at a small size: it reports the flip both alternated with full translations and
in steady state, with the minor faults of each (the figures themselves belong to benchmarks/results/)."""

from __future__ import annotations

from benchmarks import incremental


def test_reports_alternated_and_steady_flips_with_their_faults() -> None:
    data = incremental.run(200, 2, log=lambda _line: None)
    decision = next(row for row in data["rows"] if row["change"] == "decision")
    assert decision["incremental"]["n"] == 2
    assert decision["incremental_minor_faults_median"] >= 0
    steady = data["steady_decision"]
    assert steady["n"] == 2  # the warm-up flip is not counted
    assert steady["minor_faults_median"] >= 0
    text = incremental.markdown(
        {
            "incremental": data,
            "machine": {"date": "d", "git": "g", "summary": "s", "kernel": "k", "usable_cores": 2},
            "load_average": {"start": 0.0, "end": 0.0},
            "command": "c",
        }
    )
    assert "| decision, steady: consecutive flips after a warm-up" in text
    assert "minor faults (median)" in text
