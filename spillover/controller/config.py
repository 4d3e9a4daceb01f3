"""The controller configuration file (`spillover serve --config FILE`, `spillover validate --config FILE`).

The same shape as Beamlit's controller `config.yaml` (its keys, camelCase, YAML or JSON), so a
Beamlit installation's config moves over as it is, plus a few keys of spillover's own. What each key
does here:

    namespaces            "a,b" or [a, b]: the namespaces watched (--namespace); "" = all
    metricInformer        type kubernetes | prometheus: the source of HPA-form metrics that name none;
                          prometheus.address: the Prometheus server (--prometheus-url; "host:port" means http)
    defaultRemoteBackend  the remote backend of a ModelDeployment whose offloadingConfig has none:
                          host, scheme, pathPrefix ($workspace, $model), headers (Beamlit's spelling of
                          headersToAdd), authConfig.oauthConfig (clientSecret inline, or clientSecretRef:
                          {file: ...} or {name, key, namespace} of a Kubernetes Secret), and any other
                          field of a remoteBackend (workspace, ca, sni, healthCheck, ...)
    metricsAddr           the admin endpoint serving /metrics (--admin-address); ":8080" = every interface
    probeAddr             the same endpoint serves /healthz and /readyz: must equal metricsAddr if set
    enableLeaderElection  false = one replica writes status without a Lease (--no-leader-election)
    proxyService.port     the port of the model listener every Envoy opens (--listen 0.0.0.0:PORT);
                          name, namespace and adminPort are accepted (the Envoys' own Service and admin
                          port are their bootstrap's business, see `spillover bootstrap`)
    secureMetrics         false only: the admin endpoint is plain HTTP (put it behind a proxy for TLS)
    enableHTTP2           accepted, no effect (the admin endpoint speaks HTTP/1.1, xDS is gRPC)
    deployment            accepted: spillover does not create models on a remote platform (a note is logged)

spillover's own keys:

    beamlit               true: also watch deployment.beamlit.com ModelDeployments (--beamlit)
    defaultBehavior       offloadingConfig.behavior fields for policies that leave them out (a Beamlit
                          CRD keeps only percentage: this is how its resources get a bufferDuration)
    admission             the xDS admission policy: which client identities may use which node groups
                          and node ids, and how many streams each holds (spillover.server.admission;
                          the same mapping as a file given to --admission, which overrides it)
    splitWeights          route (default) | runtime: where the local/remote splits go (--split-weights);
                          runtime needs the Envoys' bootstrap to have the RTDS layer (README)
    failoverRemote        internal-listener (default) | in-place: how failover models' local-first
                          aggregates reach the remote (--failover-remote); in-place for Envoys whose
                          bootstrap lacks envoy.bootstrap.internal_listener (README)

Unknown keys are errors naming the key; the command line overrides the file. Secrets are never
logged nor shown in errors (the values are never part of a message).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from spillover.policy import OffloadingBehavior, RemoteBackend
from spillover.policy.defaults import PolicyDefaults
from spillover.policy.errors import PolicyError, translate
from spillover.policy.presets import Source
from spillover.policy.types import Port
from spillover.policy.validate import parse_yaml
from spillover.server.admission import AdmissionError, AdmissionPolicy, admission_from_mapping

__all__ = ["ConfigError", "ControllerConfig", "load_controller_config", "parse_controller_config"]

MAX_CONFIG_BYTES = 1 << 20
DEFAULT_SECRET_NAMESPACE = "spillover-system"


class ConfigError(ValueError):
    """The file cannot be used; `errors` name the file, the key path and the rule, one per problem."""

    def __init__(self, errors: list[PolicyError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class _Section(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, strict=True, extra="forbid", frozen=True, hide_input_in_errors=True
    )


class _Prometheus(_Section):
    address: str = Field(min_length=1)


class _MetricInformer(_Section):
    type: Literal["kubernetes", "prometheus"] = "kubernetes"
    prometheus: _Prometheus | None = None


class _ProxyService(_Section):
    namespace: str | None = None
    name: str | None = None
    port: Port | None = None
    admin_port: Port | None = None


class _DeploymentConfiguration(_Section):
    type: Literal["kubernetes", "beamlit"] | None = None
    beamlit: dict[str, Any] | None = None


class _Deployment(_Section):
    enabled: bool | None = None
    configuration: _DeploymentConfiguration | None = None


class _File(_Section):
    """The file as written. Sections validated on their own (defaultRemoteBackend, defaultBehavior) are
    kept raw here, so that their errors carry their own paths."""

    metrics_addr: str | None = None
    probe_addr: str | None = None
    enable_leader_election: bool | None = None
    secure_metrics: bool | None = None
    enable_http2: bool | None = Field(default=None, alias="enableHTTP2")
    namespaces: str | list[str] | None = None
    metric_informer: _MetricInformer | None = None
    proxy_service: _ProxyService | None = None
    default_remote_backend: dict[str, Any] | None = None
    deployment: _Deployment | None = None
    beamlit: bool | None = None
    default_behavior: dict[str, Any] | None = None
    admission: dict[str, Any] | None = None
    split_weights: Literal["route", "runtime"] | None = None
    failover_remote: Literal["internal-listener", "in-place"] | None = None

    @field_validator("secure_metrics")
    @classmethod
    def _plain_http(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("spillover's admin endpoint is plain HTTP: secureMetrics must be false")
        return value


@dataclass(frozen=True)
class ControllerConfig:
    """What the file says; None (or empty) where it says nothing, so the command line's defaults apply."""

    path: Path
    namespaces: tuple[str, ...] | None = None
    admin_address: tuple[str, int] | None = None
    leader_election: bool | None = None
    prometheus_url: str | None = None
    listen_port: int | None = None
    beamlit: bool | None = None
    defaults: PolicyDefaults = field(default_factory=PolicyDefaults)
    admission: AdmissionPolicy | None = None
    split_weights: str | None = None
    failover_remote: str | None = None
    notes: tuple[str, ...] = ()  # what is accepted but does nothing here, for the log


def _listen_address(value: str, where: str, file: str) -> tuple[str, int]:
    """A Go listen address (":8080", "0.0.0.0:8080", "[::]:8080") as (host, port)."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError([PolicyError(file, None, where, 'must be an address such as ":8080" or "127.0.0.1:8080"')])
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _namespaces(value: str | list[str]) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    return tuple(dict.fromkeys(n.strip() for n in items if n.strip()))


def _prometheus_url(address: str) -> str:
    return address if "://" in address else f"http://{address}"


def _default_remote_backend(raw: dict[str, Any], file: str, base_dir: str) -> tuple[RemoteBackend, str | None]:
    data = dict(raw)
    if "headers" in data:
        if "headersToAdd" in data:
            raise ConfigError([PolicyError(
                file, None, "defaultRemoteBackend.headers", "set headers (Beamlit) or headersToAdd, not both"
            )])
        data["headersToAdd"] = data.pop("headers")
    try:
        remote = RemoteBackend.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        errors = translate(exc, file=file, prefix="defaultRemoteBackend", root=RemoteBackend)
        raise ConfigError(errors) from None
    oauth = remote.auth_config.oauth_config if remote.auth_config else None
    ref = oauth.client_secret_ref if oauth else None
    secret_namespace = None
    if ref is not None and ref.file is None:
        secret_namespace = ref.namespace or os.environ.get("POD_NAMESPACE") or DEFAULT_SECRET_NAMESPACE
    return remote, secret_namespace


def _default_behavior(raw: dict[str, Any], file: str) -> dict[str, Any]:
    try:
        OffloadingBehavior.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(translate(exc, file=file, prefix="defaultBehavior", root=OffloadingBehavior)) from None
    return dict(raw)


def parse_controller_config(data: bytes | str, path: Path) -> ControllerConfig:
    """The configuration in `data` (the contents of `path`). Raises ConfigError with every problem."""
    file = str(path)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([PolicyError(file, None, "", f"is larger than {MAX_CONFIG_BYTES} bytes")])
    docs, syntax = parse_yaml(data, file)
    if syntax is not None:
        raise ConfigError([syntax])
    docs = [d for d in docs if d is not None]
    if len(docs) > 1:
        raise ConfigError([PolicyError(file, None, "", "must hold one document")])
    raw = docs[0] if docs else {}
    if not isinstance(raw, dict):
        raise ConfigError([PolicyError(file, None, "", "must be a mapping of configuration keys")])
    # Helm charts nest it under `config:` (values.yaml); the file the controller reads is that mapping.
    if set(raw) == {"config"} and isinstance(raw["config"], dict):
        raw = raw["config"]
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(translate(exc, file=file, root=_File)) from None

    errors: list[PolicyError] = []
    notes: list[str] = []
    admin = None
    if parsed.metrics_addr is not None:
        admin = _listen_address(parsed.metrics_addr, "metricsAddr", file)
    if parsed.probe_addr is not None:
        probe = _listen_address(parsed.probe_addr, "probeAddr", file)
        if admin is not None and probe != admin:
            errors.append(PolicyError(
                file, None, "probeAddr", "must equal metricsAddr: one admin endpoint serves /metrics, /healthz and /readyz"
            ))
        admin = admin or probe
    informer = parsed.metric_informer
    metric_source: Source | None = informer.type if informer is not None else None
    prometheus_url = None
    if informer is not None and informer.prometheus is not None:
        prometheus_url = _prometheus_url(informer.prometheus.address)
    elif informer is not None and informer.type == "prometheus":
        errors.append(PolicyError(file, None, "metricInformer.prometheus.address", "is required with type prometheus"))
    remote, secret_namespace = None, None
    if parsed.default_remote_backend is not None:
        try:
            remote, secret_namespace = _default_remote_backend(parsed.default_remote_backend, file, str(path.parent))
        except ConfigError as error:
            errors.extend(error.errors)
    behavior: dict[str, Any] = {}
    if parsed.default_behavior is not None:
        try:
            behavior = _default_behavior(parsed.default_behavior, file)
        except ConfigError as error:
            errors.extend(error.errors)
    admission = None
    if parsed.admission is not None:
        try:
            admission = admission_from_mapping(parsed.admission, where="admission")
        except AdmissionError as error:
            # Its message starts with the path of the field at fault: "admission.rules[0].groups: ...".
            where, _, rule = str(error).partition(": ")
            errors.append(PolicyError(file, None, where, rule))
    if errors:
        raise ConfigError(errors)

    proxy = parsed.proxy_service
    if proxy is not None and (proxy.name or proxy.namespace or proxy.admin_port):
        notes.append("proxyService: only port is used (the model listener); the Envoys' Service and admin port "
                     "are set where the Envoys run (spillover bootstrap, manifests/gateway.yaml)")
    deployment = parsed.deployment
    if deployment is not None and (deployment.enabled or (deployment.configuration and deployment.configuration.type)):
        notes.append("deployment: spillover does not create models on a remote platform; "
                     "it routes to the remote backend that serves them")
    if parsed.enable_http2:
        notes.append("enableHTTP2: no effect (the admin endpoint speaks HTTP/1.1)")
    return ControllerConfig(
        path=path,
        namespaces=_namespaces(parsed.namespaces) if parsed.namespaces is not None else None,
        admin_address=admin,
        leader_election=parsed.enable_leader_election,
        prometheus_url=prometheus_url,
        listen_port=proxy.port if proxy is not None else None,
        beamlit=parsed.beamlit,
        defaults=PolicyDefaults(
            remote_backend=remote, behavior=behavior, metric_source=metric_source, secret_namespace=secret_namespace
        ),
        admission=admission,
        split_weights=parsed.split_weights,
        failover_remote=parsed.failover_remote,
        notes=tuple(notes),
    )


def load_controller_config(path: Path) -> ControllerConfig:
    """Reads and parses `path`. Raises ConfigError (also for a file that cannot be read)."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([PolicyError(str(path), None, "", f"cannot read: {exc.strerror}")]) from None
    return parse_controller_config(data, path)
