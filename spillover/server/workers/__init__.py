"""xDS across cores: worker processes serving the streams on one port, the main process keeping what must
be one (snapshots and versions, the registry, the bounds, the metrics). See pool.py."""

from spillover.server.workers.pool import WorkerError, WorkerPool, default_workers

__all__ = ["WorkerError", "WorkerPool", "default_workers"]
