"""Document builders shared by the policy tests."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from spillover.policy import ModelDeployment
from spillover.policy.defaults import NO_DEFAULTS, PolicyDefaults
from spillover.policy.errors import PolicyError
from spillover.policy.validate import validate_document

BASE: dict[str, Any] = {
    "apiVersion": "spillover.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "llama"},
    "spec": {
        "model": "llama-3",
        "localBackend": {"endpoints": ["127.0.0.1:8001"]},
    },
}

FULL_YAML = """
apiVersion: spillover.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: full-model
  namespace: ai
spec:
  model: org/full-model
  enabled: true
  localBackend:
    endpoints: ["10.0.0.1:8000", "[::1]:8001", "vllm-0.ai.svc:8000"]
    healthCheck: {path: /health, interval: 10s, timeout: 1s}
  routing:
    defaultProfile: default
    lockedRoutingStrategy: least-request
    profiles:
      default: {routingStrategy: least-latency, requestsPerSecond: 10, burst: 20}
      batch: {routingStrategy: throughput, requestsPerSecond: 2.5}
  timeouts: {request: 5m, connect: 1s, idle: 30s}
  retries: {attempts: 1, perTryTimeout: 60s, retryOn: [5xx, retriable-status-codes], retriableStatusCodes: [503]}
  offloadingConfig:
    remoteBackend:
      host: remote.example.com
      port: 8443
      scheme: https
      ca: /etc/ssl/remote-ca.pem
      sni: remote.example.com
      hostRewrite: api.example.com
      pathPrefix: /$workspace/$model
      headersToAdd: {X-Tenant: ai}
      authConfig:
        type: oauth
        oauthConfig:
          clientId: cid
          clientSecretRef: {name: remote-oauth, key: clientSecret}
          tokenUrl: https://auth.example.com/token
          scopes: [inference]
      outlierDetection: {consecutive5xx: 3, interval: 5s, baseEjectionTime: 10s, maxEjectionPercent: 100}
    behavior: {percentage: 80, bufferDuration: 90s, activationDuration: 5s, strategy: proportional, minStep: 20,
               onMetricError: standby}
    metrics:
      - type: External
        external:
          metric: {name: my_metric, selector: {matchLabels: {job: x}}}
          target: {type: Value, value: "500m"}
      - type: Pods
        pods:
          metric: {name: requests_waiting}
          target: {type: AverageValue, averageValue: 4}
      - metric: latency
        target: 2000
        percentile: 99
        reducer: max
      - metric: kv_cache
        target: 90
        query: '100 * vllm:kv_cache_usage_perc{model_name="$model"}'
      - query: cluster.$cluster.upstream_rq_pending_active
        threshold: 5
        source: envoy
        window: 30s
"""


def base(**spec: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["spec"].update(spec)
    return doc


def full() -> dict[str, Any]:
    return yaml.safe_load(FULL_YAML)


def set_path(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """set_path(doc, "spec.routing.profiles.a.burst", 3) creating mappings on the way."""
    node = doc
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {}) if isinstance(node, dict) else node[int(k)]
    if isinstance(node, list):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value
    return doc


def ok(doc: Any, defaults: PolicyDefaults = NO_DEFAULTS) -> ModelDeployment:
    result = validate_document(doc, file="t.yaml", index=0, defaults=defaults)
    assert isinstance(result, ModelDeployment), [str(e) for e in result]
    return result


def errors(doc: Any, defaults: PolicyDefaults = NO_DEFAULTS) -> list[str]:
    result = validate_document(doc, file="t.yaml", index=0, defaults=defaults)
    assert not isinstance(result, ModelDeployment), "document unexpectedly valid"
    assert all(isinstance(e, PolicyError) for e in result)
    return [str(e) for e in result]
