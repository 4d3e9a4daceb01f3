"""The control plane: connected proxies, their sync state, pushes, ACKs and NACKs, policy errors.

The xDS series are the server's own (spillover/server/service.py knows no model and imports nothing of
spillover, so their names are written here; tests/dashboards read every one of them back from a real
`spillover serve`)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_b

from spillover.dashboards import queries as q
from spillover.dashboards.panels import (
    Ids,
    Target,
    dashboard,
    datasource_variable,
    query_variable,
    row,
    stat_panel,
    time_series,
)

UID = "spillover-control-plane"
W = "$__rate_interval"
G = 'group=~"$group"'

CONNECTED = "spillover_xds_connected_proxies"
SYNC = "spillover_xds_proxy_sync"
PUSHES = "spillover_xds_pushes_total"
PUSH_LATENCY = "spillover_xds_push_latency_seconds"
RESPONSES = "spillover_xds_responses_total"
ACKS = "spillover_xds_acks_total"
NACKS = "spillover_xds_nacks_total"
RESOURCES = "spillover_xds_resources"
POLICY_ERRORS = "spillover_policy_errors"
EVALUATION = "spillover_evaluation_seconds"


def build() -> dashboard_b.Dashboard:
    ids = Ids()
    board = (
        dashboard(UID, "spillover / control plane",
                  "The xDS server: connected Envoys and their sync state, pushes, NACKs; policies and evaluation")
        .with_variable(datasource_variable())
        .with_variable(query_variable("group", "Node group", f"label_values({CONNECTED}, group)", include_all=True))
    )
    board = board.with_row(row(ids, "Now"))
    board = (
        board.with_panel(stat_panel(
            ids, "Connected proxies", "xDS streams connected now", "none", [Target(f"sum({CONNECTED}{{{G}}})")]))
        .with_panel(stat_panel(
            ids, "NACKED", "Streams whose last response of some type was rejected (Envoy keeps its last good "
            "config)", "none", [Target(f'sum({SYNC}{{{G},status="NACKED"}})')]))
        .with_panel(stat_panel(
            ids, "STALE", "Streams with a response not acknowledged yet", "none",
            [Target(f'sum({SYNC}{{{G},status="STALE"}})')]))
        .with_panel(stat_panel(
            ids, "Policy errors", "Errors in the policies now (the models keep their last good config)", "none",
            [Target(f"sum({POLICY_ERRORS}) or vector(0)")]))
    )
    board = board.with_row(row(ids, "xDS"))
    board = (
        board.with_panel(time_series(
            ids, "Connected proxies", "xDS streams by node group and protocol (SotW, Delta)", "none",
            [Target(f"sum by (group, mode) ({CONNECTED}{{{G}}})", "{{group}} {{mode}}")], minimum=0))
        .with_panel(time_series(
            ids, "Sync state", "Streams SYNCED, STALE or NACKED for each resource type", "none",
            [Target(f"sum by (type, status) ({SYNC}{{{G}}})", "{{type}} {{status}}")], stacked=True))
        .with_panel(time_series(
            ids, "Pushes", "Snapshots published to each node group per second", "ops",
            [Target(f"sum by (group) (rate({PUSHES}{{{G}}}[{W}]))", "{{group}}")]))
        .with_panel(time_series(
            ids, "Push latency", "From a snapshot's publish to its response handed to a stream", "s",
            [Target(f"histogram_quantile({quantile}, sum by (le) (rate({PUSH_LATENCY}_bucket[{W}])))", f"p{label}")
             for quantile, label in (("0.5", "50"), ("0.99", "99"))]))
        .with_panel(time_series(
            ids, "ACKs and NACKs", "Envoy's answers to the responses, by resource type", "ops",
            [Target(f"sum by (type) (rate({ACKS}[{W}]))", "{{type}} ACK"),
             Target(f"sum by (type) (rate({NACKS}[{W}]))", "{{type}} NACK")]))
        .with_panel(time_series(
            ids, "Responses by type", "Discovery responses sent per second", "ops",
            [Target(f"sum by (type) (rate({RESPONSES}[{W}]))", "{{type}}")]))
        .with_panel(time_series(
            ids, "Resources per group", "Resources in each group's snapshot, by type", "none",
            [Target(f"sum by (group, type) ({RESOURCES}{{{G}}})", "{{group}} {{type}}")]))
    )
    board = board.with_row(row(ids, "Policies and decisions"))
    return (
        board.with_panel(time_series(
            ids, "Policy errors by file", "Errors per policy file (spillover validate FILE says which)", "none",
            [Target(f"sum by (file) ({POLICY_ERRORS})", "{{file}}")], minimum=0))
        .with_panel(time_series(
            ids, "Metric errors", "Overflow metric samples without a value, per model and metric", "ops",
            [Target(q.metric_errors('model=~".+"', W), "{{model}} {{metric}}")]))
        .with_panel(time_series(
            ids, "Evaluation round", "One round: sampling every metric and deciding every model (p99)", "s",
            [Target(f"histogram_quantile(0.99, sum by (le) (rate({EVALUATION}_bucket[{W}])))", "p99")], width=24))
    )
