"""What of a model's decision memory survives a restart, as a JSON document (pure, no I/O, no clock).

The durable part of a `ModelMemory`: the state shown, the metric state machine's mode and share, when
the state was entered, the last transition, and when the activation and buffer timers started. Readings
are not kept (they are sampled again within a round). The document changes only when one of those does,
so it can be written on every change without being written on every evaluation.

Timers are paused while spillover is down: `restore_memory` is told until when the memory was known to
be current (`alive_at`, e.g. the store's last heartbeat) and resumes each timer with the time it had run
by then. The remaining buffer after a restart is what was left of it, however long the downtime (nothing
was observed meanwhile; Envoy kept the last routing). `since` is a point in time: the time in a state
includes the downtime.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from spillover.decide.engine import ModelMemory, Transition
from spillover.policy import OverflowState

__all__ = ["memory_document", "restore_memory"]


def memory_document(memory: ModelMemory) -> dict[str, Any]:
    """The durable part of `memory` (see the module docstring)."""
    transition = memory.transition
    return {
        "state": memory.state.value,
        "mode": memory.mode.value,
        "share": memory.share,
        "since": memory.since,
        "activation_started_at": memory.breach_started_at,
        "buffer_started_at": memory.calm_started_at,
        # An OVERFLOW reached through FAILOVER is not held on an unknown metric, after a restart too.
        "via_failover": memory.via_failover,
        "transition": None if transition is None else {
            "from": transition.from_state.value,
            "to": transition.to_state.value,
            "at": transition.at,
            "reason": transition.reason,
        },
    }


def _number(document: Mapping[str, Any], key: str, *, optional: bool = False) -> float | None:
    value = document.get(key)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key}: must be a finite number, got {value!r}")
    return float(value)


def _state(document: Mapping[str, Any], key: str) -> OverflowState:
    value = document.get(key)
    try:
        return OverflowState(str(value))
    except ValueError:
        raise ValueError(f"{key}: not a state: {value!r}") from None


def _resumed(started: float | None, alive_at: float, now: float) -> float | None:
    return None if started is None else now - max(0.0, alive_at - started)


def restore_memory(document: Any, now: float, alive_at: float | None = None) -> ModelMemory:
    """A memory from `memory_document`'s output, its timers resumed at `now` with the time they had run
    until `alive_at` (default `now`: no pause). Raises ValueError (naming the key) on anything
    malformed: a broken document is a fresh start, never a guess."""
    if not isinstance(document, Mapping):
        raise ValueError("must be a mapping")
    mode = _state(document, "mode")
    if mode not in (OverflowState.STANDBY, OverflowState.OVERFLOW):
        raise ValueError(f"mode: must be STANDBY or OVERFLOW, got {mode.value}")
    share = document.get("share")
    if isinstance(share, bool) or not isinstance(share, int) or not 0 <= share <= 100:
        raise ValueError(f"share: must be an integer 0-100, got {share!r}")
    since = _number(document, "since")
    activation = _number(document, "activation_started_at", optional=True)
    buffer = _number(document, "buffer_started_at", optional=True)
    via_failover = document.get("via_failover", False)  # absent in files written before it existed
    if not isinstance(via_failover, bool):
        raise ValueError(f"via_failover: must be true or false, got {via_failover!r}")
    raw = document.get("transition")
    transition = None
    if raw is not None:
        if not isinstance(raw, Mapping):
            raise ValueError("transition: must be a mapping")
        reason = raw.get("reason", "")
        if not isinstance(reason, str):
            raise ValueError("transition.reason: must be a string")
        transition = Transition(_state(raw, "from"), _state(raw, "to"), float(_number(raw, "at") or 0.0), reason)
    assert since is not None
    alive = now if alive_at is None else alive_at
    return ModelMemory(
        state=_state(document, "state"),
        mode=mode,
        share=share,
        since=since,
        breach_started_at=_resumed(activation, alive, now),
        calm_started_at=_resumed(buffer, alive, now),
        transition=transition,
        via_failover=via_failover,
    )
