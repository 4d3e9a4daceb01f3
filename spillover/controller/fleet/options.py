"""`FleetOptions`: a replica's identity in the fleet, its Lease timing, the peer channel and the bounds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spillover.controller.fleet.codec import lease_name

__all__ = ["FleetOptions", "label_value"]


@dataclass(frozen=True)
class FleetOptions:
    namespace: str
    identity: str
    fleet: str = "spillover-leader"  # the leader election Lease's name; the fleet's Leases are named after it
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    heartbeat: float = 5.0
    retry_period: float = 1.0
    linger: float = 1.0
    debounce: float = 0.2
    peer_address: tuple[str, int] | None = None
    advertise: str = ""
    token_file: Path | None = None
    envoys_budget: int = 160_000
    decisions_budget: int = 200_000
    refresh: float = 30.0
    input_max_age: float = 2.0
    join_grace: float = 2.0
    handover_wait: float = 10.0  # within the pod's termination grace period (30 s in manifests/)
    gc_after: float = 300.0
    request_timeout: float = 5.0

    def __post_init__(self) -> None:
        if not (self.lease_duration > self.renew_deadline >= 2 * self.heartbeat > 0 and self.retry_period > 0):
            raise ValueError("fleet: need lease duration > renew deadline >= 2 x heartbeat > 0")
        if self.peer_address is not None and self.token_file is None:
            raise ValueError("--fleet-address needs --fleet-token-file (the peer channel is authenticated)")


def label_value(text: str) -> str:
    """A label value (63 characters of [a-z0-9-.]) that names `text` unambiguously."""
    return lease_name("f", text)[2:] if len(text) > 63 or not text.replace("-", "").replace(".", "").isalnum() else text
