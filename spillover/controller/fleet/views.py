"""What a fleet replica tells: /debug/fleet (`describe`), the Envoys of the fleet for /debug/proxies, its
readiness, its Prometheus metrics (`FleetCollector`), the API traffic of its Leases.

A mixin of `Fleet` (fleet.py), which has the state it reads; kept apart so that fleet.py is what the
replica does.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from spillover.controller.fleet.decisions import FleetDecisions
from spillover.controller.fleet.inputs import FleetInputs
from spillover.controller.fleet.leases import LeaseApi, LeaseWatch
from spillover.controller.fleet.membership import FleetEnvoy, FleetView, Summary
from spillover.controller.fleet.options import FleetOptions
from spillover.controller.fleet.peers import PeerClient
from spillover.controller.kubernetes.leader import LeaderElector

__all__ = ["FleetCollector", "FleetViews"]


class FleetViews:
    # What the fleet has (see Fleet.__init__).
    options: FleetOptions
    identity: str
    member_name: str
    refused: str
    client: PeerClient | None
    peer_url: str
    view: FleetView
    elector: LeaderElector
    decisions: FleetDecisions
    inputs: FleetInputs
    leases: LeaseApi
    watch: LeaseWatch
    _handed_over: bool
    _last_renew: float | None
    _counts: dict[str, int]

    @property
    def member(self) -> bool:
        raise NotImplementedError

    def deciding(self) -> bool:
        raise NotImplementedError

    def summary(self) -> Summary:
        raise NotImplementedError

    def envoys(self) -> list[FleetEnvoy]:
        raise NotImplementedError

    def readiness(self) -> tuple[bool, list[str]]:
        notes = []
        if self.refused:
            return False, [f"fleet: the API server refuses this replica's Lease {self.options.namespace}/"
                           f"{self.member_name} ({self.refused}): it can't join the fleet (check the namespace "
                           "and the Role on leases)"]
        if self._handed_over:
            return False, ["fleet: cut off from the API server while other replicas may not be: its Envoys "
                           "were handed over; it serves again once its Lease is renewed"]
        if not self.member and self._last_renew is not None:
            notes.append(f"warning: fleet: its Lease could not be renewed for {time.monotonic() - self._last_renew:.0f}s; "
                         "it keeps the counts and decisions it last saw")
        if self.client is None and self.view.live():
            missing = self.options.token_file
            why = (f"--fleet-token-file {missing} does not exist" if missing is not None and not missing.exists()
                   else "--fleet-address, --fleet-token-file")
            notes.append(f"warning: fleet: no peer channel ({why}): Envoy metrics and endpoint health of other "
                         "replicas' Envoys can't be read, their models hold their state")
        return True, notes

    def _member_document(self) -> dict[str, Any]:
        return {"identity": self.identity, "member": self.member, "leading": self.elector.is_leader}

    def describe(self) -> dict[str, Any]:
        now = time.monotonic()
        summary = self.summary()
        return {
            "identity": self.identity,
            "member": self.member,
            "view_current": self.view.current,
            "leader": self.elector.leader_identity,
            "leading": self.elector.is_leader,
            "deciding": self.deciding(),
            "term": self.decisions.term if self.deciding() else None,
            "handed_over": self._handed_over,
            "peer": self.peer_url,
            "peer_channel": self.client is not None,
            "lease": self.member_name,
            "renewed_ago": None if self._last_renew is None else round(now - self._last_renew, 3),
            "envoys": {group: summary.count(group) for group in sorted(summary.groups())},
            "groups": dict(sorted(self._counts.items())),
            "members": [
                {
                    "identity": m.identity, "lease": m.name, "peer": m.summary.peer,
                    "changed_ago": round(now - m.changed_at, 3), "alive": self.view.alive(m),
                    "envoys": {group: m.summary.count(group) for group in sorted(m.summary.groups())},
                    "problem": m.problem,
                }
                for m in sorted(self.view.members.values(), key=lambda m: m.identity)
            ],
            "decisions": self.decisions.describe(),
            "inputs": {p.identity: {"age": round(now - p.received + p.age, 3)} for p in self.inputs.received.values()},
            "input_errors": dict(sorted(self.inputs.errors.items())),
            "traffic": self.traffic(),
        }

    def traffic(self) -> dict[str, Any]:
        counter = self.leases.traffic
        stats = self.watch.informer.stats
        return {
            "requests": dict(sorted(counter.requests.items())),
            "sent_bytes": counter.sent_bytes,
            "received_bytes": counter.received_bytes,
            "watch_bytes": stats.bytes_read,
            "watch_requests": stats.lists + stats.watches,
            "errors": counter.errors,
        }

    def proxies(self) -> list[dict[str, Any]]:
        """Every Envoy of the fleet and who serves it (for /debug/proxies)."""
        return [
            {"node_id": e.node_id, "group": e.group, "replicas": list(e.replicas), "since": e.since}
            for e in self.envoys()
        ]


class FleetCollector(Collector):
    """The fleet's metrics, read when Prometheus scrapes."""

    def __init__(self, fleet: FleetViews) -> None:
        self.fleet = fleet

    def collect(self) -> Any:
        fleet = self.fleet
        yield GaugeMetricFamily("spillover_fleet_member", "1 while this replica's Lease is renewed", value=int(fleet.member))
        yield GaugeMetricFamily("spillover_fleet_deciding", "1 while this replica decides for the fleet",
                                value=int(fleet.deciding()))
        yield GaugeMetricFamily("spillover_fleet_members", "Other replicas alive in the fleet", value=len(fleet.view.live()))
        groups = GaugeMetricFamily("spillover_fleet_envoys", "Envoys of a node group across the fleet", labels=["group"])
        for group, count in sorted(fleet._counts.items()):
            groups.add_metric([group], count)
        yield groups
        traffic = fleet.traffic()
        requests = CounterMetricFamily("spillover_fleet_api_requests", "The fleet's own API requests", labels=["verb"])
        for verb, count in traffic["requests"].items():
            requests.add_metric([verb], count)
        yield requests
        sent = CounterMetricFamily("spillover_fleet_api_bytes", "Bytes of the fleet's API traffic", labels=["direction"])
        sent.add_metric(["sent"], traffic["sent_bytes"])
        sent.add_metric(["received"], traffic["received_bytes"])
        sent.add_metric(["watched"], traffic["watch_bytes"])
        yield sent
