"""manifests/: kustomize validity, every object accepted by a real kube-apiserver, the printer columns point
at real status fields, the gateway bootstrap is `spillover bootstrap`'s output, and a real Envoy started the
way the gateway Deployment starts it gets a per-pod node id."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.kube import KubeCluster
from tests.harness.kube_status import MANIFESTS, REPO, load_docs

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
        "namespace.yaml", "crd-modeldeployment.yaml", "serviceaccount.yaml", "rbac.yaml", "security.yaml",
        "controlplane.yaml", "gateway.yaml",
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


def test_kubectl_kustomize_builds_the_same_objects(kubectl_binary: Path) -> None:
    out = subprocess.run([str(kubectl_binary), "kustomize", str(MANIFESTS)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    built = [d for d in yaml.safe_load_all(out.stdout) if d]
    key = lambda d: (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, built)) == sorted(map(key, all_docs()))


def test_all_manifests_apply_to_a_real_api_server(cluster: KubeCluster) -> None:
    from kubernetes import client

    applied = cluster.apply(all_docs())
    kinds = sorted(o["kind"] for o in applied)
    assert kinds.count("Deployment") == 2 and "NetworkPolicy" in kinds and "CustomResourceDefinition" in kinds
    apps = client.AppsV1Api(cluster.api_client())
    control = apps.read_namespaced_deployment("spillover", "spillover-system")
    assert control.spec.replicas == 2
    gateway = apps.read_namespaced_deployment("spillover-gateway", "spillover-system")
    pod = gateway.spec.template.spec
    assert pod is not None
    lifecycle = pod.containers[0].lifecycle
    assert lifecycle is not None and lifecycle.pre_stop is not None and lifecycle.pre_stop.sleep is not None
    assert lifecycle.pre_stop.sleep.seconds == 10


def test_printer_columns_point_at_status_fields() -> None:
    crd = find(all_docs(), "CustomResourceDefinition", "modeldeployments.spillover.dev")
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["MODEL", "STATE", "REMOTE%", "COPY", "COPY-READY", "AGE"]
    schema = version["schema"]["openAPIV3Schema"]["properties"]
    for name, type_ in (("MODEL", "string"), ("STATE", "string"), ("REMOTE%", "number"), ("COPY", "string"),
                        ("COPY-READY", "integer")):
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
    # Off loopback: xDS only with mTLS (never --insecure-xds), debug views only with the admin token.
    assert "--insecure-xds" not in args
    assert {"--xds-tls-cert=/etc/spillover/xds-tls/tls.crt", "--xds-tls-key=/etc/spillover/xds-tls/tls.key",
            "--xds-client-ca=/etc/spillover/xds-tls/ca.crt", "--admission=/etc/spillover/admission/admission.yaml",
            "--admin-token-file=/etc/spillover/admin-token/token"} <= set(args)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["xds-tls"] == "/etc/spillover/xds-tls" and volumes["xds-tls"]["secret"]["secretName"] == "spillover-xds-tls"
    assert volumes["admission"]["configMap"]["name"] == "spillover-admission"
    assert volumes["admin-token"]["secret"] == {
        "secretName": "spillover-admin-token", "optional": True, "defaultMode": 0o440
    }
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc-xds": 18000, "admin": 19000, "fleet": 18100}
    # The fleet's peer channel, signed with a token from a Secret the user creates: optional, so that the
    # pods start without it (no peer channel until then, a /readyz warning).
    assert "--fleet-address=0.0.0.0:18100" in args
    token_dir = "/var/run/secrets/spillover/fleet"
    assert f"--fleet-token-file={token_dir}/token" in args
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == token_dir]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"] == {"secretName": "spillover-fleet-token", "optional": True, "defaultMode": 0o440,
                                "items": [{"key": "token", "path": "token"}]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"  # the address peers reach
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
    container = find(all_docs(), "Deployment", "spillover")["spec"]["template"]["spec"]["containers"][0]
    args = parser.parse_args(container["args"])
    assert args.xds_address == ("0.0.0.0", 18000) and args.admin_address == ("0.0.0.0", 19000)
    assert args.xds_workers == 1  # the streams served in the main process, as without the flag


def _bootstrap_configmap() -> tuple[dict[str, Any], list[str]]:
    configmap = find(all_docs(), "ConfigMap", "spillover-gateway-bootstrap")
    command = shlex.split(configmap["metadata"]["annotations"]["spillover.dev/bootstrap-command"])
    assert command[:2] == ["spillover", "bootstrap"]
    return configmap, command


def test_gateway_bootstrap_is_spillover_bootstrap_output(tmp_path: Path) -> None:
    configmap, command = _bootstrap_configmap()
    out = subprocess.run(
        [sys.executable, "-m", "spillover", *command[1:], "--output-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    written = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert configmap["data"] == written, "regenerate the ConfigMap with the annotated command (--output-dir)"
    boot = yaml.safe_load(written["bootstrap.yaml"])
    endpoint = boot["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    address = endpoint["endpoint"]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("spillover-xds.spillover-system.svc.cluster.local", 18000)


def test_gateway_deployment_and_service() -> None:
    docs = all_docs()
    deployment = find(docs, "Deployment", "spillover-gateway")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 10000, "admin": 9901, "stats": 9902}
    # Prometheus may reach the stats port (GET /stats/prometheus only); the admin only the control plane.
    policy = find(docs, "NetworkPolicy", "spillover-gateway")["spec"]
    open_ports = {p["port"] for rule in policy["ingress"] if "from" not in rule for p in rule["ports"]}
    assert open_ports == {"http", "stats"}
    service = find(docs, "Service", "spillover-gateway")
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (80, "http")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v)
    assert volume["configMap"]["name"] == "spillover-gateway-bootstrap"
    tls = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "xds-tls")
    assert tls["secret"]["secretName"] == "spillover-gateway-xds-tls"
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "spillover-gateway"
    assert "--service-node" in container["args"]
    assert container["args"][container["args"].index("--service-node") + 1] == "$(POD_NAME)"
