"""One test per validation rule, asserting the exact text users will read."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from spillover.policy import ModelDeployment
from tests.harness.model_parts import client_secret_ref, local_health_check, offloading, remote_backend
from tests.harness.policy_docs import base, errors, full, ok, set_path

P = "t.yaml[0] "


def with_(path: str, value: Any, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    return set_path(copy.deepcopy(doc) if doc is not None else base(), path, value)


def remote(**fields: Any) -> dict[str, Any]:
    rb = {"host": "remote.example.com", **fields}
    return base(offloadingConfig={"remoteBackend": rb})


def metric(**fields: Any) -> dict[str, Any]:
    return base(offloadingConfig={"metrics": [fields], "remoteBackend": {"host": "remote.example.com"}})


def profiles(**profs: Any) -> dict[str, Any]:
    return base(routing={"profiles": profs})


CASES: list[tuple[str, dict[str, Any], list[str]]] = [
    # document shape
    ("apiVersion", with_("apiVersion", "v1"),
     ["apiVersion: must be one of: spillover.dev/v1alpha1, deployment.beamlit.com/v1alpha1"]),
    ("kind missing", {k: v for k, v in base().items() if k != "kind"}, ["kind: is required"]),
    ("spec missing", {k: v for k, v in base().items() if k != "spec"}, ["spec: is required"]),
    ("unknown field + suggestion", with_("spec.routng", {}), ['spec.routng: unknown field (did you mean "routing"?)']),
    ("unknown field no suggestion", with_("spec.zzz", 1), ["spec.zzz: unknown field"]),
    ("strict int", with_("spec.enabled", "yes"), ["spec.enabled: must be true or false"]),
    # names
    ("name short", with_("metadata.name", "ab"), ["metadata.name: must be 3 to 63 characters long"]),
    ("name long", with_("metadata.name", "a" * 64), ["metadata.name: must be 3 to 63 characters long"]),
    ("name dns", with_("metadata.name", "Llama_3"),
     ["metadata.name: must be a DNS-1123 label: lowercase letters, digits and '-', "
      "starting and ending with a letter or digit"]),
    ("name missing", with_("metadata", {}), ["metadata.name: is required"]),
    ("model empty", with_("spec.model", ""), ["spec.model: must not be empty"]),
    ("model spaces", with_("spec.model", "my model"),
     ["spec.model: must start with a letter or digit and contain only letters, digits and . _ : / @ + -"]),
    ("model type", with_("spec.model", 3), ["spec.model: must be a string"]),
    # backends
    ("no backend", base(localBackend=None) | {"spec": {"model": "m"}},
     ["spec: needs a backend: set localBackend.endpoints, serviceRef, modelSourceRef or offloadingConfig.remoteBackend"]),
    ("endpoint port", base(localBackend={"endpoints": ["h:70000"]}),
     ["spec.localBackend.endpoints[0]: must be host:port (port must be between 1 and 65535)"]),
    ("endpoint no port", base(localBackend={"endpoints": ["h"]}),
     ["spec.localBackend.endpoints[0]: must be host:port (the port is missing)"]),
    ("endpoint ipv6", base(localBackend={"endpoints": ["::1:80"]}),
     ["spec.localBackend.endpoints[0]: must be host:port (IPv6 addresses must be written in brackets, e.g. [::1]:8000)"]),
    ("endpoint dup", base(localBackend={"endpoints": ["h:1", "h:1"]}),
     ["spec.localBackend.endpoints[1]: duplicate endpoint (same as endpoints[0])"]),
    ("targetPort", base(serviceRef={"name": "svc", "targetPort": 0}),
     ["spec.serviceRef.targetPort: must be a port number between 1 and 65535"]),
    ("remote port", remote(port=65536), ["spec.offloadingConfig.remoteBackend.port: must be a port number between 1 and 65535"]),
    ("remote host scheme", remote(host="https://x.example.com"),
     ["spec.offloadingConfig.remoteBackend.host: must be a host name without scheme (set scheme: https instead)"]),
    ("remote host path", remote(host="x.example.com/v1"),
     ["spec.offloadingConfig.remoteBackend.host: must be a host name without a path (use pathPrefix)"]),
    ("remote port conflict", remote(host="x:80", port=81),
     ["spec.offloadingConfig.remoteBackend.port: conflicts with the port in host (80)"]),
    ("scheme", remote(scheme="grpc"), ["spec.offloadingConfig.remoteBackend.scheme: must be one of: http, https"]),
    ("ca on http", remote(ca="system"), ["spec.offloadingConfig.remoteBackend.ca: only applies with scheme: https"]),
    ("sni on http", remote(sni="x"), ["spec.offloadingConfig.remoteBackend.sni: only applies with scheme: https"]),
    ("pathPrefix slash", remote(pathPrefix="v1"), ['spec.offloadingConfig.remoteBackend.pathPrefix: must start with "/"']),
    ("pathPrefix var", remote(pathPrefix="/$tenant/$model"),
     ["spec.offloadingConfig.remoteBackend.pathPrefix: unknown variable $tenant (known: $model, $workspace)"]),
    ("header name", remote(headersToAdd={"bad header": "x"}),
     ["spec.offloadingConfig.remoteBackend.headersToAdd[\"bad header\"]: invalid name: must be a valid HTTP header name"]),
    ("header host", remote(headersToAdd={"Host": "x"}),
     ["spec.offloadingConfig.remoteBackend.headersToAdd.host: cannot be set here (use hostRewrite for the host)"]),
    ("auth type", remote(authConfig={"type": "basic"}),
     ["spec.offloadingConfig.remoteBackend.authConfig.type: must be one of: oauth"]),
    ("oauth missing", remote(authConfig={"type": "oauth"}),
     ['spec.offloadingConfig.remoteBackend.authConfig.oauthConfig: is required when type is "oauth"']),
    ("oauth no secret", remote(authConfig={"type": "oauth", "oauthConfig": {"clientId": "c", "tokenUrl": "https://t"}}),
     ["spec.offloadingConfig.remoteBackend.authConfig.oauthConfig.clientSecret: set clientSecret or clientSecretRef"]),
    ("oauth both", remote(authConfig={"type": "oauth", "oauthConfig": {
        "clientId": "c", "tokenUrl": "https://t", "clientSecret": "s", "clientSecretRef": {"file": "/s"}}}),
     ["spec.offloadingConfig.remoteBackend.authConfig.oauthConfig.clientSecret: "
      "set either clientSecret or clientSecretRef, not both"]),
    ("oauth token url", remote(authConfig={"type": "oauth", "oauthConfig": {
        "clientId": "c", "tokenUrl": "auth.example.com/token", "clientSecretRef": {"file": "/s"}}}),
     ["spec.offloadingConfig.remoteBackend.authConfig.oauthConfig.tokenUrl: must be an http:// or https:// URL"]),
    ("secret ref both forms", remote(authConfig={"type": "oauth", "oauthConfig": {
        "clientId": "c", "tokenUrl": "https://t", "clientSecretRef": {"file": "/s", "name": "n", "key": "k"}}}),
     ["spec.offloadingConfig.remoteBackend.authConfig.oauthConfig.clientSecretRef: "
      "set either file, or name and key of a Kubernetes Secret, not both"]),
    ("secret ref key", remote(authConfig={"type": "oauth", "oauthConfig": {
        "clientId": "c", "tokenUrl": "https://t", "clientSecretRef": {"name": "n"}}}),
     ["spec.offloadingConfig.remoteBackend.authConfig.oauthConfig.clientSecretRef.key: is required"]),
    ("health timeout", base(localBackend={"endpoints": [], "healthCheck": {"interval": "1s", "timeout": "2s"}}),
     ["spec.localBackend.healthCheck.timeout: must be <= interval"]),
    # Simplismart's healthcheck fields, with its rules
    ("health periodSeconds", base(localBackend={"endpoints": [], "healthCheck": {"periodSeconds": 0}}),
     ["spec.localBackend.healthCheck.periodSeconds: must be >= 1"]),
    ("health timeoutSeconds", base(localBackend={"endpoints": [], "healthCheck": {"timeoutSeconds": 0}}),
     ["spec.localBackend.healthCheck.timeoutSeconds: must be >= 1"]),
    ("health initialDelaySeconds", base(localBackend={"endpoints": [], "healthCheck": {"initialDelaySeconds": -1}}),
     ["spec.localBackend.healthCheck.initialDelaySeconds: must be >= 0"]),
    ("health seconds are integers", base(localBackend={"endpoints": [], "healthCheck": {"periodSeconds": 1.5}}),
     ["spec.localBackend.healthCheck.periodSeconds: must be an integer"]),
    ("health port", remote(healthCheck={"port": 0}),
     ["spec.offloadingConfig.remoteBackend.healthCheck.port: must be a port number between 1 and 65535"]),
    ("health both spellings", base(localBackend={"endpoints": [], "healthCheck": {
        "interval": "5s", "periodSeconds": 5, "timeout": "1s", "timeoutSeconds": 1}}),
     ["spec.localBackend.healthCheck.periodSeconds: set interval or periodSeconds, not both",
      "spec.localBackend.healthCheck.timeoutSeconds: set timeout or timeoutSeconds, not both"]),
    ("health timeoutSeconds > periodSeconds", base(localBackend={"endpoints": [], "healthCheck": {
        "periodSeconds": 2, "timeoutSeconds": 3}}),
     ["spec.localBackend.healthCheck.timeoutSeconds: must be <= periodSeconds"]),
    ("outlier percent", remote(outlierDetection={"maxEjectionPercent": 101}),
     ["spec.offloadingConfig.remoteBackend.outlierDetection.maxEjectionPercent: must be a percentage between 0 and 100"]),
    # behavior
    ("percentage", base(offloadingConfig={"behavior": {"percentage": 150}}),
     ["spec.offloadingConfig.behavior.percentage: must be a percentage between 0 and 100"]),
    ("percentage negative", base(offloadingConfig={"behavior": {"percentage": -1}}),
     ["spec.offloadingConfig.behavior.percentage: must be a percentage between 0 and 100"]),
    ("duration", base(offloadingConfig={"behavior": {"bufferDuration": "soon"}}),
     ['spec.offloadingConfig.behavior.bufferDuration: must be a duration such as "30s", "1m30s" or "500ms"']),
    ("strategy", base(offloadingConfig={"behavior": {"strategy": "linear"}}),
     ["spec.offloadingConfig.behavior.strategy: must be one of: fixed, proportional"]),
    ("onMetricError", base(offloadingConfig={"behavior": {"onMetricError": "panic"}}),
     ["spec.offloadingConfig.behavior.onMetricError: must be one of: hold, standby, overflow"]),
    ("minStep", base(offloadingConfig={"behavior": {"strategy": "proportional", "percentage": 20, "minStep": 30}}),
     ["spec.offloadingConfig.behavior.minStep: must be <= percentage"]),
    # routing
    ("defaultProfile implicit", profiles(batch={"requestsPerSecond": 1}),
     ['spec.routing.defaultProfile: is required: no profile is named "default" (defined: batch)']),
    ("strategy unknown", profiles(default={"routingStrategy": "pd"}),
     ['spec.routing.profiles.default.routingStrategy: unknown routing strategy "pd" (known: random, round-robin, '
      "least-request, least-latency, session-affinity, prefix-cache, throughput)"]),
    ("locked unknown", base(routing={"lockedRoutingStrategy": "vtc-basic"}),
     ['spec.routing.lockedRoutingStrategy: unknown routing strategy "vtc-basic" (known: random, round-robin, '
      "least-request, least-latency, session-affinity, prefix-cache, throughput)"]),
    ("defaultProfile undefined", base(routing={"defaultProfile": "fast", "profiles": {"default": {}, "batch": {}}}),
     ['spec.routing.defaultProfile: profile "fast" is not defined in profiles (defined: batch, default)']),
    ("defaultProfile without profiles", base(routing={"defaultProfile": "fast"}),
     ['spec.routing.defaultProfile: profile "fast" is not defined in profiles']),
    ("profile name", profiles(default={}, Batch={}),
     ["spec.routing.profiles.Batch: invalid name: must be a DNS-1123 label (1 to 63 lowercase letters, digits or '-')"]),
    ("burst < rps", profiles(default={"requestsPerSecond": 10, "burst": 5}),
     ["spec.routing.profiles.default.burst: must be >= requestsPerSecond"]),
    ("burst without rps", profiles(default={"burst": 5}),
     ["spec.routing.profiles.default.burst: requires requestsPerSecond > 0"]),
    ("sessionHeader wrong strategy", profiles(default={"routingStrategy": "random", "sessionHeader": "x-user"}),
     ["spec.routing.profiles.default.sessionHeader: only applies to routingStrategy session-affinity"]),
    ("prefixLength wrong strategy", profiles(default={"prefixLength": 10}),
     ["spec.routing.profiles.default.prefixLength: only applies to routingStrategy prefix-cache"]),
    ("prefixLength zero", profiles(default={"routingStrategy": "prefix-cache", "prefixLength": 0}),
     ["spec.routing.profiles.default.prefixLength: must be >= 1"]),
    # timeouts / retries
    ("retry on", base(retries={"retryOn": ["5xx", "sometimes"]}),
     ['spec.retries.retryOn[1]: unknown retry condition "sometimes" (known: 5xx, gateway-error, reset, '
      "reset-before-request, connect-failure, envoy-ratelimited, retriable-4xx, refused-stream, retriable-status-codes, "
      "retriable-headers, http3-post-connect-failure, cancelled, deadline-exceeded, internal, resource-exhausted, "
      "unavailable)"]),
    ("attempts", base(retries={"attempts": 11}), ["spec.retries.attempts: must be <= 10"]),
    ("perTry > request", base(timeouts={"request": "10s"}, retries={"perTryTimeout": "20s"}),
     ["spec.retries.perTryTimeout: must be <= timeouts.request"]),
    ("connect zero", base(timeouts={"connect": 0}), ["spec.timeouts.connect: must be > 0"]),
    ("status codes need condition", base(retries={"retriableStatusCodes": [503]}),
     ['spec.retries.retriableStatusCodes: requires "retriable-status-codes" in retryOn']),
    # serverless (Beamlit): limits >= requests in spirit
    ("replicas", base(serverlessConfig={"minNumReplicas": 3, "maxNumReplicas": 2}),
     ["spec.serverlessConfig.maxNumReplicas: must be >= minNumReplicas"]),
    # metrics
    ("metric form missing", metric(), ["spec.offloadingConfig.metrics[0]: set one of type (HPA metric), metric (preset) or query"]),
    ("metric member without type", metric(resource={"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 5}}),
     ["spec.offloadingConfig.metrics[0]: set one of type (HPA metric), metric (preset) or query (found resource, add type)"]),
    ("metric unknown preset", metric(metric="tokens", target=1),
     ['spec.offloadingConfig.metrics[0].metric: unknown metric "tokens" (known: cpu, ram, gpu, gram, latency, '
      "throughput, concurrency, queue_length, kv_cache)"]),
    ("preset target", metric(metric="gpu"), ["spec.offloadingConfig.metrics[0].target: is required with metric"]),
    ("preset percentile", metric(metric="gpu", target=1, percentile=95),
     ["spec.offloadingConfig.metrics[0].percentile: only applies to metric latency"]),
    ("percentile range", metric(metric="latency", target=1, percentile=100),
     ["spec.offloadingConfig.metrics[0].percentile: must be < 100"]),
    ("preset source", metric(metric="gpu", target=1, source="envoy"),
     ["spec.offloadingConfig.metrics[0].source: must be prometheus for metric gpu"]),
    ("query threshold", metric(query="up"), ["spec.offloadingConfig.metrics[0].threshold: is required with query"]),
    ("query source", metric(query="up", threshold=1, source="kubernetes"),
     ["spec.offloadingConfig.metrics[0].source: must be prometheus or envoy for a query"]),
    ("hpa member missing", metric(type="Pods"), ["spec.offloadingConfig.metrics[0].pods: is required when type is Pods"]),
    ("hpa target type", metric(type="Pods", pods={"metric": {"name": "x"}, "target": {"type": "Value", "value": 1}}),
     ["spec.offloadingConfig.metrics[0].pods.target.type: must be AverageValue for a Pods metric"]),
    ("hpa target field", metric(type="Resource", resource={"name": "cpu", "target": {"type": "Utilization", "value": 1}}),
     ["spec.offloadingConfig.metrics[0].resource.target.averageUtilization: is required when type is Utilization",
      "spec.offloadingConfig.metrics[0].resource.target.value: must not be set when type is Utilization"]),
    ("hpa quantity", metric(type="External", external={"metric": {"name": "x"}, "target": {"type": "Value", "value": "2 Gi"}}),
     ['spec.offloadingConfig.metrics[0].external.target.value: must be a quantity such as 10, "500m" or "2Gi"']),
    ("hpa type", metric(type="Custom"),
     ["spec.offloadingConfig.metrics[0].type: must be one of: Resource, ContainerResource, Pods, Object, External"]),
    ("hpa mixed", metric(type="Resource", metric="gpu",
                         resource={"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 5}}),
     ["spec.offloadingConfig.metrics[0].metric: must not be set with type (HPA form)"]),
    ("reducer", metric(metric="gpu", target=1, reducer="median"),
     ["spec.offloadingConfig.metrics[0].reducer: must be one of: max, average, sum"]),
    ("duplicate metric", base(offloadingConfig={"metrics": [{"metric": "gpu", "target": 1}, {"metric": "gpu", "target": 2}],
                                                "remoteBackend": {"host": "remote.example.com"}}),
     ['spec.offloadingConfig.metrics[1]: duplicate metric name "gpu" (same as metrics[0]); set name']),
    ("infinite target", metric(metric="gpu", target=float("inf")),
     ["spec.offloadingConfig.metrics[0].target: must be a finite number"]),
]


@pytest.mark.parametrize(("doc", "expected"), [(d, e) for _, d, e in CASES], ids=[c[0] for c in CASES])
def test_rule(doc: dict[str, Any], expected: list[str]) -> None:
    assert errors(doc) == [P + e for e in expected]


def test_simplismart_health_check_defaults_and_spelling() -> None:
    # Simplismart's example healthcheck, as is: path and port, its defaults for the rest (10 s, 5 s).
    hc = ok(base(localBackend={"endpoints": ["10.0.0.1:8200"], "healthCheck": {"path": "/health", "port": 8200}}))
    check = local_health_check(hc)
    assert (check.port, check.effective_interval, check.effective_timeout, check.initial_delay_seconds) == (
        8200, 10.0, 5.0, None)
    full_form = {"path": "/health", "port": 8201, "initialDelaySeconds": 30, "periodSeconds": 20, "timeoutSeconds": 2}
    check = local_health_check(ok(base(localBackend={"endpoints": ["10.0.0.1:8200"], "healthCheck": full_form})))
    assert (check.effective_interval, check.effective_timeout, check.initial_delay_seconds) == (20.0, 2.0, 30)


def test_rps_must_be_non_negative_in_a_profile() -> None:
    doc = profiles(default={}, batch={"requestsPerSecond": -1})
    assert errors(doc) == [P + "spec.routing.profiles.batch.requestsPerSecond: must be >= 0"]


def test_several_errors_in_one_document_are_all_reported() -> None:
    doc = base(localBackend={"endpoints": ["x"]}, routing={"profiles": {"default": {"requestsPerSecond": -2}}})
    doc["metadata"]["name"] = "X"
    assert len(errors(doc)) == 3


def test_not_a_mapping() -> None:
    assert errors(["a"]) == ["t.yaml[0]: document must be a mapping (a ModelDeployment)"]


def test_full_document_and_derived_values() -> None:
    m = ok(full())
    rb = remote_backend(m)
    assert (rb.effective_port, rb.effective_sni, rb.effective_host_rewrite) == (8443, "remote.example.com", "api.example.com")
    assert rb.render_path_prefix(m.model, m.workspace) == "/ai/org/full-model"
    assert rb.headers_to_add == {"x-tenant": "ai"}
    metrics = offloading(m).metrics
    assert [x.form for x in metrics] == ["hpa", "hpa", "preset", "preset", "query"]
    assert [x.effective_threshold for x in metrics] == [0.5, 4.0, 2000.0, 90.0, 5.0]
    assert [x.effective_source for x in metrics] == ["prometheus", "prometheus", "envoy", "prometheus", "envoy"]
    assert [x.effective_reducer for x in metrics] == ["sum", "average", "max", "average", "max"]
    assert [x.display_name(i) for i, x in enumerate(metrics)] == [
        "external:my_metric", "pods:requests_waiting", "latency_p99", "kv_cache", "query[4]"]
    assert offloading(m).behavior.buffer_duration == 90.0
    assert m.spec.routing.strategy_for("batch") == "least-request"  # locked wins
    assert m.spec.timeouts.request == 300.0


def test_defaults() -> None:
    m = ok(base(offloadingConfig={"remoteBackend": {"host": "r.example.com", "scheme": "https"}}))
    b = offloading(m).behavior
    assert (b.percentage, b.buffer_duration, b.activation_duration, b.strategy, b.on_metric_error) == (
        100, 60.0, 0.0, "fixed", "hold")
    rb = remote_backend(m)
    assert (rb.effective_port, rb.effective_ca, rb.effective_sni, rb.effective_host_rewrite) == (
        443, "system", "r.example.com", "r.example.com")
    assert rb.outlier_detection.enabled and rb.outlier_detection.consecutive_5xx == 5
    assert m.spec.routing.effective_profiles().keys() == {"default"}
    assert m.spec.routing.strategy_for("default") == "least-request"
    assert m.spec.enabled is True and m.spec.environment == "production"


def test_strategy_specific_defaults() -> None:
    m = ok(profiles(default={"routingStrategy": "session-affinity"}, rag={"routingStrategy": "prefix-cache"}))
    assert m.spec.routing.profiles["default"].effective_session_header == "x-session-id"
    assert m.spec.routing.profiles["rag"].effective_prefix_length == 256
    assert offloading(ok(metric(metric="latency", target=5))).metrics[0].effective_percentile == 95.0


def test_models_are_immutable() -> None:
    m = ok(base())
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type is an implementation detail
        m.spec.model = "other"  # type: ignore[misc]


def test_relative_file_references_resolve_against_the_policy_file(tmp_path: Any) -> None:
    from spillover.policy.validate import validate_document

    doc = remote(scheme="https", ca="certs/ca.pem", authConfig={"type": "oauth", "oauthConfig": {
        "clientId": "c", "tokenUrl": "https://t", "clientSecretRef": {"file": "secret.txt"}}})
    m = validate_document(doc, base_dir=str(tmp_path))
    assert isinstance(m, ModelDeployment)
    assert remote_backend(m).ca == str(tmp_path / "certs/ca.pem")
    assert client_secret_ref(m).file == str(tmp_path / "secret.txt")
