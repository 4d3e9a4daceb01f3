"""Panel and variable builders shared by the dashboards, on Grafana's foundation SDK (typed builders of
Grafana's own dashboard schema, `grafana-foundation-sdk` on PyPI, pinned in pyproject's dev extra).

Every panel queries the dashboard's `datasource` variable (any Prometheus that scrapes the Envoys'
`/stats/prometheus` and spillover's `/metrics`); ids are given in order so the JSON is stable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm

from spillover.dashboards.queries import STATE_CODES
from spillover.names import MODEL_INFO_SERIES
from spillover.policy import OverflowState

__all__ = [
    "DATASOURCE",
    "RATE_WINDOW",
    "Ids",
    "Target",
    "dashboard",
    "datasource_variable",
    "model_variable",
    "query_variable",
    "row",
    "stat_panel",
    "state_mappings",
    "state_timeline",
    "time_series",
]

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE_WINDOW = "$__rate_interval"  # Grafana's window for rate(): at least 4 scrape intervals
TAGS = ["spillover"]

_STATE_COLORS = {
    OverflowState.STANDBY: "green",
    OverflowState.OVERFLOW: "orange",
    OverflowState.FAILOVER: "red",
    OverflowState.DISABLED: "text",
}


@dataclass(frozen=True)
class Target:
    """One query of a panel; `legend` names the labels the panel shows (`{{model}}`)."""

    expr: str
    legend: str = ""


@dataclass
class Ids:
    """Panel ids in the order the panels are added."""

    last: int = field(default=0)

    def next(self) -> int:
        self.last += 1
        return self.last


def _targets(targets: Sequence[Target]) -> list[cogbuilder.Builder[cogvariants.Dataquery]]:
    out: list[cogbuilder.Builder[cogvariants.Dataquery]] = []
    for ref, target in zip("ABCDEFGH", targets, strict=False):
        query = prometheus.Dataquery().expr(target.expr).ref_id(ref).range().datasource(DATASOURCE)
        out.append(query.legend_format(target.legend) if target.legend else query)
    if len(out) != len(targets):
        raise ValueError("a panel has at most 8 queries")
    return out


def _legend() -> common_b.VizLegendOptions:
    return (
        common_b.VizLegendOptions()
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.BOTTOM)
        .show_legend(True)
        .calcs(["lastNotNull", "max"])
    )


def row(ids: Ids, title: str) -> dashboard_b.Row:
    return dashboard_b.Row(title).id(ids.next())


def time_series(
    ids: Ids,
    title: str,
    description: str,
    unit: str,
    targets: Sequence[Target],
    *,
    width: int = 12,
    height: int = 8,
    stacked: bool = False,
    threshold: float | None = None,
    minimum: float | None = None,
) -> timeseries.Panel:
    """A graph over time; `threshold` draws a dashed red line at that value (metric vs threshold)."""
    panel = (
        timeseries.Panel()
        .id(ids.next())
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .targets(_targets(targets))
        .span(width)
        .height(height)
        .legend(_legend())
        .line_width(2)
        .fill_opacity(10)
        .span_nulls(True)
    )
    if minimum is not None:
        panel = panel.min(minimum)
    if stacked:
        panel = panel.stacking(common_b.StackingConfig().mode(common.StackingMode.NORMAL)).fill_opacity(40)
    if threshold is not None:
        panel = panel.thresholds(
            dashboard_b.ThresholdsConfig()
            .mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=None, color="green"), dm.Threshold(value=threshold, color="red")])
        ).thresholds_style(common_b.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED))
    return panel


def stat_panel(
    ids: Ids,
    title: str,
    description: str,
    unit: str,
    targets: Sequence[Target],
    *,
    width: int = 6,
    height: int = 4,
    mappings: list[dm.ValueMapping] | None = None,
) -> stat.Panel:
    """A big number: the last value of each series."""
    panel = (
        stat.Panel()
        .id(ids.next())
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .targets(_targets(targets))
        .span(width)
        .height(height)
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    return panel.mappings(mappings) if mappings else panel


def state_mappings() -> list[dm.ValueMapping]:
    """STATE_CODES back to the state's name, in the state's color."""
    return [
        dm.ValueMap(
            options={
                str(code): dm.ValueMappingResult(text=state.value, color=_STATE_COLORS[state], index=code)
                for state, code in STATE_CODES.items()
            }
        )
    ]


def state_timeline(ids: Ids, title: str, description: str, targets: Sequence[Target], *, width: int = 24,
                   height: int = 8) -> statetimeline.Panel:
    """One row per series, colored by state."""
    return (
        statetimeline.Panel()
        .id(ids.next())
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(targets))
        .span(width)
        .height(height)
        .mappings(state_mappings())
        .fill_opacity(80)
        .line_width(0)
        .show_value(common.VisibilityMode.AUTO)
        .merge_values(True)
        .legend(common_b.VizLegendOptions().show_legend(False).display_mode(common.LegendDisplayMode.HIDDEN)
                .placement(common.LegendPlacement.BOTTOM))
    )


def datasource_variable() -> dashboard_b.DatasourceVariable:
    return dashboard_b.DatasourceVariable("datasource").label("Prometheus").type("prometheus")


def query_variable(name: str, label: str, query: str, *, include_all: bool = False) -> dashboard_b.QueryVariable:
    """A variable from `label_values(...)`; with `include_all`, "All" is the regex `.*`."""
    variable = (
        dashboard_b.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )
    if include_all:
        variable = variable.multi(True).include_all(True).all_value(".*").current(
            dm.VariableOption(selected=True, text="All", value="$__all")
        )
    return variable


def model_variable(*, include_all: bool = False) -> dashboard_b.QueryVariable:
    """`model`: the models spillover reports (their info series)."""
    return query_variable("model", "Model", f"label_values({MODEL_INFO_SERIES}, model)", include_all=include_all)


def dashboard(uid: str, title: str, description: str, *variables: dashboard_b.QueryVariable) -> dashboard_b.Dashboard:
    """The common frame: tags, refresh, time range, a link to the other spillover dashboards, and the
    `datasource` variable every query uses, followed by `variables`."""
    board = (
        dashboard_b.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .refresh("10s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .link(
            dashboard_b.DashboardLink("spillover")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .with_variable(datasource_variable())
    )
    for variable in variables:
        board = board.with_variable(variable)
    return board
