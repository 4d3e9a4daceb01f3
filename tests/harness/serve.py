"""`spillover serve` as a real subprocess, in any of its modes (--policies, --kubernetes, --resources), on
free loopback ports and stopped by pid; and Envoys bootstrapped to it."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from spillover.server import event_loop
from spillover.translate.bootstrap import build_bootstrap
from tests.harness import event_loops
from tests.harness.client import Response, request
from tests.harness.envoy import Envoy
from tests.harness.load import post_model
from tests.harness.polling import wait_until
from tests.harness.ports import free_port

REPO = Path(__file__).resolve().parents[2]


class Spillover:
    """`python -m spillover serve` with its output in ``workdir/<name>.log``.

    Exactly one source: ``policies`` (a directory), ``kubeconfig`` (Kubernetes mode, with ``namespaces``,
    ``beamlit`` and ``leader_election_namespace``) or ``resources`` (a file of Envoy resources, no model
    listener). ``None`` for ``log_level``, ``debounce`` or ``evaluation_interval`` leaves spillover's own
    default; ``env`` is added to the environment (``POD_NAME`` of a replica, say).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        policies: Path | None = None,
        kubeconfig: Path | None = None,
        namespaces: Sequence[str] = (),
        beamlit: bool = False,
        leader_election_namespace: str | None = None,
        resources: Path | None = None,
        prometheus_url: str | None = None,
        evaluation_interval: float | None = None,
        debounce: float | None = 0.05,
        log_level: str | None = "INFO",
        name: str = "spillover",
        env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        admin_token: str | None = None,
    ) -> None:
        if sum(source is not None for source in (policies, kubeconfig, resources)) != 1:
            raise ValueError("Spillover: exactly one of policies, kubeconfig and resources")
        self.policies = policies
        self.kubeconfig = kubeconfig
        self.namespaces = list(namespaces)
        self.beamlit = beamlit
        self.leader_election_namespace = leader_election_namespace
        self.resources = resources
        self.prometheus_url = prometheus_url
        self.evaluation_interval = evaluation_interval
        self.debounce = debounce
        self.log_level = log_level
        self.name = name
        self.env = dict(env or {})
        self.extra_args = list(extra_args)
        # Sent as a bearer token to the debug views (for a server started with --admin-token-file).
        self.admin_token = admin_token
        self.listen_port = free_port()
        self.xds_port = free_port()
        self.admin_port = free_port()
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def successor(self, name: str | None = None) -> Spillover:
        """The same control plane to start again: same ports, sources and options, its own log (a restart,
        as its Envoys see it: they reconnect to the same address)."""
        again = copy.copy(self)
        again.proc = None
        again.name = name or f"{self.name}-again"
        again.log_path = self.log_path.with_name(f"{again.name}.log")
        return again

    @property
    def xds_address(self) -> str:
        return f"127.0.0.1:{self.xds_port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def mode(self) -> str:
        if self.policies is not None:
            return "--policies"
        return "--kubernetes" if self.kubeconfig is not None else "--resources"

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "spillover"]
        if self.log_level is not None:
            command += ["--log-level", self.log_level]
        command.append("serve")
        if self.policies is not None:
            command += ["--policies", str(self.policies)]
        elif self.kubeconfig is not None:
            command += ["--kubernetes", "--kubeconfig", str(self.kubeconfig)]
            command += [arg for namespace in self.namespaces for arg in ("--namespace", namespace)]
            if self.beamlit:
                command.append("--beamlit")
            # The Lease (and the fleet's) where the test may write: its own namespace unless told.
            lease_namespace = self.leader_election_namespace or (self.namespaces[0] if self.namespaces else None)
            if lease_namespace is not None:
                command += ["--leader-election-namespace", lease_namespace]
        else:
            command += ["--resources", str(self.resources)]
        if self.resources is None:  # only policies and Kubernetes mode serve models on a listener
            command += ["--listen", f"127.0.0.1:{self.listen_port}"]
        command += ["--xds-address", self.xds_address, "--admin-address", f"127.0.0.1:{self.admin_port}"]
        options = {
            "--debounce": self.debounce,
            "--evaluation-interval": self.evaluation_interval,
            "--prometheus-url": self.prometheus_url,
        }
        command += [arg for flag, value in options.items() if value is not None for arg in (flag, str(value))]
        if event_loops.KIND != event_loop.DEFAULT:  # SPILLOVER_TEST_EVENT_LOOP: the servers too
            command += ["--event-loop", event_loops.KIND]
        return [*command, *self.extra_args]

    def launch(self) -> Spillover:
        """Starts the process without waiting for it (``wait_ready`` does)."""
        env = {**os.environ, **self.env} if self.env else None
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
            )
        return self

    def ready(self) -> bool:
        """/readyz says 200 (False while nothing listens yet)."""
        try:
            return request("GET", self.admin + "/readyz", timeout=1).status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 20.0) -> Spillover:
        proc = self.proc
        assert proc is not None, "launch() first"
        wait_until(
            lambda: proc.poll() is not None or self.ready(),
            timeout=timeout,
            message=f"spillover serve {self.mode} never became ready",
        )
        assert proc.poll() is None, f"spillover serve exited with {proc.returncode}:\n{self.log()}"
        return self

    def start(self, timeout: float = 20.0) -> Spillover:
        return self.launch().wait_ready(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """``sig`` by pid; returns the exit code (SIGKILL, and -9, if it does not exit in time)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
        return proc.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- the admin endpoint ------------------------------------------------------------------------------

    def get(self, path: str) -> Response:
        headers = {"Authorization": f"Bearer {self.admin_token}"} if self.admin_token else None
        return request("GET", self.admin + path, headers=headers, timeout=5)

    def get_json(self, path: str) -> Any:
        response = self.get(path)
        assert response.status == 200, (path, response.status, response.text)
        return response.json()

    def metric(self, name: str) -> float:
        """The sum of every sample of a metric family in /metrics (0 when absent)."""
        total = 0.0
        for line in self.get("/metrics").text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            sample, _, value = line.rpartition(" ")
            if sample.split("{", 1)[0] == name:
                total += float(value)
        return total

    def models(self) -> dict[str, Any]:
        models: dict[str, Any] = self.get_json("/debug/models")
        return models

    def proxies(self) -> list[dict[str, Any]]:
        proxies: list[dict[str, Any]] = self.get_json("/debug/proxies")["proxies"]
        return proxies

    def model(self, name: str) -> dict[str, Any]:
        model: dict[str, Any] = self.models()["models"][name]
        return model

    def wait_model(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], object],
        timeout: float = 20.0,
        message: str = "",
    ) -> dict[str, Any]:
        """Polls /debug/models until `predicate(model document)` holds; returns that document."""

        def check() -> dict[str, Any] | None:
            document = self.model(name)
            return document if predicate(document) else None

        return wait_until(check, timeout=timeout, interval=0.05, message=message or f"model {name}")

    def wait_state(self, name: str, state: str, timeout: float = 20.0) -> dict[str, Any]:
        """The model in `state`, decided and (a fleet replica: in `applied`) what this replica's Envoys get."""
        return self.wait_model(
            name, lambda m: m["state"] == state and (m.get("applied") or {}).get("state", state) == state, timeout,
            f"model {name} never reached {state}",
        )


class Launcher:
    """Starts the Spillovers of one test (``launcher(policies=..., ...)``, options as for Spillover over
    the launcher's defaults, waiting for /readyz) and stops whatever is left running at teardown."""

    def __init__(self, workdir: Path, start_timeout: float = 20.0, **defaults: Any) -> None:
        self.workdir = workdir
        self.start_timeout = start_timeout
        self.defaults = defaults
        self.started: list[Spillover] = []

    def __call__(self, **options: Any) -> Spillover:
        server = Spillover(self.workdir, **{**self.defaults, **options})
        self.started.append(server)
        return server.start(self.start_timeout)

    def stop_all(self) -> None:
        for server in self.started:
            server.stop()
            # Shown by pytest only when the test failed: the control plane's side of the story.
            print(f"--- {server.name} log ---\n{server.log()[-6000:]}")


def start_mtls_edge(
    envoy_factory: Callable[..., Envoy],
    server: Spillover,
    workdir: Path,
    pki: Any,
    node_id: str,
    identity: str,
    cluster: str = "edge",
    wait: bool = True,
) -> Envoy:
    """`start_edge` over mTLS: a client certificate for `identity` (issued by `pki`, a tests.harness.pki.Pki
    whose CA also signed spillover's certificate) in a Secret-volume directory, the SDS files and the
    bootstrap exactly as `spillover bootstrap --xds-tls-dir` makes them."""
    from spillover.translate.bootstrap import XdsTls, build_xds_tls_sds, dump_yaml
    from tests.harness.pki import write_secret_volume

    home = workdir / f"{node_id}-tls"
    tls = XdsTls(tls_dir=str(home / "xds-tls"), sds_dir=str(home / "sds"), server_name="localhost")
    write_secret_volume(home / "xds-tls", pki.tls_secret(pki.issue(node_id, uris=[identity], client=True)))
    (home / "sds").mkdir(parents=True, exist_ok=True)
    for name, document in build_xds_tls_sds(tls).items():
        (home / "sds" / name).write_text(dump_yaml(document))
    envoy = envoy_factory(build_bootstrap(node_id, cluster, server.xds_address, admin_port=0, tls=tls), name=node_id)
    if wait:
        wait_until(envoy.is_ready, timeout=20, message=f"envoy {node_id} never became ready over mTLS")
        wait_until(
            lambda: post_model(server.listen_port, "__probe__").status == 404,
            timeout=15,
            message=f"listener of {node_id} never answered",
        )
    return envoy


def start_edge(
    envoy_factory: Callable[..., Envoy],
    server: Spillover,
    node_id: str,
    cluster: str = "edge",
    advertise_admin: bool = True,
    split_weights: str = "route",
) -> Envoy:
    """A real Envoy on spillover's ADS, returned once it is LIVE and its listener (spillover's --listen
    port) answers. ``advertise_admin`` puts a real admin port in its node metadata, so that spillover
    reads its stats and its view of endpoint health (admin_port=0 advertises nothing). ``split_weights``:
    "runtime" for a spillover serving with ``--split-weights runtime`` (the bootstrap's RTDS layer)."""
    admin_port = free_port() if advertise_admin else 0
    bootstrap = build_bootstrap(
        node_id, cluster, server.xds_address, admin_port=admin_port, split_weights=split_weights
    )
    envoy = envoy_factory(bootstrap, name=node_id)
    wait_until(envoy.is_ready, timeout=20, message=f"envoy {node_id} never became ready")
    wait_until(
        lambda: post_model(server.listen_port, "__probe__").status == 404,
        timeout=15,
        message=f"listener of {node_id} never answered",
    )
    return envoy
