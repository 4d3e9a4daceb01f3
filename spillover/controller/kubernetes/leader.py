"""Leader election on a `coordination.k8s.io/v1` Lease, with client-go's leaderelection semantics.

Every replica serves xDS; only the leader writes status (and Events). The algorithm is client-go's
(`k8s.io/client-go/tools/leaderelection`):

- The Lease holds the record: `holderIdentity`, `leaseDurationSeconds`, `acquireTime`, `renewTime`,
  `leaseTransitions`. Writes use the Lease's `resourceVersion` (optimistic concurrency): of two replicas
  that try at once, one gets a 409 and stays a follower.
- A replica that does not hold the Lease takes it when it is free (no holder: released) or expired. Expiry
  is judged with the *local* clock: the Lease is expired when its record has not changed for
  `lease_duration` seconds since this replica saw it change, so clocks of different nodes never matter.
  Taking over a Lease from another holder increments `leaseTransitions`.
- The leader renews every `retry_period` seconds. If it cannot renew for `renew_deadline` seconds
  (< `lease_duration`) it steps down (on_stopped) *before* anyone else may take over, and goes back to
  trying to acquire.
- A graceful stop releases the Lease (empty holder, `leaseDurationSeconds: 1`): a follower takes over on its
  next retry instead of waiting for expiry.

Losing leadership never touches xDS: Envoys stay connected to whichever replica they are connected to.

The `kubernetes` client is synchronous: each call runs in a worker thread with a request timeout, so the
event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes.client import ApiClient, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from spillover.controller.kubernetes.documents import json_object

log = logging.getLogger(__name__)

__all__ = ["LeaderElector", "LeaseRecord", "default_identity"]

_GROUP, _VERSION, _PLURAL = "coordination.k8s.io", "v1", "leases"
_JITTER = 1.2  # client-go's JitterFactor for the acquire retries


def default_identity() -> str:
    """The pod name (downward API `POD_NAME`), else host name and process id."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{os.getpid()}"


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    lease_duration: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int

    @classmethod
    def of(cls, lease: Mapping[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            lease_duration=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def spec(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_duration,
            "leaseTransitions": self.transitions,
        }
        if self.acquire_time:
            out["acquireTime"] = self.acquire_time
        if self.renew_time:
            out["renewTime"] = self.renew_time
        return out


Callback = Callable[[], Awaitable[None] | None]


class LeaderElector:
    """Runs the election for one identity; `await run()` (or `start()`) until `stop()`."""

    def __init__(
        self,
        api_client: ApiClient,
        namespace: str,
        name: str = "spillover-leader",
        identity: str | None = None,
        lease_duration: float = 15,
        renew_deadline: float = 10,
        retry_period: float = 2,
        *,
        on_started: Callback | None = None,
        on_stopped: Callback | None = None,
        on_new_leader: Callable[[str], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not lease_duration > renew_deadline > retry_period * _JITTER > 0:
            raise ValueError("need lease_duration > renew_deadline > retry_period * 1.2 > 0")
        self._api = CustomObjectsApi(api_client)
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.on_new_leader = on_new_leader
        self._clock = clock
        self._stop = asyncio.Event()
        self._release_on_stop = True
        self._leader = False
        self._last_renew = 0.0
        # What was last seen of the Lease: record, resourceVersion, and when it changed (local clock).
        self._observed: LeaseRecord | None = None
        self._observed_rv: str | None = None
        self._observed_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self.leader_identity: str = ""
        # The Lease's leaseTransitions when this replica last wrote it: a new leader, a higher term.
        self.term = 0

    # --- public state --------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """True while this replica holds the Lease and renewed it within the renew deadline."""
        return self._leader and self._clock() - self._last_renew < self.renew_deadline

    # --- running -------------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            self._stop = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self.run(), name=f"leader-election-{self.name}")
        return self._task

    async def stop(self, release: bool = True) -> None:
        """Stop electing. With `release` (graceful) a held Lease is given up at once; without, it is
        simply no longer renewed and expires (what a crash looks like to the others)."""
        self._release_on_stop = release
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        try:
            while not self._stop.is_set():
                if not await self._acquire():
                    break
                await self._became_leader()
                await self._renew_until_lost()
                if self._stop.is_set():
                    break
                await self._lost_leadership()
        finally:
            was_leader = self._leader
            if was_leader and self._release_on_stop:
                # Shielded: a cancelled run() (shutdown) still hands the Lease over.
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.shield(asyncio.to_thread(self._release_sync))
            if was_leader:
                await self._lost_leadership()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()

    async def _acquire(self) -> bool:
        """Tries until the Lease is ours (True) or stop() (False)."""
        while not self._stop.is_set():
            if await self._try():
                return True
            await self._sleep(self.retry_period * (1 + random.random() * (_JITTER - 1)))
        return False

    async def _renew_until_lost(self) -> None:
        while not self._stop.is_set():
            await self._sleep(self.retry_period)
            if self._stop.is_set():
                return
            deadline = self._last_renew + self.renew_deadline
            while not self._stop.is_set():
                remaining = deadline - self._clock()
                if remaining <= 0:
                    log.warning("leader election: could not renew %s/%s within %ss: stepping down",
                                self.namespace, self.name, self.renew_deadline)
                    return
                if await self._try(timeout=remaining):
                    break
                if self._observed is not None and self._observed.holder not in ("", self.identity):
                    log.warning("leader election: %s/%s is now held by %s", self.namespace, self.name,
                                self._observed.holder)
                    return
                await self._sleep(min(self.retry_period / 2, max(0.0, deadline - self._clock())))

    async def _try(self, timeout: float | None = None) -> bool:
        timeout = self.renew_deadline if timeout is None else timeout
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.to_thread(self._try_sync, timeout)
        except TimeoutError:
            return False
        except asyncio.CancelledError:
            raise
        except Exception as error:
            log.warning("leader election on %s/%s: %s", self.namespace, self.name, error)
            return False

    async def _became_leader(self) -> None:
        self._leader = True
        log.info("leader election: %s is the leader (%s/%s)", self.identity, self.namespace, self.name)
        await _call(self.on_started)

    async def _lost_leadership(self) -> None:
        if not self._leader:
            return
        self._leader = False
        log.info("leader election: %s stopped leading", self.identity)
        await _call(self.on_stopped)

    # --- the protocol (worker threads) ----------------------------------------------------------------

    def _observe(self, record: LeaseRecord, resource_version: str | None) -> None:
        if record != self._observed:
            self._observed = record
            self._observed_at = self._clock()
            if record.holder != self.leader_identity:
                self.leader_identity = record.holder
                if self.on_new_leader is not None and record.holder:
                    with contextlib.suppress(Exception):
                        self.on_new_leader(record.holder)
        self._observed_rv = resource_version

    def _try_sync(self, timeout: float) -> bool:
        """client-go's tryAcquireOrRenew: one attempt to get or keep the Lease."""
        now_text = _micro_time()
        mine = LeaseRecord(self.identity, _whole_seconds(self.lease_duration), now_text, now_text, 0)
        started = self._clock()
        try:
            lease = json_object(self._api.get_namespaced_custom_object(
                _GROUP, _VERSION, self.namespace, _PLURAL, self.name, _request_timeout=timeout
            ))
        except ApiException as error:
            if error.status != 404:
                raise
            body = {
                "apiVersion": f"{_GROUP}/{_VERSION}",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": mine.spec(),
            }
            try:
                created = json_object(self._api.create_namespaced_custom_object(
                    _GROUP, _VERSION, self.namespace, _PLURAL, body, _request_timeout=timeout
                ))
            except ApiException as create_error:
                if create_error.status == 409:  # someone else created it first
                    return False
                raise
            self._observe(mine, (created.get("metadata") or {}).get("resourceVersion"))
            self._last_renew = started
            self.term = mine.transitions
            return True

        old = LeaseRecord.of(lease)
        resource_version = (lease.get("metadata") or {}).get("resourceVersion")
        self._observe(old, resource_version)
        held_by_other = old.holder not in ("", self.identity)
        duration = old.lease_duration or _whole_seconds(self.lease_duration)
        if held_by_other and self._observed_at + duration > self._clock():
            return False  # held and not expired
        if old.holder == self.identity:
            record = LeaseRecord(self.identity, mine.lease_duration, old.acquire_time or now_text, now_text,
                                 old.transitions)
        else:
            record = LeaseRecord(self.identity, mine.lease_duration, now_text, now_text, old.transitions + 1)
        body = {
            "apiVersion": f"{_GROUP}/{_VERSION}",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace, "resourceVersion": resource_version},
            "spec": record.spec(),
        }
        try:
            updated = json_object(self._api.replace_namespaced_custom_object(
                _GROUP, _VERSION, self.namespace, _PLURAL, self.name, body, _request_timeout=timeout
            ))
        except ApiException as error:
            if error.status == 409:  # someone else updated it between our read and write
                return False
            raise
        self._observe(record, (updated.get("metadata") or {}).get("resourceVersion"))
        self._last_renew = started
        self.term = record.transitions
        return True

    def _release_sync(self) -> None:
        """client-go's release: keep the record, clear the holder, shorten the duration."""
        lease = json_object(self._api.get_namespaced_custom_object(
            _GROUP, _VERSION, self.namespace, _PLURAL, self.name, _request_timeout=self.retry_period
        ))
        old = LeaseRecord.of(lease)
        if old.holder != self.identity:
            return
        now_text = _micro_time()
        record = LeaseRecord("", 1, now_text, now_text, old.transitions)
        body = {
            "apiVersion": f"{_GROUP}/{_VERSION}",
            "kind": "Lease",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "resourceVersion": (lease.get("metadata") or {}).get("resourceVersion"),
            },
            "spec": record.spec(),
        }
        try:
            self._api.replace_namespaced_custom_object(
                _GROUP, _VERSION, self.namespace, _PLURAL, self.name, body, _request_timeout=self.retry_period
            )
            log.info("leader election: %s released %s/%s", self.identity, self.namespace, self.name)
        except ApiException as error:
            log.warning("leader election: release of %s/%s failed: HTTP %s", self.namespace, self.name,
                        error.status)


def _whole_seconds(seconds: float) -> int:
    return max(1, round(seconds))


async def _call(callback: Callback | None) -> None:
    if callback is None:
        return
    try:
        result = callback()
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("leader election callback failed")
