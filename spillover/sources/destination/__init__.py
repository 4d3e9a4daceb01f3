"""The destination clusters, read: the copies spillover keeps there, as cluster B shows them.

`kubeconfig` turns a kubeconfig from a Secret into credentials (inline only: no files, no programs);
`observe` turns the copy's Deployment and Service into a `CopyObservation` (readiness, address, owner);
`source` is the `DestinationSource`: a connection per cluster, informers on the copies, a reachability
probe. Writing to a destination cluster is the controller's (`spillover.controller.destination`).
"""

from spillover.sources.destination.kubeconfig import ClusterCredentials, KubeconfigError, parse_kubeconfig
from spillover.sources.destination.observe import CopyObservation, copy_address, observe_copy
from spillover.sources.destination.source import DestinationConnection, DestinationOptions, DestinationSource

__all__ = [
    "ClusterCredentials",
    "CopyObservation",
    "DestinationConnection",
    "DestinationOptions",
    "DestinationSource",
    "KubeconfigError",
    "copy_address",
    "observe_copy",
    "parse_kubeconfig",
]
