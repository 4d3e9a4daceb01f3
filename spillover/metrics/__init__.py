"""Metric sources of the overflow engine: Prometheus (PromQL), the Kubernetes resource metrics API
and Envoy's own stats. `MetricsSampler.sample(models)` -> {model: {metric name: Sample}}."""

from spillover.metrics.envoy import EnvoySource
from spillover.metrics.kubernetes import KubernetesClient, KubernetesSource, parse_quantity, resource_value
from spillover.metrics.prometheus import PrometheusSource
from spillover.metrics.render import RenderedMetric, render_metric, render_model
from spillover.metrics.sample import MetricError, Sample, reduce_values
from spillover.metrics.sampler import MetricsSampler

__all__ = [
    "EnvoySource",
    "KubernetesClient",
    "KubernetesSource",
    "MetricError",
    "MetricsSampler",
    "PrometheusSource",
    "RenderedMetric",
    "Sample",
    "parse_quantity",
    "reduce_values",
    "render_metric",
    "render_model",
    "resource_value",
]
