"""spillover's own series per model on /metrics: what the dashboards and `spillover report` draw.

Every series has a `model` label holding `names.model_label(model)`, the value Envoy's per-model stats carry
in their `model` tag, so one dashboard variable selects both; `spillover_model_info` maps it back to the
model's own name and its ModelDeployment.

The gauges are read from the decisions when Prometheus scrapes (a collector), so a model that is no
longer served has no series left; the counters of a model are dropped when it goes (`retain`). Labels
are bounded by the policies: one series per model, per state (4) and per overflow metric.

    spillover_model_info{model, name, deployment, namespace}       1
    spillover_model_state{model, state}                            1 for the current state, 0 for the others
    spillover_model_remote_share_percent{model}                    the share Envoy is told to send remote
    spillover_model_time_in_state_seconds{model, state}            since the model entered its state
    spillover_model_metric_value{model, metric}                    each overflow metric's last good value
    spillover_model_metric_threshold{model, metric}                and its threshold (at or past it: pressure)
    spillover_model_transitions_total{model, from_state, to_state}
    spillover_metric_errors_total{model, metric}                   samples that came back without a value
    spillover_copy_replicas{model, kind}                           the copy on a destination cluster: desired, ready
    spillover_destination_reachable{model}                         1 while that destination cluster answers
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Metric
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from spillover.decide import Evaluator
from spillover.names import (
    COPY_REPLICAS_SERIES,
    DESTINATION_REACHABLE_SERIES,
    MODEL_INFO_SERIES,
    MODEL_METRIC_ERRORS_SERIES,
    MODEL_METRIC_THRESHOLD_SERIES,
    MODEL_METRIC_VALUE_SERIES,
    MODEL_REMOTE_SHARE_SERIES,
    MODEL_STATE_SERIES,
    MODEL_TIME_IN_STATE_SERIES,
    MODEL_TRANSITIONS_SERIES,
    model_label,
)
from spillover.policy import ModelDeployment, OverflowState

__all__ = ["ModelSeries"]


class ModelSeries(Collector):
    """The per-model series of one provider: `models()` are the served ModelDeployments by model name,
    `evaluator` holds their decisions, `clock` is the decisions' clock (Unix seconds), `copy_status(model)`
    the status of the model's copy on a destination cluster (None without one)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        models: Callable[[], Mapping[str, ModelDeployment]],
        evaluator: Callable[[], Evaluator],
        clock: Callable[[], float],
        copy_status: Callable[[str], Mapping[str, object] | None] = lambda model: None,
    ) -> None:
        self._models = models
        self._evaluator = evaluator
        self._clock = clock
        self._copy_status = copy_status
        self._transitions = Counter(
            MODEL_TRANSITIONS_SERIES, "State changes", ["model", "from_state", "to_state"], registry=registry
        )
        self._metric_errors = Counter(
            MODEL_METRIC_ERRORS_SERIES, "Samples that came back without a value", ["model", "metric"],
            registry=registry,
        )
        # The label values each model's counters were given, to drop them with the model.
        self._counted: dict[str, set[tuple[Counter, tuple[str, ...]]]] = {}
        registry.register(self)

    # -- counters ---------------------------------------------------------------------------------

    def _count(self, counter: Counter, model: str, *labels: str) -> None:
        values = (model_label(model), *labels)
        counter.labels(*values).inc()
        self._counted.setdefault(model, set()).add((counter, values))

    def transition(self, model: str, from_state: OverflowState, to_state: OverflowState) -> None:
        self._count(self._transitions, model, from_state.value, to_state.value)

    def metric_error(self, model: str, metric: str) -> None:
        self._count(self._metric_errors, model, metric)

    def retain(self, models: Iterable[str]) -> None:
        """Drops the counters of every model not in `models` (it is no longer served)."""
        keep = set(models)
        for model in [m for m in self._counted if m not in keep]:
            for counter, values in self._counted.pop(model):
                counter.remove(*values)

    # -- gauges, read at scrape time --------------------------------------------------------------------

    def describe(self) -> Iterable[Metric]:
        # Registering must not read the decisions (collect() would be called for the names otherwise).
        return list(self._families())

    def _families(self) -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily(MODEL_INFO_SERIES, "A served model: its name and its ModelDeployment",
                              labels=["model", "name", "deployment", "namespace"]),
            GaugeMetricFamily(MODEL_STATE_SERIES, "1 for the state each model is in, 0 for the others",
                              labels=["model", "state"]),
            GaugeMetricFamily(MODEL_REMOTE_SHARE_SERIES, "Share of a model's traffic sent remote",
                              labels=["model"]),
            GaugeMetricFamily(MODEL_TIME_IN_STATE_SERIES, "Seconds since the model entered its state",
                              labels=["model", "state"]),
            GaugeMetricFamily(MODEL_METRIC_VALUE_SERIES, "Last good value of each overflow metric",
                              labels=["model", "metric"]),
            GaugeMetricFamily(MODEL_METRIC_THRESHOLD_SERIES, "Threshold of each overflow metric",
                              labels=["model", "metric"]),
            GaugeMetricFamily(COPY_REPLICAS_SERIES,
                              "Replicas of each model's copy on its destination cluster (desired, ready)",
                              labels=["model", "kind"]),
            GaugeMetricFamily(DESTINATION_REACHABLE_SERIES, "1 while the destination cluster of a model's copy answers",
                              labels=["model"]),
        )

    def collect(self) -> Iterable[Metric]:
        info, state, share, time_in_state, value, threshold, copy_replicas, reachable = families = self._families()
        evaluator = self._evaluator()
        now = self._clock()
        for name, md in sorted(self._models().items()):
            decision, memory = evaluator.decision(name), evaluator.memory(name)
            if decision is None or memory is None:
                continue
            model = model_label(name)
            info.add_metric([model, name, md.metadata.name, md.metadata.namespace or ""], 1)
            for candidate in OverflowState:
                state.add_metric([model, candidate.value], 1 if candidate == decision.state else 0)
            share.add_metric([model], decision.remote_share)
            time_in_state.add_metric([model, decision.state.value], max(0.0, now - memory.since))
            for reading in memory.readings:
                threshold.add_metric([model, reading.name], reading.threshold)
                if reading.value is not None:
                    value.add_metric([model, reading.name], reading.value)
        for name in sorted(self._models()):
            copy = self._copy_status(name)
            if copy is None:
                continue
            model = model_label(name)
            for kind, field in (("desired", "desiredReplicas"), ("ready", "readyReplicas")):
                replicas = copy.get(field)
                if isinstance(replicas, int):
                    copy_replicas.add_metric([model, kind], replicas)
            if isinstance(copy.get("reachable"), bool):
                reachable.add_metric([model], 1 if copy["reachable"] else 0)
        return families
