"""`spillover serve --kubernetes` as a real subprocess, and Kubernetes object builders for the tests."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.e2e.harness import REPO, Spillover
from tests.harness.client import request
from tests.harness.polling import wait_until


class KubeSpillover(Spillover):
    """`python -m spillover serve --kubernetes --kubeconfig K --namespace NS...`; stopped by pid."""

    def __init__(self, kubeconfig: Path, namespaces: list[str], workdir: Path, *, beamlit: bool = False,
                 log_level: str = "INFO", debounce: float = 0.05) -> None:
        super().__init__(workdir / "unused-policies", workdir, log_level=log_level, debounce=debounce)
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces
        self.beamlit = beamlit

    def start(self, timeout: float = 30.0) -> KubeSpillover:
        command = [
            sys.executable, "-m", "spillover", "--log-level", self.log_level, "serve",
            "--kubernetes", "--kubeconfig", str(self.kubeconfig),
            *[arg for ns in self.namespaces for arg in ("--namespace", ns)],
            *(["--beamlit"] if self.beamlit else []),
            "--listen", f"127.0.0.1:{self.listen_port}",
            "--xds-address", self.xds_address,
            "--admin-address", f"127.0.0.1:{self.admin_port}",
            "--debounce", str(self.debounce),
            "--evaluation-interval", "0.2",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        proc = self.proc

        def ready_or_exited() -> bool:
            return proc.poll() is not None or request("GET", self.admin + "/readyz", timeout=1).status == 200

        wait_until(ready_or_exited, timeout=timeout, message="spillover serve --kubernetes never became ready")
        assert proc.poll() is None, f"spillover serve exited with {proc.returncode}:\n{self.log()}"
        return self


def model_deployment(name: str, model: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "spillover.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"model": model, **spec},
    }


def service(name: str, namespace: str, port: int = 80, target: int | str = "http") -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
        "spec": {"ports": [{"name": "http", "port": port, "targetPort": target}], "selector": {"app": name}},
    }


def endpoint_slice(name: str, namespace: str, service_name: str, port: int,
                   endpoints: list[tuple[str, bool]], *, terminating: bool = False) -> dict[str, Any]:
    """An EndpointSlice as the EndpointSlice controller would write it (no controller runs here).

    The API server refuses loopback addresses here, so the addresses are documentation-range data
    (e.g. 198.51.100.0/24): tests only check that they reach Envoy's configuration and never send a
    request that Envoy could route to them (no test traffic may leave 127.0.0.0/8)."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": terminating}}
            for ip, ready in endpoints
        ],
    }


def secret(name: str, namespace: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace}, "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }

