"""A real Kubernetes API server for tests: etcd + kube-apiserver on 127.0.0.1, stopped by pid.

The binaries are built from their Go modules by ``tests/apiserver/build.sh`` into ``.cache/k8s/bin`` (see
:mod:`tests.harness.k8s_tools`: :func:`ensure_binaries`, and :func:`ensure_kubectl` / :func:`ensure_helm`
for the clients). :class:`KubeCluster` runs them with everything in a work directory:
a generated CA and serving certificate, service-account signing keys, a static token file whose
admin user is in ``system:masters``, an admin kubeconfig, etcd's data and both logs. Authorization
is ``Node,RBAC``, so a ServiceAccount token (:meth:`KubeCluster.service_account_token`) has exactly
the rights RBAC gives it. There is no controller-manager, scheduler or kubelet: objects are stored,
validated, listed and watched, but nothing reconciles them (namespaces stay Terminating, pods Pending).

With ``aggregation=True`` the aggregation layer is configured as kubeadm does it: a front-proxy CA, the
client certificate the API server presents to extension API servers (``front-proxy-client``) and the
``--requestheader-*`` flags that tell extension servers which requests carry a user.
:meth:`KubeCluster.register_api_service` then serves an API group from a server of the test's (an
ExternalName Service, since Services have no cluster IP that routes here and endpoints may not be
loopback addresses; the aggregator's default cluster routing dials an ExternalName as it is).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import hashlib
import ipaddress
import json
import os
import secrets
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import yaml

from tests.harness.k8s_tools import (
    BUILD_SCRIPT,
    ensure_binaries,
    ensure_helm,
    ensure_kubectl,
    ensure_tools,
    k8s_bin_dir,
)
from tests.harness.pki import write_ca_and_client_cert, write_ca_and_server_cert
from tests.harness.polling import wait_until
from tests.harness.ports import free_port

__all__ = [
    "BUILD_SCRIPT",
    "FRONT_PROXY_CLIENT",
    "KubeCluster",
    "ensure_binaries",
    "ensure_helm",
    "ensure_kubectl",
    "ensure_tools",
    "k8s_bin_dir",
]

ADMIN_USER = "spillover-admin"
ADMIN_GROUPS = ("system:masters",)


FRONT_PROXY_CLIENT = "front-proxy-client"


# -- certificates and keys --------------------------------------------------------------------------


def _write_pki(
    directory: Path, service_ip: str, sa_key_path: Path, sa_pub_path: Path
) -> tuple[Path, Path, Path]:
    """A CA, a serving certificate for 127.0.0.1/localhost/kubernetes.default.svc signed by it, and
    the service-account signing key pair. Returns (ca.crt, apiserver.crt, apiserver.key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    directory.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = (
        directory / "ca.crt",
        directory / "apiserver.crt",
        directory / "apiserver.key",
    )
    names = ["127.0.0.1", service_ip, "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
             "kubernetes.default.svc.cluster.local"]
    write_ca_and_server_cert(ca_path, cert_path, key_path, names, "kube-apiserver", "spillover-test-kube-ca")
    pem = serialization.Encoding.PEM
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    sa_key_path.write_bytes(
        sa_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    sa_pub_path.write_bytes(
        sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    sa_key_path.chmod(0o600)
    return ca_path, cert_path, key_path


# -- processes --------------------------------------------------------------------------------------


class _Process:
    """One child process with its log file; stopped by pid (SIGTERM, then SIGKILL)."""

    def __init__(self, name: str, log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, argv: list[str], cwd: Path) -> None:
        self._log = self.log_path.open("ab")
        self._log.write(f"\n=== {' '.join(argv)}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd
        )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None
        self.proc = None
        return proc.returncode

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


_LIVE: set[KubeCluster] = set()


@atexit.register
def _stop_leftovers() -> None:
    for cluster in list(_LIVE):
        cluster.stop(timeout=5)


class _NotReady(Exception):
    pass


class _Exited(Exception):
    pass


def _split_docs(docs: str | Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(docs, str):
        loaded = [d for d in yaml.safe_load_all(docs) if d is not None]
    elif isinstance(docs, Mapping):
        loaded = [copy.deepcopy(dict(docs))]  # apply() fills in namespace/resourceVersion: not the caller's
    else:
        loaded = [copy.deepcopy(dict(d)) for d in docs if d is not None]
    out: list[dict[str, Any]] = []
    for doc in loaded:
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            raise ValueError(f"not a Kubernetes object (apiVersion and kind needed): {doc!r:.200}")
        if doc["kind"].endswith("List") and isinstance(doc.get("items"), list):
            out.extend(_split_docs(doc["items"]))
        else:
            out.append(doc)
    return out


class KubeCluster:
    """``KubeCluster(workdir).start()``: etcd and kube-apiserver on free loopback ports.

    Attributes once started: ``server_url`` (https://127.0.0.1:PORT), ``ca_path`` (the CA that signed
    the serving certificate), ``admin_token`` (user ``spillover-admin`` in ``system:masters``),
    ``admin_kubeconfig`` (a kubeconfig file for that token), ``etcd_url``, ``workdir`` (logs:
    ``etcd.log``, ``kube-apiserver.log``).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        service_cluster_ip_range: str = "10.96.0.0/16",
        extra_apiserver_args: Iterable[str] = (),
        apiserver_binary: Path | None = None,
        etcd_binary: Path | None = None,
        aggregation: bool = False,
    ) -> None:
        self.workdir = Path(workdir)
        self.aggregation = aggregation
        self.service_cluster_ip_range = service_cluster_ip_range
        self.extra_apiserver_args = list(extra_apiserver_args)
        # Absolute: the processes run with the work directory as cwd.
        self._apiserver_binary = Path(apiserver_binary).resolve() if apiserver_binary else None
        self._etcd_binary = Path(etcd_binary).resolve() if etcd_binary else None
        self.pki_dir = self.workdir / "pki"
        self.ca_path = self.pki_dir / "ca.crt"
        # The aggregation layer: extension API servers trust requests whose client certificate this CA
        # signed for FRONT_PROXY_CLIENT, and take the user from their X-Remote-* headers.
        self.front_proxy_ca_path = self.pki_dir / "front-proxy-ca.crt"
        self.admin_kubeconfig = self.workdir / "admin.kubeconfig"
        self.admin_token = secrets.token_hex(24)
        self.service_account_issuer = "https://kubernetes.default.svc.cluster.local"
        self.etcd = _Process("etcd", self.workdir / "etcd.log")
        self.apiserver = _Process("kube-apiserver", self.workdir / "kube-apiserver.log")
        self.etcd_port = self.etcd_peer_port = self.secure_port = 0
        self._ssl_context: ssl.SSLContext | None = None
        self._api_clients: dict[str | None, Any] = {}
        self._dynamic_clients: dict[str | None, Any] = {}

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def server_url(self) -> str:
        return f"https://127.0.0.1:{self.secure_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    def is_running(self) -> bool:
        return (
            self.etcd.exited() is None and self.apiserver.exited() is None and self.apiserver.proc is not None
        )

    def start(self, timeout: float = 120.0) -> KubeCluster:
        if self.apiserver.proc is not None or self.etcd.proc is not None:
            raise RuntimeError("KubeCluster already started")
        if self._apiserver_binary is None or self._etcd_binary is None:
            apiserver, etcd = ensure_binaries(build=False)
            self._apiserver_binary = self._apiserver_binary or apiserver.resolve()
            self._etcd_binary = self._etcd_binary or etcd.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        network = ipaddress.ip_network(self.service_cluster_ip_range)
        _write_pki(self.pki_dir, str(network[1]), self.pki_dir / "sa.key", self.pki_dir / "sa.pub")
        if self.aggregation:
            write_ca_and_client_cert(self.front_proxy_ca_path, self.pki_dir / "front-proxy-client.crt",
                                     self.pki_dir / "front-proxy-client.key", FRONT_PROXY_CLIENT, "front-proxy-ca")
        (self.workdir / "tokens.csv").write_text(
            f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"{",".join(ADMIN_GROUPS)}"\n'
        )
        (self.workdir / "tokens.csv").chmod(0o600)
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        try:
            self._start_etcd(deadline)
            self._start_apiserver(deadline)
            self._wait_for_default_namespace(deadline)
        except BaseException:
            self.stop()
            raise
        self.kubeconfig_for_token(self.admin_token, self.admin_kubeconfig, user=ADMIN_USER)
        return self

    def _start_etcd(self, deadline: float) -> None:
        assert self._etcd_binary is not None
        data_dir = self.workdir / "etcd-data"
        for _attempt in range(3):
            self.etcd_port, self.etcd_peer_port = free_port(), free_port()
            if self.etcd_port == self.etcd_peer_port:
                continue
            peer = f"http://127.0.0.1:{self.etcd_peer_port}"
            self.etcd.start(
                [
                    str(self._etcd_binary),
                    "--name=spillover-test",
                    f"--data-dir={data_dir}",
                    f"--listen-client-urls={self.etcd_url}",
                    f"--advertise-client-urls={self.etcd_url}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=spillover-test={peer}",
                    "--initial-cluster-state=new",
                    "--initial-cluster-token=spillover-test",
                    # Test data: no fsync, a small backend quota, no snapshots to speak of.
                    "--unsafe-no-fsync",
                    "--quota-backend-bytes=1073741824",
                    "--log-level=warn",
                ],
                cwd=self.workdir,
            )
            try:
                self._wait(self.etcd, self._etcd_healthy, deadline, "etcd")
                return
            except _Exited:
                tail = self.etcd.log_tail()
                self.etcd.stop(5)
                if "address already in use" not in tail:
                    raise RuntimeError(f"etcd exited during start:\n{tail}") from None
                # lost a port race: new ports, fresh data dir
                for child in sorted(data_dir.rglob("*"), reverse=True):
                    child.unlink() if not child.is_dir() else child.rmdir()
        raise RuntimeError(f"etcd could not bind loopback ports:\n{self.etcd.log_tail()}")

    def _apiserver_argv(self) -> list[str]:
        assert self._apiserver_binary is not None
        pki = self.pki_dir
        return [
            str(self._apiserver_binary),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.secure_port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--anonymous-auth=false",
            f"--service-account-issuer={self.service_account_issuer}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={self.service_cluster_ip_range}",
            # No controller-manager creates ServiceAccounts' pods' defaults; the master endpoint
            # reconciler would publish 127.0.0.1, which EndpointSlice validation rejects.
            "--disable-admission-plugins=ServiceAccount",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
            *(self._aggregation_args() if self.aggregation else []),
            *self.extra_apiserver_args,
        ]

    def _aggregation_args(self) -> list[str]:
        pki = self.pki_dir
        return [
            f"--requestheader-client-ca-file={self.front_proxy_ca_path}",
            f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-username-headers=X-Remote-User",
            f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
        ]

    def _start_apiserver(self, deadline: float) -> None:
        for _attempt in range(3):
            self.secure_port = free_port()
            self.apiserver.start(self._apiserver_argv(), cwd=self.workdir)
            try:
                self._wait(self.apiserver, self._apiserver_ready, deadline, "kube-apiserver /readyz")
                return
            except _Exited:
                tail = self.apiserver.log_tail(60)
                self.apiserver.stop(5)
                if "address already in use" not in tail:
                    raise RuntimeError(f"kube-apiserver exited during start:\n{tail}") from None
        raise RuntimeError(f"kube-apiserver could not bind a loopback port:\n{self.apiserver.log_tail()}")

    def _wait(self, process: _Process, probe: Any, deadline: float, what: str) -> None:
        last: str = "no attempt"
        while True:
            code = process.exited()
            if code is not None:
                raise _Exited(code)
            try:
                probe()
                return
            except (OSError, _NotReady) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{what} not ready in time (last: {last})\n{process.log_tail(60)}")
            time.sleep(0.1)

    def _etcd_healthy(self) -> None:
        try:
            with urllib.request.urlopen(self.etcd_url + "/health", timeout=2) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise _NotReady(f"HTTP {exc.code}") from exc
        if body.get("health") != "true":
            raise _NotReady(str(body))

    def _apiserver_ready(self) -> None:
        status, body = self.request("GET", "/readyz", timeout=3)
        if status != 200:
            raise _NotReady(f"/readyz {status}: {body[-500:].decode(errors='replace')}")

    def _wait_for_default_namespace(self, deadline: float) -> None:
        # The system-namespaces controller creates them right after /readyz turns ok.
        def present() -> bool:
            return all(
                self.request("GET", f"/api/v1/namespaces/{ns}")[0] == 200 for ns in ("default", "kube-system")
            )

        wait_until(
            present,
            timeout=max(1.0, deadline - time.monotonic()),
            interval=0.1,
            message="namespaces default and kube-system not created",
        )

    def stop(self, timeout: float = 15.0) -> None:
        """Stops kube-apiserver, then etcd, by pid (SIGTERM, SIGKILL after ``timeout``)."""
        for client in self._api_clients.values():
            with contextlib.suppress(Exception):
                client.close()
        self._api_clients.clear()
        self._dynamic_clients.clear()
        self.apiserver.stop(timeout)
        self.etcd.stop(timeout)
        _LIVE.discard(self)

    def __enter__(self) -> KubeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n: int = 40) -> str:
        return (
            f"--- kube-apiserver ({self.apiserver.log_path}):\n{self.apiserver.log_tail(n)}\n"
            f"--- etcd ({self.etcd.log_path}):\n{self.etcd.log_tail(n)}"
        )

    # -- raw HTTP -----------------------------------------------------------------------------------

    @property
    def ssl_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context(cafile=str(self.ca_path))
        return self._ssl_context

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = None, timeout: float = 10.0
    ) -> tuple[int, bytes]:
        """One HTTPS request to the API server as ``token`` (default: admin); returns (status, body)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server_url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token or self.admin_token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def request_count(self, verb: str, group: str, resource: str, subresource: str = "") -> int:
        """How many ``verb`` requests for ``group``'s ``resource`` (/``subresource``) the API server has
        answered, whatever the code: its own ``apiserver_request_total`` counter."""
        status, body = self.request("GET", "/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics: HTTP {status}")
        wanted = {"verb": verb, "group": group, "resource": resource, "subresource": subresource}
        total = 0
        for line in body.decode().splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels_text, _, value = line[len("apiserver_request_total{"):].rpartition("} ")
            labels = dict(pair.split("=", 1) for pair in labels_text.split('",') if "=" in pair)
            labels = {k: v.strip('"') for k, v in labels.items()}
            if all(labels.get(k, "") == v for k, v in wanted.items()):
                total += int(float(value))
        return total

    # -- kubeconfig and clients ---------------------------------------------------------------------

    def kubeconfig_for_token(self, token: str, path: Path | str, user: str = "user") -> Path:
        """Writes a kubeconfig that talks to this API server as ``token``; returns its path."""
        path = Path(path)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "spillover-test",
                    "cluster": {"server": self.server_url, "certificate-authority": str(self.ca_path)},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "spillover-test", "context": {"cluster": "spillover-test", "user": user}}],
            "current-context": "spillover-test",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)
        return path

    def api_client(self, token: str | None = None) -> Any:
        """A ``kubernetes.client.ApiClient`` for this server as ``token`` (default: admin); cached
        per token and closed by :meth:`stop`."""
        if token in self._api_clients:
            return self._api_clients[token]
        from kubernetes import client

        configuration = client.Configuration(
            host=self.server_url,
            api_key={"authorization": token or self.admin_token},
            api_key_prefix={"authorization": "Bearer"},
        )
        # An attribute, not a constructor argument: the constructor only takes it from client 37 on.
        configuration.ssl_ca_cert = str(self.ca_path)
        api = client.ApiClient(configuration)
        self._api_clients[token] = api
        return api

    def dynamic_client(self, token: str | None = None) -> Any:
        """A ``kubernetes.dynamic.DynamicClient`` (discovery cache in the work directory)."""
        if token not in self._dynamic_clients:
            from kubernetes import dynamic

            tag = hashlib.sha256((token or self.admin_token).encode()).hexdigest()[:12]
            self._dynamic_clients[token] = dynamic.DynamicClient(
                self.api_client(token), cache_file=str(self.workdir / f"discovery-{tag}.json")
            )
        return self._dynamic_clients[token]

    # -- objects --------------------------------------------------------------------------------------

    def service_account_token(
        self,
        namespace: str,
        name: str,
        expiration_s: int = 3600,
        audiences: list[str] | None = None,
    ) -> str:
        """A bound token for ServiceAccount ``namespace/name`` from the TokenRequest API (namespace and
        ServiceAccount are created when missing). The API server's minimum ``expiration_s`` is 600."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self.api_client())
        for create, body in (
            (
                lambda b: core.create_namespace(b),
                client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)),
            ),
            (
                lambda b: core.create_namespaced_service_account(namespace, b),
                client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name, namespace=namespace)),
            ),
        ):
            try:
                create(body)
            except ApiException as exc:
                if exc.status != 409:
                    raise
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=audiences or [], expiration_seconds=expiration_s)
        )
        response = core.create_namespaced_service_account_token(name, namespace, request)
        if response.status is None or not response.status.token:
            raise RuntimeError(f"TokenRequest for {namespace}/{name} returned no token: {response!r}")
        return str(response.status.token)

    def apply(
        self,
        docs: str | Mapping[str, Any] | Iterable[Mapping[str, Any]],
        namespace: str | None = None,
        token: str | None = None,
        timeout: float = 30.0,
        field_validation: str = "Strict",
    ) -> list[dict[str, Any]]:
        """Create-or-replace each object (YAML text with one or more documents, a dict, or a list of
        dicts) through the REST API; returns the objects as the server stored them. Namespaced objects
        without ``metadata.namespace`` go to ``namespace`` (default ``default``). After a
        CustomResourceDefinition it waits until the CRD is Established and served, so its objects can
        follow in the same call. A rejected object raises ``kubernetes.client.exceptions.ApiException``
        (``.status`` 422 for a schema violation, 403 when RBAC refuses ``token``). Unknown fields are
        an error (``field_validation="Strict"``, as with ``kubectl apply``), not silently pruned."""
        from kubernetes.client.exceptions import ApiException

        dyn = self.dynamic_client(token)
        applied: list[dict[str, Any]] = []
        for doc in _split_docs(docs):
            resource = self._resource(dyn, doc["apiVersion"], doc["kind"], timeout)
            metadata = doc.setdefault("metadata", {})
            ns = None
            if resource.namespaced:
                ns = metadata.get("namespace") or namespace or "default"
                metadata["namespace"] = ns
            query = [("fieldValidation", field_validation)]
            try:
                result = resource.create(body=doc, namespace=ns, query_params=list(query))
            except ApiException as exc:
                if exc.status != 409:
                    raise
                result = self._replace_latest(resource, doc, ns, query, timeout)
            obj = result.to_dict()
            applied.append(obj)
            if doc["kind"] == "CustomResourceDefinition" and doc["apiVersion"].startswith(
                "apiextensions.k8s.io/"
            ):
                self.wait_crd_established(obj["metadata"]["name"], timeout=timeout, token=token)
        return applied

    @staticmethod
    def _replace_latest(resource: Any, doc: dict[str, Any], ns: str | None, query: list[tuple[str, str]],
                        timeout: float) -> Any:
        """Replaces the object at its latest resourceVersion. A controller writing the object meanwhile
        (its status, a finalizer, an annotation) makes the replace a 409 Conflict; like `kubectl apply`,
        which patches, the edit is not refused for that: read the new version and try again."""
        from kubernetes.client.exceptions import ApiException

        deadline = time.monotonic() + timeout
        while True:
            current = resource.get(name=doc["metadata"]["name"], namespace=ns)
            doc["metadata"]["resourceVersion"] = current.metadata.resourceVersion
            try:
                return resource.replace(body=doc, namespace=ns, query_params=list(query))
            except ApiException as exc:
                if exc.status != 409 or time.monotonic() > deadline:
                    raise

    def wait_crd_established(
        self, name: str, timeout: float = 30.0, token: str | None = None
    ) -> dict[str, Any]:
        """Waits until CRD ``name`` is Established and its kinds are in discovery; returns the CRD."""
        dyn = self.dynamic_client(token)
        crds = dyn.resources.get(api_version="apiextensions.k8s.io/v1", kind="CustomResourceDefinition")

        def established() -> dict[str, Any]:
            crd: dict[str, Any] = crds.get(name=name).to_dict()
            conditions = {c["type"]: c["status"] for c in crd.get("status", {}).get("conditions", [])}
            return crd if conditions.get("Established") == "True" else {}

        crd = wait_until(established, timeout=timeout, interval=0.1, message=f"CRD {name} not Established")
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                self._resource(dyn, f"{group}/{version['name']}", kind, timeout)
        return crd

    def register_api_service(
        self, group: str, version: str, port: int, ca_bundle: bytes, *, namespace: str = "kube-system",
        service: str = "test-metrics", host: str = "127.0.0.1", priority: tuple[int, int] = (100, 100),
    ) -> str:
        """Serves ``group/version`` from https://``host``:``port`` through the aggregation layer: an
        ExternalName Service ``namespace/service`` pointing at ``host`` and an APIService trusting
        ``ca_bundle`` (the server's certificate must be valid for ``service.namespace.svc``, the name
        the aggregator checks). Returns the APIService's name; the caller waits for it to be Available."""
        import base64

        if not self.aggregation:
            raise RuntimeError("register_api_service needs KubeCluster(aggregation=True)")
        name = f"{version}.{group}"
        self.apply([
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": service, "namespace": namespace},
             "spec": {"type": "ExternalName", "externalName": host}},
            {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": name},
             "spec": {"group": group, "version": version, "groupPriorityMinimum": priority[0],
                      "versionPriority": priority[1], "caBundle": base64.b64encode(ca_bundle).decode(),
                      "service": {"namespace": namespace, "name": service, "port": port}}},
        ])
        return name

    def api_service_condition(self, name: str) -> dict[str, Any]:
        """The Available condition of APIService ``name`` (empty when it has none yet)."""
        status, body = self.request("GET", f"/apis/apiregistration.k8s.io/v1/apiservices/{name}")
        if status != 200:
            return {}
        conditions = json.loads(body).get("status", {}).get("conditions", [])
        return next((c for c in conditions if c.get("type") == "Available"), {})

    def wait_api_service_available(self, name: str, timeout: float = 30.0) -> None:
        """Waits until the aggregator reached the APIService's server; fails with the condition's message
        (why the aggregator could not) otherwise."""
        last: dict[str, Any] = {}

        def available() -> bool:
            nonlocal last
            last = self.api_service_condition(name)
            return last.get("status") == "True"

        try:
            wait_until(available, timeout=timeout, interval=0.2, message=f"APIService {name} not Available")
        except AssertionError:
            raise AssertionError(f"APIService {name} not Available: {last}\n{self.log_tail(30)}") from None

    def unregister_api_service(self, name: str, namespace: str = "kube-system", service: str = "test-metrics") -> None:
        self.request("DELETE", f"/apis/apiregistration.k8s.io/v1/apiservices/{name}")
        self.request("DELETE", f"/api/v1/namespaces/{namespace}/services/{service}")

    @staticmethod
    def _resource(dyn: Any, api_version: str, kind: str, timeout: float) -> Any:
        from kubernetes.dynamic.exceptions import ResourceNotFoundError

        def lookup() -> Any:
            try:
                return dyn.resources.get(api_version=api_version, kind=kind)
            except ResourceNotFoundError:
                dyn.resources.invalidate_cache()  # a CRD just created: discovery catches up
                raise

        return wait_until(lookup, timeout=timeout, interval=0.2, message=f"{api_version} {kind} not served")
