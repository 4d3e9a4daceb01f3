"""The composition root: which sources, providers and companions make up a running control plane.

`cli/` (file mode, Kubernetes mode, a file of Envoy resources) and `spillover.demo` both build their
control plane here, so each mode is wired in exactly one place. Nothing imports this module but them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from prometheus_client import CollectorRegistry

from spillover import ir
from spillover.controller.admin import json_response
from spillover.controller.admin_auth import AdminOptions
from spillover.controller.config import ConfigError, ControllerConfig, load_controller_config
from spillover.controller.contracts import DecisionRecall, PolicySource
from spillover.controller.destination import CopyActuator, DestinationManager
from spillover.controller.fleet import Fleet, FleetOptions
from spillover.controller.kubernetes.publishing import StatusPublishing
from spillover.controller.kubernetes.recall import StatusRecall
from spillover.controller.persist import GroupReplicas, StateFileDecisions, StateStore, default_state_path
from spillover.controller.plane import ControlPlane, run_until_signalled
from spillover.controller.policies import PolicyProvider
from spillover.controller.static import StaticResourcesFile
from spillover.policy.defaults import NO_DEFAULTS, PolicyDefaults
from spillover.policy.validate import MAX_POLICY_FILE_BYTES, parse_yaml
from spillover.server import event_loop as event_loops
from spillover.server.admission import AdmissionError, AdmissionPolicy, admission_from_mapping
from spillover.server.bounds import StreamLimits
from spillover.server.service import XdsOptions, group_by_cluster, is_loopback
from spillover.server.tls import TlsError, TlsFiles, load_consistent
from spillover.sources.destination import DestinationSource
from spillover.sources.files.policies import DirectorySource
from spillover.sources.kube.api import ApiClient, api_client
from spillover.sources.kube.source import KubernetesPolicySource
from spillover.sources.metrics.kubernetes import KubernetesSource
from spillover.sources.metrics.prometheus import PrometheusSource

__all__ = [
    "AdminOptions",
    "ConfigError",
    "ControllerConfig",
    "FleetPeering",
    "KubernetesOptions",
    "PushOptions",
    "SafetyOptions",
    "Security",
    "XdsOptions",
    "kubernetes_control_plane",
    "load_admission_file",
    "load_controller_config",
    "policy_control_plane",
    "resources_control_plane",
    "run_until_signalled",
    "security_options",
]


@dataclass(frozen=True)
class PushOptions:
    """How snapshots reach the Envoys: the debounce and which Envoys share one snapshot."""

    debounce: float = 0.1
    max_delay: float = 1.0
    group_of: Callable[..., str] = group_by_cluster
    # xDS worker processes serving the streams (1: the streams are served in this process).
    xds_workers: int = 1
    # The event loop of those worker processes (spillover/server/event_loop.py); this process's is the
    # one that runs the control plane.
    event_loop: str = event_loops.DEFAULT


@dataclass(frozen=True)
class SafetyOptions:
    """What keeps restarts and policy changes harmless (see the README's safety model).

    state_file: where decisions and group sizes are kept across restarts; None: beside the policies
        directory in file mode, none in Kubernetes mode (decisions come back from the status there);
        `persist=False` keeps nothing.
    replica_grace: seconds after a start during which a group counts at least the Envoys it had before.
    removal_grace: seconds a change that removes most models is held before it is applied (0: never held).
    """

    state_file: Path | None = None
    persist: bool = True
    replica_grace: float = 60.0
    removal_grace: float = 30.0
    max_policy_bytes: int = MAX_POLICY_FILE_BYTES
    policy_parse_timeout: float = 2.0


@dataclass(frozen=True)
class KubernetesOptions:
    kubeconfig: Path | None = None
    context: str | None = None
    namespaces: list[str] = field(default_factory=list)
    beamlit: bool = False
    aibrix: bool = True
    leader_election: bool = True
    lease_namespace: str | None = None
    lease_name: str = "spillover-leader"
    defaults: PolicyDefaults = NO_DEFAULTS
    # Leader election and fleet membership timing (client-go's defaults).
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    fleet: FleetPeering | None = None


@dataclass(frozen=True)
class FleetPeering:
    """Several replicas as one fleet (on with leader election unless `enabled` is False): membership in
    Leases, one decision; the peer channel (address, the shared token) for every replica's Envoy readings."""

    enabled: bool = True
    address: tuple[str, int] | None = None
    advertise: str = ""
    token_file: Path | None = None
    heartbeat: float | None = None  # default: the renew deadline / 2, at most 5 s


# An admission file is a few rules; anything this large is a mistake, not a policy.
_MAX_ADMISSION_FILE_BYTES = 1024 * 1024


def load_admission_file(path: Path) -> AdmissionPolicy:
    """An admission policy from a YAML file holding its mapping (see spillover.server.admission).

    Raises AdmissionError (a ValueError) naming the file and the field."""
    try:
        with path.open("rb") as file:
            data = file.read(_MAX_ADMISSION_FILE_BYTES + 1)
    except OSError as error:
        raise AdmissionError(f"{path}: {error.strerror or error}") from None
    if len(data) > _MAX_ADMISSION_FILE_BYTES:
        raise AdmissionError(f"{path}: larger than {_MAX_ADMISSION_FILE_BYTES} bytes")
    # The policy files' loader: libyaml, and bounded against alias bombs.
    documents, syntax = parse_yaml(data, str(path))
    if syntax is not None:
        raise AdmissionError(str(syntax))
    documents = [d for d in documents if d is not None]
    if len(documents) > 1:
        raise AdmissionError(f"{path}: must hold one document")
    try:
        return admission_from_mapping(documents[0] if documents else None, where="")
    except AdmissionError as error:
        raise AdmissionError(f"{path}: {error}") from None


@dataclass(frozen=True)
class Security:
    """The xDS port's mTLS, admission and bounds, and who may read the admin endpoint's debug views."""

    xds: XdsOptions = field(default_factory=XdsOptions)
    admin: AdminOptions = field(default_factory=AdminOptions)


def _tls_files(paths: tuple[Path | None, Path | None, Path | None], flags: str) -> TlsFiles | None:
    if not any(paths):
        return None
    cert, key, ca = paths
    if cert is None or key is None or ca is None:
        raise ValueError(f"{flags} go together")
    files = TlsFiles(cert, key, ca)
    try:
        load_consistent(files)
    except TlsError as error:
        raise ValueError(f"{flags}: {error}") from None
    return files


def security_options(
    *,
    xds_host: str,
    xds_tls: tuple[Path | None, Path | None, Path | None] = (None, None, None),
    insecure_xds: bool = False,
    admission_file: Path | None = None,
    admission: AdmissionPolicy | None = None,
    max_groups: int = 1024,
    group_grace: float = 120.0,
    max_request_bytes: int = StreamLimits.max_request_bytes,
    max_node_metadata_bytes: int = StreamLimits.max_node_metadata_bytes,
    admin_token_file: Path | None = None,
    admin_tls: tuple[Path | None, Path | None, Path | None] = (None, None, None),
) -> Security:
    """`serve`'s security options, checked (files readable and consistent, plain text only where it is
    allowed). `admission`: a policy already read (a controller config's `admission:` section), which
    `admission_file` overrides. Raises ValueError naming the option."""
    xds = _tls_files(xds_tls, "--xds-tls-cert, --xds-tls-key and --xds-client-ca")
    if xds is None and not insecure_xds and not is_loopback(xds_host):
        raise ValueError(
            f"--xds-address {xds_host}: plain text on an address other hosts can reach would give every "
            "configuration and secret to anyone there; give --xds-tls-cert, --xds-tls-key and --xds-client-ca "
            "(mTLS), or --insecure-xds to accept that"
        )
    if admission_file is not None:
        try:
            admission = load_admission_file(admission_file)
        except AdmissionError as error:
            raise ValueError(f"--admission: {error}") from None
    limits = StreamLimits(max_request_bytes=max_request_bytes, max_node_metadata_bytes=max_node_metadata_bytes)
    return Security(
        xds=XdsOptions(
            tls=xds, insecure=insecure_xds, admission=admission, limits=limits,
            max_groups=max_groups, group_grace=group_grace,
        ),
        admin=AdminOptions(
            token_file=admin_token_file,
            tls=_tls_files(admin_tls, "--admin-tls-cert, --admin-tls-key and --admin-client-ca"),
        ),
    )


def _plane(
    provider: PolicyProvider | StaticResourcesFile,
    push: PushOptions,
    registries: list[CollectorRegistry] | None = None,
    debug_routes: list[web.RouteDef] | None = None,
    security: Security | None = None,
    group_replicas: GroupReplicas | None = None,
) -> ControlPlane:
    security = security or Security()
    return ControlPlane(
        provider,
        debounce=push.debounce,
        max_delay=max(push.debounce, push.max_delay),
        group_of=push.group_of,
        xds_workers=push.xds_workers,
        worker_event_loop=push.event_loop,
        registries=registries or [],
        debug_routes=debug_routes or [],
        xds_options=security.xds,
        admin_options=security.admin,
        group_replicas=group_replicas or GroupReplicas(grace=0.0),
    )


def _state_store(safety: SafetyOptions, policies: PolicySource | str | os.PathLike[str]) -> StateStore | None:
    if not safety.persist:
        return None
    path = safety.state_file
    if path is None and isinstance(policies, str | os.PathLike):
        path = default_state_path(Path(policies))
    if path is None:
        return None
    store = StateStore(path)
    store.load()
    return store


def policy_control_plane(
    policies: PolicySource | str | os.PathLike[str],
    listen: tuple[str, int],
    *,
    prometheus_url: str | None = None,
    prometheus_token: str | None = None,
    evaluation_interval: float = 0.5,
    push: PushOptions | None = None,
    defaults: PolicyDefaults = NO_DEFAULTS,
    kubernetes_metrics: KubernetesSource | None = None,
    destinations: DestinationManager | None = None,
    safety: SafetyOptions | None = None,
    recall: DecisionRecall | None = None,
    security: Security | None = None,
    split_weights: str = "route",
    failover_remote: str = "internal-listener",
) -> ControlPlane:
    """Models from `policies` (a directory of YAML files, or any PolicySource) served on `listen`.

    `defaults` (a controller config's) apply to a directory's policies; a PolicySource has its own.
    `destinations`: the copies on destination clusters (Kubernetes mode)."""
    safety = safety or SafetyOptions()
    prometheus = PrometheusSource(prometheus_url, bearer_token=prometheus_token) if prometheus_url else None
    store = _state_store(safety, policies)
    decisions = StateFileDecisions(store) if store is not None and recall is None else None
    source = policies
    if isinstance(policies, str | os.PathLike):
        source = DirectorySource(
            policies, defaults=defaults, max_file_bytes=safety.max_policy_bytes,
            parse_timeout=safety.policy_parse_timeout,
        )
    provider = PolicyProvider(
        source,
        ir.Listener(address=listen[0], port=listen[1]),
        evaluation_interval=evaluation_interval,
        prometheus=prometheus,
        kubernetes=kubernetes_metrics,
        destinations=destinations,
        recall=recall or decisions,
        decision_store=decisions,
        removal_grace=safety.removal_grace,
        split_weights=split_weights,
        failover_remote=failover_remote,
    )

    async def models(request: web.Request) -> web.Response:
        return json_response(provider.models_json())

    return _plane(
        provider, push or PushOptions(), registries=[provider.registry],
        debug_routes=[web.get("/debug/models", models)],
        group_replicas=GroupReplicas(store, grace=safety.replica_grace),
        security=security,
    )


def kubernetes_control_plane(
    kube: KubernetesOptions,
    listen: tuple[str, int],
    *,
    prometheus_url: str | None = None,
    prometheus_token: str | None = None,
    evaluation_interval: float = 0.5,
    push: PushOptions | None = None,
    safety: SafetyOptions | None = None,
    security: Security | None = None,
    split_weights: str = "route",
    failover_remote: str = "internal-listener",
) -> ControlPlane:
    """Models from ModelDeployment resources; the Lease holder writes their status, and a restarted
    replica takes each model's decision back from it.

    Raises when no API client can be made (no kubeconfig, not in a cluster, a broken kubeconfig)."""
    api = api_client(str(kube.kubeconfig) if kube.kubeconfig else None, context=kube.context)
    source = KubernetesPolicySource(
        api, namespaces=kube.namespaces, beamlit=kube.beamlit, aibrix=kube.aibrix, defaults=kube.defaults
    )
    # The copies on destination clusters: every replica reads them, the Lease holder acts on them.
    actuator = CopyActuator(api, DestinationSource(), active=not kube.leader_election)
    plane = policy_control_plane(
        source, listen, prometheus_url=prometheus_url, prometheus_token=prometheus_token,
        evaluation_interval=evaluation_interval, push=push, safety=safety, security=security,
        split_weights=split_weights, failover_remote=failover_remote,
        # The metrics APIs through the informers' client: the same credentials, the same TLS.
        kubernetes_metrics=KubernetesSource(api),
        destinations=DestinationManager(actuator.source, actuator),
        recall=StatusRecall(api) if (safety or SafetyOptions()).persist else None,
    )
    assert isinstance(plane.provider, PolicyProvider)
    publishing = StatusPublishing(
        api,
        plane.provider.status_sinks,
        leader_election=kube.leader_election,
        lease_namespace=kube.lease_namespace,
        lease_name=kube.lease_name,
        beamlit=kube.beamlit,
        lease_duration=kube.lease_duration,
        renew_deadline=kube.renew_deadline,
        retry_period=kube.retry_period,
        followers=[actuator],
    )
    plane.services.append(publishing)
    peering = kube.fleet or FleetPeering()
    if publishing.elector is not None and peering.enabled:
        _join_fleet(plane, api, kube, peering, publishing, evaluation_interval)
    return plane


def _join_fleet(
    plane: ControlPlane, api: ApiClient, kube: KubernetesOptions, peering: FleetPeering,
    publishing: StatusPublishing, evaluation_interval: float,
) -> Fleet:
    elector = publishing.elector
    assert elector is not None and isinstance(plane.provider, PolicyProvider)
    heartbeat = peering.heartbeat or min(5.0, kube.renew_deadline / 2)
    options = FleetOptions(
        namespace=elector.namespace, identity=elector.identity, fleet=kube.lease_name,
        lease_duration=kube.lease_duration, renew_deadline=kube.renew_deadline, heartbeat=heartbeat,
        retry_period=min(1.0, heartbeat), peer_address=peering.address, advertise=peering.advertise,
        token_file=peering.token_file,
    )
    fleet = Fleet(api, options, plane, plane.provider, elector, evaluation_interval)
    publishing.on_leading.append(fleet.on_leading)
    publishing.on_following.append(fleet.on_following)
    plane.services.append(fleet)  # stopped before the status publishing: it hands its Envoys over first

    async def describe(request: web.Request) -> web.Response:
        return json_response(fleet.describe())

    plane.debug_routes.append(web.get("/debug/fleet", describe))
    plane.proxies_extra = lambda: {"fleet": fleet.proxies()}
    return fleet


def resources_control_plane(
    path: Path, push: PushOptions | None = None, security: Security | None = None
) -> ControlPlane:
    """A file of Envoy resources served as they are. Raises OSError/ValueError on an unreadable file."""
    return _plane(StaticResourcesFile(path), push or PushOptions(), security=security)
