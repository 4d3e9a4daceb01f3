"""The policy-driven provider: ModelDeployments from a source -> Envoy resources per node group.

Sources (the policies: a directory or the Kubernetes API, any `PolicySource`; metrics, Envoy's view of endpoint health, OAuth tokens, the connected
replicas) feed a one-way chain: the overflow engine decides per model (state and remote share), plan maps
policies + decisions to the IR, translate renders Envoy resources. Nothing here talks to Envoy over xDS;
the control plane (controller/plane.py) hands the resources to the snapshot cache. What it reports (metrics,
status documents, /debug/models) is controller/reporting.py; what a fleet replica that does not decide does
instead is controller/following.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping

from google.protobuf.message import Message
from prometheus_client import CollectorRegistry

from spillover import ir
from spillover.controller.contracts import (
    AdminDirectory,
    DecisionAuthority,
    DecisionRecall,
    DecisionStore,
    GroupView,
    PolicySource,
    PublishedDecisions,
    Recalled,
    StatusSink,
)
from spillover.controller.destination.manager import DestinationManager
from spillover.controller.encoding import SnapshotBuilder
from spillover.controller.following import FollowsTheFleet
from spillover.controller.removals import RemovalGuard, takeovers
from spillover.decide import Evaluator
from spillover.decide.copies import CopyRoute
from spillover.decide.evaluator import Evaluation
from spillover.decide.latency_weights import latency_weights
from spillover.plan import Planner, needs_token, plan_gateway, uses_least_latency
from spillover.policy import DesiredState, ModelDeployment
from spillover.server.cache import Snapshot
from spillover.sources.files.policies import DirectorySource
from spillover.sources.metrics.envoy import EnvoySource
from spillover.sources.metrics.health import ClusterHealth, HealthReader, local_ready, remote_healthy
from spillover.sources.metrics.kubernetes import KubernetesSource
from spillover.sources.metrics.latency import LatencyEstimator
from spillover.sources.metrics.prometheus import PrometheusSource
from spillover.sources.metrics.sample import Sample
from spillover.sources.metrics.sampler import MetricsSampler
from spillover.sources.oauth import ClientCredentials, TokenManager, credentials_of
from spillover.translate import translate

log = logging.getLogger(__name__)


def _configured_endpoints(md: ModelDeployment) -> int:
    return len(md.spec.local_backend.endpoints) if md.spec.local_backend else 0


class PolicyProvider(FollowsTheFleet):
    def __init__(
        self,
        source: PolicySource | str | os.PathLike[str],
        listener: ir.Listener,
        registry: CollectorRegistry | None = None,
        poll_interval: float = 0.25,
        evaluation_interval: float = 0.5,
        prometheus: PrometheusSource | None = None,
        kubernetes: KubernetesSource | None = None,
        max_sample_age: float = 30.0,
        clock: Callable[[], float] = time.time,
        destinations: DestinationManager | None = None,
        metrics_wait: float | None = None,
        recall: DecisionRecall | None = None,
        decision_store: DecisionStore | None = None,
        warm_up_timeout: float = 5.0,
        removal_grace: float = 30.0,
        split_weights: str = "route",
        failover_remote: str = "internal-listener",
    ) -> None:
        # A path is a policy directory (the file mode); anything else is a ready PolicySource.
        self.source: PolicySource = (
            DirectorySource(source, poll_interval=poll_interval) if isinstance(source, str | os.PathLike) else source
        )
        # Called after every evaluation with the statuses and the errors (e.g. a Kubernetes status writer).
        self.status_sinks: list[StatusSink] = []
        self.listener = listener
        self.split_weights = split_weights  # where the translation puts the splits (ir.Gateway)
        self.failover_remote = failover_remote  # how local-first aggregates reach the remote (ir.Gateway)
        self.evaluation_interval = evaluation_interval
        # How long a round waits for its metric samples before deciding with the last ones it has.
        self.metrics_wait = evaluation_interval / 2 if metrics_wait is None else metrics_wait
        self._sampling: dict[str, asyncio.Task[dict[str, dict[str, Sample]]]] = {}
        self._board: dict[str, dict[str, Sample]] = {}
        self.clock = clock
        self.changed: Callable[..., None] = lambda urgent=False: None
        self.tokens = TokenManager(changed=self._tokens_changed)
        self.evaluator = Evaluator(max_age=max_sample_age)
        self.prometheus = prometheus
        self.kubernetes = kubernetes
        self.sampler = MetricsSampler(prometheus=prometheus, kubernetes=kubernetes)
        self.health: HealthReader | None = None
        self.latency = LatencyEstimator()
        self._latency_weights: dict[str, dict[str, int]] = {}
        # Decisions of an earlier run are asked for once per model, when it first appears.
        self.recall = recall
        self.decision_store = decision_store
        self._recall_asked: set[str] = set()
        self.warm_up_timeout = warm_up_timeout
        self.removals = RemovalGuard(removal_grace)
        # With several replicas (controller/fleet), who decides; this replica applies what it publishes.
        self.authority: DecisionAuthority | None = None
        self._published: PublishedDecisions | None = None
        self.notices: deque[tuple[float, str]] = deque(maxlen=50)  # recent policy events worth telling
        self.state: DesiredState = self.source.poll() or self.source.state
        # One planner and one cache of encoded models for every group (nothing per group is kept here).
        self.planner = Planner()
        self.snapshots = SnapshotBuilder()
        self._incoming = self.state  # the source's latest state (self.state adds held models to it)
        self.registry = registry or CollectorRegistry()
        self._create_metrics()
        self._last_samples: Mapping[str, Mapping[str, Sample]] = {}
        self._last_health: Mapping[str, ClusterHealth] | None = None
        # The copies on destination clusters: read and sized around each evaluation (Kubernetes mode).
        self.destinations = destinations
        self._copy_routes: dict[str, CopyRoute] = {}
        self._destination_pending = False
        if destinations is not None:
            destinations.set_state(self.state)
        self._report(self.state)
        pending = self._ask_recall(self.state)
        if pending is not None:  # a recall that needs the event loop: asked again when the state changes
            self._recall_asked.difference_update(self.state.models)
            _discard(pending)
        # Decide once from what is known (no samples yet): failover for models without local
        # endpoints, DISABLED, STANDBY, or what an earlier run decided; reported even before any Envoy
        # connects.
        self._decide({}, None)

    def attach(self, proxies: AdminDirectory) -> None:
        """The connected Envoys are a source: their stats (envoy metrics) and their view of health."""
        self.use_envoy_readers(EnvoySource(proxies.admin_urls), HealthReader(proxies.admin_urls))

    def use_envoy_readers(self, envoy: EnvoySource, health: HealthReader) -> None:
        """How the Envoys' stats and health are read (a fleet replica reads every replica's Envoys)."""
        self.sampler = MetricsSampler(prometheus=self.prometheus, kubernetes=self.kubernetes, envoy=envoy)
        self.health = health

    def _credentials(self) -> dict[str, ClientCredentials]:
        return {name: c for name, md in self.state.models.items() if (c := credentials_of(md)) is not None}

    def _tokens(self) -> dict[str, str | None]:
        return {name: self.tokens.token(creds) for name, creds in self._credentials().items()}

    def _decide(self, samples: Mapping[str, Mapping[str, Sample]], health: Mapping[str, ClusterHealth] | None) -> bool:
        """One evaluation of every model; True when some model's routing changed."""
        if not self._deciding():
            # Every replica reads the copies on destination clusters and sizes them from the decisions it
            # applies (as on main, where every replica decided): its routes and the copies' status are the
            # leader's, and a takeover starts in step. Only the Lease holder's actuator writes to cluster B.
            routes_before = self._copy_routes
            if self.destinations is None:
                return self._follow()
            models = dict(self.state.models)
            _, _, self._copy_routes = self.destinations.gate(models)
            changed = self._follow()
            applied = Evaluation(decisions=dict(self.evaluator.decisions), memories=dict(self.evaluator.memories))
            self.destinations.decided(models, applied, self.clock())
            return changed or self._copy_routes != routes_before
        routing_before = self._applied_routing()
        self._last_samples, self._last_health = samples, health
        models = dict(self.state.models)
        tokens = self._tokens()
        ready: dict[str, int | None] = {}
        healthy: dict[str, bool | None] = {}
        workload_ready = self.state.ready_replicas
        for name, md in models.items():
            configured = _configured_endpoints(md)
            # No endpoint, or a workload (modelSourceRef) with no ready replica: nothing local can serve.
            if configured == 0 or workload_ready.get(name) == 0:
                ready[name] = 0
            else:
                ready[name] = local_ready(health, md.model)
            healthy[name] = remote_healthy(health, md.model)
        usable = {name: not needs_token(md) or tokens.get(name) is not None for name, md in models.items()}
        reasons: dict[str, str] = {}
        routes_before = self._copy_routes
        if self.destinations is not None:
            # A copy on a destination cluster takes traffic only once it is ready and can be seen.
            copy_usable, reasons, self._copy_routes = self.destinations.gate(models)
            for name, ok in copy_usable.items():
                usable[name] = usable.get(name, True) and ok
        else:
            for name, md in models.items():
                if md.spec.offloading_config is not None and md.spec.offloading_config.destination is not None:
                    usable[name] = False
                    reasons[name] = "no copy: a destination is managed only in Kubernetes mode (serve --kubernetes)"
        previous = dict(self.evaluator.decisions)
        now = self.clock()
        evaluation = self.evaluator.evaluate(models, now, samples, ready, healthy, usable, reasons)
        if self.destinations is not None:
            self.destinations.decided(models, evaluation, now)
        for name, decision in evaluation.decisions.items():
            before = previous.get(name)
            if before is not None and before.state != decision.state:
                self.series.transition(name, before.state, decision.state)
                log.info("model %s: %s -> %s (%s)", name, before.state.value, decision.state.value, decision.reason)
        self.series.retain(models)
        self._report_status()
        if self.decision_store is not None:
            self.decision_store.keep(self.evaluator.memories)
        if self.authority is None:
            return bool(evaluation.needs_push) or self._copy_routes != routes_before
        self.authority.propose(self.evaluator.decisions, self.evaluator.memories, self._latency_weights)
        # Published decisions apply once written (adopt); the copies' routes at once.
        return self._applied_routing() != routing_before or self._copy_routes != routes_before

    def _ask_recall(self, state: DesiredState) -> Awaitable[Recalled] | None:
        """Restores what an earlier run decided for the models seen for the first time; returns what is
        still to be awaited when the recall needs I/O."""
        if self.recall is None:
            return None
        names = [name for name in state.models if name not in self._recall_asked]
        if not names:
            return None
        self._recall_asked.update(names)
        try:
            result = self.recall.recall(state, names, self.clock())
        except Exception:  # a broken recall is a fresh start, never a failure to serve
            log.exception("recalling earlier decisions failed")
            return None
        if inspect.isawaitable(result):
            return result
        self.evaluator.restore(result)
        return None

    async def warm_up(self) -> None:
        """Before the first Envoy is answered: fetch the OAuth tokens (bounded by `warm_up_timeout`), so
        that a restarted control plane serves what it served before instead of a config without the
        remotes that need them, and a second one a moment later."""
        credentials = list(self._credentials().values())
        if not credentials:
            return
        self.tokens.want(credentials)
        deadline = time.monotonic() + self.warm_up_timeout
        while time.monotonic() < deadline:
            if all(self.tokens.token(c) is not None or self.tokens.error(c) for c in credentials):
                break
            await asyncio.sleep(0.02)
        self._redecide()

    def _start_sampling(self, models: list[ModelDeployment]) -> None:
        """One sampling round per source, unless that source's previous round is still running: a slow
        source is not asked again (and does not pile up queries) until it has answered or timed out."""
        sources = self.sampler.sources_of(models)
        if not self._deciding():
            sources &= {"envoy"}  # its own Envoys' stats, for the leader; the rest is the leader's to read
        for source in sources:
            task = self._sampling.get(source)
            if task is None or task.done():
                self._sampling[source] = asyncio.get_running_loop().create_task(
                    self.sampler.sample(models, (source,)), name=f"sample-{source}"
                )

    def _harvest(self) -> None:
        """Samples of the rounds that have finished replace the ones they measured anew."""
        for source, task in list(self._sampling.items()):
            if not task.done():
                continue
            del self._sampling[source]
            if task.cancelled() or task.exception() is not None:
                if not task.cancelled():
                    log.error("%s sampling failed: %s", source, task.exception())
                continue
            for model, by_metric in task.result().items():
                self._board.setdefault(model, {}).update(by_metric)
                for metric, sample in by_metric.items():
                    if sample.value is None:
                        self.series.metric_error(model, metric)

    def _latest_samples(self) -> dict[str, dict[str, Sample]]:
        current = self.state.models
        self._board = {name: samples for name, samples in self._board.items() if name in current}
        return {name: dict(samples) for name, samples in self._board.items()}

    async def evaluate_once(self) -> bool:
        """One round: health is read (bounded by its own timeout) and decided on at once; each metric
        source gets at most `metrics_wait` to answer this round, after which its metrics keep their
        last samples (their age tells the engine when they are too old) while its queries go on."""
        started = time.perf_counter()
        models = list(self.state.models.values())
        self._start_sampling(models)
        health = await self.health.read() if self.health else None
        pending = [task for task in self._sampling.values() if not task.done()]
        if pending:
            budget = self.metrics_wait - (time.perf_counter() - started)
            await asyncio.wait(pending, timeout=max(0.0, budget))
        self._harvest()
        changed = self._decide(self._latest_samples(), health)
        if self.health is not None:
            self.latency.observe(time.monotonic(), self.health.loads)
        if self._deciding():
            changed = self._update_latency_weights() or changed
        self._evaluation_seconds.observe(time.perf_counter() - started)
        return changed

    def _update_latency_weights(self) -> bool:
        """least-latency models: endpoint weights from the latency Envoy observes (see spillover/decide/latency_weights.py)."""
        weights: dict[str, dict[str, int]] = {}
        for name, md in self.state.models.items():
            if not uses_least_latency(md) or md.spec.local_backend is None:
                continue
            clusters = self.latency.local_clusters_of(md.model)
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
                if self.removals.due(self.clock()):
                    self._apply_state(self._incoming)
                if await self.evaluate_once():
                    self.changed(urgent=True)
                if self.decision_store is not None:
                    self.decision_store.tick()
            except Exception:  # a broken round must not stop the next one
                log.exception("evaluation failed; decisions are kept")
            # Rounds start on a fixed cadence; one that overran is not made up for.
            next_round = max(next_round + self.evaluation_interval, loop.time())
            await asyncio.sleep(next_round - loop.time())

    def resources(self, group: GroupView) -> Iterable[Message]:
        decisions, weights = self._applied()
        gateway = plan_gateway(
            group.name, self.listener, self.state.models.values(), decisions, group.replicas, self._tokens(), weights,
            self._copy_routes, self.split_weights, self.failover_remote,
        )
        return translate(gateway).messages()

    def snapshot(self, group: GroupView, previous: Snapshot | None = None) -> Snapshot:
        """The group's snapshot, byte for byte `resources`' but built from `previous` (the group's last one):
        only the models whose IR changed are translated (see controller/encoding.py)."""
        decisions, weights = self._applied()
        gateway = self.planner.plan(
            group.name, self.listener, self.state.models.values(), decisions, group.replicas, self._tokens(), weights,
            self._copy_routes, self.split_weights, self.failover_remote,
        )
        return self.snapshots.snapshot(gateway, previous)

    async def run(self) -> None:
        self.tokens.want(list(self._credentials().values()))
        loop = asyncio.get_running_loop()
        if self.destinations is not None:
            def wake() -> None:  # called from the destination's informer and probe threads
                with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to decide any more
                    loop.call_soon_threadsafe(self._destination_changed)

            self.destinations.source.on_change = wake
        evaluation = loop.create_task(self._evaluate_forever())
        try:
            await self.source.run(self._on_state)
        finally:
            evaluation.cancel()
            await asyncio.gather(evaluation, return_exceptions=True)
            for task in self._sampling.values():
                task.cancel()
            await asyncio.gather(*self._sampling.values(), return_exceptions=True)
            if self.decision_store is not None:
                self.decision_store.close()
            if self.destinations is not None:
                self.destinations.source.on_change = lambda: None
                await asyncio.to_thread(self.destinations.close)
            await self.tokens.close()
            await self.sampler.close()
            if self.health is not None:
                await self.health.close()

    def _destination_changed(self) -> None:
        # A copy changed on its cluster (ready, gone, unreachable): decide again now rather than at the next
        # round, coalescing a burst of watch events into one decision.
        if self._destination_pending:
            return
        self._destination_pending = True
        asyncio.get_running_loop().call_later(0.02, self._decide_for_destinations)

    def _decide_for_destinations(self) -> None:
        self._destination_pending = False
        try:
            if self._decide(self._last_samples, self._last_health):
                self.changed(urgent=True)
        except Exception:
            log.exception("deciding after a destination change failed; decisions are kept")

    def _tokens_changed(self) -> None:
        self._redecide()
        self.changed()

    def _redecide(self) -> None:
        # Policies or tokens changed between rounds: decide again on the last round's samples (an
        # empty round would read as "every metric unknown" and restart the engine's timers).
        self._decide(self._last_samples, self._last_health)

    def _on_state(self, state: DesiredState) -> Awaitable[None] | None:
        if state.same_content(self.state):
            return None
        pending = self._ask_recall(state)
        if pending is not None:
            return self._apply_after_recall(pending, state)
        self._apply_state(state)
        return None

    async def _apply_after_recall(self, pending: Awaitable[Recalled], state: DesiredState) -> None:
        try:
            self.evaluator.restore(await pending)
        except Exception:
            log.exception("recalling earlier decisions failed")
        self._apply_state(state)

    def _apply_state(self, state: DesiredState) -> None:
        self._incoming = state
        served = self.state
        now = self.clock()
        state = self.removals.apply(served, state, now)
        self._held_gauge.set(len(self.removals.held.models) if self.removals.held else 0)
        for line in takeovers(served, state):
            log.warning("%s", line)
            self.notices.append((now, line))
            self._takeovers.inc()
        if self.removals.held is not None:
            line = self.removals.held.describe()
            if not self.notices or self.notices[-1][1] != line:
                self.notices.append((now, line))
        if state.same_content(served):
            return
        self.state = state
        self.snapshots.pieces.retain({md.model for md in state.models.values()})
        self._report(state)
        if self.destinations is not None:
            self.destinations.set_state(state)
        self.tokens.want(list(self._credentials().values()))
        self._redecide()
        self.changed()



def _discard(pending: Awaitable[object]) -> None:
    if inspect.iscoroutine(pending):  # a coroutine never awaited would warn
        pending.close()
