"""The Kubernetes source: cpu/memory of the model's pods from the resource metrics API.

Two parts:

- `resource_value(...)`: a pure computation over the JSON of a core/v1 PodList and a
  metrics.k8s.io/v1beta1 PodMetricsList, with HPA semantics:
    Utilization   100 * sum(usage of the pods' containers) / sum(their requests)   (percent)
    AverageValue  sum(usage) / number of pods                                       (cores, bytes)
    Value         sum(usage)
  Only running, non-terminating pods that have metrics count (HPA ignores pods without metrics).
  A counted pod whose container has no request for the resource makes utilisation undefined: the
  metric fails with an error naming the pod and container (HPA does the same: "missing request").
- `KubernetesClient`: a thin async client over the REST API with aiohttp; credentials from the
  in-cluster service account or a kubeconfig (token, client certificate, CA; no exec plugins).
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import re
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import yaml  # type: ignore[import-untyped]

from spillover.metrics.render import KubeQuery, PodTarget
from spillover.metrics.sample import MetricError, Sample

__all__ = [
    "KubernetesClient",
    "KubernetesSource",
    "ResourceUsage",
    "label_selector_string",
    "parse_quantity",
    "resource_usage",
    "resource_value",
]

# --- quantities ---------------------------------------------------------------------------------

_SUFFIX = {
    "": Decimal(1), "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
    "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    "Pi": Decimal(2**50), "Ei": Decimal(2**60),
}


_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))(?:(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)|[eE]([+-]?[0-9]+))?$"
)


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes resource.Quantity ("250m", "1Gi", "500Mi", "1e3", "12345n", "3u") as a float.

    Grammar (k8s.io/apimachinery resource.Quantity): sign? digits[.digits] then either a binary
    suffix (Ki..Ei), a decimal suffix (n u m k M G T P E) or a decimal exponent (e/E<int>);
    "1E" is one exa, "1E3" a thousand.
    """
    if isinstance(value, bool):
        raise ValueError(f"not a quantity: {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite quantity: {value!r}")
        return float(value)
    text = str(value).strip()
    m = _QUANTITY.match(text)
    if not m:
        raise ValueError(f"not a quantity: {text!r}")
    number, suffix, exponent = m.groups()
    try:
        result = Decimal(number) * (_SUFFIX[suffix or ""] if exponent is None else Decimal(10) ** int(exponent))
        out = float(result)
    except (InvalidOperation, OverflowError):
        raise ValueError(f"not a quantity: {text!r}") from None
    if not math.isfinite(out):
        raise ValueError(f"not a finite quantity: {text!r}")
    return out


# --- the computation ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResourceUsage:
    usage: float  # sum over the counted pods' containers (cores / bytes)
    requests: float | None  # sum of their requests (or limits); None when not needed
    pods: int  # pods counted (running, with metrics)


def _counted_pods(pods: list[dict[str, Any]], metrics: list[dict[str, Any]]) -> list[tuple[dict, dict]]:
    by_name = {m.get("metadata", {}).get("name"): m for m in metrics}
    out = []
    for pod in pods:
        meta = pod.get("metadata", {})
        if meta.get("deletionTimestamp") or pod.get("status", {}).get("phase") != "Running":
            continue
        m = by_name.get(meta.get("name"))
        if m is not None:
            out.append((pod, m))
    return out


def resource_usage(
    pods: list[dict[str, Any]],
    pod_metrics: list[dict[str, Any]],
    resource: str,
    *,
    container: str | None = None,
    relative_to: str | None = "requests",
) -> ResourceUsage:
    """Sum usage (and requests or limits, unless `relative_to` is None) over the counted pods.

    `pods` are core/v1 Pod objects, `pod_metrics` metrics.k8s.io/v1beta1 PodMetrics objects.
    Raises MetricError when no pod can be counted or a counted container lacks the request/limit.
    """
    counted = _counted_pods(pods, pod_metrics)
    if not counted:
        running = sum(1 for p in pods if p.get("status", {}).get("phase") == "Running")
        raise MetricError(f"no metrics for any of the {running} running pods ({len(pods)} pods selected)")
    usage = 0.0
    requests = 0.0
    for pod, metrics in counted:
        pod_name = pod["metadata"].get("name", "?")
        found = False
        for c in metrics.get("containers", []):
            if container is not None and c.get("name") != container:
                continue
            found = True
            raw = (c.get("usage") or {}).get(resource)
            if raw is None:
                raise MetricError(f"pod {pod_name} container {c.get('name')}: no {resource} usage in metrics")
            try:
                usage += parse_quantity(raw)
            except ValueError as exc:
                raise MetricError(f"pod {pod_name}: {exc}") from None
        if container is not None and not found:
            raise MetricError(f"pod {pod_name}: no metrics for container {container}")
        if relative_to is None:
            continue
        for c in pod.get("spec", {}).get("containers", []):
            if container is not None and c.get("name") != container:
                continue
            raw = ((c.get("resources") or {}).get(relative_to) or {}).get(resource)
            if raw is None:
                what = "request" if relative_to == "requests" else "limit"
                raise MetricError(
                    f"pod {pod_name} container {c.get('name')} has no {resource} {what}: utilization is undefined"
                )
            try:
                requests += parse_quantity(raw)
            except ValueError as exc:
                raise MetricError(f"pod {pod_name}: {exc}") from None
    if relative_to is not None and requests <= 0:
        raise MetricError(f"the {resource} {relative_to} of the pods sum to 0: utilization is undefined")
    return ResourceUsage(usage, requests if relative_to is not None else None, len(counted))


def resource_value(
    pods: list[dict[str, Any]],
    pod_metrics: list[dict[str, Any]],
    resource: str,
    target_type: str,
    *,
    container: str | None = None,
    relative_to: str = "requests",
) -> float:
    """The metric's value with HPA semantics (see the module docstring)."""
    if target_type == "Utilization":
        u = resource_usage(pods, pod_metrics, resource, container=container, relative_to=relative_to)
        assert u.requests is not None
        return 100.0 * u.usage / u.requests
    u = resource_usage(pods, pod_metrics, resource, container=container, relative_to=None)
    if target_type == "AverageValue":
        return u.usage / u.pods
    if target_type == "Value":
        return u.usage
    raise ValueError(f"unknown target type {target_type!r}")


def label_selector_string(selector: Mapping[str, Any]) -> str:
    """A metav1.LabelSelector ({matchLabels, matchExpressions}) in the API's labelSelector syntax."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for req in selector.get("matchExpressions") or []:
        key, op, values = req["key"], req["operator"], ",".join(req.get("values") or [])
        if op == "In":
            parts.append(f"{key} in ({values})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({values})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
        else:
            raise ValueError(f"unknown label selector operator {op!r}")
    return ",".join(parts)


# --- the client ---------------------------------------------------------------------------------

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_WORKLOAD_PLURAL = {
    "Deployment": "deployments",
    "StatefulSet": "statefulsets",
    "ReplicaSet": "replicasets",
    "DaemonSet": "daemonsets",
}


class KubernetesClient:
    """GETs against the Kubernetes API server with a bearer token and/or a client certificate.

    `token_file` is re-read on every request (projected service account tokens rotate).
    """

    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        token_file: str | Path | None = None,
        ssl_context: ssl.SSLContext | bool | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.server = server.rstrip("/")
        self._token = token
        self._token_file = Path(token_file) if token_file else None
        self._ssl = ssl_context
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"KubernetesClient(server={self.server!r})"

    @classmethod
    def in_cluster(cls, *, timeout: float = 5.0, sa_dir: Path = SERVICE_ACCOUNT_DIR) -> KubernetesClient:
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise RuntimeError("not in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set")
        host = f"[{host}]" if ":" in host else host
        ctx = ssl.create_default_context(cafile=str(sa_dir / "ca.crt"))
        return cls(f"https://{host}:{port}", token_file=sa_dir / "token", ssl_context=ctx, timeout=timeout)

    @classmethod
    def from_kubeconfig(
        cls, path: str | Path | None = None, context: str | None = None, *, timeout: float = 5.0
    ) -> KubernetesClient:
        path = Path(path or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or Path.home() / ".kube/config")
        config = yaml.safe_load(path.read_text()) or {}
        base = path.parent

        def named(section: str, name: str) -> dict[str, Any]:
            for item in config.get(section) or []:
                if item.get("name") == name:
                    return item.get(section[:-1]) or {}
            raise RuntimeError(f"kubeconfig {path}: no {section[:-1]} named {name!r}")

        ctx = named("contexts", context or config.get("current-context") or "")
        cluster, user = named("clusters", ctx.get("cluster", "")), named("users", ctx.get("user", ""))
        if user.get("exec") or user.get("auth-provider"):
            raise RuntimeError(f"kubeconfig {path}: exec and auth-provider credentials are not supported")
        server = cluster.get("server")
        if not server:
            raise RuntimeError(f"kubeconfig {path}: cluster has no server")
        ssl_ctx: ssl.SSLContext | bool | None = None
        if server.startswith("https://"):
            if cluster.get("insecure-skip-tls-verify"):
                ssl_ctx = False
            else:
                ssl_ctx = ssl.create_default_context()
                if cluster.get("certificate-authority-data"):
                    ssl_ctx.load_verify_locations(
                        cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
                    )
                elif cluster.get("certificate-authority"):
                    ssl_ctx.load_verify_locations(cafile=str(base / cluster["certificate-authority"]))
                cert, key = _materialise(user, "client-certificate", base), _materialise(user, "client-key", base)
                if cert and key:
                    ssl_ctx.load_cert_chain(cert, key)
        token_file = base / user["tokenFile"] if user.get("tokenFile") else None
        return cls(server, token=user.get("token"), token_file=token_file, ssl_context=ssl_ctx, timeout=timeout)

    @classmethod
    def auto(cls, *, timeout: float = 5.0) -> KubernetesClient:
        """In-cluster credentials when running in a pod, else the kubeconfig."""
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return cls.in_cluster(timeout=timeout)
        return cls.from_kubeconfig(timeout=timeout)

    def _bearer(self) -> str | None:
        if self._token_file is not None:
            return self._token_file.read_text().strip()
        return self._token

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """JSON of a GET; raises MetricError naming the path and status (never the token)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        headers = {"Accept": "application/json"}
        token = self._bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            async with self._session.get(
                self.server + path,
                params=dict(params or {}),
                headers=headers,
                ssl=self._ssl if self._ssl is not None else True,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as resp:
                if resp.status >= 400:
                    reason = ""
                    with contextlib.suppress(Exception):  # without a Status body the code says it all
                        reason = str((await resp.json(content_type=None)).get("message", ""))[:200]
                    raise MetricError(f"GET {path} answered HTTP {resp.status}" + (f": {reason}" if reason else ""))
                return await resp.json(content_type=None)
        except TimeoutError:
            raise MetricError(f"GET {path}: timed out after {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise MetricError(f"GET {path}: {type(exc).__name__}: {exc}") from None
        except ValueError:
            raise MetricError(f"GET {path}: answer is not JSON") from None

    async def label_selector(self, target: PodTarget) -> str:
        if target.label_selector is not None:
            return target.label_selector
        ns = quote(target.namespace, safe="")
        if target.workload is not None:
            ref = target.workload
            plural = _WORKLOAD_PLURAL.get(ref.kind)
            if plural is None:
                raise MetricError(f"modelSourceRef kind {ref.kind!r} is not supported")
            obj = await self.get(f"/apis/apps/v1/namespaces/{ns}/{plural}/{quote(ref.name, safe='')}")
            selector = (obj.get("spec") or {}).get("selector") or {}
            text = label_selector_string(selector)
            what = f"{ref.kind} {target.namespace}/{ref.name}"
        elif target.service is not None:
            obj = await self.get(f"/api/v1/namespaces/{ns}/services/{quote(target.service.name, safe='')}")
            text = label_selector_string({"matchLabels": (obj.get("spec") or {}).get("selector") or {}})
            what = f"Service {target.namespace}/{target.service.name}"
        else:
            raise MetricError("no pods to select")
        if not text:
            raise MetricError(f"{what} has an empty selector")
        return text

    async def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        doc = await self.get(f"/api/v1/namespaces/{quote(namespace, safe='')}/pods", {"labelSelector": selector})
        return list(doc.get("items") or [])

    async def pod_metrics(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        doc = await self.get(
            f"/apis/metrics.k8s.io/v1beta1/namespaces/{quote(namespace, safe='')}/pods", {"labelSelector": selector}
        )
        return list(doc.get("items") or [])


def _materialise(user: Mapping[str, Any], key: str, base: Path) -> str | None:
    """A kubeconfig file reference, or its inline *-data written to a private temp file."""
    if user.get(f"{key}-data"):
        fd, name = tempfile.mkstemp(prefix="spillover-kube-", suffix=".pem")
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(user[f"{key}-data"]))
        return name
    if user.get(key):
        return str(base / user[key])
    return None


class KubernetesSource:
    name = "kubernetes"

    def __init__(self, client: KubernetesClient, *, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self._clock = clock

    async def close(self) -> None:
        await self.client.close()

    async def sample(self, query: KubeQuery) -> Sample:
        at = self._clock()
        if query.unsupported:
            return Sample(None, at, f"kubernetes: {query.unsupported}")
        try:
            selector = await self.client.label_selector(query.pods)
            ns = query.pods.namespace
            pods = await self.client.pods(ns, selector)
            if not pods:
                raise MetricError(f"no pods match {selector!r} in namespace {ns}")
            metrics = await self.client.pod_metrics(ns, selector)
            value = resource_value(
                pods, metrics, query.resource, query.target_type,
                container=query.container, relative_to=query.relative_to,
            )
        except MetricError as exc:
            return Sample(None, at, f"kubernetes: {exc}")
        return Sample(value, at)
