"""The policy-driven provider: ModelDeployments from a source -> Envoy resources per node group.

Sources (the policies: a directory or the Kubernetes API, any `PolicySource`; metrics, Envoy's view of endpoint health, OAuth tokens, the connected
replicas) feed a one-way chain: the overflow engine decides per model (state and remote share), plan maps
policies + decisions to the IR, translate renders Envoy resources. Nothing here talks to Envoy over xDS;
the app hands the resources to the snapshot cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from google.protobuf.message import Message
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from spillover.app import GroupView
from spillover.balance import latency_weights
from spillover.metrics.envoy import EnvoySource
from spillover.metrics.health import ClusterHealth, HealthReader, local_ready, remote_healthy
from spillover.metrics.latency import LatencyEstimator
from spillover.metrics.prometheus import PrometheusSource
from spillover.metrics.sample import Sample
from spillover.metrics.sampler import MetricsSampler
from spillover.oauth import ClientCredentials, TokenManager
from spillover.overflow import Evaluator, status_document
from spillover.plan import needs_token, plan_gateway, uses_least_latency
from spillover.policy import DesiredState, DirectorySource, ModelDeployment, PolicyError
from spillover.policy.secrets import resolve_client_secret
from spillover.translate import ir, local_cluster_name, remote_cluster_name, translate

log = logging.getLogger(__name__)


class AdminDirectory(Protocol):
    """Where the connected Envoys' admin endpoints are (the xDS server's proxy registry)."""

    def admin_urls(self, group: str | None = None) -> list[str]: ...


@runtime_checkable
class PolicySource(Protocol):
    """Where policies come from (`DirectorySource`, `spillover.kube.KubernetesPolicySource`).

    `poll()` returns a new state when something changed (None otherwise), `state` the current one, and
    `run(callback)` calls `callback` with the initial state and every new one until cancelled. A state may
    carry `ready_replicas` (model -> ready replicas of its workload, None when unknown), which the
    failover decision honours.
    """

    @property
    def state(self) -> DesiredState: ...

    def poll(self) -> DesiredState | None: ...

    async def run(self, callback: Callable[[DesiredState], Awaitable[None] | None]) -> None: ...


@dataclass(frozen=True)
class StatusReport:
    """What a status sink receives after each evaluation.

    statuses: per model (spec.model), `spillover.overflow.status_document(md, decision, memory, now)`.
    errors:   the current policy errors (invalid documents, unresolvable references).
    state:    the desired state the statuses were computed from (its `origins` tell where each model is
              defined; a Kubernetes state also carries the objects and the errors per object).
    """

    state: DesiredState
    statuses: Mapping[str, Mapping[str, Any]]
    errors: tuple[PolicyError, ...]
    now: float


StatusSink = Callable[[StatusReport], None]


def credentials_of(md: ModelDeployment) -> ClientCredentials | None:
    offloading = md.spec.offloading_config
    remote = offloading.remote_backend if offloading else None
    oauth = remote.auth_config.oauth_config if remote and remote.auth_config else None
    if oauth is None:
        return None

    def secret() -> str:
        value = resolve_client_secret(oauth)
        if value is None:
            raise LookupError(f"model {md.model}: the client secret is a Kubernetes Secret reference")
        return value.get_secret_value()

    ref = oauth.client_secret_ref
    if ref is not None and ref.file:
        secret_ref = f"file:{ref.file}"
    elif oauth.client_secret is not None:
        # Identifies the inline value without keeping it: a changed secret means new credentials.
        digest = hashlib.blake2b(oauth.client_secret.get_secret_value().encode(), digest_size=8).hexdigest()
        secret_ref = f"inline:{digest}"
    else:
        secret_ref = f"secret:{ref.namespace or md.metadata.namespace}/{ref.name}/{ref.key}" if ref else ""
    return ClientCredentials(
        token_url=oauth.token_url,
        client_id=oauth.client_id,
        client_secret=secret,
        secret_ref=secret_ref,
        scope=" ".join(oauth.scopes),
    )


def resource_messages(resources: Any) -> list[Message]:
    out: list[Message] = []
    for kind in ("clusters", "endpoints", "secrets", "listeners", "routes"):
        out.extend(getattr(resources, kind).values())
    return out


def _configured_endpoints(md: ModelDeployment) -> int:
    return len(md.spec.local_backend.endpoints) if md.spec.local_backend else 0


class PolicyProvider:
    def __init__(
        self,
        source: PolicySource | str | os.PathLike[str],
        listener: ir.Listener,
        registry: CollectorRegistry | None = None,
        poll_interval: float = 0.25,
        evaluation_interval: float = 0.5,
        prometheus: PrometheusSource | None = None,
        max_sample_age: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # A path is a policy directory (the file mode); anything else is a ready PolicySource.
        self.source: PolicySource = (
            DirectorySource(source, poll_interval=poll_interval) if isinstance(source, str | os.PathLike) else source
        )
        # Called after every evaluation with the statuses and the errors (e.g. a Kubernetes status writer).
        self.status_sinks: list[StatusSink] = []
        self.listener = listener
        self.evaluation_interval = evaluation_interval
        self.clock = clock
        self.changed: Callable[..., None] = lambda urgent=False: None
        self.tokens = TokenManager(changed=self._tokens_changed)
        self.evaluator = Evaluator(max_age=max_sample_age)
        self.prometheus = prometheus
        self.sampler = MetricsSampler(prometheus=prometheus)
        self.health: HealthReader | None = None
        self.latency = LatencyEstimator()
        self._latency_weights: dict[str, dict[str, int]] = {}
        self.state: DesiredState = self.source.poll() or self.source.state
        self.registry = registry or CollectorRegistry()
        self._errors = Gauge("spillover_policy_errors", "Current policy errors by file", ["file"], registry=self.registry)
        self._state_gauge = Gauge(
            "spillover_model_state", "1 for the state each model is in", ["model", "state"], registry=self.registry
        )
        self._share = Gauge(
            "spillover_model_remote_share_percent", "Share of a model's traffic sent remote", ["model"],
            registry=self.registry,
        )
        self._transitions = Counter(
            "spillover_model_transitions_total", "State changes", ["model", "from_state", "to_state"],
            registry=self.registry,
        )
        self._metric_errors = Counter(
            "spillover_metric_errors_total", "Samples that came back without a value", ["model", "metric"],
            registry=self.registry,
        )
        self._evaluation_seconds = Histogram(
            "spillover_evaluation_seconds", "One round: sampling every metric and deciding every model",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=self.registry,
        )
        self._last_samples: Mapping[str, Mapping[str, Sample]] = {}
        self._last_health: Mapping[str, ClusterHealth] | None = None
        self._report(self.state)
        # Decide once from what is known (no samples yet): failover for models without local
        # endpoints, DISABLED, STANDBY; reported even before any Envoy connects.
        self._decide({}, None)

    def attach(self, proxies: AdminDirectory) -> None:
        """The connected Envoys are a source: their stats (envoy metrics) and their view of health."""
        self.sampler = MetricsSampler(prometheus=self.prometheus, envoy=EnvoySource(proxies.admin_urls))
        self.health = HealthReader(proxies.admin_urls)

    def _credentials(self) -> dict[str, ClientCredentials]:
        return {name: c for name, md in self.state.models.items() if (c := credentials_of(md)) is not None}

    def _tokens(self) -> dict[str, str | None]:
        return {name: self.tokens.token(creds) for name, creds in self._credentials().items()}

    def _decide(self, samples: Mapping[str, Mapping[str, Sample]], health: Mapping[str, ClusterHealth] | None) -> bool:
        """One evaluation of every model; True when some model's routing changed."""
        self._last_samples, self._last_health = samples, health
        models = dict(self.state.models)
        tokens = self._tokens()
        ready: dict[str, int | None] = {}
        healthy: dict[str, bool | None] = {}
        workload_ready: Mapping[str, int | None] = getattr(self.state, "ready_replicas", None) or {}
        for name, md in models.items():
            configured = _configured_endpoints(md)
            # No endpoint, or a workload (modelSourceRef) with no ready replica: nothing local can serve.
            if configured == 0 or workload_ready.get(name) == 0:
                ready[name] = 0
            else:
                ready[name] = local_ready(health, local_cluster_name(md.model, ""))
            healthy[name] = remote_healthy(health, remote_cluster_name(md.model))
        usable = {name: not needs_token(md) or tokens.get(name) is not None for name, md in models.items()}
        previous = dict(self.evaluator.decisions)
        evaluation = self.evaluator.evaluate(models, self.clock(), samples, ready, healthy, usable)
        for name, decision in evaluation.decisions.items():
            before = previous.get(name)
            if before is not None and before.state != decision.state:
                self._transitions.labels(name, before.state.value, decision.state.value).inc()
                log.info("model %s: %s -> %s (%s)", name, before.state.value, decision.state.value, decision.reason)
        self._publish_decisions()
        self._report_status()
        return bool(evaluation.needs_push)

    def statuses(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """The status document of every model that has been decided."""
        now = self.clock() if now is None else now
        out = {}
        for name, md in self.state.models.items():
            decision = self.evaluator.decision(name)
            memory = self.evaluator.memory(name)
            if decision is not None and memory is not None:
                out[name] = status_document(md, decision, memory, now)
        return out

    def _report_status(self) -> None:
        if not self.status_sinks:
            return
        now = self.clock()
        report = StatusReport(self.state, self.statuses(now), tuple(self.state.errors), now)
        for sink in list(self.status_sinks):
            try:
                sink(report)
            except Exception:  # a failing sink must not stop decisions
                log.exception("status sink failed")

    def _publish_decisions(self) -> None:
        self._state_gauge.clear()
        self._share.clear()
        for name, decision in self.evaluator.decisions.items():
            self._state_gauge.labels(name, decision.state.value).set(1)
            self._share.labels(name).set(decision.remote_share)

    async def evaluate_once(self) -> bool:
        started = time.perf_counter()
        models = list(self.state.models.values())
        samples, health = await asyncio.gather(
            self.sampler.sample(models), self.health.read() if self.health else _none()
        )
        for model, by_metric in samples.items():
            for metric, sample in by_metric.items():
                if sample.value is None:
                    self._metric_errors.labels(model, metric).inc()
        changed = self._decide(samples, health)
        if self.health is not None:
            self.latency.observe(time.monotonic(), self.health.loads)
        changed = self._update_latency_weights() or changed
        self._evaluation_seconds.observe(time.perf_counter() - started)
        return changed

    def _update_latency_weights(self) -> bool:
        """least-latency models: endpoint weights from the latency Envoy observes (see balance.py)."""
        weights: dict[str, dict[str, int]] = {}
        for name, md in self.state.models.items():
            if not uses_least_latency(md) or md.spec.local_backend is None:
                continue
            clusters = self.latency.clusters_of(local_cluster_name(md.model, ""))
            latencies = {ep: self.latency.latency(clusters, ep) for ep in md.spec.local_backend.endpoints}
            weights[name] = latency_weights(latencies, self._latency_weights.get(name, {}))
        changed = weights != self._latency_weights
        if changed:
            log.info("least-latency weights: %s", weights)
        self._latency_weights = weights
        return changed

    async def _evaluate_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_round = loop.time()
        while True:
            try:
                if await self.evaluate_once():
                    self.changed(urgent=True)
            except Exception:  # a broken round must not stop the next one
                log.exception("evaluation failed; decisions are kept")
            # Rounds start on a fixed cadence; one that overran is not made up for.
            next_round = max(next_round + self.evaluation_interval, loop.time())
            await asyncio.sleep(next_round - loop.time())

    def resources(self, group: GroupView) -> Iterable[Message]:
        gateway = plan_gateway(
            group.name, self.listener, self.state.models.values(), self.evaluator.decisions, group.replicas,
            self._tokens(), self._latency_weights,
        )
        return resource_messages(translate(gateway))

    async def run(self) -> None:
        self.tokens.want(list(self._credentials().values()))
        evaluation = asyncio.get_running_loop().create_task(self._evaluate_forever())
        try:
            await self.source.run(self._on_state)
        finally:
            evaluation.cancel()
            await asyncio.gather(evaluation, return_exceptions=True)
            await self.tokens.close()
            await self.sampler.close()
            if self.health is not None:
                await self.health.close()

    def _tokens_changed(self) -> None:
        self._redecide()
        self.changed()

    def _redecide(self) -> None:
        # Policies or tokens changed between rounds: decide again on the last round's samples (an
        # empty round would read as "every metric unknown" and restart the engine's timers).
        self._decide(self._last_samples, self._last_health)

    def _on_state(self, state: DesiredState) -> None:
        if state.same_content(self.state):
            return
        self.state = state
        self._report(state)
        self.tokens.want(list(self._credentials().values()))
        self._redecide()
        self.changed()

    def _report(self, state: DesiredState) -> None:
        self._errors.clear()
        by_file: dict[str, int] = {}
        for error in state.errors:
            file = error.file or ""
            by_file[file] = by_file.get(file, 0) + 1
            log.error("invalid policy: %s", error)
        for file, count in by_file.items():
            self._errors.labels(file).set(count)

    def models_json(self) -> dict[str, Any]:
        credentials = self._credentials()
        now = self.clock()
        models = {}
        for name, md in sorted(self.state.models.items()):
            decision = self.evaluator.decision(name)
            memory = self.evaluator.memory(name)
            origin = self.state.origins.get(name)
            creds = credentials.get(name)
            status = status_document(md, decision, memory, now) if decision and memory else {}
            models[name] = {
                "name": md.name,
                "state": decision.state.value if decision else "UNKNOWN",
                "remote_share": decision.remote_share if decision else 0,
                "reason": decision.reason if decision else "",
                "origin": str(origin) if origin else "",
                "stale": name in self.state.stale,
                "errors": [str(e) for e in self.state.errors_for_model(name)],
                "token_error": self.tokens.error(creds) if creds else "",
                "status": status,
            }
        return {"models": models, "errors": [str(e) for e in self.state.errors]}


async def _none() -> None:
    return None
