"""Metric sources of the overflow engine: Prometheus (PromQL), the Kubernetes resource metrics API
and Envoy's own stats. `sampler.MetricsSampler.sample(models)` -> {model: {metric name: Sample}}.

Kept free of imports so that `spillover.metrics.sample`, the type the decision stage consumes, loads
without the HTTP clients of the sources.
"""
