"""The controller's side of the destination clusters: the copies spillover creates, sizes and removes.

- `manifests`: the copy's Deployment and Service from the origin's pod template (pure; what is changed
  on the way, and why);
- `reconcile`: the next step for one ModelDeployment's copy (pure);
- `status`: `status.destination` and whether traffic may go to the copy (pure);
- `actuator`: the `CopyActuator`, which runs the steps on the destination (and the finalizer on this
  cluster) on the Lease holder only, with bounded timeouts and backoff, and reports them as Events;
- `manager`: the `DestinationManager`, what the policy provider calls around each evaluation.

Reading the destination clusters is `spillover.sources.destination`; the copy's size is decided in
`spillover.decide.copies`.
"""

from spillover.controller.destination.actuator import CopyActuator, CopyIntent
from spillover.controller.destination.manager import DestinationManager
from spillover.controller.destination.manifests import CopyManifests, copy_manifests
from spillover.controller.destination.reconcile import Step, next_step

__all__ = ["CopyActuator", "CopyIntent", "CopyManifests", "DestinationManager", "Step", "copy_manifests", "next_step"]
