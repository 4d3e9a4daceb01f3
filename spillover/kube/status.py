"""Writes ModelDeployment status back to the Kubernetes API server, and an Event on each state transition.

The evaluation loop calls `StatusWriter.publish()` with the status of every model (the camelCase document
of `spillover.overflow.status.status_document`, or a validation message for an invalid object). `publish`
never blocks: it compares, queues and returns. A background task (`run()`) writes the `/status`
subresource with a JSON merge patch, from a worker thread (the `kubernetes` client is synchronous).

What is written, and when:

- Never `timeInState` nor a metric's `age`: they change on every evaluation. `None` values are dropped
  (the CRD has no nullable fields; a key that disappears is removed with a merge-patch `null`).
- Changes of *routing-relevant* content are written at once: `state`, `remoteShare`, `wantedShare`,
  `offloadingStatus`, `observedGeneration`, each condition's type/status/reason, each metric's
  name/source/threshold/condition. The rest (the reason texts, condition messages, metric values,
  `sampledAt`, errors, `stateSince`, `lastTransition*`) goes with those writes, and on its own at most
  every `refresh_interval` seconds, so that a fluctuating metric does not turn into one write per tick.
- `lastTransitionTime` of a condition whose status did not change is kept from what is stored.
- Conditions of other writers (types spillover does not own) are kept.
- The patch carries `metadata.resourceVersion`: a concurrent writer or a re-created object gives a 409,
  after which the object is read again and the patch recomputed. A 404 (the object was deleted) is
  dropped silently.

Queueing: at most one pending status per object, the latest wins; at most `max_pending` objects pending
(beyond that, the newest publish for an object not yet pending is dropped and re-offered on the next
evaluation, since nothing was written). Events are not coalesced (each transition is one Event), in a
bounded deque of `max_events`.

High availability: only the leader writes. Create the writer with `active=False` and call `activate()`
from the leader elector's on-started callback and `deactivate()` from on-stopped; `activate()` forgets
what was written before (another leader may have written since) so the first write of each object
starts from a fresh read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "EVENT_REASONS",
    "OWNED_STATUS_KEYS",
    "StatusInput",
    "StatusWriter",
    "desired_status",
    "inputs_from_report",
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
)
# Never stored: they change on every evaluation.
_VOLATILE_TOP = frozenset({"timeInState"})
_VOLATILE_METRIC = frozenset({"age"})
# Stored, but a change of only these waits for the refresh interval.
_SOFT_TOP = frozenset({"reason", "stateSince", "lastTransition", "lastTransitionTime"})
_SOFT_METRIC = frozenset({"value", "sampledAt", "error"})
_SOFT_CONDITION = frozenset({"message", "lastTransitionTime"})

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

    @property
    def state(self) -> str | None:
        value = self.status.get("state") if self.status is not None else None
        return str(value) if value is not None else None


def _now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _micro_time(t: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if t is None else t, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    """The status to store for `item`, given the stored one (for condition times and foreign conditions)."""
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
    stamp = now or _now_rfc3339()
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


def _merge_patch_status(desired: Mapping[str, Any], stored: Mapping[str, Any]) -> dict[str, Any]:
    patch: dict[str, Any] = dict(desired)
    for key in OWNED_STATUS_KEYS:
        if key in stored and key not in desired:
            patch[key] = None
    return patch


@dataclass
class _Written:
    """What the API server holds for one object, as far as this writer knows."""

    resource_version: str
    uid: str | None
    status: dict[str, Any]
    at: float  # monotonic time of the last write (or of the read that filled this entry)
    routing: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Event:
    key: Key
    from_state: str
    to_state: str
    note: str
    at: float


class StatusWriter:
    """Publishes ModelDeployment status (see the module docstring).

    `api_client` is a `kubernetes.client.ApiClient`. Call `start()` (or run `run()` as a task) inside the
    event loop, `publish()` on each evaluation, and `await close()` on shutdown.
    """

    def __init__(
        self,
        api_client: Any,
        group: str = "spillover.dev",
        version: str = "v1alpha1",
        plural: str = "modeldeployments",
        *,
        kind: str = "ModelDeployment",
        active: bool = True,
        refresh_interval: float = 30.0,
        max_pending: int = 10_000,
        max_events: int = 1_000,
        concurrency: int = 4,
        request_timeout: float = 10.0,
        reporting_controller: str = "spillover.dev/spillover",
        reporting_instance: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client as k8s

        self._api: Any = k8s.CustomObjectsApi(api_client)
        self.group, self.version, self.plural, self.kind = group, version, plural, kind
        self.refresh_interval = refresh_interval
        self.max_pending = max_pending
        self.concurrency = max(1, concurrency)
        self.request_timeout = request_timeout
        self.reporting_controller = reporting_controller
        self.reporting_instance = (
            reporting_instance or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        )[:128]
        self._clock = clock
        self._active = active
        self._pending: dict[Key, StatusInput] = {}
        self._inflight: set[Key] = set()
        self._events: deque[_Event] = deque(maxlen=max_events)
        self._written: dict[Key, _Written] = {}
        self._seen_state: dict[Key, str] = {}
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._epoch = 0  # bumped by activate/deactivate: results of older writes are not cached
        # Counters, for metrics and tests.
        self.writes = 0
        self.conflicts = 0
        self.events_emitted = 0
        self.dropped = 0
        self.errors = 0

    # --- leadership -----------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self._active

    def activate(self) -> None:
        """Start writing (this replica became the leader). Forgets what it knew was written (others wrote
        since), but keeps the states it saw decided: every replica decides alike, so a transition right
        after the takeover still gets its Event, and one the old leader already reported gets none."""
        self._epoch += 1
        self._written.clear()
        self._pending.clear()
        self._active = True
        self._wake()

    def deactivate(self) -> None:
        """Stop writing (leadership lost). Pending statuses and events are dropped."""
        self._epoch += 1
        self._active = False
        self._pending.clear()
        self._events.clear()

    # --- the evaluation side ----------------------------------------------------------------------------

    async def publish(self, statuses: Mapping[Key, StatusInput], complete: bool = True) -> None:
        """Offer the current status of the models; returns at once.

        With `complete` (the default) `statuses` is every model: objects not in it are forgotten.
        """
        self.offer(statuses, complete)

    def offer(self, statuses: Mapping[Key, StatusInput], complete: bool = True) -> None:
        """`publish()` without the coroutine, for synchronous callers in the event loop's thread."""
        if complete:
            for key in [k for k in self._seen_state if k not in statuses]:
                del self._seen_state[key]
            for key in [k for k in self._written if k not in statuses and k not in self._inflight]:
                del self._written[key]
        if not self._active:
            for key, item in statuses.items():
                if item.state is not None:
                    self._seen_state[key] = item.state
            return
        for key, item in statuses.items():
            self._note_transition(key, item)
            if not self._needs_write(key, item):
                self._pending.pop(key, None)
                continue
            if key not in self._pending and len(self._pending) >= self.max_pending:
                self.dropped += 1
                continue
            self._pending[key] = item
        if self._pending or self._events:
            self._wake()

    def _note_transition(self, key: Key, item: StatusInput) -> None:
        state = item.state
        if state is None:
            return
        before = self._seen_state.get(key, item.previous_state)
        self._seen_state[key] = state
        if before is None or before == state:
            return
        note = str((item.status or {}).get("reason") or "")
        self._events.append(_Event(key, str(before), state, note, time.time()))

    def _needs_write(self, key: Key, item: StatusInput) -> bool:
        written = self._written.get(key)
        if written is None:
            return True  # the worker reads the object first and decides
        desired = desired_status(item, written.status)
        if desired == written.status:
            return False
        if routing_key(desired) != written.routing:
            return True
        return self._clock() - written.at >= self.refresh_interval

    def sink(self, report: Any) -> None:
        """A `spillover.policies.StatusSink`: `provider.status_sinks.append(writer.sink)`."""
        self.offer(inputs_from_report(report, self.group))

    def pending(self) -> dict[Key, StatusInput]:
        """The statuses waiting to be written (a copy)."""
        return dict(self._pending)

    def task_running(self) -> bool:
        return self._task is not None and not self._task.done()

    # --- the worker -------------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="spillover-status-writer")
        return self._task

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def run(self) -> None:
        self._wakeup = asyncio.Event()
        running: set[asyncio.Task[None]] = set()

        def finished(task: asyncio.Task[None]) -> None:
            running.discard(task)
            self._wake()

        try:
            while True:
                self._wakeup.clear()
                while len(running) < self.concurrency:
                    job = self._next_job()
                    if job is None:
                        break
                    task = asyncio.create_task(job)
                    running.add(task)
                    task.add_done_callback(finished)
                await self._wakeup.wait()
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    async def idle(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is pending or being written (for tests and graceful shutdown)."""
        deadline = time.monotonic() + timeout
        while self._pending or self._inflight or self._events:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def _next_ready(self) -> Key | None:
        return next((k for k in self._pending if k not in self._inflight), None)

    def _next_job(self) -> Any:
        if not self._active:
            return None
        if self._events:
            event = self._events.popleft()
            return self._guarded(event.key, self._emit, event, hold=False)
        key = self._next_ready()
        if key is None:
            return None
        item = self._pending.pop(key)
        return self._guarded(key, self._write, item, hold=True)

    async def _guarded(self, key: Key, fn: Callable[..., Any], arg: Any, hold: bool) -> None:
        epoch = self._epoch
        if hold:
            self._inflight.add(key)
        try:
            await fn(key, arg, epoch)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            # Nothing is cached for a failed write: the next evaluation offers it again.
            self.errors += 1
            log.warning("status of %s/%s: %s", key[0], key[1], _describe(error))
        finally:
            if hold:
                self._inflight.discard(key)

    async def _write(self, key: Key, item: StatusInput, epoch: int) -> None:
        result = await asyncio.to_thread(self._write_sync, key, item, self._written.get(key))
        if epoch != self._epoch or not self._active:
            return
        if result is None:
            self._written.pop(key, None)
        else:
            self._written[key] = result

    # --- synchronous API calls (worker threads) --------------------------------------------------------

    def _read_sync(self, key: Key) -> _Written | None:
        from kubernetes.client.exceptions import ApiException

        try:
            obj = self._api.get_namespaced_custom_object(
                self.group, self.version, key[0], self.plural, key[1], _request_timeout=self.request_timeout
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return self._entry(obj, at=self._clock())

    def _entry(self, obj: Mapping[str, Any], at: float) -> _Written:
        metadata = obj.get("metadata") or {}
        status = dict(obj.get("status") or {})
        return _Written(
            resource_version=str(metadata.get("resourceVersion", "")),
            uid=metadata.get("uid"),
            status=status,
            at=at,
            routing=routing_key(status),
        )

    def _write_sync(self, key: Key, item: StatusInput, known: _Written | None) -> _Written | None:
        from kubernetes.client.exceptions import ApiException

        entry = known
        for _attempt in range(4):
            if entry is None:
                entry = self._read_sync(key)
                if entry is None:
                    return None  # deleted
            desired = desired_status(item, entry.status)
            if desired == entry.status:
                return entry
            routing = routing_key(desired)
            if routing == entry.routing and self._clock() - entry.at < self.refresh_interval:
                return entry
            body = {
                "metadata": {"resourceVersion": entry.resource_version},
                "status": _merge_patch_status(desired, entry.status),
            }
            try:
                obj = self._api.patch_namespaced_custom_object_status(
                    self.group, self.version, key[0], self.plural, key[1], body,
                    _request_timeout=self.request_timeout,
                )
            except ApiException as error:
                if error.status == 404:
                    return None
                if error.status == 409:
                    self.conflicts += 1
                    entry = None  # someone else wrote (or the object was re-created): read again
                    continue
                raise
            self.writes += 1
            written = self._entry(obj, at=self._clock())
            log.debug("wrote status of %s/%s (resourceVersion %s)", key[0], key[1], written.resource_version)
            return written
        raise RuntimeError("status patch kept conflicting")

    async def _emit(self, key: Key, event: _Event, epoch: int) -> None:
        entry = self._written.get(key)
        uid = entry.uid if entry is not None else None
        await asyncio.to_thread(self._emit_sync, key, event, uid)

    def _emit_sync(self, key: Key, event: _Event, uid: str | None) -> None:
        from kubernetes.client.exceptions import ApiException

        body = event_body(
            key,
            event,
            api_version=f"{self.group}/{self.version}",
            kind=self.kind,
            uid=uid,
            controller=self.reporting_controller,
            instance=self.reporting_instance,
        )
        try:
            self._api.create_namespaced_custom_object(
                "events.k8s.io", "v1", key[0], "events", body, _request_timeout=self.request_timeout
            )
        except ApiException as error:
            if error.status == 404:  # the namespace is gone
                return
            raise
        self.events_emitted += 1


def inputs_from_report(report: Any, group: str = "spillover.dev") -> dict[Key, StatusInput]:
    """The StatusInputs of one `spillover.policies.StatusReport` whose state is a `KubeDesiredState`.

    Every ModelDeployment of API group `group` in `state.objects` gets an input: its generation, the status
    document of the model it defines (`state.origins` maps models to their object), and the messages of
    `state.invalid` for it. An object that is neither decided nor invalid (not evaluated yet) is left out.
    Duck-typed, so that this module does not import the policy engine.
    """
    state = report.state
    objects = getattr(state, "objects", None) or {}
    invalid = getattr(state, "invalid", None) or {}
    documents: dict[Key, Mapping[str, Any]] = {}
    for model, origin in (getattr(state, "origins", None) or {}).items():
        key = getattr(origin, "key", None)
        if key is None or getattr(key, "group", None) != group:
            continue
        document = report.statuses.get(model)
        if document is not None:
            documents[(key.namespace, key.name)] = document
    out: dict[Key, StatusInput] = {}
    for key, obj in objects.items():
        if getattr(key, "group", None) != group:
            continue
        errors = invalid.get(key, ())
        message = "; ".join(f"{e.path}: {e.message}" if getattr(e, "path", "") else str(e.message) for e in errors)
        where = (key.namespace, key.name)
        document = documents.get(where)
        if document is None and not message:
            continue
        out[where] = StatusInput(getattr(obj, "generation", None), document, invalid=message or None)
    return out


def event_body(
    key: Key,
    event: _Event,
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


def _describe(error: BaseException) -> str:
    status = getattr(error, "status", None)
    if status is None:
        return f"{type(error).__name__}: {error}"
    body = getattr(error, "body", None)
    message = ""
    if body:
        try:
            message = json.loads(body).get("message", "")
        except (ValueError, AttributeError):
            message = str(body)[:200]
    return f"HTTP {status} {getattr(error, 'reason', '')}: {message}".strip()

