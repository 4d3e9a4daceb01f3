"""The Kubernetes policy source: ModelDeployment custom resources, resolved against the cluster.

Same interface as the file source (`DirectorySource`): `poll()`, `state`, `async run(callback)`, producing
a `DesiredState` (here a `KubeDesiredState`, which adds what Kubernetes knows). Built from informers:

- per watched namespace (or cluster-wide): ModelDeployments (`spillover.dev/v1alpha1`, and with
  `beamlit=True` Beamlit's `deployment.beamlit.com/v1alpha1`), Services, EndpointSlices and, for AIBrix
  compatibility, the pods labelled `model.aibrix.ai/name`;
- per referenced object only (least privilege: `fieldSelector=metadata.name=...`, which RBAC
  `resourceNames` can grant): the Secrets of `clientSecretRef` (in the model's own namespace only) and
  the workloads of `modelSourceRef`. These informers come and go with the references.

Every change marks the source dirty; a rebuild (coalescing a burst of events) runs `build_kube_state`
(`spillover.sources.kube.state`, where the rules are), a pure function of the informers' stores and the
previous state.

A ModelDeployment type is watched only once API discovery says it is served: with `--beamlit` a cluster
often has only one of the two CRDs. A type that is not served is a warning of the state (named after
its CRD), stays out of the initial sync, and discovery is asked again every `crd_recheck` seconds; its
informer starts when the CRD appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from kubernetes.client import ApiClient

from spillover.policy import ModelDeployment
from spillover.policy.defaults import NO_DEFAULTS, PolicyDefaults
from spillover.policy.state import DesiredState
from spillover.sources.findings import kept_note, log_new_findings
from spillover.sources.kube.discovery import resource_served
from spillover.sources.kube.informer import Informer, wait_all_synced
from spillover.sources.kube.kinds import (
    BEAMLIT_MODEL_DEPLOYMENTS,
    ENDPOINT_SLICES,
    MODEL_DEPLOYMENTS,
    PODS,
    SECRETS,
    SERVICES,
    Key,
    Object,
    Resource,
)
from spillover.sources.kube.resolve import AIBRIX_NAME_LABEL
from spillover.sources.kube.state import (
    WORKLOAD_KINDS,
    ClusterView,
    CRKey,
    KubeDesiredState,
    ValidationCache,
    build_kube_state,
)

log = logging.getLogger("spillover.sources.kube")

Callback = Callable[[DesiredState], Awaitable[None] | None]


class KubernetesPolicySource:
    """ModelDeployments (and what they reference) from a cluster, as a stream of `KubeDesiredState`.

    `namespaces`: watch only these (empty: cluster-wide). `beamlit`: also watch Beamlit's
    `deployment.beamlit.com/v1alpha1` ModelDeployments. `aibrix`: serve AIBrix-labelled pods.
    `informer_options` are passed to every `Informer` (timeouts, backoff).
    """

    def __init__(
        self,
        api: ApiClient,
        *,
        namespaces: Iterable[str] = (),
        beamlit: bool = False,
        aibrix: bool = True,
        debounce: float = 0.05,
        sync_timeout: float = 30.0,
        informer_options: Mapping[str, Any] | None = None,
        defaults: PolicyDefaults = NO_DEFAULTS,
        crd_recheck: float = 10.0,
    ) -> None:
        self.api = api
        self.namespaces = tuple(dict.fromkeys(n for n in namespaces if n))
        self.beamlit = beamlit
        self.aibrix = aibrix
        self.debounce = debounce
        self.sync_timeout = sync_timeout
        self.informer_options = dict(informer_options or {})
        self._scoped: list[Informer] = []
        self._secrets: dict[Key, Informer] = {}
        self._workloads: dict[tuple[str, str, str], Informer] = {}
        self._state: KubeDesiredState | None = None
        self._last_good: dict[CRKey, ModelDeployment] = {}
        self._cache: ValidationCache = {}
        self._lock = threading.RLock()
        self._dirty = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._started = False
        self.rebuilds = 0
        self.defaults = defaults
        self.crd_recheck = crd_recheck
        # ModelDeployment types not served (yet), and the thread that asks discovery about them.
        self._missing: set[Resource] = set()
        self._discovered = threading.Event()
        self._stopping = threading.Event()
        self._discovery: threading.Thread | None = None

    # -- informers -----------------------------------------------------------------------------------

    def _informer(self, resource: Resource, namespace: str | None, **kwargs: Any) -> Informer:
        return Informer(
            self.api, resource, namespace=namespace, on_event=self._on_event, on_sync=self._mark_dirty,
            **{**self.informer_options, **kwargs},
        )

    def start(self) -> KubernetesPolicySource:
        """Starts the namespace-wide informers (idempotent). The referenced Secrets and workloads get
        their informers on the first rebuild that sees the references."""
        with self._lock:
            if self._started:
                return self
            self._started = True
            self._stopping.clear()
            self._discovered.clear()
            self._missing = set(self.custom_resources)
            for scope in self._scopes():
                for resource in (SERVICES, ENDPOINT_SLICES):
                    self._scoped.append(self._informer(resource, scope))
                if self.aibrix:
                    self._scoped.append(self._informer(PODS, scope, label_selector=AIBRIX_NAME_LABEL))
            for informer in self._scoped:
                informer.start()
            self._discovery = threading.Thread(target=self._discover, name="discovery of ModelDeployment CRDs",
                                               daemon=True)
            self._discovery.start()
        return self

    @property
    def custom_resources(self) -> tuple[Resource, ...]:
        return (MODEL_DEPLOYMENTS, *([BEAMLIT_MODEL_DEPLOYMENTS] if self.beamlit else []))

    def _scopes(self) -> Sequence[str | None]:
        return self.namespaces or (None,)

    @property
    def missing(self) -> frozenset[Resource]:
        """The ModelDeployment types discovery said are not served (their CRD is not installed)."""
        with self._lock:
            return frozenset(self._missing)

    def _discover(self) -> None:
        """Until every ModelDeployment type is watched: ask discovery, start the informers of the types
        now served, wait `crd_recheck`."""
        first = True
        while not self._stopping.is_set():
            with self._lock:
                pending = sorted(self._missing, key=str)
            found: list[Resource] = []
            for resource in pending:
                try:
                    served = resource_served(self.api, resource)
                except Exception as error:  # discovery itself failing: watch anyway, the informer retries
                    log.warning("discovery of %s failed (%s); watching it anyway", resource, error)
                    served = True
                if served:
                    found.append(resource)
                elif first:
                    log.warning("%s is not served (CRD %s not installed): not watched, checked again every %gs",
                                resource.api_version, resource, self.crd_recheck)
            with self._lock:
                if not self._started:
                    return
                for resource in found:
                    self._missing.discard(resource)
                    for scope in self._scopes():
                        informer = self._informer(resource, scope)
                        self._scoped.append(informer)
                        informer.start()
                    if not first:
                        log.info("%s is served now: watching its ModelDeployments", resource)
            if found or first:
                self._mark_dirty()
            first = False
            self._discovered.set()
            with self._lock:
                if not self._missing:
                    return
            self._stopping.wait(self.crd_recheck)

    def stop(self) -> None:
        with self._lock:
            informers = [*self._scoped, *self._secrets.values(), *self._workloads.values()]
            self._scoped, self._secrets, self._workloads = [], {}, {}
            self._started = False
            self._stopping.set()
        for informer in informers:
            informer.stop(timeout=0)  # all at once, then wait for each
        for informer in informers:
            informer.stop(timeout=2.0)

    @property
    def informers(self) -> list[Informer]:
        with self._lock:
            return [*self._scoped, *self._secrets.values(), *self._workloads.values()]

    def informer(self, resource: Resource, namespace: str | None = None) -> Informer | None:
        """The namespace-wide informer of `resource` in `namespace` (None: the cluster-wide one)."""
        return next((i for i in self.informers if i.resource == resource and i.namespace == (namespace or None)), None)

    def wait_synced(self, timeout: float | None = None) -> bool:
        """Blocks until every informer has listed once (and the referenced objects' informers too)."""
        deadline = time.monotonic() + (self.sync_timeout if timeout is None else timeout)
        if not self._discovered.wait(max(0.0, deadline - time.monotonic())):
            return False
        while True:
            pending = [i for i in self.informers if not i.synced.is_set()]
            if not pending:
                self.poll()  # the references may have changed: new informers
                if all(i.synced.is_set() for i in self.informers):
                    return True
                continue
            if not wait_all_synced(pending, max(0.0, deadline - time.monotonic())):
                return False

    def _on_event(self, type_: str, obj: Object) -> None:
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        self._dirty.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                loop.call_soon_threadsafe(wake.set)

    def _reconcile(self, secrets: set[Key], workloads: set[tuple[str, str, str]]) -> None:
        """Watch exactly the referenced Secrets and workloads."""
        stop: list[Informer] = []
        with self._lock:
            if not self._started:
                return
            for ident in set(self._secrets) - secrets:
                stop.append(self._secrets.pop(ident))
            for workload in set(self._workloads) - workloads:
                stop.append(self._workloads.pop(workload))
            for secret_ns, secret_name in sorted(secrets - set(self._secrets)):
                informer = self._informer(SECRETS, secret_ns, field_selector=f"metadata.name={secret_name}")
                self._secrets[(secret_ns, secret_name)] = informer.start()
            for kind, ns, name in sorted(workloads - set(self._workloads)):
                informer = self._informer(WORKLOAD_KINDS[kind], ns, field_selector=f"metadata.name={name}")
                self._workloads[(kind, ns, name)] = informer.start()
        for informer in stop:
            informer.stop(timeout=0)

    # -- state ---------------------------------------------------------------------------------------

    @property
    def state(self) -> KubeDesiredState:
        return self._state or KubeDesiredState()

    def view(self) -> ClusterView:
        with self._lock:
            scoped = list(self._scoped)
            secret_informers = dict(self._secrets)
            workload_informers = dict(self._workloads)
        mds: list[Object] = []
        services: dict[Key, Object] = {}
        slices: list[Object] = []
        pods: list[Object] = []
        for informer in scoped:
            store = informer.snapshot()
            if informer.resource in (MODEL_DEPLOYMENTS, BEAMLIT_MODEL_DEPLOYMENTS):
                mds.extend(store.values())
            elif informer.resource == SERVICES:
                services.update(store)
            elif informer.resource == ENDPOINT_SLICES:
                slices.extend(store.values())
            elif informer.resource == PODS:
                pods.extend(store.values())
        secrets = {k: i.get(*k) for k, i in secret_informers.items() if i.synced.is_set()}
        workloads = {k: i.get(k[1], k[2]) for k, i in workload_informers.items() if i.synced.is_set()}
        return ClusterView(mds, services, slices, pods, secrets, workloads, frozenset(self.namespaces),
                           missing=frozenset(str(r) for r in self.missing) if self._discovered.is_set() else frozenset())

    def poll(self) -> KubeDesiredState | None:
        """Rebuilds from the informers' stores when something changed (always the first time); returns
        the new state, or None when nothing changed."""
        with self._lock:
            if self._state is not None and not self._dirty.is_set():
                return None
            self._dirty.clear()
            previous = self._state
            build = build_kube_state(
                self.view(), previous, self._last_good, aibrix=self.aibrix, cache=self._cache, defaults=self.defaults
            )
            self.rebuilds += 1
            self._last_good = build.last_good
            live = {(o.key, o.uid, o.resource_version) for o in build.state.objects.values()}
            for cache_key in [k for k in self._cache if k not in live]:
                del self._cache[cache_key]
            self._reconcile(build.secrets, build.workloads)
            if build.state is previous:
                return None
            self._state = build.state
        self._log(build.state, previous)
        return build.state

    @staticmethod
    def _log(state: KubeDesiredState, previous: KubeDesiredState | None) -> None:
        log_new_findings(log, state, previous)
        log.info(
            "kubernetes policies v%d: %d model(s), %d ModelDeployment(s), %d error(s)%s",
            state.version, len(state.models), len(state.objects), len(state.errors), kept_note(state),
        )

    async def run(self, callback: Callback) -> None:
        """Starts the informers, waits for their first lists (bounded by `sync_timeout`), then calls
        `callback` with the initial state and every new one, until cancelled (the informers are stopped)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.start()
        try:
            if not await asyncio.to_thread(self.wait_synced, self.sync_timeout):
                pending = ", ".join(i.name for i in self.informers if not i.synced.is_set())
                log.warning("not every informer has synced within %gs (%s); serving what is known", self.sync_timeout, pending)
            self._dirty.set()
            state = await asyncio.to_thread(self.poll)
            await _call(callback, state or self.state)
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self.debounce:
                    await asyncio.sleep(self.debounce)  # coalesce a burst of events into one rebuild
                    self._wake.clear()
                state = await asyncio.to_thread(self.poll)
                if state is not None:
                    await _call(callback, state)
        finally:
            self._loop = self._wake = None
            await asyncio.to_thread(self.stop)


async def _call(callback: Callback, state: DesiredState) -> None:
    result = callback(state)
    if inspect.isawaitable(result):
        await result
