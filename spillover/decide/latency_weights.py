"""Endpoint weights for least-latency: a decision, pure. Faster endpoints get proportionally more traffic.

weight = 100 * fastest latency / endpoint latency, in steps of 5, at least 1. An endpoint without a
measurement (new, or it got no traffic in the window) gets the median weight of the measured ones, so it
receives traffic and is measured. Weights change only when one moves by 10 or more, so that noise in
the estimate does not become a push every evaluation.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping

MAX_WEIGHT = 100
STEP = 5
HYSTERESIS = 10


def latency_weights(latencies: Mapping[str, float | None], current: Mapping[str, int]) -> dict[str, int]:
    known = {address: value for address, value in latencies.items() if value is not None and value > 0}
    if not known:
        wanted = {address: 1 for address in latencies}
    else:
        fastest = min(known.values())
        wanted = {
            address: max(1, min(MAX_WEIGHT, STEP * round(MAX_WEIGHT * fastest / value / STEP)))
            for address, value in known.items()
        }
        median = int(statistics.median(wanted.values()))
        for address in latencies:
            wanted.setdefault(address, median)
    if set(wanted) == set(current) and all(abs(wanted[a] - current[a]) < HYSTERESIS for a in wanted):
        return dict(current)
    return wanted
