"""Metric sources of the overflow engine: Prometheus (PromQL), the Kubernetes metrics APIs (resource,
custom and external metrics, with the HPA's arithmetic in `hpa`) and Envoy's own stats.
`sampler.MetricsSampler.sample(models)` -> {model: {metric name: Sample}}.

Kept free of imports so that `spillover.sources.metrics.sample`, the type the decision stage consumes, loads
without the HTTP clients of the sources.
"""
