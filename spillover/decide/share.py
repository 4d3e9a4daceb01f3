"""The remote share of the `proportional` strategy: levels, the memoryless formula and the damped step.

With `percentage` P and `min_step` S (S is clamped to 1..P):

- **Levels.** The share only ever takes one of the levels S, 2S, 3S, ... below P, then P itself; the
  highest multiple of S is dropped when it is closer than S to P (P=55, S=10: 10 20 30 40 55). So every
  level is a multiple of S or equal to P, the lowest is at least S, and two levels differ by at least S.
- **Pressure.** overshoot = value/threshold - 1 of each breached metric (HPA semantics: a value at its
  threshold has overshoot 0; a threshold of 0 makes any positive value an infinite overshoot), and
  pressure = max over the breached metrics of min(1, overshoot): 0 at the threshold, 1 at twice it.
- **Memoryless share.** `proportional_share(pressure)` = the smallest level >= P x pressure: at least S as
  soon as anything is breached, P from twice the threshold on, monotonic in the overshoot.
- **Damping.** In OVERFLOW the share moves from its current level by `step_share`: *up* at once to the
  memoryless share when that is higher; *down* only to the smallest level >= P x pressure + S, and only
  when that is lower than the current level. On the way down the share thus stays one step above what
  the pressure needs, and a pressure wobbling by less than one step (in units of share) changes the
  share at most once and then never again. Levels differ by at least S, so no change is smaller than S.
  (The first step in OVERFLOW, or one after the policy changed P or S, snaps to the memoryless share.)
"""

from __future__ import annotations

import math
from functools import lru_cache


def effective_step(percentage: int, min_step: int) -> int:
    """min_step clamped to [1, percentage] (1 when percentage is 0)."""
    return max(1, min(int(min_step), int(percentage))) if percentage > 0 else 1


@lru_cache(maxsize=256)
def share_levels(percentage: int, min_step: int) -> tuple[int, ...]:
    """The shares `proportional` may use in OVERFLOW, ascending (see the module docstring)."""
    percentage = int(percentage)
    if percentage <= 0:
        return (0,)
    step = effective_step(percentage, min_step)
    levels = list(range(step, percentage, step))
    if levels and percentage - levels[-1] < step:
        levels.pop()
    levels.append(percentage)
    return tuple(levels)


def overshoot(value: float, threshold: float) -> float:
    """How far past its threshold a value is, relative to the threshold (0 at the threshold)."""
    if threshold > 0:
        return max(0.0, value / threshold - 1.0)
    return math.inf if value > threshold else 0.0


def pressure_of(overshoots: list[float]) -> float:
    """Pressure in [0, 1]: the largest overshoot, capped at 1 (twice the threshold)."""
    return min(1.0, max(overshoots, default=0.0))


_EPSILON = 1e-9  # 88/80 - 1 is 0.10000000000000009: float noise must not cost a step


def _ceil_level(raw: float, levels: tuple[int, ...]) -> int:
    for level in levels:
        if level >= raw - _EPSILON:
            return level
    return levels[-1]


def proportional_share(pressure: float, percentage: int, min_step: int) -> int:
    """The memoryless share for a pressure in [0, 1]: the smallest level >= percentage x pressure."""
    levels = share_levels(percentage, min_step)
    return _ceil_level(percentage * min(1.0, max(0.0, pressure)), levels)


def step_share(current: int, pressure: float, percentage: int, min_step: int) -> int:
    """The next share in OVERFLOW, from the current one (see Damping in the module docstring)."""
    levels = share_levels(percentage, min_step)
    raw = percentage * min(1.0, max(0.0, pressure))
    up = _ceil_level(raw, levels)
    if current not in levels:  # first step, or the policy changed percentage / minStep
        return up
    if up > current:
        return up
    down = _ceil_level(raw + effective_step(percentage, min_step), levels)
    return down if down < current else current
