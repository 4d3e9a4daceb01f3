"""Per-endpoint latency from Envoy's per-host counters, by Little's law: W = L / λ.

L is the mean number of requests in flight to the endpoint (`rq_active`, sampled every evaluation) and
λ its completion rate (the growth of `rq_total`) over a sliding window. Envoy keeps no per-host latency
histogram, but it does keep these two, for every endpoint, in every Envoy: no probe, no extra scrape.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from spillover.names import is_local_cluster
from spillover.sources.metrics.health import HostLoad


class LatencyEstimator:
    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        # (cluster, endpoint) -> [(time, rq_total, rq_active)], oldest first
        self._history: dict[tuple[str, str], deque[tuple[float, int, int]]] = {}

    def observe(self, now: float, loads: Mapping[str, Mapping[str, HostLoad]]) -> None:
        for cluster, hosts in loads.items():
            for address, load in hosts.items():
                history = self._history.setdefault((cluster, address), deque())
                if history and load.rq_total < history[-1][1]:
                    history.clear()  # an Envoy restarted or left: counters went back
                history.append((now, load.rq_total, load.rq_active))
                while len(history) > 2 and now - history[0][0] > self.window:
                    history.popleft()
        seen = {(cluster, address) for cluster, hosts in loads.items() for address in hosts}
        for key in list(self._history):
            if key not in seen:
                del self._history[key]

    def latency(self, clusters: Iterable[str], address: str) -> float | None:
        """Seconds per request at `address` across the given clusters; None without completions."""
        completed = 0
        elapsed = 0.0
        in_flight = 0.0
        for cluster in clusters:
            history = self._history.get((cluster, address))
            if not history or len(history) < 2:
                continue
            completed += history[-1][1] - history[0][1]
            elapsed = max(elapsed, history[-1][0] - history[0][0])
            in_flight += sum(active for _, _, active in history) / len(history)
        if completed <= 0 or elapsed <= 0:
            return None
        rate = completed / elapsed
        # A request that completed was in flight at least a moment: never report zero latency.
        return max(in_flight / rate, 1e-4)

    def local_clusters_of(self, model: str) -> list[str]:
        """The model's local clusters seen in Envoy's counters."""
        return sorted({cluster for cluster, _ in self._history if is_local_cluster(cluster, model)})
