"""spillover and a gateway Envoy started exactly as a set of Kubernetes objects starts them (manifests/,
or the chart's render): the control plane Deployment's own arguments (the Kubernetes source swapped for a
policy directory, addresses moved to loopback test ports, mounted paths to the test's directories), the
Secrets made as cert-manager would from the Certificates' SANs, the ConfigMaps' files where the pods mount
them, and the gateway Deployment's Envoy arguments ($(POD_NAME) expanded). Without Certificates among the
objects (a chart rendered with tls.enabled=false) both run plain text, as such a render starts them."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness.client import request
from tests.harness.envoy import Envoy, envoy_binary
from tests.harness.pki import Pki, write_secret_volume
from tests.harness.policy_files import model_deployment, write
from tests.harness.polling import wait_until
from tests.harness.ports import free_port

__all__ = ["InstalledGateway", "run_like_installed"]

REPO = Path(__file__).resolve().parents[2]
# Where the Kubernetes side ends and the test's begins: replaced, whatever their value in the objects.
_ADDRESS_FLAGS = ("--xds-address=", "--admin-address=", "--listen=")


@dataclass(frozen=True)
class InstalledGateway:
    """What spillover said about the gateway (its /debug/proxies entry, read with the admin token), the
    status of /debug/proxies without the token, the Envoy's TLS handshakes to spillover, and its stats port
    (if the bootstrap has one): what GET /stats/prometheus served there and the status of any other path."""

    proxy: dict[str, Any]
    without_token: int
    handshakes: int
    stats_scrape: str | None = None
    stats_other_path: int | None = None


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _pod(docs: list[dict[str, Any]], deployment: str) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = _find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    return spec, container


def _remap(text: str, paths: dict[str, Path]) -> str:
    for inside, outside in sorted(paths.items(), key=lambda item: -len(item[0])):
        text = text.replace(inside, str(outside))
    return text


def _mount(docs: list[dict[str, Any]], pod: dict[str, Any], container: dict[str, Any], workdir: Path,
           secrets: dict[str, dict[str, bytes]]) -> dict[str, Path]:
    """Each volume of the container in a directory of its own: Secrets from `secrets` (by name, as the
    kubelet writes them), ConfigMaps from the objects; {mountPath: directory}."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    paths: dict[str, Path] = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        directory = workdir / mount["name"]
        if "secret" in volume:
            name = volume["secret"]["secretName"]
            if name not in secrets:
                assert volume["secret"].get("optional"), f"Secret {name} is mounted but not made by the test"
                continue
            write_secret_volume(directory, secrets[name])
        elif "configMap" in volume:
            directory.mkdir(parents=True)
            for file, content in _find(docs, "ConfigMap", volume["configMap"]["name"])["data"].items():
                (directory / file).write_text(content)
        else:
            continue  # an emptyDir: the test's own temp dir is as good
        paths[mount["mountPath"]] = directory
    return paths


def run_like_installed(
    workdir: Path, docs: list[dict[str, Any]], admin_token: str, pod_name: str = "spillover-gateway-7d9f-abcde"
) -> InstalledGateway:
    """Starts both, waits for the gateway to be ready, reads what spillover saw, stops both (by pid)."""
    certificates = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "Certificate"}
    secrets: dict[str, dict[str, bytes]] = {}
    if certificates:
        server_spec, client_spec = certificates["spillover-xds"], certificates["spillover-gateway-xds"]
        pki = Pki()
        secrets[server_spec["secretName"]] = pki.tls_secret(
            pki.issue("spillover-xds", dns=server_spec["dnsNames"], server=True))
        secrets[client_spec["secretName"]] = pki.tls_secret(pki.issue("gateway", uris=client_spec["uris"], client=True))
    control_pod, control = _pod(docs, "spillover")
    token_volume = next(v for v in control_pod["volumes"] if v["name"] == "admin-token")
    secrets[token_volume["secret"]["secretName"]] = {"token": admin_token.encode()}
    mounts = _mount(docs, control_pod, control, workdir / "control-plane", secrets)
    policies = workdir / "policies"
    policies.mkdir()
    write(policies / "llama.yaml", model_deployment("llama", ["127.0.0.1:9"]))

    xds_port, admin_port, listen_port = free_port(), free_port(), free_port()
    args = [_remap(a, mounts) for a in control["args"]]
    assert args[:2] == ["serve", "--kubernetes"], args
    args = [a for a in args[2:] if not a.startswith(_ADDRESS_FLAGS)]
    args = ["serve", "--policies", str(policies), f"--xds-address=127.0.0.1:{xds_port}",
            f"--admin-address=127.0.0.1:{admin_port}", f"--listen=127.0.0.1:{listen_port}", *args]
    log_path = workdir / "spillover.log"
    with log_path.open("wb") as log:
        spillover = subprocess.Popen([sys.executable, "-m", "spillover", *args], stdout=log,
                                     stderr=subprocess.STDOUT, cwd=REPO)
    envoy_proc = None
    try:
        admin = f"http://127.0.0.1:{admin_port}"
        wait_until(lambda: request("GET", admin + "/readyz").status == 200, timeout=30, message="spillover ready")

        gateway_pod, gateway = _pod(docs, "spillover-gateway")
        files = _mount(docs, gateway_pod, gateway, workdir / "gateway", secrets)
        envoy_dir = next(path for inside, path in files.items() if inside == "/etc/envoy")
        for file in envoy_dir.iterdir():
            file.write_text(_remap(file.read_text(), files))
        bootstrap = yaml.safe_load((envoy_dir / "bootstrap.yaml").read_text())
        envoy_admin = free_port()
        bootstrap["admin"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": envoy_admin}
        ports = {"spillover_xds": xds_port, "spillover_admin": envoy_admin}
        for cluster in bootstrap["static_resources"]["clusters"]:
            cluster["type"] = "STATIC"  # the Service's DNS name is the test's loopback address
            cluster.pop("dns_lookup_family", None)
            endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            endpoint["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": ports[cluster["name"]]}
        # The stats listener (--stats-port), moved with the admin it serves from, off its fixed port.
        stats_port = None
        for listener in bootstrap["static_resources"].get("listeners", []):
            stats_port = free_port()
            listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": stats_port}
        (envoy_dir / "bootstrap.yaml").write_text(yaml.safe_dump(bootstrap))
        envoy_args = [_remap(a, files).replace("$(POD_NAME)", pod_name) for a in gateway["args"]]
        envoy_proc = subprocess.Popen([envoy_binary(), *envoy_args, "--base-id", str(envoy_admin)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        envoy = Envoy({}, envoy_dir)
        envoy.admin_port = envoy_admin
        wait_until(envoy.is_ready, timeout=30, message="the gateway never got its config")

        without_token = request("GET", admin + "/debug/proxies").status
        headers = {"Authorization": f"Bearer {admin_token}"}
        (proxy,) = request("GET", admin + "/debug/proxies", headers=headers).json()["proxies"]
        scrape = other = None
        if stats_port is not None:
            scrape = request("GET", f"http://127.0.0.1:{stats_port}/stats/prometheus").text
            other = request("GET", f"http://127.0.0.1:{stats_port}/server_info").status
        return InstalledGateway(proxy, without_token, envoy.stat("cluster.spillover_xds.ssl.handshake") or 0,
                                scrape, other)
    finally:
        if envoy_proc is not None:
            envoy_proc.terminate()
            envoy_proc.wait(10)
        spillover.terminate()
        spillover.wait(15)
        print(log_path.read_text()[-4000:])
