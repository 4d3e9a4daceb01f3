"""The status documents written back to ModelDeployments, and the Events of their transitions (pure).

The evaluation loop produces, per model, the camelCase document of `spillover.decide.status.status_document`
(or a validation message for an invalid object); `inputs_from_report` turns one `StatusReport` of a
`KubeDesiredState` into a `StatusInput` per ModelDeployment. What is stored, and what counts as a change:

- Never `timeInState` nor a metric's `age`: they change on every evaluation. `None` values are dropped
  (the CRD has no nullable fields; a key that disappears is removed with a merge-patch `null`).
- Changes of *routing-relevant* content (`routing_key`) are written at once: `state`, `remoteShare`,
  `wantedShare`, `offloadingStatus`, `observedGeneration`, each condition's type/status/reason, each
  metric's name/source/threshold/condition, the copy on the destination (`destination`: state, replicas,
  address, errors). The rest (the reason texts, condition messages, metric values, `sampledAt`, errors,
  `stateSince`, `lastTransition*`, the copy's reason and `holdUntil`) goes with those writes, and on its own
  only at the writer's refresh interval, so that a fluctuating metric does not turn into one write per tick.
- `lastTransitionTime` of a condition whose status did not change is kept from what is stored.
- Conditions of other writers (types spillover does not own) are kept.

No I/O. Times come in as arguments (`now`, `TransitionEvent.at`); only `desired_status` called without
`now` reads the current time.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from spillover.controller.contracts import StatusReport
from spillover.policy import ModelDeployment
from spillover.policy.errors import PolicyError
from spillover.policy.types import split_host_port
from spillover.sources.kube.state import KubeDesiredState

__all__ = [
    "EVENT_REASONS",
    "OWNED_STATUS_KEYS",
    "Key",
    "StatusInput",
    "TransitionEvent",
    "desired_status",
    "event_body",
    "inputs_from_report",
    "json_object",
    "merge_patch_status",
    "rfc3339",
    "routing_key",
    "stored_form",
]

Key = tuple[str, str]  # (namespace, name)

# Top-level status keys spillover owns: absent from a new status means "remove" (merge-patch null).
OWNED_STATUS_KEYS = (
    "state",
    "remoteShare",
    "wantedShare",
    "reason",
    "stateSince",
    "lastTransition",
    "lastTransitionTime",
    "metrics",
    "observedGeneration",
    "conditions",
    "offloadingStatus",
    "destination",
)
# Never stored: they change on every evaluation.
_VOLATILE_TOP = frozenset({"timeInState"})
_VOLATILE_METRIC = frozenset({"age"})
# Stored, but a change of only these waits for the refresh interval.
_SOFT_TOP = frozenset({"reason", "stateSince", "lastTransition", "lastTransitionTime"})
_SOFT_METRIC = frozenset({"value", "sampledAt", "error"})
_SOFT_CONDITION = frozenset({"message", "lastTransitionTime"})
_SOFT_DESTINATION = frozenset({"reason", "holdUntil"})

OWN_CONDITIONS = ("Ready", "Overflowing", "Invalid")

EVENT_REASONS = {"STANDBY": "Standby", "OVERFLOW": "Overflow", "FAILOVER": "Failover", "DISABLED": "Disabled"}
_WARNING_STATES = frozenset({"FAILOVER"})
_NOTE_LIMIT = 1024  # events.k8s.io/v1 note: at most 1 kB


@dataclass(frozen=True)
class StatusInput:
    """What the evaluation loop knows about one ModelDeployment.

    - `generation`: `metadata.generation` of the object the status describes (-> `observedGeneration`).
    - `status`: the document of `status_document()`; None for an object that is invalid and not served.
    - `invalid`: the validation message when the object's current spec is invalid (with `status` set
      when an older valid generation keeps serving, else alone).
    - `previous_state`: the state before this evaluation; an Event is emitted when `status["state"]`
      differs from it (at most once per change).
    """

    generation: int | None
    status: Mapping[str, Any] | None = None
    invalid: str | None = None
    previous_state: str | None = None
    # What Beamlit's status fields say (spillover.controller.kubernetes.shapes), when known.
    serving_port: int | None = None
    metric_port: int | None = None
    workspace: str | None = None

    @property
    def state(self) -> str | None:
        value = self.status.get("state") if self.status is not None else None
        return str(value) if value is not None else None


def json_object(value: object) -> dict[str, Any]:
    """An API server's answer for a custom object, checked to be what it must be: a JSON object."""
    if not isinstance(value, dict):
        raise TypeError(f"the API server answered {type(value).__name__}, not a JSON object")
    return value


def rfc3339(t: float) -> str:
    """A Unix time as a Kubernetes `Time` (whole seconds, UTC)."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _micro_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _drop_none(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [_drop_none(v) for v in value]
    return value


def stored_form(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status as stored: no `timeInState`, no metric `age`, no None values."""
    out = {k: v for k, v in _drop_none(status).items() if k not in _VOLATILE_TOP}
    if isinstance(out.get("metrics"), list):
        out["metrics"] = [
            {k: v for k, v in m.items() if k not in _VOLATILE_METRIC} if isinstance(m, Mapping) else m
            for m in out["metrics"]
        ]
    return out


def routing_key(status: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a stored status whose change is written at once (see the module docstring)."""
    out = {k: v for k, v in status.items() if k not in _SOFT_TOP}
    if isinstance(out.get("metrics"), list):
        out["metrics"] = [
            {k: v for k, v in m.items() if k not in _SOFT_METRIC} if isinstance(m, Mapping) else m
            for m in out["metrics"]
        ]
    if isinstance(out.get("destination"), Mapping):
        out["destination"] = {k: v for k, v in out["destination"].items() if k not in _SOFT_DESTINATION}
    if isinstance(out.get("conditions"), list):
        out["conditions"] = sorted(
            (
                {k: v for k, v in c.items() if k not in _SOFT_CONDITION} if isinstance(c, Mapping) else c
                for c in out["conditions"]
            ),
            key=lambda c: str(c.get("type")) if isinstance(c, Mapping) else "",
        )
    return out


def _condition(type_: str, status: str, reason: str, message: str, generation: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type_, "status": status, "reason": reason, "message": message}
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def desired_status(item: StatusInput, stored: Mapping[str, Any] | None, now: str | None = None) -> dict[str, Any]:
    """The status to store for `item`, given the stored one (for condition times and foreign conditions).

    `now` (RFC 3339) stamps the conditions that change; by default the current time."""
    stored = stored or {}
    generation = item.generation
    message = (item.invalid or "").strip()
    if item.status is not None:
        status = stored_form(item.status)
        conditions = [dict(c) for c in status.get("conditions", []) if isinstance(c, Mapping)]
        conditions = [c for c in conditions if c.get("type") != "Invalid"]
        if message:
            conditions.append(_condition("Invalid", "True", "ValidationFailed", message, generation))
        else:
            conditions.append(_condition("Invalid", "False", "Valid", "", generation))
    else:
        # Invalid and not served: no state, no share; the conditions say why.
        status = {"reason": f"invalid: {message}" if message else "invalid", "offloadingStatus": False}
        conditions = [
            _condition("Ready", "False", "Invalid", message, generation),
            _condition("Overflowing", "False", "Invalid", message, generation),
            _condition("Invalid", "True", "ValidationFailed", message, generation),
        ]
    if generation is not None:
        status["observedGeneration"] = generation
        for c in conditions:
            c["observedGeneration"] = generation
    old = {c.get("type"): c for c in stored.get("conditions", []) if isinstance(c, Mapping)}
    stamp = now or rfc3339(time.time())
    for c in conditions:
        previous = old.get(c["type"])
        if previous is not None and previous.get("status") == c.get("status") and previous.get("lastTransitionTime"):
            c["lastTransitionTime"] = previous["lastTransitionTime"]
        elif not c.get("lastTransitionTime"):
            c["lastTransitionTime"] = stamp
    own = {c["type"] for c in conditions}
    conditions += [dict(c) for t, c in old.items() if t not in own and t not in OWN_CONDITIONS]
    status["conditions"] = conditions
    return status


def merge_patch_status(
    desired: Mapping[str, Any], stored: Mapping[str, Any], owned: tuple[str, ...] = OWNED_STATUS_KEYS
) -> dict[str, Any]:
    patch: dict[str, Any] = dict(desired)
    for key in owned:
        if key in stored and key not in desired:
            patch[key] = None
        elif isinstance(desired.get(key), Mapping) and isinstance(stored.get(key), Mapping):
            # A merge patch keeps what it does not mention: a field gone from an owned object is nulled.
            gone = {k: None for k in stored[key] if k not in desired[key]}
            if gone:
                patch[key] = {**desired[key], **gone}
    return patch


@dataclass(frozen=True)
class TransitionEvent:
    """A change of a ModelDeployment's state, to be reported as one Kubernetes Event."""

    key: Key
    from_state: str
    to_state: str
    note: str
    at: float  # Unix time of the evaluation that saw the change


def inputs_from_report(report: StatusReport, group: str = "spillover.dev") -> dict[Key, StatusInput]:
    """The StatusInputs of one `StatusReport` whose state is a `KubeDesiredState` (none for another state).

    Every ModelDeployment of API group `group` in `state.objects` gets an input: its generation, the status
    document of the model it defines (`state.object_of(model)`), and the messages of `state.invalid` for
    it. An object that is neither decided nor invalid (not evaluated yet) is left out.
    """
    state = report.state
    if not isinstance(state, KubeDesiredState):
        return {}
    documents: dict[Key, Mapping[str, Any]] = {}
    facts: dict[Key, dict[str, Any]] = {}
    for model in state.origins:
        origin = state.object_of(model)
        if origin is None or origin.group != group:
            continue
        where = (origin.namespace, origin.name)
        document = report.statuses.get(model)
        if document is not None:
            documents[where] = document
        md = state.models.get(model)
        if md is not None:
            facts[where] = _beamlit_facts(md)
    out: dict[Key, StatusInput] = {}
    for key, obj in state.objects.items():
        if key.group != group:
            continue
        message = "; ".join(_describe_error(e) for e in state.invalid.get(key, ()))
        where = (key.namespace, key.name)
        document = documents.get(where)
        if document is None and not message:
            continue
        out[where] = StatusInput(obj.generation, document, invalid=message or None, **facts.get(where, {}))
    return out


def _beamlit_facts(md: ModelDeployment) -> dict[str, Any]:
    """Beamlit's status fields of a served model: the port its local endpoints share, the metrics port
    of metricServiceRef, the $workspace of its remote backend."""
    spec = md.spec
    ports = {split_host_port(e)[1] for e in (spec.local_backend.endpoints if spec.local_backend else [])}
    metric_port = spec.metric_service_ref.target_port if spec.metric_service_ref else None
    remote = spec.offloading_config.remote_backend if spec.offloading_config else None
    return {
        "serving_port": ports.pop() if len(ports) == 1 else None,
        "metric_port": metric_port if isinstance(metric_port, int) else None,
        "workspace": md.workspace if remote is not None else None,
    }


def _describe_error(error: PolicyError) -> str:
    return f"{error.path}: {error.message}" if error.path else error.message


def event_body(
    key: Key,
    event: TransitionEvent,
    *,
    api_version: str,
    kind: str,
    uid: str | None,
    controller: str,
    instance: str,
) -> dict[str, Any]:
    namespace, name = key
    reason = EVENT_REASONS.get(event.to_state, event.to_state.capitalize())
    note = f"{event.from_state} -> {event.to_state}: {event.note}" if event.note else f"{event.from_state} -> {event.to_state}"
    if len(note.encode()) > _NOTE_LIMIT:
        note = note.encode()[: _NOTE_LIMIT - 3].decode(errors="ignore") + "..."
    regarding: dict[str, Any] = {"apiVersion": api_version, "kind": kind, "namespace": namespace, "name": name}
    if uid:
        regarding["uid"] = uid
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        # client-go's naming (<object>.<unix nanoseconds in hex>): generateName ending in "." is refused.
        "metadata": {"name": f"{name[:230]}.{int(event.at * 1e9):x}", "namespace": namespace},
        "eventTime": _micro_time(event.at),
        "reportingController": controller,
        "reportingInstance": instance,
        "action": "Transition",
        "reason": reason,
        "note": note,
        "type": "Warning" if event.to_state in _WARNING_STATES else "Normal",
        "regarding": regarding,
    }
