"""The fleet overview: every model at once (or those the `model` variable picks)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_b

from spillover.dashboards import queries as q
from spillover.dashboards.panels import (
    RATE_WINDOW,
    Ids,
    Target,
    dashboard,
    model_variable,
    row,
    stat_panel,
    state_timeline,
    time_series,
)

UID = "spillover-fleet"
W = RATE_WINDOW
M = 'model=~"$model"'


def build() -> dashboard_b.Dashboard:
    ids = Ids()
    board = dashboard(
        UID, "spillover / fleet overview",
        "Every model's traffic, local against remote, rate limits, latency and overflow state",
        model_variable(include_all=True),
    )
    board = board.with_row(row(ids, "Now"))
    board = (
        board.with_panel(stat_panel(
            ids, "Models by state", "How many models are in each state", "none",
            [Target(q.models_by_state(M), "{{state}}")]))
        .with_panel(stat_panel(
            ids, "Responses", "Answers from the models' backends, all models", "reqps",
            [Target(q.responses(M, W, by=()))]))
        .with_panel(stat_panel(
            ids, "Remote share", "Share of the requests Envoy sent to remote backends, all models", "percent",
            [Target(q.remote_share_observed(M, W, by=()))]))
        .with_panel(stat_panel(
            ids, "Rate limited", "429s from the models' rate limits, all models", "reqps",
            [Target(q.rate_limited(M, W, by=()))]))
    )
    board = board.with_row(row(ids, "Traffic"))
    board = (
        board.with_panel(time_series(
            ids, "Responses per model", "Answers from each model's backends per second (all profiles)", "reqps",
            [Target(q.responses(M, W), "{{model}}")]))
        .with_panel(time_series(
            ids, "Remote share per model",
            "Percent of a model's requests Envoy sent remote (observed) and what spillover decided", "percent",
            [Target(q.remote_share_observed(M, W), "{{model}} observed"),
             Target(q.remote_share_decided(M), "{{model}} decided")],
            minimum=0))
        .with_panel(time_series(
            ids, "Rate limited per model", "429s from each model's rate limit (requestsPerSecond), by profile",
            "reqps", [Target(q.rate_limited(M, W, by=("model", "profile")), "{{model}} / {{profile}}")]))
        .with_panel(time_series(
            ids, "Latency per model", "Upstream time of each model's requests: p50 and p99", "ms",
            [Target(q.latency(M, W, 0.5), "{{model}} p50"), Target(q.latency(M, W, 0.99), "{{model}} p99")]))
    )
    board = board.with_row(row(ids, "Overflow"))
    return (
        board.with_panel(state_timeline(
            ids, "Overflow state", "Each model's state: STANDBY, OVERFLOW (a share goes remote), FAILOVER "
            "(all remote), DISABLED", [Target(q.state_code(M), "{{model}}")]))
        .with_panel(time_series(
            ids, "Closest metric against its threshold",
            "Each model's overflow metric that is nearest its threshold, as a share of it: 100 % is the "
            "threshold (dashed), above it the model overflows", "percentunit",
            [Target(q.metric_pressure(M), "{{model}}")], width=24, threshold=1.0, minimum=0))
    )
