"""The control loop: the contracts between the stages, the providers that chain them (policies ->
decisions -> plan -> translate), the running control plane with its admin endpoint, and the status
sinks (`kubernetes`: the status writer and the Lease that elects who writes)."""
