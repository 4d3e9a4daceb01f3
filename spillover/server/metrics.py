"""The xDS server's Prometheus metrics, and the stream hooks that feed them (and the log).

Label values are never client text: types are the five short names or `other`, reasons a fixed
vocabulary, and series per node group are removed with the group.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Metric
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from spillover import names
from spillover.server.bounds import LogThrottle, printable
from spillover.server.resources import PUSH_ORDER, SHORT_NAMES
from spillover.server.streams import BaseStream, StreamEvents, SyncStatus

__all__ = ["GroupSeries", "StreamMetricEvents", "SyncStates", "WithoutInternalListener", "WithoutSplitLayer", "XdsMetrics", "type_label"]

log = logging.getLogger("spillover.server.service")


def type_label(type_url: str) -> str:
    """A metric label for a type URL the client chose: a known short name, else `other`."""
    return SHORT_NAMES.get(type_url, "other")


class XdsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected = Gauge(
            names.XDS_CONNECTED_SERIES, "Connected xDS streams", ["group", "mode"], registry=registry
        )
        self.responses = Counter(
            names.XDS_RESPONSES_SERIES, "xDS responses sent", ["type"], registry=registry
        )
        self.pushes = Counter(
            names.XDS_PUSHES_SERIES, "Snapshots published to a node group", ["group"], registry=registry
        )
        self.push_latency = Histogram(
            names.XDS_PUSH_LATENCY_SERIES,
            "From a snapshot's publish to its response being handed to a stream",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=registry,
        )
        self.acks = Counter(names.XDS_ACKS_SERIES, "ACKs received", ["type"], registry=registry)
        self.nacks = Counter(names.XDS_NACKS_SERIES, "NACKs received", ["type"], registry=registry)
        self.stale = Counter(
            "spillover_xds_stale_nonce_total", "Requests ignored for a stale nonce", ["type"], registry=registry
        )
        self.ignored = Counter(
            "spillover_xds_ignored_requests_total", "Requests ignored as malformed", ["reason"], registry=registry
        )
        self.resources = Gauge(
            names.XDS_RESOURCES_SERIES, "Resources in the published snapshot", ["group", "type"], registry=registry
        )
        self.build_seconds = Histogram(
            "spillover_xds_snapshot_build_seconds",
            "Time to serialize and version a snapshot",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
        self.refused = Counter(
            "spillover_xds_refused_streams_total",
            "Streams refused or ended by the server, by the rule (admission, a bound, a protocol error)",
            ["reason"],
            registry=registry,
        )
        self.refused_secrets = Counter(
            "spillover_xds_refused_secrets_total",
            "SDS names asked for that no resource of the stream's group refers to (never sent)",
            registry=registry,
        )
        self.request_bytes = Histogram(
            "spillover_xds_request_size_bytes",
            "Size of the DiscoveryRequests received",
            buckets=(256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216),
            registry=registry,
        )
        self.tls_reloads = Counter(
            "spillover_xds_tls_reloads_total",
            "Changes of the xDS certificate files seen: taken (ok) or refused as inconsistent (error)",
            ["result"],
            registry=registry,
        )
        self.groups = Gauge(
            "spillover_xds_groups", "Node groups with streams, or without any for less than the grace period",
            registry=registry,
        )
        self.groups_expired = Counter(
            "spillover_xds_groups_expired_total",
            "Node groups forgotten after the grace period without streams",
            registry=registry,
        )
        # Every type's counters exist from the start (at 0): a rate over them, or a dashboard panel,
        # has data before the first NACK instead of no series at all. Their children are bound once:
        # `labels()` on every response and ACK cost as much as the rest of the metrics together.
        self.responses_by_type = _by_type(self.responses)
        self.acks_by_type = _by_type(self.acks)
        self.nacks_by_type = _by_type(self.nacks)
        self.stale_by_type = _by_type(self.stale)
        self._groups: dict[str, GroupSeries] = {}

    def count_response(self, type_url: str) -> None:
        _child(self.responses_by_type, self.responses, type_url).inc()

    def group_series(self, group: str) -> GroupSeries:
        """The series of one node group, bound once (until the group is forgotten)."""
        series = self._groups.get(group)
        if series is None:
            series = self._groups[group] = GroupSeries(self, group)
        return series

    def forget_group(self, group: str) -> None:
        """Removes every series labelled with this group."""
        self._groups.pop(group, None)
        for metric in (self.connected, self.pushes, self.resources):
            metric.remove_by_labels({"group": group})


class GroupSeries:
    """The children of one node group's series: pushes and resources by type."""

    __slots__ = ("_group", "_metrics", "_resources", "pushes")

    def __init__(self, metrics: XdsMetrics, group: str) -> None:
        self._metrics = metrics
        self._group = group
        self.pushes = metrics.pushes.labels(group)
        self._resources: dict[str, Gauge] = {}

    def resources(self, type_url: str) -> Gauge:
        child = self._resources.get(type_url)
        if child is None:
            child = self._resources[type_url] = self._metrics.resources.labels(self._group, type_label(type_url))
        return child


def _by_type(counter: Counter) -> dict[str, Counter]:
    return {type_url: counter.labels(type_label(type_url)) for type_url in PUSH_ORDER}


def _child(children: dict[str, Counter], counter: Counter, type_url: str) -> Counter:
    child = children.get(type_url)
    return child if child is not None else counter.labels(type_label(type_url))


class SyncStates(Collector):
    """spillover_xds_proxy_sync{group, type, status}: how many streams of a group are SYNCED, STALE or
    NACKED for each type, counted when Prometheus scrapes (a gone stream leaves nothing behind)."""

    def __init__(self, streams: Callable[[], Iterable[BaseStream]]) -> None:
        self.streams = streams

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            names.XDS_SYNC_SERIES, "Streams by sync state of each type", labels=["group", "type", "status"]
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        counts: dict[tuple[str, str], Tally[SyncStatus]] = {}
        for stream in self.streams():
            for type_url, state in stream.types.items():
                counts.setdefault((stream.group, type_label(type_url)), Tally())[state.status()] += 1
        family = self._family()
        for (group, type_name), by_status in sorted(counts.items()):
            for status in SyncStatus:
                family.add_metric([group, type_name, status.value], by_status[status])
        return [family]


class WithoutSplitLayer(Collector):
    """spillover_xds_streams_without_split_layer: streams of a group served its split weights over RTDS that
    asked for clusters, listeners or routes without the layer (their Envoy's bootstrap lacks it), counted when
    Prometheus scrapes. No labels: the node and group are in the log and /debug/proxies."""

    NAME = "spillover_xds_streams_without_split_layer"

    def __init__(self, streams: Callable[[], Iterable[BaseStream]]) -> None:
        self.streams = streams

    def _family(self, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            self.NAME,
            "xDS streams whose Envoy never asked for the split weights' RTDS layer its group is served "
            "(--split-weights runtime): their bootstrap lacks it, and they route every model all local",
            value=value,
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family(0)]

    def collect(self) -> Iterable[Metric]:
        return [self._family(sum(1 for stream in self.streams() if stream.without_split_layer))]


class WithoutInternalListener(Collector):
    """spillover_xds_streams_without_internal_listener: streams whose Envoy NACKed its group's internal
    listeners (failover models' `<model>/remote`) because its bootstrap lacks `envoy.bootstrap.internal_listener`,
    as long as that NACK holds; counted when Prometheus scrapes. No labels, like the split layer's gauge."""

    NAME = "spillover_xds_streams_without_internal_listener"

    def __init__(self, streams: Callable[[], Iterable[BaseStream]]) -> None:
        self.streams = streams

    def _family(self, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            self.NAME,
            "xDS streams whose Envoy refused the internal listeners of failover models: its bootstrap lacks "
            "envoy.bootstrap.internal_listener, and their local-first aggregates cannot reach the remote",
            value=value,
        )

    def describe(self) -> Iterable[Metric]:
        return [self._family(0)]

    def collect(self) -> Iterable[Metric]:
        return [self._family(sum(1 for stream in self.streams() if stream.without_internal_listener))]


class StreamMetricEvents(StreamEvents):
    def __init__(self, metrics: XdsMetrics) -> None:
        self.metrics = metrics
        self.throttle = LogThrottle(burst=20, period=60.0)

    def on_ack(self, type_url: str) -> None:
        metrics = self.metrics
        _child(metrics.acks_by_type, metrics.acks, type_url).inc()

    def on_nack(self, type_url: str, error: str) -> None:
        label = type_label(type_url)
        _child(self.metrics.nacks_by_type, self.metrics.nacks, type_url).inc()
        allowed, suppressed = self.throttle.allow("nack")
        if allowed:
            # `error` is already escaped and cut by the stream (bounds.printable).
            more = f" ({suppressed} NACKs not logged before this one)" if suppressed else ""
            log.warning("NACK for %s: %s%s", label, error, more)

    def on_stale_nonce(self, type_url: str) -> None:
        _child(self.metrics.stale_by_type, self.metrics.stale, type_url).inc()

    def on_ignored(self, reason: str) -> None:
        self.metrics.ignored.labels(reason).inc()

    def on_refused_secret(self, stream: BaseStream, name: str) -> None:
        self.metrics.refused_secrets.inc()
        allowed, suppressed = self.throttle.allow("secret")
        if allowed:
            more = f" ({suppressed} refusals not logged before this one)" if suppressed else ""
            log.warning(
                "SDS: node '%s' (group '%s', identity %s) asked for secret '%s', which no resource of its group "
                "refers to; not sent%s",
                printable(stream.node_id, 64), printable(stream.group, 64), printable(stream.identity or "-", 128),
                printable(name, 128), more,
            )

    def on_split_layer_missing(self, stream: BaseStream) -> None:
        allowed, suppressed = self.throttle.allow("split_layer")
        if allowed:
            more = f" ({suppressed} such streams not logged before this one)" if suppressed else ""
            log.warning(
                "node '%s' (group '%s', identity %s) asked for its configuration without the split weights' RTDS "
                "layer, which its group is served (--split-weights runtime): its bootstrap lacks the layer, so it "
                "routes every model all local and never spills. Give it the layer (spillover bootstrap "
                "--split-weights runtime, or the README's layered_runtime)%s",
                printable(stream.node_id, 64), printable(stream.group, 64), printable(stream.identity or "-", 128),
                more,
            )

    def on_internal_listener_missing(self, stream: BaseStream) -> None:
        allowed, suppressed = self.throttle.allow("internal_listener")
        if allowed:
            more = f" ({suppressed} such streams not logged before this one)" if suppressed else ""
            log.warning(
                "node '%s' (group '%s', identity %s) refused the internal listeners of its failover models: its "
                "bootstrap lacks the extension envoy.bootstrap.internal_listener, so their local-first aggregates "
                "cannot reach the remote. Serve its group --failover-remote in-place (failoverRemote: in-place), "
                "or add the extension to its bootstrap (spillover bootstrap has it)%s",
                printable(stream.node_id, 64), printable(stream.group, 64), printable(stream.identity or "-", 128),
                more,
            )
