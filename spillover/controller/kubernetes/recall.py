"""Kubernetes mode: a restarted control plane takes each model's decision back from the status the
leader wrote (what the API server stored, read once per model when it first appears).

From the status: `state`, `wantedShare` (the metric state machine's share), `stateSince`,
`lastTransition`, and the `BufferRunning` / `ActivationPending` conditions, whose `lastTransitionTime` is
when the buffer or activation timer started (`spillover.decide.status`). Timers are paused from the last
status write (the status subresource's time in `metadata.managedFields`, else the newest metric sample)
until the restart, as in file mode. A status that is missing, of another writer or malformed gives no
memory: that model starts afresh.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from kubernetes.client import ApiClient, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from spillover.decide import ModelMemory
from spillover.decide.persisted import restore_memory
from spillover.decide.status import ACTIVATION_PENDING, BUFFER_RUNNING
from spillover.policy import DesiredState, ModelDeployment, OverflowState
from spillover.sources.kube.state import KubeDesiredState

log = logging.getLogger(__name__)

__all__ = ["StatusRecall", "memory_from_status"]

_VERSION = "v1alpha1"
_PLURAL = "modeldeployments"


def _time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _timer(status: Mapping[str, Any], type_: str) -> float | None:
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("type") == type_ and condition.get("status") == "True":
            return _time(condition.get("lastTransitionTime"))
    return None


def _last_written(obj: Mapping[str, Any], status: Mapping[str, Any]) -> float | None:
    times = [
        _time(entry.get("time"))
        for entry in (obj.get("metadata") or {}).get("managedFields") or []
        if isinstance(entry, Mapping) and entry.get("subresource") == "status"
    ]
    times += [_time(m.get("sampledAt")) for m in status.get("metrics") or [] if isinstance(m, Mapping)] if not times else []
    known = [t for t in times if t is not None]
    return max(known) if known else None


def memory_from_status(obj: Mapping[str, Any], md: ModelDeployment, now: float) -> ModelMemory | None:
    """The memory a stored ModelDeployment status stands for; None when it stands for none."""
    status = obj.get("status")
    if not isinstance(status, Mapping) or not isinstance(status.get("state"), str):
        return None
    try:
        state = OverflowState(status["state"])
    except ValueError:
        return None
    since = _time(status.get("stateSince"))
    if since is None:
        return None
    offloading = md.spec.offloading_config
    percentage = int(offloading.behavior.percentage) if offloading else 0
    wanted = status.get("wantedShare")
    if state == OverflowState.OVERFLOW and isinstance(wanted, int | float) and not isinstance(wanted, bool):
        mode, share = OverflowState.OVERFLOW, int(wanted)
    elif state == OverflowState.OVERFLOW:
        mode, share = OverflowState.OVERFLOW, percentage
    elif state == OverflowState.FAILOVER:
        mode, share = OverflowState.OVERFLOW, percentage  # FAILOVER freezes the machine there
    else:
        mode, share = OverflowState.STANDBY, 0
    transition = status.get("lastTransition")
    document: dict[str, Any] = {
        "state": state.value,
        "mode": mode.value,
        "share": max(0, min(100, share)),
        "since": since,
        "activation_started_at": _timer(status, ACTIVATION_PENDING) if mode == OverflowState.STANDBY else None,
        "buffer_started_at": _timer(status, BUFFER_RUNNING) if mode == OverflowState.OVERFLOW else None,
        "transition": None,
    }
    if isinstance(transition, Mapping) and _time(transition.get("at")) is not None:
        document["transition"] = {
            "from": transition.get("from"), "to": transition.get("to"),
            "at": _time(transition.get("at")), "reason": str(transition.get("reason") or ""),
        }
    try:
        return restore_memory(document, now, _last_written(obj, status) or now)
    except ValueError as exc:
        log.warning("status of %s: %s; the model starts afresh", md.name, exc)
        return None


class StatusRecall:
    """A DecisionRecall reading the ModelDeployments' status from the API server."""

    def __init__(self, api: ApiClient) -> None:
        self.api = CustomObjectsApi(api)

    async def recall(self, state: DesiredState, models: list[str], now: float) -> dict[str, ModelMemory]:
        if not isinstance(state, KubeDesiredState):
            return {}
        jobs = {}
        for name in models:
            origin = state.object_of(name)
            if origin is not None:
                jobs[name] = asyncio.to_thread(self._read, origin.group, origin.namespace, origin.name)
        objects = dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))
        recalled = {}
        for name, obj in objects.items():
            memory = memory_from_status(obj, state.models[name], now) if obj is not None else None
            if memory is not None:
                recalled[name] = memory
        if recalled:
            log.info("decisions recalled from the status: %s", ", ".join(
                f"{name} {memory.state.value}" for name, memory in sorted(recalled.items())))
        return recalled

    def _read(self, group: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            obj = self.api.get_namespaced_custom_object(group, _VERSION, namespace, _PLURAL, name)
        except ApiException as exc:
            log.warning("reading the status of %s/%s back: HTTP %s; it starts afresh", namespace, name, exc.status)
            return None
        except Exception as exc:  # a network problem: start afresh rather than not at all
            log.warning("reading the status of %s/%s back: %s; it starts afresh", namespace, name, exc)
            return None
        return obj if isinstance(obj, Mapping) else None
