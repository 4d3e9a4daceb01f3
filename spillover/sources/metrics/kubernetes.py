"""The Kubernetes source: metrics from the cluster's metrics APIs, computed as the HPA does.

- `Resource` / `ContainerResource` (cpu, memory): PodMetrics of `metrics.k8s.io/v1beta1` (metrics-server)
  over the pods of the model's workload (`modelSourceRef`'s selector; else `serviceRef`'s; else the
  AIBrix label), with the pods themselves for readiness and requests;
- `Pods` / `Object`: `custom.metrics.k8s.io` (the version its discovery prefers, v1beta2 or v1beta1);
- `External`: `external.metrics.k8s.io/v1beta1`.

The arithmetic is `spillover.sources.metrics.hpa`'s. Whether the custom and external APIs are registered
is asked of discovery (re-asked every `discovery_interval`, so an adapter installed later is picked up);
when one is not, its metrics are error samples saying so.

Requests go through the `kubernetes` ApiClient the informers use: the same credentials (in-cluster
service-account token, kubeconfig tokens, client certificates, exec and auth-provider plugins), the
same TLS settings. The client is synchronous, so calls run in threads, at most `concurrency` at once.
The metrics APIs change slowly (metrics-server resolves 15 s by default), so one answer serves every
metric and model that asks for the same thing within `min_interval`; concurrent identical requests
are made once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from kubernetes.client import ApiClient

from spillover.sources.metrics.hpa import (
    milli_value,
    object_value,
    pod_metrics_of_custom,
    pod_metrics_of_resource,
    pods_average,
    resource_utilization,
    sum_external,
)
from spillover.sources.metrics.render import KubeQuery, PodTarget
from spillover.sources.metrics.sample import MetricError, Sample

__all__ = ["ApiError", "ApiReader", "KubernetesSource", "label_selector_string"]

RESOURCE_METRICS = "/apis/metrics.k8s.io/v1beta1"
CUSTOM_GROUP = "custom.metrics.k8s.io"
EXTERNAL_GROUP = "external.metrics.k8s.io"
_CUSTOM_VERSIONS = ("v1beta2", "v1beta1")
_WORKLOAD_PLURAL = {
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "ReplicaSet": "replicasets",
    "DaemonSet": "daemonsets",
}
_MESSAGE_LIMIT = 300


class ApiError(MetricError):
    """An answer of the API server other than 2xx; `status` is its HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def label_selector_string(selector: Mapping[str, Any]) -> str:
    """A metav1.LabelSelector ({matchLabels, matchExpressions}) in the API's labelSelector syntax."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for req in selector.get("matchExpressions") or []:
        key, op, values = req.get("key"), req.get("operator"), ",".join(req.get("values") or [])
        if op == "In":
            parts.append(f"{key} in ({values})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({values})")
        elif op == "Exists":
            parts.append(str(key))
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            raise MetricError(f"unknown label selector operator {op!r}")
    return ",".join(parts)


class ApiReader:
    """GETs of JSON through a `kubernetes` ApiClient (synchronous). Errors name the path and the
    status, never a credential."""

    def __init__(self, api: ApiClient, *, timeout: float = 5.0) -> None:
        self.api = api
        self.timeout = timeout

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        query = [(k, v) for k, v in (params or {}).items() if v != ""]
        try:
            method, url, headers, body, post = self.api.param_serialize(
                method="GET", resource_path=path, query_params=query,
                header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
            )
            rest = self.api.call_api(method, url, header_params=headers, body=body, post_params=post,
                                     _request_timeout=(self.timeout, self.timeout))
        except Exception as exc:  # urllib3 and TLS errors: no answer at all
            reason = getattr(exc, "reason", None) or exc
            raise ApiError(f"GET {path}: {type(exc).__name__}: {str(reason)[:_MESSAGE_LIMIT]}", 0) from None
        response = rest.response
        try:
            data = response.data
        finally:
            response.release_conn()
        if not 200 <= response.status <= 299:
            message = ""
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                message = str(json.loads(data).get("message") or "")
            text = f"GET {path} answered HTTP {response.status}" + (f": {message[:_MESSAGE_LIMIT]}" if message else "")
            raise ApiError(text, response.status)
        try:
            return json.loads(data)
        except ValueError:
            raise ApiError(f"GET {path}: the answer is not JSON", response.status) from None


@dataclass
class _Entry:
    at: float  # monotonic, for the cache
    wall: float  # when it was read, for the sample's age
    value: Any = None
    error: MetricError | None = None


@dataclass(frozen=True)
class _Target:
    namespace: str
    selector: str
    replicas: int | None  # the workload's status.replicas (Object/External AverageValue), when known
    what: str


class KubernetesSource:
    name = "kubernetes"

    def __init__(
        self,
        api: ApiClient | ApiReader,
        *,
        clock: Callable[[], float] = time.time,
        min_interval: float = 5.0,
        discovery_interval: float = 30.0,
        concurrency: int = 4,
    ) -> None:
        self.reader = api if isinstance(api, ApiReader) else ApiReader(api)
        self._clock = clock
        self.min_interval = min_interval
        self.discovery_interval = discovery_interval
        self._cache: dict[tuple[str, tuple[tuple[str, str], ...]], _Entry] = {}
        self._inflight: dict[tuple[str, tuple[tuple[str, str], ...]], asyncio.Future[_Entry]] = {}
        self._limit = asyncio.Semaphore(max(1, concurrency))
        self.requests = 0  # GETs sent, for tests and metrics

    async def close(self) -> None:
        """The ApiClient belongs to whoever made it (the informers share it): nothing to close here."""
        self._cache.clear()

    # -- reading, cached ----------------------------------------------------------------------------

    async def _get(self, path: str, params: Mapping[str, str] | None = None, ttl: float | None = None) -> tuple[Any, float]:
        """(JSON, wall time it was read); a cached answer (or error) younger than `ttl` is reused."""
        key = (path, tuple(sorted((params or {}).items())))
        ttl = self.min_interval if ttl is None else ttl
        now = time.monotonic()
        entry = self._cache.get(key)
        if entry is None or now - entry.at >= ttl:
            pending = self._inflight.get(key)
            if pending is None:
                pending = asyncio.get_running_loop().create_future()
                self._inflight[key] = pending
                try:
                    entry = await self._fetch(path, params)
                    self._cache[key] = entry
                    pending.set_result(entry)
                except BaseException as exc:
                    if isinstance(exc, asyncio.CancelledError):
                        pending.cancel()
                    else:
                        pending.set_exception(exc)
                        pending.exception()  # retrieved: no "never retrieved" warning when nobody else waits
                    raise
                finally:
                    del self._inflight[key]
            else:
                entry = await asyncio.shield(pending)
        if entry.error is not None:
            raise entry.error
        return entry.value, entry.wall

    async def _fetch(self, path: str, params: Mapping[str, str] | None) -> _Entry:
        async with self._limit:
            wall = self._clock()
            self.requests += 1
            try:
                value = await asyncio.to_thread(self.reader.get, path, params)
            except MetricError as exc:
                return _Entry(time.monotonic(), wall, error=exc)
        return _Entry(time.monotonic(), wall, value=value)

    # -- what the metrics are about ----------------------------------------------------------------

    async def _target(self, target: PodTarget) -> tuple[_Target, float]:
        ns = target.namespace
        quoted = quote(ns, safe="")
        if target.workload is not None:
            ref = target.workload
            plural = _WORKLOAD_PLURAL.get(ref.kind)
            if plural is None:
                raise MetricError(f"modelSourceRef kind {ref.kind!r} is not supported")
            obj, at = await self._get(f"/apis/apps/v1/namespaces/{quoted}/{plural}/{quote(ref.name, safe='')}")
            selector = label_selector_string((obj.get("spec") or {}).get("selector") or {})
            replicas = (obj.get("status") or {}).get("replicas")
            what = f"{ref.kind} {ns}/{ref.name}"
            if not selector:
                raise MetricError(f"{what} has an empty selector")
            return _Target(ns, selector, replicas if isinstance(replicas, int) else 0, what), at
        if target.service is not None:
            obj, at = await self._get(f"/api/v1/namespaces/{quoted}/services/{quote(target.service.name, safe='')}")
            selector = label_selector_string({"matchLabels": (obj.get("spec") or {}).get("selector") or {}})
            what = f"Service {ns}/{target.service.name}"
            if not selector:
                raise MetricError(f"{what} has an empty selector")
            return _Target(ns, selector, None, what), at
        if target.label_selector:
            return _Target(ns, target.label_selector, None, f"pods {target.label_selector}"), self._clock()
        raise MetricError("no pods to select")

    async def _pods(self, target: _Target) -> tuple[list[dict[str, Any]], float]:
        doc, at = await self._get(f"/api/v1/namespaces/{quote(target.namespace, safe='')}/pods",
                                  {"labelSelector": target.selector})
        return list(doc.get("items") or []), at

    async def _replicas(self, target: _Target) -> int:
        """Object/External AverageValue divide by the scale target's replicas (the HPA's statusReplicas);
        without a workload, the pods that are Running and Ready."""
        if target.replicas is not None:
            return target.replicas
        pods, _ = await self._pods(target)
        return sum(
            1 for p in pods
            if (p.get("status") or {}).get("phase") == "Running"
            and any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (p.get("status") or {}).get("conditions") or [])
        )

    async def _group_version(self, group: str, known: tuple[str, ...]) -> str:
        """`/apis/<group>/<version>` of a metrics API, asked of discovery; MetricError when not registered."""
        try:
            doc, _ = await self._get(f"/apis/{group}", ttl=self.discovery_interval)
        except ApiError as exc:
            if exc.status == 404:
                raise MetricError(
                    f"{group} is not registered in this cluster (no APIService serves it): install a metrics "
                    "adapter for it, or read this metric with source: prometheus"
                ) from None
            raise
        versions = [v.get("version") for v in doc.get("versions") or []]
        preferred = (doc.get("preferredVersion") or {}).get("version")
        for version in ([preferred] if preferred in known else []) + [v for v in known if v in versions]:
            return f"/apis/{group}/{version}"
        raise MetricError(f"{group} serves none of the versions spillover reads ({', '.join(known)})")

    async def _resource_of(self, api_version: str | None, kind: str) -> str:
        """The qualified resource ("deployments.apps", "services") of a kind, from discovery."""
        version = api_version or "v1"
        path = f"/apis/{version}" if "/" in version else f"/api/{version}"
        doc, _ = await self._get(path, ttl=self.discovery_interval * 10)
        for resource in doc.get("resources") or []:
            name = str(resource.get("name") or "")
            if resource.get("kind") == kind and "/" not in name:
                group = version.split("/", 1)[0] if "/" in version else ""
                return f"{name}.{group}" if group else name
        raise MetricError(f"{version} has no resource of kind {kind}")

    # -- the metrics ----------------------------------------------------------------------------------

    async def sample(self, query: KubeQuery) -> Sample:
        try:
            value, at = await self._value(query)
        except MetricError as exc:
            return Sample(None, self._clock(), f"kubernetes: {exc}")
        return Sample(value, at)

    async def _value(self, query: KubeQuery) -> tuple[float, float]:
        if query.kind == "External":
            return await self._external(query)
        target, at = await self._target(query.pods)
        if query.kind == "Object":
            return await self._object(query, target, at)
        pods, pods_at = await self._pods(target)
        if not pods:
            raise MetricError(f"no pods match {target.selector!r} in namespace {target.namespace} ({target.what})")
        ns = quote(target.namespace, safe="")
        if query.kind == "Pods":
            base = await self._group_version(CUSTOM_GROUP, _CUSTOM_VERSIONS)
            doc, metrics_at = await self._get(
                f"{base}/namespaces/{ns}/pods/*/{quote(query.resource, safe='')}",
                {"labelSelector": target.selector, "metricLabelSelector": query.metric_selector},
            )
            items = doc.get("items") or []
            if not items:
                raise MetricError("no metrics returned from custom metrics API")
            value = pods_average(pods, pod_metrics_of_custom(items), "", self._clock()) / 1000
            return value, min(at, pods_at, metrics_at)
        doc, metrics_at = await self._get(f"{RESOURCE_METRICS}/namespaces/{ns}/pods", {"labelSelector": target.selector})
        items = doc.get("items") or []
        if not items:
            raise MetricError("no metrics returned from resource metrics API")
        metrics = pod_metrics_of_resource(items, query.resource, query.container)
        now = self._clock()
        if query.target_type == "Utilization":
            value = float(resource_utilization(
                pods, metrics, query.resource, now, container=query.container, relative_to=query.relative_to
            ))
        else:
            value = pods_average(pods, metrics, query.resource, now) / 1000
        return value, min(at, pods_at, metrics_at)

    async def _object(self, query: KubeQuery, target: _Target, at: float) -> tuple[float, float]:
        obj = query.described_object
        if obj is None:
            raise MetricError("an Object metric needs describedObject")
        base = await self._group_version(CUSTOM_GROUP, _CUSTOM_VERSIONS)
        ns = quote(target.namespace, safe="")
        metric = quote(query.resource, safe="")
        if obj.kind == "Namespace" and (obj.api_version or "v1") == "v1":
            path = f"{base}/namespaces/{ns}/metrics/{metric}"
        else:
            resource = await self._resource_of(obj.api_version, obj.kind)
            path = f"{base}/namespaces/{ns}/{quote(resource, safe='')}/{quote(obj.name, safe='')}/{metric}"
        doc, metrics_at = await self._get(path, {"metricLabelSelector": query.metric_selector})
        items = doc.get("items") or []
        if len(items) != 1:
            raise MetricError(f"the custom metrics API returned {len(items)} results when asked for exactly one")
        try:
            raw = milli_value(items[0].get("value"))
        except ValueError as exc:
            raise MetricError(f"{obj.kind} {obj.name}: {exc}") from None
        replicas = await self._replicas(target) if query.target_type == "AverageValue" else None
        return object_value(raw, query.target_type, replicas) / 1000, min(at, metrics_at)

    async def _external(self, query: KubeQuery) -> tuple[float, float]:
        base = await self._group_version(EXTERNAL_GROUP, ("v1beta1",))
        ns = quote(query.pods.namespace, safe="")
        doc, at = await self._get(
            f"{base}/namespaces/{ns}/{quote(query.resource, safe='')}", {"labelSelector": query.metric_selector}
        )
        items = doc.get("items") or []
        if not items:
            raise MetricError("no metrics returned from external metrics API")
        replicas = None
        if query.target_type == "AverageValue":
            target, target_at = await self._target(query.pods)
            replicas, at = await self._replicas(target), min(at, target_at)
        return sum_external(items, query.target_type, replicas) / 1000, at
