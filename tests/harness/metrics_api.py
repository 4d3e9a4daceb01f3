"""An extension API server for tests that speaks the Kubernetes metrics APIs over TLS, as metrics-server and
a custom/external metrics adapter (prometheus-adapter, KEDA) do, served to a real kube-apiserver through its
aggregation layer.

- `metrics.k8s.io/v1beta1`: PodMetrics of the pods the test declares (`set_pod`), listed per namespace with
  label selectors, one by name, NodeMetrics (none);
- `custom.metrics.k8s.io/v1beta2`: per-pod metrics (`set_pod_metric`, `.../pods/*/<metric>`) and metrics of
  one object (`set_object_metric`, `.../<resource>/<name>/<metric>`, `.../metrics/<metric>` for a namespace);
- `external.metrics.k8s.io/v1beta1`: series with labels (`set_external_metric`);

each with its discovery documents (`/apis`, `/apis/<group>`, `/apis/<group>/<version>`). `groups` limits what
is served (a cluster without a custom metrics adapter, say).

Like a real extension server it authenticates the aggregator: TLS client certificates signed by the
front-proxy CA, for one of the allowed names, and the user of the request in `X-Remote-User` /
`X-Remote-Group` (`requests` records them). Authorization is the kube-apiserver's (it runs RBAC on the
aggregated groups before proxying). Errors are `Status` objects, as the API machinery writes them.
"""

from __future__ import annotations

import json
import re
import shlex
import ssl
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.harness.pki import write_ca_and_server_cert
from tests.harness.ports import free_port

__all__ = ["GROUPS", "MetricsApiServer", "Request", "selector_matches"]

RESOURCE, CUSTOM, EXTERNAL = "metrics.k8s.io", "custom.metrics.k8s.io", "external.metrics.k8s.io"
VERSIONS = {RESOURCE: "v1beta1", CUSTOM: "v1beta2", EXTERNAL: "v1beta1"}
GROUPS = tuple(VERSIONS)


# -- label selectors, as the API server parses them (k8s.io/apimachinery/pkg/labels) -----------------------

_TERM = re.compile(r"\s*(!?)\s*([A-Za-z0-9_./-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9_.-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$")


def _split(selector: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        terms.append(current)
    return terms


def selector_matches(labels: Mapping[str, str], selector: str) -> bool:
    """Whether `labels` satisfy `selector` (equality, set-based, existence). Raises ValueError on a bad one."""
    for term in _split(selector):
        m = _TERM.match(term)
        if not m:
            raise ValueError(f"unable to parse requirement: {term!r}")
        negate, key, op, value, set_op, values = m.groups()
        if op in ("=", "=="):
            ok = labels.get(key) == value
        elif op == "!=":
            ok = labels.get(key) != value
        elif set_op:
            members = {v.strip() for v in values.split(",") if v.strip()}
            ok = labels.get(key) in members if set_op == "in" else labels.get(key) not in members
        else:
            ok = key in labels
        if negate:
            if op or set_op:
                raise ValueError(f"unable to parse requirement: {term!r}")
            ok = not ok
        if not ok:
            return False
    return True


# -- the server -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    path: str
    query: dict[str, str]
    user: str | None
    groups: tuple[str, ...]
    client: str | None  # the common name of the client certificate


@dataclass
class _Pod:
    labels: dict[str, str]
    containers: dict[str, dict[str, str]]
    window: str = "15s"


@dataclass
class _State:
    pods: dict[tuple[str, str], _Pod] = field(default_factory=dict)
    pod_metrics: dict[tuple[str, str], dict[str, tuple[dict[str, str], str]]] = field(default_factory=dict)
    object_metrics: dict[tuple[str, str, str, str], str] = field(default_factory=dict)
    external: dict[tuple[str, str], list[tuple[dict[str, str], str]]] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        cert: Any = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        subject: Any = (cert or {}).get("subject", ())
        common_name = next((v for rdn in subject for k, v in rdn if k == "commonName"), None)
        if common_name not in api.allowed_names:
            self._send(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        user = self.headers.get("X-Remote-User")
        groups = tuple(self.headers.get_all("X-Remote-Group") or [])
        api.record(Request(unquote(url.path), query, user, groups, common_name))
        if user is None:
            self._send(401, _status(401, "Unauthorized", "no user in X-Remote-User"))
            return
        code, body = api.answer(url.path, query, self.headers.get("Accept", ""))
        self._send(code, body)

    def _send(self, code: int, body: Any) -> None:
        payload = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: MetricsApiServer, tls: ssl.SSLContext) -> None:
        self.api = api
        self.tls = tls
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        return self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError):
            return  # a client without the front-proxy certificate: refused at the TLS layer
        super().finish_request(request, client_address)


class MetricsApiServer:
    """``MetricsApiServer(workdir, front_proxy_ca, service="test-metrics", namespace="kube-system").start()``.

    Its certificate is for ``<service>.<namespace>.svc`` (what the aggregator checks) and 127.0.0.1;
    ``ca_bundle`` is the CA to put in the APIService. ``set_pod`` / ``set_pod_metric`` /
    ``set_object_metric`` / ``set_external_metric`` change what it serves, at once.
    """

    def __init__(
        self,
        workdir: Path,
        front_proxy_ca: Path,
        *,
        service: str = "test-metrics",
        namespace: str = "kube-system",
        allowed_names: Iterable[str] = ("front-proxy-client",),
        groups: Iterable[str] = GROUPS,
        host: str = "127.0.0.1",
    ) -> None:
        self.workdir = Path(workdir)
        self.front_proxy_ca = Path(front_proxy_ca)
        self.service, self.namespace = service, namespace
        self.allowed_names = frozenset(allowed_names)
        self.groups = tuple(groups)
        self.host = host
        self.port = 0
        self._state = _State()
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.ca_path = self.workdir / "metrics-ca.crt"

    @property
    def ca_bundle(self) -> bytes:
        return self.ca_path.read_bytes()

    @property
    def requests(self) -> list[Request]:
        with self._lock:
            return list(self._requests)

    def record(self, request: Request) -> None:
        with self._lock:
            self._requests.append(request)

    def start(self) -> MetricsApiServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cert, key = self.workdir / "metrics.crt", self.workdir / "metrics.key"
        names = [f"{self.service}.{self.namespace}.svc", self.host, "localhost"]
        write_ca_and_server_cert(self.ca_path, cert, key, names, self.service, "test-metrics-ca")
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        tls.verify_mode = ssl.CERT_REQUIRED
        tls.load_verify_locations(cafile=str(self.front_proxy_ca))
        self.port = free_port()
        self._server = _Server((self.host, self.port), self, tls)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- what it serves -------------------------------------------------------------------------------

    def set_pod(self, namespace: str, name: str, labels: Mapping[str, str],
                containers: Mapping[str, Mapping[str, str]], window: str = "15s") -> None:
        """The usage of one pod's containers, e.g. ``{"php-apache": {"cpu": "150m", "memory": "64Mi"}}``."""
        with self._lock:
            self._state.pods[(namespace, name)] = _Pod(dict(labels), {k: dict(v) for k, v in containers.items()}, window)

    def remove_pod(self, namespace: str, name: str) -> None:
        with self._lock:
            self._state.pods.pop((namespace, name), None)

    def set_pod_metric(self, namespace: str, metric: str, pod: str, labels: Mapping[str, str], value: str) -> None:
        with self._lock:
            self._state.pod_metrics.setdefault((namespace, metric), {})[pod] = (dict(labels), value)

    def set_object_metric(self, namespace: str, resource: str, name: str, metric: str, value: str) -> None:
        """`resource` as the API writes it: "deployments.apps", "services", "namespaces"."""
        with self._lock:
            self._state.object_metrics[(namespace, resource, name, metric)] = value

    def set_external_metric(self, namespace: str, metric: str, series: list[tuple[Mapping[str, str], str]]) -> None:
        with self._lock:
            self._state.external[(namespace, metric)] = [(dict(labels), value) for labels, value in series]

    # -- answering ------------------------------------------------------------------------------------

    def answer(self, path: str, query: Mapping[str, str], accept: str) -> tuple[int, Any]:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts in (["openapi", "v2"], ["openapi", "v3"]):
            # The aggregator merges every extension server's OpenAPI document; an empty one is enough.
            return 200, ({"swagger": "2.0", "info": {"title": "test-metrics", "version": "v0"}, "paths": {}}
                         if parts[1] == "v2" else {"paths": {}})
        if parts in (["apis"], []):
            # Legacy discovery only: the aggregator falls back to it when the answer is not the aggregated kind.
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [self._group(g) for g in self.groups]}
        if parts[0] != "apis" or len(parts) < 2 or parts[1] not in self.groups:
            return 404, _status(404, "NotFound", f"the server could not find the requested resource ({path})")
        group = parts[1]
        if len(parts) == 2:
            return 200, {"kind": "APIGroup", "apiVersion": "v1", **self._group(group)}
        if parts[2] != VERSIONS[group]:
            return 404, _status(404, "NotFound", f"{group}/{parts[2]} is not served")
        rest = parts[3:]
        try:
            with self._lock:
                if not rest:
                    return 200, self._resources(group)
                if group == RESOURCE:
                    return self._resource_metrics(rest, query)
                if group == CUSTOM:
                    return self._custom(rest, query)
                return self._external(rest, query)
        except ValueError as exc:
            return 400, _status(400, "BadRequest", str(exc))

    def _group(self, group: str) -> dict[str, Any]:
        gv = {"groupVersion": f"{group}/{VERSIONS[group]}", "version": VERSIONS[group]}
        return {"name": group, "versions": [gv], "preferredVersion": gv}

    def _resources(self, group: str) -> dict[str, Any]:
        if group == RESOURCE:
            resources = [
                {"name": "pods", "singularName": "", "namespaced": True, "kind": "PodMetrics", "verbs": ["get", "list"]},
                {"name": "nodes", "singularName": "", "namespaced": False, "kind": "NodeMetrics",
                 "verbs": ["get", "list"]},
            ]
        elif group == CUSTOM:
            names = sorted({f"pods/{m}" for (_, m) in self._state.pod_metrics}
                           | {f"{r}/{m}" for (_, r, _, m) in self._state.object_metrics})
            resources = [{"name": n, "singularName": "", "namespaced": True, "kind": "MetricValueList",
                          "verbs": ["get"]} for n in names]
        else:
            resources = [{"name": m, "singularName": "", "namespaced": True, "kind": "ExternalMetricValueList",
                          "verbs": ["get"]} for m in sorted({m for (_, m) in self._state.external})]
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{group}/{VERSIONS[group]}",
                "resources": resources}

    def _pod_metrics(self, namespace: str, name: str, pod: _Pod) -> dict[str, Any]:
        return {
            "kind": "PodMetrics", "apiVersion": f"{RESOURCE}/v1beta1",
            "metadata": {"name": name, "namespace": namespace, "labels": pod.labels, "creationTimestamp": _now()},
            "timestamp": _now(), "window": pod.window,
            "containers": [{"name": c, "usage": usage} for c, usage in pod.containers.items()],
        }

    def _resource_metrics(self, rest: list[str], query: Mapping[str, str]) -> tuple[int, Any]:
        selector = query.get("labelSelector", "")
        if rest == ["nodes"]:
            return 200, {"kind": "NodeMetricsList", "apiVersion": f"{RESOURCE}/v1beta1", "metadata": {}, "items": []}
        if rest == ["pods"]:
            namespace = None
        elif len(rest) >= 3 and rest[0] == "namespaces" and rest[2] == "pods":
            namespace = rest[1]
            if len(rest) == 4:
                pod = self._state.pods.get((namespace, rest[3]))
                if pod is None:
                    return 404, _status(404, "NotFound", f'podmetrics.metrics.k8s.io "{rest[3]}" not found')
                return 200, self._pod_metrics(namespace, rest[3], pod)
        else:
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        items = [self._pod_metrics(ns, name, pod) for (ns, name), pod in sorted(self._state.pods.items())
                 if (namespace is None or ns == namespace) and selector_matches(pod.labels, selector)]
        return 200, {"kind": "PodMetricsList", "apiVersion": f"{RESOURCE}/v1beta1", "metadata": {}, "items": items}

    def _value(self, namespace: str, kind: str, name: str, metric: str, value: str,
               api_version: str = "/v1") -> dict[str, Any]:
        return {"describedObject": {"kind": kind, "namespace": namespace, "name": name, "apiVersion": api_version},
                "metric": {"name": metric}, "timestamp": _now(), "windowSeconds": 60, "value": value}

    def _custom(self, rest: list[str], query: Mapping[str, str]) -> tuple[int, Any]:
        if len(rest) != 5 or rest[0] != "namespaces":
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        namespace, resource, name, metric = rest[1], rest[2], rest[3], rest[4]
        items: list[dict[str, Any]] = []
        if resource == "pods" and name == "*":
            selector = query.get("labelSelector", "")
            for pod, (labels, value) in sorted(self._state.pod_metrics.get((namespace, metric), {}).items()):
                if selector_matches(labels, selector):
                    items.append(self._value(namespace, "Pod", pod, metric, value))
            if (namespace, metric) not in self._state.pod_metrics:
                return 404, _status(404, "NotFound", f'the server could not find the metric {metric} for pods')
        elif resource == "metrics":  # a namespace's own metric
            found = self._state.object_metrics.get((namespace, "namespaces", namespace, name))
            if found is None:
                return 404, _status(404, "NotFound", f"the server could not find the metric {name} for namespace")
            items.append(self._value(namespace, "Namespace", namespace, name, found))
        else:
            found = self._state.object_metrics.get((namespace, resource, name, metric))
            if found is None:
                return 404, _status(404, "NotFound",
                                    f"the server could not find the metric {metric} for {resource} {name}")
            kind = resource.split(".", 1)[0].rstrip("s").capitalize()
            items.append(self._value(namespace, kind, name, metric, found))
        return 200, {"kind": "MetricValueList", "apiVersion": f"{CUSTOM}/v1beta2", "metadata": {}, "items": items}

    def _external(self, rest: list[str], query: Mapping[str, str]) -> tuple[int, Any]:
        if len(rest) != 3 or rest[0] != "namespaces":
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        namespace, metric = rest[1], rest[2]
        series = self._state.external.get((namespace, metric))
        if series is None:
            return 404, _status(404, "NotFound", f"the server could not find the external metric {shlex.quote(metric)}")
        selector = query.get("labelSelector", "")
        items = [{"metricName": metric, "metricLabels": labels, "timestamp": _now(), "value": value}
                 for labels, value in series if selector_matches(labels, selector)]
        return 200, {"kind": "ExternalMetricValueList", "apiVersion": f"{EXTERNAL}/v1beta1", "metadata": {},
                     "items": items}
