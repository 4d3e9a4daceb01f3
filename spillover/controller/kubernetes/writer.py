"""Writes ModelDeployment status back to the Kubernetes API server, and an Event on each state transition.

The evaluation loop calls `StatusWriter.publish()` (or hands it `StatusReport`s through `sink`) with the
status of every model. `publish` never blocks: it compares, queues and returns. A background task
(`run()`) writes the `/status` subresource with a JSON merge patch, from a worker thread (the `kubernetes`
client is synchronous). What the status documents hold is `spillover.controller.kubernetes.documents`.

When it is written:

- A change of routing-relevant content (`routing_key`) is written at once; a change of only the rest
  (texts, metric values, times) at most every `refresh_interval` seconds, measured with `clock`.
- What is stored is the writer's `shape` of the status (`spillover.controller.kubernetes.shapes`: the whole
  document for spillover's CRD; Beamlit's fields and `spillover.dev/*` annotations for Beamlit's), less
  the fields the API server was seen to prune. Comparisons are always against what the server kept
  (the object read, or returned by the last patch), never against what was sent.
- Annotations (Beamlit's shape) are a merge patch of the object's metadata, status a merge patch of
  `/status`; each only when it differs.
- The patch carries `metadata.resourceVersion`: a concurrent writer or a re-created object gives a 409,
  after which the object is read again and the patch recomputed (at most 4 attempts). A 404 (the object
  was deleted) is dropped silently.

Queueing: at most one pending status per object, the latest wins; at most `max_pending` objects pending
(beyond that, the newest publish for an object not yet pending is dropped and re-offered on the next
evaluation, since nothing was written). Events are not coalesced (each transition is one Event), in a
bounded deque of `max_events`.

High availability: only the leader writes. Create the writer with `active=False` and call `activate()`
from the leader elector's on-started callback and `deactivate()` from on-stopped; `activate()` forgets
what was written before (another leader may have written since) so the first write of each object
starts from a fresh read.

Clocks are injectable: `clock` (monotonic: the refresh interval) and `wall_clock` (Unix time: condition
transition times and Event times), so that tests move time instead of waiting for it.
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
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from kubernetes.client import ApiClient, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from spillover.controller.contracts import StatusReport
from spillover.controller.kubernetes.documents import (
    Key,
    StatusInput,
    TransitionEvent,
    desired_status,
    event_body,
    inputs_from_report,
    json_object,
    merge_patch_status,
    rfc3339,
    routing_key,
)
from spillover.controller.kubernetes.shapes import (
    SOFT_ANNOTATIONS,
    SPILLOVER_SHAPE,
    PrunedFields,
    StatusShape,
    our_annotations,
)

log = logging.getLogger(__name__)

__all__ = ["StatusWriter"]

_T = TypeVar("_T")


@dataclass
class _Written:
    """What the API server holds for one object, as far as this writer knows."""

    resource_version: str
    uid: str | None
    status: dict[str, Any]
    at: float  # monotonic time of the last write (or of the read that filled this entry)
    routing: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)  # the shape's annotations, as stored


def _routing(status: Mapping[str, Any], annotations: Mapping[str, str]) -> dict[str, Any]:
    return {"status": routing_key(status),
            "annotations": {k: v for k, v in annotations.items() if k not in SOFT_ANNOTATIONS}}


class StatusWriter:
    """Publishes ModelDeployment status (see the module docstring).

    Call `start()` (or run `run()` as a task) inside the event loop, `publish()` on each evaluation, and
    `await close()` on shutdown.
    """

    def __init__(
        self,
        api_client: ApiClient,
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
        wall_clock: Callable[[], float] = time.time,
        shape: StatusShape = SPILLOVER_SHAPE,
    ) -> None:
        self._api = CustomObjectsApi(api_client)
        self.shape = shape
        self.pruned = PrunedFields()
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
        self._wall_clock = wall_clock
        self._active = active
        self._pending: dict[Key, StatusInput] = {}
        self._inflight: set[Key] = set()
        self._events: deque[TransitionEvent] = deque(maxlen=max_events)
        self._written: dict[Key, _Written] = {}
        self._seen_state: dict[Key, str] = {}
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._epoch = 0  # bumped by activate/deactivate: results of older writes are not cached
        # Counters, for metrics and tests.
        self.writes = 0
        self.annotation_writes = 0
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
        self._events.append(TransitionEvent(key, str(before), state, note, self._wall_clock()))

    def _desired(self, item: StatusInput, stored: _Written) -> tuple[dict[str, Any], dict[str, str]]:
        """(status, annotations) to store for `item`, as this CRD can keep them."""
        full = desired_status(item, stored.status, now=rfc3339(self._wall_clock()))
        return self.pruned.drop(self.shape.status(full, item)), self.shape.annotations(full, item)

    def _needs_write(self, key: Key, item: StatusInput) -> bool:
        written = self._written.get(key)
        if written is None:
            return True  # the worker reads the object first and decides
        status, annotations = self._desired(item, written)
        if status == written.status and annotations == written.annotations:
            return False
        if _routing(status, annotations) != written.routing:
            return True
        return self._clock() - written.at >= self.refresh_interval

    def sink(self, report: StatusReport) -> None:
        """A `spillover.controller.contracts.StatusSink`: `provider.status_sinks.append(writer.sink)`."""
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

    def _next_job(self) -> Coroutine[Any, Any, None] | None:
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

    async def _guarded(
        self, key: Key, fn: Callable[[Key, _T, int], Awaitable[None]], arg: _T, hold: bool
    ) -> None:
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
        try:
            obj = self._api.get_namespaced_custom_object(
                self.group, self.version, key[0], self.plural, key[1], _request_timeout=self.request_timeout
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return self._entry(json_object(obj), at=self._clock())

    def _entry(self, obj: Mapping[str, Any], at: float) -> _Written:
        metadata = obj.get("metadata") or {}
        status = dict(obj.get("status") or {})
        annotations = our_annotations(metadata.get("annotations")) if self.shape.beamlit else {}
        return _Written(
            resource_version=str(metadata.get("resourceVersion", "")),
            uid=metadata.get("uid"),
            status=status,
            at=at,
            routing=_routing(status, annotations),
            annotations=annotations,
        )

    def _write_sync(self, key: Key, item: StatusInput, known: _Written | None) -> _Written | None:
        entry = known
        for _attempt in range(4):
            if entry is None:
                entry = self._read_sync(key)
                if entry is None:
                    return None  # deleted
            desired, annotations = self._desired(item, entry)
            if desired == entry.status and annotations == entry.annotations:
                return entry
            if _routing(desired, annotations) == entry.routing and self._clock() - entry.at < self.refresh_interval:
                return entry
            try:
                if annotations != entry.annotations:
                    entry = self._patch_annotations(key, entry, annotations)
                if desired != entry.status:
                    entry = self._patch_status(key, entry, desired)
            except ApiException as error:
                if error.status == 404:
                    return None
                if error.status == 409:
                    self.conflicts += 1
                    entry = None  # someone else wrote (or the object was re-created): read again
                    continue
                raise
            return entry
        raise RuntimeError("status patch kept conflicting")

    def _patch_annotations(self, key: Key, entry: _Written, wanted: Mapping[str, str]) -> _Written:
        # A merge patch of the metadata only: null removes what is no longer wanted.
        changes: dict[str, str | None] = {k: None for k in entry.annotations if k not in wanted}
        changes.update(wanted)
        body = {"metadata": {"resourceVersion": entry.resource_version, "annotations": changes}}
        obj = self._api.patch_namespaced_custom_object(
            self.group, self.version, key[0], self.plural, key[1], body, _request_timeout=self.request_timeout
        )
        self.annotation_writes += 1
        return self._entry(json_object(obj), at=self._clock())

    def _patch_status(self, key: Key, entry: _Written, desired: dict[str, Any]) -> _Written:
        body = {
            "metadata": {"resourceVersion": entry.resource_version},
            "status": merge_patch_status(desired, entry.status, self.shape.owned),
        }
        obj = self._api.patch_namespaced_custom_object_status(
            self.group, self.version, key[0], self.plural, key[1], body, _request_timeout=self.request_timeout
        )
        self.writes += 1
        written = self._entry(json_object(obj), at=self._clock())
        pruned = self.pruned.learn(desired, written.status)
        if pruned:
            log.warning(
                "the %s CRD prunes status field(s) %s: no longer sent (its schema does not keep them)",
                self.group, ", ".join(pruned),
            )
        log.debug("wrote status of %s/%s (resourceVersion %s)", key[0], key[1], written.resource_version)
        return written

    async def _emit(self, key: Key, event: TransitionEvent, epoch: int) -> None:
        entry = self._written.get(key)
        uid = entry.uid if entry is not None else None
        await asyncio.to_thread(self._emit_sync, key, event, uid)

    def _emit_sync(self, key: Key, event: TransitionEvent, uid: str | None) -> None:
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


def _describe(error: BaseException) -> str:
    if not isinstance(error, ApiException) or error.status is None:
        return f"{type(error).__name__}: {error}"
    message = ""
    if error.body:
        try:
            message = json.loads(error.body).get("message", "")
        except (ValueError, AttributeError):
            message = str(error.body)[:200]
    return f"HTTP {error.status} {error.reason or ''}: {message}".strip()

