"""The Kubernetes policy source: ModelDeployment custom resources, resolved against the cluster.

Same interface as the file source (`DirectorySource`): `poll()`, `state`, `async run(callback)`, producing
a `DesiredState` (here a `KubeDesiredState`, which adds what Kubernetes knows). Built from informers:

- per watched namespace (or cluster-wide): ModelDeployments (`spillover.dev/v1alpha1`, and with
  `beamlit=True` Beamlit's `deployment.beamlit.com/v1alpha1`), Services, EndpointSlices and, for AIBrix
  compatibility, the pods labelled `model.aibrix.ai/name`;
- per referenced object only (least privilege: `fieldSelector=metadata.name=...`, which RBAC
  `resourceNames` can grant): the Secrets of `clientSecretRef` (in the model's own namespace only) and
  the workloads of `modelSourceRef`. These informers come and go with the references.

Every change marks the source dirty; a rebuild (coalescing a burst of events) runs `build_kube_state`,
a pure function of the informers' stores and the previous state:

- each CR is validated with the file mode's rules (`validate_document`); errors are named
  `namespace/name` plus the field path, and kept per CR in `state.invalid` (what the status writer puts
  in the `Invalid` condition); an invalid CR keeps its model's last good config (`state.stale`);
- two CRs declaring one model: the one already serving it keeps it, else the oldest; the other is invalid;
- `serviceRef` -> the Service's EndpointSlices -> ready, non-terminating addresses at `targetPort`, handed
  down as a copy of the model with `localBackend.endpoints` filled in;
- `clientSecretRef {name, key}` -> the Secret's value, handed down in memory as the (masked) inline
  `clientSecret` of the copy, so a rotated Secret changes the model and new credentials are used;
- `modelSourceRef` -> `status.readyReplicas` of the workload, in `state.ready_replicas` (failover);
- pods labelled `model.aibrix.ai/name` + `model.aibrix.ai/port` serve that model when no ModelDeployment
  declares it, with the profiles of their `model.aibrix.ai/config` annotation.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from kubernetes.client import ApiClient

from spillover.kube.informer import (
    BEAMLIT_MODEL_DEPLOYMENTS,
    DEPLOYMENTS,
    ENDPOINT_SLICES,
    MODEL_DEPLOYMENTS,
    PODS,
    REPLICASETS,
    SECRETS,
    SERVICES,
    STATEFULSETS,
    Informer,
    Key,
    Object,
    Resource,
    wait_all_synced,
)
from spillover.kube.resolve import (
    AIBRIX_NAME_LABEL,
    PortError,
    SecretLookupError,
    aibrix_models,
    secret_value,
    slice_endpoints,
    slices_of_service,
    workload_ready_replicas,
)
from spillover.policy.errors import PolicyError
from spillover.policy.model import API_GROUP, LocalBackend, ModelDeployment
from spillover.policy.source import DesiredState, Origin
from spillover.policy.validate import claimed_model, validate_document

log = logging.getLogger("spillover.kube")

WORKLOAD_KINDS: Mapping[str, Resource] = {"Deployment": DEPLOYMENTS, "StatefulSet": STATEFULSETS, "ReplicaSet": REPLICASETS}

Callback = Callable[[DesiredState], Awaitable[None] | None]


def _empty() -> Mapping[Any, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, order=True)
class CRKey:
    """A ModelDeployment object: API group, namespace, name."""

    group: str
    namespace: str
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}"
        return where if self.group == API_GROUP else f"{where} ({self.group})"


@dataclass(frozen=True)
class CRObject:
    """What the status writer needs of every ModelDeployment seen, valid or not."""

    key: CRKey
    api_version: str
    generation: int | None
    uid: str
    resource_version: str
    model: str | None  # spec.model as written (also for an invalid CR), when it is a string


@dataclass(frozen=True, order=True)
class CROrigin(Origin):
    """A model defined by a ModelDeployment. `file` is "namespace/name", `index` is 0."""

    group: str = API_GROUP
    namespace: str = ""
    name: str = ""
    generation: int | None = field(default=None, compare=False)
    uid: str = field(default="", compare=False)

    @property
    def key(self) -> CRKey:
        return CRKey(self.group, self.namespace, self.name)

    def __str__(self) -> str:
        return f"ModelDeployment {self.key}"


@dataclass(frozen=True, order=True)
class PodsOrigin(Origin):
    """A model served from AIBrix-labelled pods (no ModelDeployment)."""

    pods: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.file


@dataclass(frozen=True)
class KubeDesiredState(DesiredState):
    """DesiredState plus what the cluster knows.

    objects:        every ModelDeployment seen (valid or not), by CRKey, with its generation.
    invalid:        the spec errors of each invalid (or duplicate) ModelDeployment, by CRKey.
    ready_replicas: per model with a modelSourceRef, the workload's ready replicas (None: not known yet).
    origins:        (inherited) CROrigin per model from a ModelDeployment, PodsOrigin for AIBrix pods.
    """

    objects: Mapping[CRKey, CRObject] = field(default_factory=_empty)
    invalid: Mapping[CRKey, tuple[PolicyError, ...]] = field(default_factory=_empty)
    ready_replicas: Mapping[str, int | None] = field(default_factory=_empty)

    def same_content(self, other: DesiredState | None) -> bool:
        return (
            super().same_content(other)
            and isinstance(other, KubeDesiredState)
            and dict(self.objects) == dict(other.objects)
            and dict(self.invalid) == dict(other.invalid)
            and dict(self.ready_replicas) == dict(other.ready_replicas)
        )

    def object_of(self, model: str) -> CROrigin | None:
        """(group, namespace, name, generation) of the ModelDeployment serving `model`, if any."""
        origin = self.origins.get(model)
        return origin if isinstance(origin, CROrigin) else None


@dataclass
class ClusterView:
    """The informers' stores, as the pure builder reads them.

    secrets / workloads hold only the referenced objects whose informer has synced: a key that is absent
    is not known yet, a key mapped to None is known not to exist.
    """

    model_deployments: Sequence[Object] = ()
    services: Mapping[Key, Object] = field(default_factory=dict)
    endpoint_slices: Sequence[Object] = ()
    pods: Sequence[Object] = ()
    secrets: Mapping[Key, Object | None] = field(default_factory=dict)
    workloads: Mapping[tuple[str, str, str], Object | None] = field(default_factory=dict)
    namespaces: frozenset[str] = frozenset()  # watched namespaces; empty = all

    def watches(self, namespace: str) -> bool:
        return not self.namespaces or namespace in self.namespaces


@dataclass
class Build:
    state: KubeDesiredState
    last_good: dict[CRKey, ModelDeployment]
    secrets: set[Key]  # (namespace, name) of the Secrets the models reference
    workloads: set[tuple[str, str, str]]  # (kind, namespace, name) of the workloads they reference


ValidationCache = dict[tuple[CRKey, str, str], "ModelDeployment | list[PolicyError]"]


def _group(obj: Object) -> str:
    api_version = obj.get("apiVersion") or ""
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def cr_key(obj: Object) -> CRKey:
    meta = obj.get("metadata") or {}
    return CRKey(_group(obj), meta.get("namespace") or "", meta.get("name") or "")


def _validate(obj: Object, key: CRKey, cache: ValidationCache | None) -> ModelDeployment | list[PolicyError]:
    meta = obj.get("metadata") or {}
    cache_key = (key, str(meta.get("uid") or ""), str(meta.get("resourceVersion") or ""))
    if cache is not None and cache_key in cache:
        return cache[cache_key]
    result = validate_document(obj, file=str(key), index=None)
    if cache is not None:
        cache[cache_key] = result
    return result


def _with_oauth_secret(md: ModelDeployment, value: Any) -> ModelDeployment:
    offloading = md.spec.offloading_config
    assert offloading is not None and offloading.remote_backend is not None
    remote = offloading.remote_backend
    assert remote.auth_config is not None and remote.auth_config.oauth_config is not None
    auth = remote.auth_config
    oauth = auth.oauth_config.model_copy(update={"client_secret": value, "client_secret_ref": None})  # type: ignore[union-attr]
    remote = remote.model_copy(update={"auth_config": auth.model_copy(update={"oauth_config": oauth})})
    offloading = offloading.model_copy(update={"remote_backend": remote})
    return md.model_copy(update={"spec": md.spec.model_copy(update={"offloading_config": offloading})})


def _oauth_ref(md: ModelDeployment) -> Any:
    offloading = md.spec.offloading_config
    remote = offloading.remote_backend if offloading else None
    oauth = remote.auth_config.oauth_config if remote and remote.auth_config else None
    ref = oauth.client_secret_ref if oauth else None
    return ref if ref is not None and ref.file is None else None


OAUTH_REF_PATH = "spec.offloadingConfig.remoteBackend.authConfig.oauthConfig.clientSecretRef"


@dataclass
class _Resolved:
    model: ModelDeployment
    errors: list[PolicyError]
    ready: int | None
    has_workload: bool


def resolve_model(
    md: ModelDeployment, key: CRKey, view: ClusterView, secrets: set[Key], workloads: set[tuple[str, str, str]]
) -> _Resolved:
    """A validated model -> a copy with local endpoints and the client secret filled in from the cluster."""
    file = str(key)
    namespace = key.namespace
    errors: list[PolicyError] = []
    spec = md.spec
    if spec.service_ref is not None:
        ref = spec.service_ref
        service_ns = ref.namespace or namespace
        endpoints: list[str] = []
        if not view.watches(service_ns):
            errors.append(PolicyError(file, None, "spec.serviceRef.namespace",
                                      f'namespace "{service_ns}" is not watched (see --namespace)', model=md.model))
        else:
            slices = slices_of_service(view.endpoint_slices, service_ns, ref.name)
            try:
                endpoints = slice_endpoints(slices, ref.target_port, view.services.get((service_ns, ref.name)))
            except PortError as error:
                errors.append(PolicyError(file, None, "spec.serviceRef.targetPort", str(error), model=md.model))
        local = spec.local_backend or LocalBackend()
        local = local.model_copy(update={"endpoints": endpoints})
        md = md.model_copy(update={"spec": md.spec.model_copy(update={"local_backend": local})})
    ref = _oauth_ref(md)
    if ref is not None:
        secret_ns = ref.namespace or namespace
        if secret_ns != namespace:
            errors.append(PolicyError(file, None, f"{OAUTH_REF_PATH}.namespace",
                                      "must be the ModelDeployment's own namespace", model=md.model))
        else:
            secrets.add((secret_ns, ref.name))
            if (secret_ns, ref.name) in view.secrets:
                try:
                    md = _with_oauth_secret(md, secret_value(view.secrets[(secret_ns, ref.name)], secret_ns, ref.name, ref.key))
                except SecretLookupError as error:
                    errors.append(PolicyError(file, None, OAUTH_REF_PATH, str(error), model=md.model))
    ready: int | None = None
    source = spec.model_source_ref
    if source is not None:
        kind_resource = WORKLOAD_KINDS.get(source.kind)
        workload_ns = source.namespace or namespace
        if kind_resource is None or source.api_version != kind_resource.api_version:
            errors.append(PolicyError(file, None, "spec.modelSourceRef",
                                      f"unsupported workload {source.api_version} {source.kind} "
                                      f"(supported: apps/v1 {', '.join(WORKLOAD_KINDS)})", model=md.model))
        elif not view.watches(workload_ns):
            errors.append(PolicyError(file, None, "spec.modelSourceRef.namespace",
                                      f'namespace "{workload_ns}" is not watched (see --namespace)', model=md.model))
        else:
            ident = (source.kind, workload_ns, source.name)
            workloads.add(ident)
            if ident in view.workloads:
                ready = workload_ready_replicas(view.workloads[ident])
    return _Resolved(md, errors, ready, source is not None)


def build_kube_state(
    view: ClusterView,
    previous: KubeDesiredState | None = None,
    last_good: Mapping[CRKey, ModelDeployment] | None = None,
    *,
    aibrix: bool = True,
    cache: ValidationCache | None = None,
) -> Build:
    """Pure: the cluster's objects + the previous state -> the next state (version bumped only on change)."""
    previous = previous or KubeDesiredState()
    good = dict(last_good or {})
    objects: dict[CRKey, CRObject] = {}
    invalid: dict[CRKey, list[PolicyError]] = {}
    valid: list[tuple[CRKey, ModelDeployment]] = []

    def order(obj: Object) -> tuple[str, CRKey]:
        return ((obj.get("metadata") or {}).get("creationTimestamp") or "", cr_key(obj))

    for obj in sorted(view.model_deployments, key=order):
        key = cr_key(obj)
        meta = obj.get("metadata") or {}
        model = claimed_model(obj)
        generation = meta.get("generation")
        objects[key] = CRObject(
            key, str(obj.get("apiVersion") or ""), generation if isinstance(generation, int) else None,
            str(meta.get("uid") or ""), str(meta.get("resourceVersion") or ""), model,
        )
        result = _validate(obj, key, cache)
        if isinstance(result, ModelDeployment):
            valid.append((key, result))
            good[key] = result
        else:
            invalid[key] = list(result)
    for key in list(good):
        if key not in objects:
            del good[key]

    # One model, one CR: the CR already serving it keeps it, else the oldest (the order above).
    incumbent = {m: o.key for m, o in previous.origins.items() if isinstance(o, CROrigin)}
    chosen: dict[str, CRKey] = {}
    for key, md in sorted(valid, key=lambda kv: incumbent.get(kv[1].model) != kv[0]):
        if md.model in chosen:
            invalid.setdefault(key, []).append(PolicyError(
                str(key), None, "spec.model", f'duplicate model "{md.model}" (also defined in {chosen[md.model]})',
                model=md.model,
            ))
        else:
            chosen[md.model] = key
    served: dict[str, tuple[CRKey, ModelDeployment]] = {md.model: (key, md) for key, md in valid if chosen[md.model] == key}
    stale: set[str] = set()
    # An invalid CR keeps serving its model's last good config; only the CR that served it can.
    for key in invalid:
        if key not in good:
            continue
        name = good[key].model
        if name not in served and incumbent.get(name) == key:
            served[name] = (key, good[key])
            stale.add(name)

    secrets: set[Key] = set()
    workloads: set[tuple[str, str, str]] = set()
    models: dict[str, ModelDeployment] = {}
    origins: dict[str, Origin] = {}
    ready: dict[str, int | None] = {}
    errors: list[PolicyError] = [e for errs in invalid.values() for e in errs]
    for name, (key, md) in served.items():
        resolved = resolve_model(md, key, view, secrets, workloads)
        models[name] = resolved.model
        cr = objects[key]
        origins[name] = CROrigin(str(key), 0, key.group, key.namespace, key.name, cr.generation, cr.uid)
        if resolved.has_workload:
            ready[name] = resolved.ready
        errors.extend(resolved.errors)

    if aibrix:
        synthesized, pod_errors = aibrix_models(view.pods, taken=frozenset(models))
        for item in synthesized:
            name = item.model.model
            models[name] = item.model
            origins[name] = PodsOrigin(f"pods labelled {AIBRIX_NAME_LABEL}={name}", 0, item.pods)
        errors.extend(pod_errors)

    errors.sort(key=lambda e: (e.file or "", e.path, e.message))
    state = KubeDesiredState(
        models=MappingProxyType(dict(sorted(models.items()))),
        origins=MappingProxyType(dict(sorted(origins.items()))),
        errors=tuple(errors),
        stale=frozenset(stale),
        version=previous.version,
        objects=MappingProxyType(dict(sorted(objects.items()))),
        invalid=MappingProxyType({k: tuple(v) for k, v in sorted(invalid.items())}),
        ready_replicas=MappingProxyType(dict(sorted(ready.items()))),
    )
    if not (previous.version > 0 and state.same_content(previous)):
        state = KubeDesiredState(
            state.models, state.origins, state.errors, state.stale, previous.version + 1,
            state.objects, state.invalid, state.ready_replicas,
        )
    else:
        state = previous
    return Build(state, good, secrets, workloads)


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
            scopes: Sequence[str | None] = self.namespaces or (None,)
            kinds = [MODEL_DEPLOYMENTS, *([BEAMLIT_MODEL_DEPLOYMENTS] if self.beamlit else []), SERVICES, ENDPOINT_SLICES]
            for scope in scopes:
                for resource in kinds:
                    self._scoped.append(self._informer(resource, scope))
                if self.aibrix:
                    self._scoped.append(self._informer(PODS, scope, label_selector=AIBRIX_NAME_LABEL))
            for informer in self._scoped:
                informer.start()
        return self

    def stop(self) -> None:
        with self._lock:
            informers = [*self._scoped, *self._secrets.values(), *self._workloads.values()]
            self._scoped, self._secrets, self._workloads = [], {}, {}
            self._started = False
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
        return ClusterView(mds, services, slices, pods, secrets, workloads, frozenset(self.namespaces))

    def poll(self) -> KubeDesiredState | None:
        """Rebuilds from the informers' stores when something changed (always the first time); returns
        the new state, or None when nothing changed."""
        with self._lock:
            if self._state is not None and not self._dirty.is_set():
                return None
            self._dirty.clear()
            previous = self._state
            build = build_kube_state(self.view(), previous, self._last_good, aibrix=self.aibrix, cache=self._cache)
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
        old_errors = set(previous.errors) if previous else set()
        for e in state.errors:
            if e not in old_errors:
                log.warning("invalid policy: %s", e)
        log.info(
            "kubernetes policies v%d: %d model(s), %d ModelDeployment(s), %d error(s)%s",
            state.version, len(state.models), len(state.objects), len(state.errors),
            f", kept last good config of {', '.join(sorted(state.stale))}" if state.stale else "",
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


def api_client(kubeconfig: str | None = None, context: str | None = None) -> ApiClient:
    """An ApiClient from a kubeconfig file, or the in-cluster service account when none is given."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, 64)
    return client.ApiClient(configuration)
