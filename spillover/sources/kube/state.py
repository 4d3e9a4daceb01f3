"""The Kubernetes mode's desired state, built purely from what the informers hold.

`build_kube_state(view, previous, last_good)` is a function of the cluster's objects (a `ClusterView` of
the informers' stores) and the previous state; `KubernetesPolicySource` calls it on every rebuild. No
`kubernetes` client, no threads, no clock here, so every rule is tested without an API server:

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
  declares it, with the profiles of their `model.aibrix.ai/config` annotation;
- `offloadingConfig.destination`, the destination annotations and spillover's finalizer -> a `CopyClaim`
  per ModelDeployment and the kubeconfigs they need (`spillover.sources.kube.destinations`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from pydantic import SecretStr

from spillover.policy import API_GROUP, LocalBackend, ModelDeployment, SecretRef
from spillover.policy.defaults import NO_DEFAULTS, PolicyDefaults
from spillover.policy.errors import PolicyError
from spillover.policy.state import DesiredState, Origin
from spillover.policy.validate import claimed_model, validate_document
from spillover.sources.kube.destinations import CopyClaim, SecretKey, claim_of, kubeconfig_values
from spillover.sources.kube.kinds import DEPLOYMENTS, REPLICASETS, STATEFULSETS, Key, Object, Resource
from spillover.sources.kube.resolve import (
    AIBRIX_NAME_LABEL,
    PortError,
    SecretLookupError,
    aibrix_models,
    secret_value,
    slice_endpoints,
    slices_of_service,
    workload_ready_replicas,
)

WORKLOAD_KINDS: Mapping[str, Resource] = {"Deployment": DEPLOYMENTS, "StatefulSet": STATEFULSETS, "ReplicaSet": REPLICASETS}


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
    origins:        (inherited) CROrigin per model from a ModelDeployment, PodsOrigin for AIBrix pods.
    copies:         what each ModelDeployment with a destination (or a copy to remove) asks of it, by CRKey.
    kubeconfigs:    the kubeconfigs those need (a value, or why it cannot be read); absent: not read yet.
    """

    objects: Mapping[CRKey, CRObject] = field(default_factory=_empty)
    invalid: Mapping[CRKey, tuple[PolicyError, ...]] = field(default_factory=_empty)
    copies: Mapping[CRKey, CopyClaim] = field(default_factory=_empty)
    kubeconfigs: Mapping[SecretKey, SecretStr | str] = field(default_factory=_empty)

    def same_content(self, other: DesiredState | None) -> bool:
        return (
            super().same_content(other)
            and isinstance(other, KubeDesiredState)
            and dict(self.objects) == dict(other.objects)
            and dict(self.invalid) == dict(other.invalid)
            and dict(self.copies) == dict(other.copies)
            and dict(self.kubeconfigs) == dict(other.kubeconfigs)
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
    missing: frozenset[str] = frozenset()  # ModelDeployment types not served: "modeldeployments.<group>"

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


def _validate(
    obj: Object, key: CRKey, cache: ValidationCache | None, defaults: PolicyDefaults
) -> ModelDeployment | list[PolicyError]:
    meta = obj.get("metadata") or {}
    # The defaults are the process's, fixed for a cache's life: the object's version is the key.
    cache_key = (key, str(meta.get("uid") or ""), str(meta.get("resourceVersion") or ""))
    if cache is not None and cache_key in cache:
        return cache[cache_key]
    result = validate_document(obj, file=str(key), index=None, defaults=defaults)
    if cache is not None:
        cache[cache_key] = result
    return result


def _with_oauth_secret(md: ModelDeployment, value: SecretStr) -> ModelDeployment:
    offloading = md.spec.offloading_config
    assert offloading is not None and offloading.remote_backend is not None
    remote = offloading.remote_backend
    assert remote.auth_config is not None and remote.auth_config.oauth_config is not None
    auth = remote.auth_config
    oauth = auth.oauth_config.model_copy(update={"client_secret": value, "client_secret_ref": None})  # type: ignore[union-attr]
    remote = remote.model_copy(update={"auth_config": auth.model_copy(update={"oauth_config": oauth})})
    offloading = offloading.model_copy(update={"remote_backend": remote})
    return md.model_copy(update={"spec": md.spec.model_copy(update={"offloading_config": offloading})})


@dataclass(frozen=True)
class _SecretKeyRef:
    namespace: str | None
    name: str
    key: str


def _oauth_ref(md: ModelDeployment) -> _SecretKeyRef | None:
    """The Kubernetes Secret key of the OAuth client secret (None: inline, in a file, or no OAuth)."""
    offloading = md.spec.offloading_config
    remote = offloading.remote_backend if offloading else None
    oauth = remote.auth_config.oauth_config if remote and remote.auth_config else None
    ref: SecretRef | None = oauth.client_secret_ref if oauth else None
    # Validation guarantees name and key whenever file is not set.
    if ref is None or ref.file is not None or ref.name is None or ref.key is None:
        return None
    return _SecretKeyRef(ref.namespace, ref.name, ref.key)


OAUTH_REF_PATH = "spec.offloadingConfig.remoteBackend.authConfig.oauthConfig.clientSecretRef"


@dataclass
class _Resolved:
    model: ModelDeployment
    errors: list[PolicyError]
    ready: int | None
    has_workload: bool


def resolve_model(
    md: ModelDeployment,
    key: CRKey,
    view: ClusterView,
    secrets: set[Key],
    workloads: set[tuple[str, str, str]],
    defaults: PolicyDefaults = NO_DEFAULTS,
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
    secret_ref = _oauth_ref(md)
    offloading = md.spec.offloading_config
    # The controller config's default backend keeps its Secret where the config says (its own namespace).
    from_defaults = defaults.remote_backend is not None and offloading is not None and (
        offloading.remote_backend == defaults.remote_backend
    )
    if secret_ref is not None:
        own = (defaults.secret_namespace or namespace) if from_defaults else namespace
        secret_ns, secret_name = secret_ref.namespace or own, secret_ref.name
        if secret_ns != own:
            errors.append(PolicyError(file, None, f"{OAUTH_REF_PATH}.namespace",
                                      "must be the ModelDeployment's own namespace", model=md.model))
        else:
            secrets.add((secret_ns, secret_name))
            if (secret_ns, secret_name) in view.secrets:
                try:
                    value = secret_value(view.secrets[(secret_ns, secret_name)], secret_ns, secret_name, secret_ref.key)
                    md = _with_oauth_secret(md, value)
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
    defaults: PolicyDefaults = NO_DEFAULTS,
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
        result = _validate(obj, key, cache, defaults)
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
        resolved = resolve_model(md, key, view, secrets, workloads, defaults)
        models[name] = resolved.model
        cr = objects[key]
        origins[name] = CROrigin(str(key), 0, key.group, key.namespace, key.name, cr.generation, cr.uid)
        if resolved.has_workload:
            ready[name] = resolved.ready
        errors.extend(resolved.errors)

    copies: dict[CRKey, CopyClaim] = {}
    serving = {key: md for key, md in served.values()}
    for obj in view.model_deployments:
        key = cr_key(obj)
        claim, claim_errors = claim_of(obj, key.group, serving.get(key), view.workloads, secrets)
        if claim is not None:
            copies[key] = claim
        errors.extend(claim_errors)

    if aibrix:
        synthesized, pod_errors = aibrix_models(view.pods, taken=frozenset(models))
        for item in synthesized:
            name = item.model.model
            models[name] = item.model
            origins[name] = PodsOrigin(f"pods labelled {AIBRIX_NAME_LABEL}={name}", 0, item.pods)
        errors.extend(pod_errors)

    errors.sort(key=lambda e: (e.file or "", e.path, e.message))
    warnings = tuple(
        PolicyError(f"CustomResourceDefinition {name}", None, "",
                    "is not installed: its ModelDeployments are not watched until it is (API discovery is asked again)")
        for name in sorted(view.missing)
    )
    state = KubeDesiredState(
        models=MappingProxyType(dict(sorted(models.items()))),
        origins=MappingProxyType(dict(sorted(origins.items()))),
        errors=tuple(errors),
        stale=frozenset(stale),
        version=previous.version,
        objects=MappingProxyType(dict(sorted(objects.items()))),
        invalid=MappingProxyType({k: tuple(v) for k, v in sorted(invalid.items())}),
        ready_replicas=MappingProxyType(dict(sorted(ready.items()))),
        warnings=warnings,
        copies=MappingProxyType(dict(sorted(copies.items()))),
        kubeconfigs=MappingProxyType(kubeconfig_values(copies, view.secrets)),
    )
    if not (previous.version > 0 and state.same_content(previous)):
        state = replace(state, version=previous.version + 1)
    else:
        state = previous
    return Build(state, good, secrets, workloads)
