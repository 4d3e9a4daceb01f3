"""The model drill-down: one model (the `model` variable), its profiles, both sides and its overflow."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_b

from spillover.dashboards import queries as q
from spillover.dashboards.panels import (
    RATE_WINDOW,
    Ids,
    Target,
    dashboard,
    model_variable,
    query_variable,
    row,
    stat_panel,
    state_mappings,
    state_timeline,
    time_series,
)
from spillover.names import ENVOY_ROUTE_METRIC_PREFIX

UID = "spillover-model"
W = RATE_WINDOW
M = 'model="$model"'
MP = 'model="$model",profile=~"$profile"'


def build() -> dashboard_b.Dashboard:
    ids = Ids()
    board = dashboard(
        UID, "spillover / model",
        "One model: its state and why, local against remote, each profile's traffic, 429s and latency",
        model_variable(),
        query_variable(
            "profile", "Profile", f'label_values({ENVOY_ROUTE_METRIC_PREFIX}upstream_rq_total{{{M}}}, profile)',
            include_all=True),
    )
    board = board.with_row(row(ids, "Now"))
    board = (
        board.with_panel(stat_panel(
            ids, "State", "What spillover decided for the model", "none",
            [Target(q.state_code(M))], mappings=state_mappings()))
        .with_panel(stat_panel(
            ids, "Time in state", "Since the model entered its state", "s", [Target(q.time_in_state(M), "{{state}}")]))
        .with_panel(stat_panel(
            ids, "Remote share (decided)", "The share spillover sends remote", "percent",
            [Target(q.remote_share_decided(M))]))
        .with_panel(stat_panel(
            ids, "In flight", "Requests in flight on both sides", "none", [Target(q.in_flight_by_side(M, by=()))]))
    )
    board = board.with_row(row(ids, "Overflow"))
    board = (
        board.with_panel(time_series(
            ids, "Overflow metrics against their thresholds",
            "Each overflow metric as spillover read it, and its threshold (at or past it: pressure)", "none",
            [Target(q.metric_value(M), "{{metric}}"), Target(q.metric_threshold(M), "{{metric}} threshold")]))
        .with_panel(time_series(
            ids, "Remote share", "Percent of requests Envoy sent remote (observed) and spillover's decision",
            "percent", [Target(q.remote_share_observed(M, W, by=()), "observed"),
                        Target(q.remote_share_decided(M, by=()), "decided")], minimum=0))
        .with_panel(state_timeline(
            ids, "State", "STANDBY, OVERFLOW, FAILOVER, DISABLED over time", [Target(q.state_code(M), "{{model}}")],
            height=4))
    )
    board = board.with_row(row(ids, "Traffic"))
    return (
        board.with_panel(time_series(
            ids, "Requests: local and remote", "Requests per second Envoy sent to each side", "reqps",
            [Target(q.requests_by_side(M, W), "{{side}}")], stacked=True))
        .with_panel(time_series(
            ids, "In flight by side", "Requests in flight on each side", "none",
            [Target(q.in_flight_by_side(M), "{{side}}")], stacked=True))
        .with_panel(time_series(
            ids, "Responses by profile and code class", "Answers from the backends per second", "reqps",
            [Target(q.responses(MP, W, by=("profile", "envoy_response_code_class")),
                    "{{profile}} {{envoy_response_code_class}}xx")]))
        .with_panel(time_series(
            ids, "Rate limited by profile", "429s from the model's rate limit (requestsPerSecond)", "reqps",
            [Target(q.rate_limited(MP, W, by=("profile",)), "{{profile}}")]))
        .with_panel(time_series(
            ids, "Latency by profile", "Upstream time: p50, p90, p99", "ms",
            [Target(q.latency(MP, W, quantile, by=("profile",)), f"{{{{profile}}}} p{round(quantile * 100)}")
             for quantile in (0.5, 0.9, 0.99)]))
        .with_panel(time_series(
            ids, "Healthy endpoints by side", "Endpoints Envoy's health checks and outlier detection accept",
            "none", [Target(q.healthy_by_side(M), "{{side}}")], minimum=0))
    )
