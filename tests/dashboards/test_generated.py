"""The dashboards in dashboards/ are what the generator writes, and each is a dashboard of Grafana's schema
(as the foundation SDK types it, tests/dashboards/sdk_types.py). That their queries return data with the
labels they show is tests/e2e/test_observability.py's job, against a real Prometheus, Envoy and spillover."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from spillover.dashboards.generate import DASHBOARDS, DEFAULT_DIRECTORY, render
from tests.dashboards.sdk_types import schema_errors

REPO = Path(__file__).resolve().parents[2]


def committed(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((REPO / "dashboards" / name).read_text())
    return document


def test_the_generator_writes_into_the_repositorys_dashboards_directory() -> None:
    assert REPO / "dashboards" == DEFAULT_DIRECTORY


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_the_committed_json_is_the_generators_output(name: str) -> None:
    path = REPO / "dashboards" / name
    assert path.read_text() == render(DASHBOARDS[name]), (
        f"{path} is out of date: run `.venv/bin/python -m spillover.dashboards`"
    )


def test_the_directory_holds_only_generated_dashboards() -> None:
    # The chart turns every JSON file there into a ConfigMap: a stray one would be installed too.
    assert sorted(p.name for p in (REPO / "dashboards").glob("*.json")) == sorted(DASHBOARDS)
    assert sorted(p.name for p in (REPO / "dashboards").iterdir() if p.suffix != ".json") == ["README.md"]


def test_check_mode_finds_a_stale_file(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "spillover.dashboards", "--out", str(tmp_path)]
    assert subprocess.run([*run, "--check"], capture_output=True, timeout=120).returncode == 1
    assert subprocess.run(run, capture_output=True, timeout=120).returncode == 0
    assert subprocess.run([*run, "--check"], capture_output=True, timeout=120).returncode == 0


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_each_dashboard_is_of_grafanas_schema(name: str) -> None:
    assert schema_errors(committed(name)) == []


def test_the_schema_check_can_fail() -> None:
    document = copy.deepcopy(committed("spillover-fleet.json"))
    stat = next(p for p in document["panels"] if p["type"] == "stat")
    stat["options"]["graphMode"] = "sparkles"
    stat["bogus"] = 1
    document["refresh"] = 10
    document["templating"]["list"][1]["refresh"] = 7
    errors = "\n".join(schema_errors(document))
    assert "graph_mode: 'sparkles' is not a BigValueGraphMode" in errors
    assert ".bogus: not in the schema" in errors
    assert "dashboard.refresh: 10" in errors
    assert "refresh: 7" in errors


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_are_identified_and_query_the_datasource_variable(name: str) -> None:
    document = committed(name)
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in document["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in document["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        assert panel.get("description"), f"{panel['title']}: say what the panel shows"


def test_the_dashboards_have_distinct_uids_and_the_model_variable() -> None:
    documents = {name: committed(name) for name in DASHBOARDS}
    assert len({d["uid"] for d in documents.values()}) == len(documents)
    for name in ("spillover-fleet.json", "spillover-model.json"):
        assert "model" in {v["name"] for v in documents[name]["templating"]["list"]}
