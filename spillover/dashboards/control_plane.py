"""The control plane: connected proxies, their sync state, pushes, ACKs and NACKs, policy errors.

The series names come from spillover.names, where the xDS server (server/metrics.py) and the policy
provider (controller/reporting.py) take them too; tests/e2e/test_observability.py reads the panels' queries
back from a real `spillover serve`."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_b

from spillover.dashboards import queries as q
from spillover.dashboards.panels import (
    RATE_WINDOW,
    Ids,
    Target,
    dashboard,
    query_variable,
    row,
    stat_panel,
    time_series,
)
from spillover.names import (
    EVALUATION_SERIES,
    POLICY_ERRORS_SERIES,
    XDS_ACKS_SERIES,
    XDS_CONNECTED_SERIES,
    XDS_NACKS_SERIES,
    XDS_PUSH_LATENCY_SERIES,
    XDS_PUSHES_SERIES,
    XDS_RESOURCES_SERIES,
    XDS_RESPONSES_SERIES,
    XDS_SYNC_SERIES,
)

UID = "spillover-control-plane"
W = RATE_WINDOW
G = 'group=~"$group"'


def build() -> dashboard_b.Dashboard:
    ids = Ids()
    board = dashboard(
        UID, "spillover / control plane",
        "The xDS server: connected Envoys and their sync state, pushes, NACKs; policies and evaluation",
        query_variable("group", "Node group", f"label_values({XDS_CONNECTED_SERIES}, group)", include_all=True),
    )
    board = board.with_row(row(ids, "Now"))
    board = (
        board.with_panel(stat_panel(
            ids, "Connected proxies", "xDS streams connected now", "none",
            [Target(f"sum({XDS_CONNECTED_SERIES}{{{G}}})")]))
        .with_panel(stat_panel(
            ids, "NACKED", "Streams whose last response of some type was rejected (Envoy keeps its last good "
            "config)", "none", [Target(f'sum({XDS_SYNC_SERIES}{{{G},status="NACKED"}})')]))
        .with_panel(stat_panel(
            ids, "STALE", "Streams with a response not acknowledged yet", "none",
            [Target(f'sum({XDS_SYNC_SERIES}{{{G},status="STALE"}})')]))
        .with_panel(stat_panel(
            ids, "Policy errors", "Errors in the policies now (the models keep their last good config)", "none",
            [Target(f"sum({POLICY_ERRORS_SERIES}) or vector(0)")]))
    )
    board = board.with_row(row(ids, "xDS"))
    board = (
        board.with_panel(time_series(
            ids, "Connected proxies", "xDS streams by node group and protocol (SotW, Delta)", "none",
            [Target(f"sum by (group, mode) ({XDS_CONNECTED_SERIES}{{{G}}})", "{{group}} {{mode}}")],
            minimum=0))
        .with_panel(time_series(
            ids, "Sync state", "Streams SYNCED, STALE or NACKED for each resource type", "none",
            [Target(f"sum by (type, status) ({XDS_SYNC_SERIES}{{{G}}})", "{{type}} {{status}}")],
            stacked=True))
        .with_panel(time_series(
            ids, "Pushes", "Snapshots published to each node group per second", "ops",
            [Target(f"sum by (group) (rate({XDS_PUSHES_SERIES}{{{G}}}[{W}]))", "{{group}}")]))
        .with_panel(time_series(
            ids, "Push latency", "From a snapshot's publish to its response handed to a stream", "s",
            [Target(f"histogram_quantile({quantile}, sum by (le) (rate({XDS_PUSH_LATENCY_SERIES}_bucket[{W}])))",
                    f"p{label}")
             for quantile, label in (("0.5", "50"), ("0.99", "99"))]))
        .with_panel(time_series(
            ids, "ACKs and NACKs", "Envoy's answers to the responses, by resource type", "ops",
            [Target(f"sum by (type) (rate({XDS_ACKS_SERIES}[{W}]))", "{{type}} ACK"),
             Target(f"sum by (type) (rate({XDS_NACKS_SERIES}[{W}]))", "{{type}} NACK")]))
        .with_panel(time_series(
            ids, "Responses by type", "Discovery responses sent per second", "ops",
            [Target(f"sum by (type) (rate({XDS_RESPONSES_SERIES}[{W}]))", "{{type}}")]))
        .with_panel(time_series(
            ids, "Resources per group", "Resources in each group's snapshot, by type", "none",
            [Target(f"sum by (group, type) ({XDS_RESOURCES_SERIES}{{{G}}})", "{{group}} {{type}}")]))
    )
    board = board.with_row(row(ids, "Policies and decisions"))
    return (
        board.with_panel(time_series(
            ids, "Policy errors by file", "Errors per policy file (spillover validate FILE says which)", "none",
            [Target(f"sum by (file) ({POLICY_ERRORS_SERIES})", "{{file}}")], minimum=0))
        .with_panel(time_series(
            ids, "Metric errors", "Overflow metric samples without a value, per model and metric", "ops",
            [Target(q.metric_errors('model=~".+"', W), "{{model}} {{metric}}")]))
        .with_panel(time_series(
            ids, "Evaluation round", "One round: sampling every metric and deciding every model (p99)", "s",
            [Target(f"histogram_quantile(0.99, sum by (le) (rate({EVALUATION_SERIES}_bucket[{W}])))", "p99")],
            width=24))
    )
