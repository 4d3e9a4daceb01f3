"""What the main process holds of the workers' streams and counters: exact registrations (a stream is in
the registry from its admission to its end, whichever worker serves it) and, for the debug views and the
sync metric, the states last reported by the workers (asked for right before they are read)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3 import base_pb2
from prometheus_client import Metric
from prometheus_client.registry import Collector

from spillover.server.resources import Resource
from spillover.server.streams import BaseStream, SyncStatus, TypeState
from spillover.server.workers.wire import Family, StreamInfo

__all__ = ["RemoteStream", "ReportedType", "WorkerFamilies"]


@dataclass
class ReportedType(TypeState):
    """A type state as its worker reported it."""

    reported: SyncStatus = SyncStatus.SYNCED

    def status(self) -> SyncStatus:
        return self.reported


def _no_snapshot(group: str) -> None:
    return None


class RemoteStream(BaseStream):
    """A stream served by a worker process, as the main process's registry holds it."""

    def __init__(self, worker: int, stream_id: int, info: StreamInfo) -> None:
        super().__init__(info.peer, lambda node: info.group, _no_snapshot)
        self.worker = worker
        self.stream_id = stream_id
        self.node = base_pb2.Node.FromString(info.node)
        self.group = info.group
        self.identity = info.identity
        self.admitted_by = info.admitted_by
        self.mode = info.mode
        self.connected_at = info.connected_at
        self.described: dict[str, object] | None = None
        self.sent: dict[str, list[Resource]] = {}
        self.reported_without_internal_listener = False

    @property
    def without_internal_listener(self) -> bool:
        # Decided by the worker, which holds the NACK (its type states here carry only their status).
        return self.reported_without_internal_listener

    def report(self, states: dict[str, str]) -> None:
        self.types = {type_url: ReportedType(reported=SyncStatus(status)) for type_url, status in states.items()}

    def describe(self) -> dict[str, object]:
        if self.described is not None:
            return self.described
        # Not reported yet (admitted after the last dump): what the registration says.
        described = super().describe()
        described["worker"] = self.worker
        return described

    def sent_resources(self) -> dict[str, list[Resource]]:
        return self.sent


@dataclass(eq=False)
class WorkerFamilies(Collector):
    """The workers' own counters and histograms, summed over the workers (and over the workers that died,
    so a counter never goes back)."""

    reports: dict[int, list[Family]] = field(default_factory=dict)
    retired: list[Family] = field(default_factory=list)

    def retire(self, worker: int) -> None:
        report = self.reports.pop(worker, None)
        if report is not None:
            self.retired = _sum([self.retired, report])

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        out = []
        for name, kind, documentation, samples in _sum([self.retired, *self.reports.values()]):
            metric = Metric(name, documentation, kind)
            for sample_name, labels, value in samples:
                metric.add_sample(sample_name, labels, value)
            out.append(metric)
        return out


def _sum(reports: Iterable[list[Family]]) -> list[Family]:
    families: dict[str, tuple[str, str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]] = {}
    for report in reports:
        for name, kind, documentation, samples in report:
            _, _, values = families.setdefault(name, (kind, documentation, {}))
            for sample_name, labels, value in samples:
                key = (sample_name, tuple(sorted(labels.items())))
                if sample_name.endswith("_created"):
                    # When the series began: the earliest worker's.
                    values[key] = min(values.get(key, value), value)
                else:
                    values[key] = values.get(key, 0.0) + value
    out: list[Family] = []
    for name, (kind, documentation, values) in sorted(families.items()):
        summed: list[tuple[str, dict[str, str], float]] = [
            (sample_name, dict(labels), value) for (sample_name, labels), value in values.items()
        ]
        out.append((name, kind, documentation, summed))
    return out


def resources_of(sent: dict[str, list[tuple[str, str, bytes]]]) -> dict[str, list[Resource]]:
    return {
        type_url: [Resource.from_bytes(type_url, name, body) if body else _known(type_url, name, version)
                   for name, version, body in entries]
        for type_url, entries in sent.items()
    }


def _known(type_url: str, name: str, version: str) -> Resource:
    # A resource the client said it has at a version no snapshot holds (Delta reconnect).
    return Resource(type_url=type_url, name=name, version=version, body=b"", _sotw=b"", _delta=b"")


def describe_with_worker(described: dict[str, Any], worker: int) -> dict[str, Any]:
    return {**described, "worker": worker}
