"""One control plane made of several replicas (Kubernetes mode): who serves which Envoy, fleet-wide
limits, and one decision per model that every replica applies.

- `membership`: each replica's summary of its Envoys and the fleet's view of them, liveness (pure);
- `table`: the decision table and its encoding in Leases (pure); `codec`: bounded annotation documents;
- `leases`: the Lease requests (counted) and the watch on the fleet's Leases;
- `peers`: the authenticated peer channel (each replica's per-round Envoy readings, membership asks);
- `inputs`: each replica's readings of its own Envoys, gathered and combined by the leader;
- `decisions`: the leader publishes the table, every replica applies it;
- `fleet`: `Fleet`, the companion that runs all of it beside the xDS server (`options`: its settings;
  `views`: what it tells: /debug/fleet, readiness, metrics).
"""

from spillover.controller.fleet.fleet import Fleet
from spillover.controller.fleet.options import FleetOptions

__all__ = ["Fleet", "FleetOptions"]
