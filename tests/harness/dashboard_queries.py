"""Every query of a Grafana dashboard JSON, as Grafana would send it: panel targets and query variables,
with the dashboard's variables substituted, and the labels each target shows (its legend's `{{label}}`s
and its `by (...)`)."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["PanelQuery", "VariableQuery", "panel_queries", "substitute", "variable_queries"]

_LEGEND_LABEL = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_LABEL_VALUES = re.compile(r"^label_values\((.+),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)$")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    expr: str  # substituted
    legend: str

    @property
    def shown_labels(self) -> set[str]:
        """Labels the panel shows in its legend: every series must carry them."""
        return set(_LEGEND_LABEL.findall(self.legend))

    @property
    def grouped_labels(self) -> set[str]:
        """Labels the query keeps with `by (...)`, besides `le` of a histogram's buckets."""
        return {label.strip() for group in _BY.findall(self.expr) for label in group.split(",") if label.strip()} - {"le"}

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel} [{self.ref}]: {self.expr}"


@dataclass(frozen=True)
class VariableQuery:
    dashboard: str
    name: str
    label: str
    match: str  # the series selector of label_values(...), substituted


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """$name and ${name} replaced by `variables` (longest names first, as Grafana interpolates)."""
    for name in sorted(variables, key=len, reverse=True):
        text = text.replace("${" + name + "}", variables[name]).replace("$" + name, variables[name])
    if "$" in text:
        raise ValueError(f"a variable is left in {text!r}")
    return text


def panel_queries(document: Mapping[str, Any], variables: Mapping[str, str]) -> Iterator[PanelQuery]:
    for panel in document["panels"]:
        for target in panel.get("targets", []):
            yield PanelQuery(
                document["title"], panel["title"], target["refId"], substitute(target["expr"], variables),
                target.get("legendFormat", ""),
            )


def variable_queries(document: Mapping[str, Any], variables: Mapping[str, str]) -> Iterator[VariableQuery]:
    for variable in document["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = _LABEL_VALUES.match(variable["query"])
        if match is None:
            raise ValueError(f"{document['title']}: variable {variable['name']}: not a label_values() query")
        selector, label = match.groups()
        yield VariableQuery(document["title"], variable["name"], label, substitute(selector, variables))
