"""The metrics layer's output: one reading of one metric, or why there is none.

The decision stage (spillover/decide/) consumes these; stale handling is its job, so every
sample carries the wall-clock time it was taken (``at``, seconds since the epoch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from spillover.policy.presets import Reducer

__all__ = ["MetricError", "Sample", "reduce_values"]


@dataclass(frozen=True, slots=True)
class Sample:
    value: float | None
    at: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.value is not None and not self.error


class MetricError(Exception):
    """A source could not produce a value; the message names the source and the problem (no secrets)."""


def reduce_values(values: Iterable[float], reducer: Reducer) -> float:
    """Combine the series of a vector result as the metric spec says; NaN/Inf series are ignored.

    Raises MetricError when nothing usable is left (an empty result is not a zero).
    """
    usable = [float(v) for v in values if math.isfinite(v)]
    if not usable:
        raise MetricError("no usable value (empty result)")
    if reducer == "max":
        return max(usable)
    if reducer == "sum":
        return math.fsum(usable)
    if reducer == "average":
        return math.fsum(usable) / len(usable)
    raise ValueError(f"unknown reducer {reducer!r}")
