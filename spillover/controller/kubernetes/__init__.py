"""The controller's Kubernetes side: what it writes back to the cluster, and who may write.

- `documents`: the status documents written to the ModelDeployments' `/status` and the Events of state
  transitions, built from a `StatusReport` of a `KubeDesiredState` (pure);
- `writer`: the `StatusWriter`, which merge-patches those statuses and creates the Events, rate-limited,
  never blocking the evaluation loop;
- `leader`: election on a `coordination.k8s.io` Lease, so that of several replicas only one writes;
- `publishing`: `StatusPublishing`, the writers (spillover's API group and, optionally, Beamlit's) wired to
  the policy provider's status sinks and switched on and off by the Lease.

Reading the cluster (informers, ModelDeployments as policies) is `spillover.sources.kube`.
"""
