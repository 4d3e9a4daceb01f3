"""Reading the destination clusters: one connection per kubeconfig, informers on the copies, a probe.

`DestinationSource.want(claims, kubeconfigs)` (on every new desired state) opens what the claims need and
closes what they no longer do:

- a connection per distinct kubeconfig (parsed by `kubeconfig.parse_kubeconfig`, refused when it asks for
  anything but inline credentials), with its own ApiClient;
- per namespace used on that cluster, two informers (list+watch, label `app.kubernetes.io/managed-by=
  spillover`): the copies' Deployments and Services. Drift (a copy edited or deleted by hand) arrives as
  watch events, not by polling;
- a probe thread per connection (`GET /version` every `probe_interval`, bounded by `probe_timeout`):
  a cluster that has not answered for `unreachable_after` seconds is *unreachable*, and so is one whose
  informers are failing (credentials refused, no permission) or have not listed yet. An unreachable
  cluster's copies are observed as not reachable: no traffic goes to a copy that cannot be seen.

`observe(claim, location)` returns the `CopyObservation` of one copy; `on_change` is called (from worker
threads: keep it short) when an informer sees a change or a cluster's reachability changes. When a
cluster comes back, the informers' watches are restarted: a watch opened before an outage may hang on a
dead connection until its read timeout. Nothing here writes to a destination cluster (that is the
controller's actuator, on the leader); nothing here logs a kubeconfig or a token.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient
from pydantic import SecretStr

from spillover.policy.destination import MANAGED_BY, MANAGED_BY_LABEL
from spillover.sources.destination.kubeconfig import (
    ClusterCredentials,
    KubeconfigError,
    api_client,
    parse_kubeconfig,
)
from spillover.sources.destination.observe import CopyObservation, observe_copy
from spillover.sources.kube.destinations import CopyClaim, CopyLocation, SecretKey
from spillover.sources.kube.informer import Informer
from spillover.sources.kube.kinds import DEPLOYMENTS, SERVICES

log = logging.getLogger("spillover.sources.destination")

__all__ = ["DestinationConnection", "DestinationOptions", "DestinationSource", "describe_error"]

SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
NOT_PROBED = "not probed yet"


@dataclass(frozen=True)
class DestinationOptions:
    probe_interval: float = 2.0
    probe_timeout: float = 2.0
    unreachable_after: float = 6.0
    request_timeout: float = 5.0  # every other call to a destination cluster (the actuator's)
    watch_timeout: float = 60.0
    backoff_max: float = 5.0
    # Bounds: each cluster is a client, a probe thread and two watches per namespace; whoever may create
    # ModelDeployments and Secrets must not be able to make spillover open thousands.
    max_clusters: int = 32
    max_namespaces: int = 64  # per cluster


def describe_error(error: BaseException) -> str:
    """What went wrong talking to a destination cluster, in a few words: the API server's message for an
    HTTP error, the kind of failure for a transport error (never the URL: it is the kubeconfig's)."""
    import json

    from kubernetes.client.exceptions import ApiException
    from urllib3 import exceptions as http

    if isinstance(error, ApiException):
        message = ""
        if error.body:
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                message = str(json.loads(error.body).get("message", ""))[:300]
        return f"HTTP {error.status} {error.reason or ''}".strip() + (f": {message}" if message else "")
    cause: BaseException = error
    if isinstance(error, http.MaxRetryError) and error.reason is not None:
        cause = error.reason
    for kind, words in (
        # NewConnectionError is a ConnectTimeoutError in urllib3: the refusal first.
        (http.NewConnectionError, "cannot connect (refused or no route)"),
        (http.ConnectTimeoutError, "connecting timed out"),
        (http.ReadTimeoutError, "no answer in time (read timed out)"),
        (http.SSLError, "TLS failed (is certificate-authority-data the destination's CA?)"),
        (http.ProtocolError, "the connection broke"),
        (TimeoutError, "timed out"),
        (ConnectionError, "cannot connect"),
    ):
        if isinstance(cause, kind):
            return words
    if isinstance(error, PermissionError):
        return str(error)
    return type(cause).__name__


class DestinationConnection:
    """One destination cluster (one kubeconfig): its ApiClient, its informers per namespace, its probe."""

    def __init__(
        self, credentials: ClusterCredentials, label: str, options: DestinationOptions,
        on_change: Callable[[], None], clock: Callable[[], float],
    ) -> None:
        self.credentials = credentials
        self.label = label  # "kubeconfig from Secret ns/name": how messages name the cluster
        self.options = options
        self.api: ApiClient = api_client(credentials)
        self._on_change = on_change
        self._clock = clock
        self._informers: dict[str, tuple[Informer, Informer]] = {}
        self._lock = threading.Lock()
        self._last_ok: float | None = None
        self._probe_error = NOT_PROBED
        self._reachable = False
        self._stopping = threading.Event()
        self._release_on_exit = False
        self._thread = threading.Thread(target=self._probe_loop, name=f"probe {label}", daemon=True)
        self._thread.start()

    # -- reachability -----------------------------------------------------------------------------------

    def _probe_once(self) -> None:
        timeout = self.options.probe_timeout
        try:
            method, url, headers, body, post = self.api.param_serialize(
                method="GET", resource_path="/version", header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
            )
            response = self.api.call_api(method, url, header_params=headers, body=body, post_params=post,
                                         _request_timeout=(timeout, timeout)).response
            try:
                status = response.status
                response.data  # noqa: B018 -- read the body: the connection goes back to the pool
            finally:
                response.release_conn()
            if status == 401:
                raise PermissionError("the credentials were refused (HTTP 401)")
            if not 200 <= status <= 299:
                raise RuntimeError(f"HTTP {status}")
        except Exception as error:
            self._probe_error = describe_error(error)
            if isinstance(error, PermissionError):
                self._last_ok = None  # refused credentials: unreachable now, not after a grace period
            # Pooled connections may be dead (a partition drops them silently): the next call, ours or an
            # informer's, opens a fresh one rather than waiting out its read timeout on a dead one.
            self.reset_connections()
        else:
            self._last_ok = self._clock()
            self._probe_error = ""
        self._update()

    def _probe_loop(self) -> None:
        try:
            while not self._stopping.is_set():
                self._probe_once()
                self._stopping.wait(self.options.probe_interval)
        finally:
            if self._release_on_exit:
                with contextlib.suppress(Exception):
                    self.api.close()  # also removes the client certificate's files

    def _update(self) -> None:
        reachable = self.probe_ok
        if reachable == self._reachable:
            return
        self._reachable = reachable
        if reachable:
            log.info("destination cluster (%s) reachable", self.label)
            # A watch opened before the outage may hang on a dead connection: start them afresh.
            for deployments, services in self._snapshot():
                deployments.restart_watch()
                services.restart_watch()
        else:
            log.warning("destination cluster (%s) unreachable: %s", self.label, self._probe_error)
        self._on_change()

    def reset_connections(self) -> None:
        with contextlib.suppress(Exception):
            self.api.rest_client.pool_manager.clear()

    @property
    def probe_ok(self) -> bool:
        last = self._last_ok
        return last is not None and self._clock() - last <= self.options.unreachable_after

    def health(self, namespace: str) -> tuple[bool, str, bool]:
        """(whether the copies in `namespace` can be seen now, why not, whether that is only because nothing
        has been heard yet: a first probe or a first list still under way, nothing failed)."""
        if self._last_ok is None and self._probe_error == NOT_PROBED:
            return False, f"connecting to the destination cluster ({self.label})", True
        if not self.probe_ok:
            why = self._probe_error or "no answer"
            return False, f"destination cluster unreachable ({self.label}): {why}", False
        informers = self._informers.get(namespace)
        if informers is None:
            return False, f"not watching namespace {namespace} on the destination cluster yet", True
        for informer in informers:
            if informer.stats.failing:
                return False, (f"cannot read {informer.resource} in {namespace} on the destination: "
                               f"{informer.stats.failing}"), False
            if not informer.synced.is_set():
                return False, f"listing {informer.resource} in {namespace} on the destination", True
        return True, "", False

    # -- informers ------------------------------------------------------------------------------------------

    def _snapshot(self) -> list[tuple[Informer, Informer]]:
        with self._lock:
            return list(self._informers.values())

    def watch(self, namespaces: set[str]) -> None:
        stop: list[Informer] = []
        with self._lock:
            for namespace in set(self._informers) - namespaces:
                stop.extend(self._informers.pop(namespace))
            for namespace in sorted(namespaces - set(self._informers)):
                pair = tuple(
                    Informer(
                        self.api, resource, namespace=namespace, label_selector=SELECTOR,
                        on_event=lambda *_: self._on_change(), on_sync=self._on_change,
                        watch_timeout=self.options.watch_timeout, read_timeout_slack=10.0,
                        connect_timeout=self.options.request_timeout, backoff_initial=0.5,
                        backoff_max=self.options.backoff_max, name=f"{resource} in {namespace} ({self.label})",
                        describe=describe_error,
                    )
                    for resource in (DEPLOYMENTS, SERVICES)
                )
                self._informers[namespace] = (pair[0], pair[1])
                for informer in pair:
                    informer.start()
        for informer in stop:
            informer.stop(timeout=0)

    def objects(self, location: CopyLocation) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        informers = self._informers.get(location.namespace)
        if informers is None:
            return None, None
        return informers[0].get(location.namespace, location.name), informers[1].get(location.namespace, location.name)

    def close(self, wait: bool = True) -> None:
        """Stops the informers and the probe; `wait=False` (from the event loop) does not join them, and the
        probe thread closes the client when it ends."""
        self._release_on_exit = not wait
        self._stopping.set()
        informers = [i for pair in self._snapshot() for i in pair]
        for informer in informers:
            informer.stop(timeout=0)
        if not wait:
            return
        for informer in informers:
            informer.stop(timeout=2.0)
        self._thread.join(timeout=self.options.probe_timeout * 2 + 1)
        with contextlib.suppress(Exception):
            self.api.close()


class DestinationSource:
    def __init__(self, options: DestinationOptions | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options or DestinationOptions()
        self._clock = clock
        self.on_change: Callable[[], None] = lambda: None
        self._connections: dict[str, DestinationConnection] = {}
        # Per kubeconfig Secret key: (digest of its value, the parsed credentials or why they are refused).
        self._parsed: dict[SecretKey, tuple[str, ClusterCredentials | str]] = {}
        self._route: dict[SecretKey, str] = {}  # Secret key -> connection fingerprint
        self._problems: dict[SecretKey, str] = {}

    def _changed(self) -> None:
        try:
            self.on_change()
        except Exception:  # a broken callback must not kill an informer thread
            log.exception("destination change callback failed")

    def _credentials(self, ref: SecretKey, value: SecretStr) -> ClusterCredentials | str:
        digest = hashlib.sha256(value.get_secret_value().encode()).hexdigest()
        cached = self._parsed.get(ref)
        if cached is not None and cached[0] == digest:
            return cached[1]
        try:
            result: ClusterCredentials | str = parse_kubeconfig(value)
        except KubeconfigError as error:
            result = f"the kubeconfig in {ref} {error}" if str(error).startswith("is ") else \
                f"the kubeconfig in {ref}: {error}"
        self._parsed[ref] = (digest, result)
        return result

    def want(self, claims: Mapping[Any, CopyClaim], kubeconfigs: Mapping[SecretKey, SecretStr | str]) -> None:
        """Open the connections and watches the claims need, close the others."""
        namespaces: dict[str, set[str]] = {}
        route: dict[SecretKey, str] = {}
        problems: dict[SecretKey, str] = {}
        wanted: dict[str, tuple[ClusterCredentials, str]] = {}
        for claim in claims.values():
            for location in claim.locations:
                ref = location.kubeconfig
                value = kubeconfigs.get(ref)
                if value is None:
                    problems[ref] = f"reading the kubeconfig from {ref}"
                    continue
                if isinstance(value, str):
                    problems[ref] = f"cannot read the kubeconfig: {value}"
                    continue
                credentials = self._credentials(ref, value)
                if isinstance(credentials, str):
                    problems[ref] = credentials
                    continue
                fingerprint = credentials.fingerprint
                if fingerprint not in wanted and len(wanted) >= self.options.max_clusters:
                    problems[ref] = f"too many destination clusters (at most {self.options.max_clusters})"
                    continue
                used = namespaces.setdefault(fingerprint, set())
                if location.namespace not in used and len(used) >= self.options.max_namespaces:
                    problems[ref] = (f"too many namespaces on one destination cluster "
                                     f"(at most {self.options.max_namespaces})")
                    continue
                route[ref] = fingerprint
                wanted.setdefault(fingerprint, (credentials, f"kubeconfig from Secret {ref.namespace}/{ref.name}"))
                used.add(location.namespace)
        for fingerprint in [f for f in self._connections if f not in wanted]:
            self._connections.pop(fingerprint).close(wait=False)  # called in the event loop: never block
        for fingerprint, (credentials, label) in wanted.items():
            connection = self._connections.get(fingerprint)
            if connection is None:
                connection = DestinationConnection(credentials, label, self.options, self._changed, self._clock)
                self._connections[fingerprint] = connection
            connection.watch(namespaces[fingerprint])
        for ref in [r for r in self._parsed if r not in route and r not in problems]:
            del self._parsed[ref]
        self._route, self._problems = route, problems

    def connection(self, location: CopyLocation) -> DestinationConnection | None:
        fingerprint = self._route.get(location.kubeconfig)
        return self._connections.get(fingerprint) if fingerprint else None

    def observe(self, claim: CopyClaim, location: CopyLocation) -> CopyObservation:
        connection = self.connection(location)
        if connection is None:
            problem = self._problems.get(location.kubeconfig, f"no connection for {location.kubeconfig}")
            return CopyObservation(location, reachable=False, error=problem, pending=problem.startswith("reading "))
        reachable, error, pending = connection.health(location.namespace)
        deployment, service = connection.objects(location)
        wanted = claim.wanted
        destination = wanted.destination if wanted is not None and wanted.location == location else None
        return observe_copy(location, claim.uid, destination, deployment, service, reachable=reachable, error=error,
                            pending=pending)

    @property
    def connections(self) -> list[DestinationConnection]:
        return list(self._connections.values())

    def close(self) -> None:
        for connection in list(self._connections.values()):
            connection.close()
        self._connections.clear()
