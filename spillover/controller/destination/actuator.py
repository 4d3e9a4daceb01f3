"""Acting on the destination clusters: the copy's Deployment and Service, and the finalizer on cluster A.

Run by the holder of the Lease only (`activate()` / `deactivate()`, like the status writer): every replica
reads cluster B and decides the copy's size alike, one writes. After each evaluation the controller
`offer()`s a `CopyIntent` per ModelDeployment; `offer` never blocks. A background task takes, per
ModelDeployment, the next step of `reconcile.next_step` and runs it in a worker thread with bounded
timeouts (the `kubernetes` client is synchronous):

- at most one step in flight per ModelDeployment, `concurrency` in all;
- after a step, the next one for that object waits until the informers show what was written (its
  resourceVersion, or its absence), at most `settle` seconds: no second create before the first is seen;
- a failed step is retried with exponential backoff and full jitter (`backoff_initial` .. `backoff_max`),
  its error kept for the status and reported once as a Warning Event (again only when it changes);
- a step that has to wait (the destination unreachable, a conflict) is reported the same way; nothing
  is sent to a destination that does not answer.

Every step that changes something is an Event on the ModelDeployment (events.k8s.io/v1): CopyCreated,
CopyScaled, CopyUpdated, CopyRestored, CopyDeleted, DestinationRecorded, DestinationReleased,
DestinationAbandoned; and every change of the copy's state (Creating, Cold, Warming, Ready, Failed,
Deleting) is one (CopyCreating, CopyCold, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient

from spillover.controller.destination.manifests import CopyManifests
from spillover.controller.destination.reconcile import Step, next_step
from spillover.controller.destination.requests import (
    api_error,
    call,
    event_body,
    resource_version,
    service_replacement,
    with_replicas,
)
from spillover.policy.destination import FINALIZER, RECORD_ANNOTATION, TEMPLATE_HASH_ANNOTATION
from spillover.sources.destination.observe import CopyObservation
from spillover.sources.destination.source import DestinationSource, describe_error
from spillover.sources.kube.destinations import CopyClaim, CopyLocation
from spillover.sources.kube.state import CRKey

log = logging.getLogger("spillover.controller.destination")

__all__ = ["CopyActuator", "CopyIntent"]

_ACTIONS = {"record": "Record", "release": "Release", "create": "Create", "replace": "Update",
            "create-service": "Create", "replace-service": "Update", "delete": "Delete", "wait": "Wait"}


@dataclass(frozen=True)
class CopyIntent:
    """What the controller wants for one ModelDeployment's copy, and what it sees of it now."""

    claim: CopyClaim
    replicas: int | None  # None: not sized yet (nothing is done but reporting its state)
    manifests: CopyManifests | None
    wanted: CopyObservation | None
    recorded: CopyObservation | None
    state: str = ""  # the copy's state (status.destination.state): a change is an Event
    state_reason: str = ""


@dataclass
class _Expect:
    """What the informers must show before the next step for an object: what was just written."""

    what: str  # "deployment", "service", "record", "release", "absent"
    until: float
    generation: int = 0  # deployment: at least this generation
    template_hash: str = ""  # service: carrying this hash
    location: CopyLocation | None = None  # record: recorded here


class _StepFailed(Exception):
    pass


class _Conflict(Exception):
    """Someone wrote the object since it was read (409): not a failure, the next look uses the newer one."""


class CopyActuator:
    def __init__(
        self,
        api: ApiClient,
        source: DestinationSource,
        *,
        active: bool = True,
        concurrency: int = 4,
        request_timeout: float = 5.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        settle: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        reporting_controller: str = "spillover.dev/spillover",
        reporting_instance: str | None = None,
    ) -> None:
        self.api = api  # cluster A: the ModelDeployments and their Events
        self.source = source
        self._active = active
        self.concurrency = max(1, concurrency)
        self.request_timeout = request_timeout
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.settle = settle
        self._clock, self._wall_clock = clock, wall_clock
        self.reporting_controller = reporting_controller
        self.reporting_instance = (
            reporting_instance or os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        )[:128]
        self._intents: dict[CRKey, CopyIntent] = {}
        self._inflight: set[CRKey] = set()
        self._retry_at: dict[CRKey, float] = {}
        self._failures: dict[CRKey, int] = {}
        self._expect: dict[CRKey, _Expect] = {}
        self._written: dict[CopyLocation, int] = {}  # the Deployment generation spillover wrote
        self._blocked: dict[CRKey, str] = {}
        self._errors: dict[CRKey, str] = {}
        self._reported: dict[CRKey, str] = {}  # the last warning reported as an Event
        self._states: dict[CRKey, str] = {}
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._epoch = 0
        # Counters, for metrics and tests.
        self.steps: dict[str, int] = {}
        self.failures = 0
        self.events_emitted = 0

    # -- leadership ------------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self._active

    def activate(self) -> None:
        """This replica holds the Lease: act. What was written before is not known (another leader may
        have written since): each copy is checked once more."""
        self._epoch += 1
        self._written.clear()
        self._expect.clear()
        self._retry_at.clear()
        self._reported.clear()
        self._states.clear()  # a failure seen before is reported again by the new leader
        self._active = True
        self._wake()

    def deactivate(self) -> None:
        self._epoch += 1
        self._active = False

    # -- the evaluation side -----------------------------------------------------------------------------

    def offer(self, intents: Mapping[CRKey, CopyIntent]) -> None:
        """The latest intent of every ModelDeployment with a copy (those absent are forgotten)."""
        for key in [k for k in self._intents if k not in intents]:
            for memory in (self._retry_at, self._failures, self._expect, self._blocked, self._errors,
                           self._reported, self._states):
                memory.pop(key, None)
        self._intents = dict(intents)
        for key, intent in intents.items():
            self._note_state(key, intent)
        self._wake()

    def blocked(self, key: CRKey) -> str:
        """What the copy of `key` waits for ("" when nothing)."""
        return self._blocked.get(key, "")

    def last_error(self, key: CRKey) -> str:
        return self._errors.get(key, "")

    def written_generation(self, location: CopyLocation) -> int | None:
        return self._written.get(location)

    def _note_state(self, key: CRKey, intent: CopyIntent) -> None:
        if not intent.state:
            return
        before = self._states.get(key)
        self._states[key] = intent.state
        if before == intent.state or not self._active:
            return
        if before is None and intent.state != "Failed":
            return  # first sight: only a failure is news
        kind = "Warning" if intent.state == "Failed" else "Normal"
        change = f"{before} -> {intent.state}" if before is not None else intent.state
        self._event(intent.claim, f"Copy{intent.state}", f"{change}: {intent.state_reason}", kind, "Observe")

    # -- the worker ----------------------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="spillover-copy-actuator")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        self._wakeup = asyncio.Event()
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                self._wakeup.clear()
                for key in list(self._intents):
                    if len(running) >= self.concurrency:
                        break
                    job = self._job(key)
                    if job is not None:
                        self._inflight.add(key)
                        task = asyncio.create_task(job)
                        running.add(task)
                        task.add_done_callback(self._finished(running, key))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._next_timer()):
                        await self._wakeup.wait()
        finally:
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)

    def _finished(self, running: set[asyncio.Task[None]], key: CRKey) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            running.discard(task)
            self._inflight.discard(key)
            self._wake()

        return done

    def _next_timer(self) -> float | None:
        """When a backoff or a settle wait ends (the loop looks again then, without an offer)."""
        now = self._clock()
        times = [t for t in self._retry_at.values()] + [e.until for e in self._expect.values()]
        return max(0.05, min(times) - now) if times else None

    def _settled(self, key: CRKey, intent: CopyIntent) -> bool:
        expect = self._expect.get(key)
        if expect is None:
            return True
        claim, wanted = intent.claim, intent.wanted
        if expect.what == "deployment":
            seen = wanted is not None and wanted.exists and (wanted.generation or 0) >= expect.generation
        elif expect.what == "service":
            hash_ = ((wanted.service or {}).get("metadata") or {}).get("annotations", {}) if wanted else {}
            seen = wanted is not None and wanted.service_exists and (
                hash_.get(TEMPLATE_HASH_ANNOTATION) == expect.template_hash)
        elif expect.what == "record":
            seen = claim.finalizer and claim.recorded == expect.location
        elif expect.what == "release":
            seen = not claim.finalizer and claim.recorded is None
        else:
            observed = intent.recorded
            seen = observed is not None and not observed.exists and not observed.service_exists
        if seen or self._clock() >= expect.until:
            del self._expect[key]
            return True
        return False

    def _job(self, key: CRKey) -> Any:
        if not self._active or key in self._inflight:
            return None
        intent = self._intents[key]
        if intent.replicas is None or self._retry_at.get(key, 0.0) > self._clock() or not self._settled(key, intent):
            return None
        replicas = intent.replicas
        location = intent.claim.wanted.location if intent.claim.wanted else None
        step = next_step(intent.claim, intent.wanted, intent.recorded, intent.manifests, replicas,
                         self._written.get(location) if location else None)
        if step.kind == "none":
            self._blocked.pop(key, None)
            self._errors.pop(key, None)
            self._reported.pop(key, None)
            return None
        if step.kind == "wait":
            self._blocked[key] = step.reason
            if self._reported.get(key) != step.reason:
                self._reported[key] = step.reason
                self._event(intent.claim, step.event or "WaitingForDestination", step.reason, "Warning", "Wait")
            return None
        self._blocked.pop(key, None)
        return self._run_step(key, intent, step)

    async def _run_step(self, key: CRKey, intent: CopyIntent, step: Step) -> None:
        epoch = self._epoch
        try:
            await asyncio.to_thread(self._execute, key, intent, step)
        except asyncio.CancelledError:
            raise
        except _Conflict:
            self._retry_at[key] = self._clock() + 0.1
            return
        except Exception as error:
            if epoch != self._epoch:
                return
            message = f"{step.reason}: {error if isinstance(error, _StepFailed) else describe_error(error)}"
            self.failures += 1
            failures = self._failures[key] = self._failures.get(key, 0) + 1
            cap = min(self.backoff_max, self.backoff_initial * 2 ** min(failures - 1, 20))
            self._retry_at[key] = self._clock() + random.uniform(cap / 2, cap)
            self._errors[key] = message
            log.warning("copy of %s: %s", intent.claim, message)
            if self._reported.get(key) != message:
                self._reported[key] = message
                self._event(intent.claim, "CopyFailed", message, "Warning", _ACTIONS.get(step.kind, "Update"))
            return
        self.steps[step.kind] = self.steps.get(step.kind, 0) + 1
        self._failures.pop(key, None)
        self._retry_at.pop(key, None)
        self._errors.pop(key, None)
        self._reported.pop(key, None)
        log.info("copy of %s: %s", intent.claim, step.reason)
        if step.event:
            self._event(intent.claim, step.event, step.reason, "Normal", _ACTIONS.get(step.kind, "Update"))
        self._wake()

    # -- steps (worker threads) ---------------------------------------------------------------------------

    def _execute(self, key: CRKey, intent: CopyIntent, step: Step) -> None:
        claim = intent.claim
        if step.kind in ("record", "release"):
            self._record(claim, step.location if step.kind == "record" else None)
            self._expect[key] = _Expect(step.kind, self._clock() + self.settle, location=step.location)
            return
        location = step.location
        assert location is not None
        connection = self.source.connection(location)
        if connection is None:
            raise _StepFailed("no connection to the destination")
        api = connection.api
        if step.kind == "delete":
            observed = intent.recorded if intent.claim.recorded == location else intent.wanted
            self._delete(api, location, observed)
            self._written.pop(location, None)
            self._expect[key] = _Expect("absent", self._clock() + self.settle)
            return
        manifests = intent.manifests
        assert manifests is not None and intent.wanted is not None
        base = f"/apis/apps/v1/namespaces/{location.namespace}/deployments"
        if step.kind == "create":
            body = with_replicas(manifests.deployment, intent.replicas or 0)
            status, result = self._call(api, "POST", base, body)
            if status == 409:
                raise _StepFailed(f"a Deployment named {location.name} already exists in {location.namespace} on "
                                  f"the destination and is not labelled as this copy: not touched")
        elif step.kind == "replace":
            body = with_replicas(manifests.deployment, intent.replicas or 0)
            body["metadata"]["resourceVersion"] = resource_version(intent.wanted.deployment)
            status, result = self._call(api, "PUT", f"{base}/{location.name}", body)
        elif step.kind == "create-service":
            status, result = self._call(api, "POST", f"/api/v1/namespaces/{location.namespace}/services",
                                        manifests.service)
            if status == 409:
                raise _StepFailed(f"a Service named {location.name} already exists in {location.namespace} on "
                                  "the destination and is not labelled as this copy: not touched")
        else:  # replace-service
            body = service_replacement(manifests.service, intent.wanted.service or {})
            status, result = self._call(api, "PUT", f"/api/v1/namespaces/{location.namespace}/services/{location.name}",
                                        body)
        if status == 409 and step.kind in ("replace", "replace-service"):
            raise _Conflict()
        if not 200 <= status <= 299:
            raise api_error(status, result)
        if step.kind in ("create", "replace"):
            generation = (result.get("metadata") or {}).get("generation")
            generation = generation if isinstance(generation, int) else 1
            self._written[location] = generation
            self._expect[key] = _Expect("deployment", self._clock() + self.settle, generation=generation)
        else:
            self._expect[key] = _Expect("service", self._clock() + self.settle, template_hash=manifests.template_hash)

    def _delete(self, api: ApiClient, location: CopyLocation, observed: CopyObservation | None) -> None:
        for path, obj, foreign in (
            (f"/apis/apps/v1/namespaces/{location.namespace}/deployments/{location.name}",
             observed.deployment if observed else None, observed.foreign if observed else ""),
            (f"/api/v1/namespaces/{location.namespace}/services/{location.name}",
             observed.service if observed else None, observed.service_foreign if observed else ""),
        ):
            if obj is None or foreign:
                continue
            uid = (obj.get("metadata") or {}).get("uid")
            # Only the object seen: a precondition on its uid, so a newcomer of the same name survives. The
            # Deployment's ReplicaSets and pods go with it (B's garbage collector, in the background).
            body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background",
                    **({"preconditions": {"uid": uid}} if uid else {})}
            status, result = self._call(api, "DELETE", path, body)
            if status not in (200, 202, 404, 409):
                raise api_error(status, result)

    def _record(self, claim: CopyClaim, location: CopyLocation | None) -> None:
        """Adds (location given) or removes spillover's finalizer and record on the ModelDeployment."""
        finalizers = [f for f in claim.finalizers if f != FINALIZER]
        if location is not None:
            finalizers.append(FINALIZER)
        body = {"metadata": {
            "resourceVersion": claim.resource_version,
            "finalizers": finalizers,
            "annotations": {RECORD_ANNOTATION: location.annotation() if location is not None else None},
        }}
        path = f"/apis/{claim.group}/v1alpha1/namespaces/{claim.namespace}/modeldeployments/{claim.name}"
        status, result = self._call(self.api, "PATCH", path, body, content_type="application/merge-patch+json")
        if status == 404 and location is None:
            return  # already gone
        if status == 409:
            raise _Conflict()
        if not 200 <= status <= 299:
            raise api_error(status, result)

    def _call(
        self, api: ApiClient, method: str, path: str, body: Any, content_type: str = "application/json"
    ) -> tuple[int, dict[str, Any]]:
        return call(api, method, path, body, self.request_timeout, content_type)

    # -- Events on cluster A ------------------------------------------------------------------------------

    def _event(self, claim: CopyClaim, reason: str, note: str, kind: str, action: str) -> None:
        if not self._active:
            return
        body = event_body(claim, reason, note, kind, action, self._wall_clock(), self.reporting_controller,
                          self.reporting_instance)
        path = f"/apis/events.k8s.io/v1/namespaces/{claim.namespace}/events"

        def send() -> None:
            try:
                status, result = self._call(self.api, "POST", path, body)
                if 200 <= status <= 299:
                    self.events_emitted += 1
                elif status != 404:
                    log.warning("event %s of %s: %s", reason, claim, describe_error(api_error(status, result)))
            except Exception as error:
                log.warning("event %s of %s: %s", reason, claim, describe_error(error))

        try:
            asyncio.get_running_loop().run_in_executor(None, send)
        except RuntimeError:  # no loop in this thread (a worker thread, or tests): send from here
            send()
