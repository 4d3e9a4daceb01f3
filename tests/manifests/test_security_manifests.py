"""manifests/ security: mTLS between the gateway Envoys and the control plane exactly as the manifests
wire it (a real spillover with the Deployment's arguments, a real Envoy with the gateway ConfigMap and the
Deployment's arguments, certificates with the SANs of the cert-manager Certificates), the admission
ConfigMap, the NetworkPolicies, and the cert-manager objects accepted by a real API server with
cert-manager's own CRDs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.installed import run_like_installed
from tests.harness.kube import KubeCluster
from tests.harness.kube_status import MANIFESTS, load_docs

pytestmark = pytest.mark.timeout(120)

POD = "spillover-gateway-7d9f-abcde"
TOKEN = "manifests-admin-token-0123456789"


def docs() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    out: list[dict[str, Any]] = []
    for name in kustomization["resources"]:
        out += load_docs(MANIFESTS / name)
    return out


def find(kind: str, name: str, documents: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    (doc,) = [d for d in (documents or docs()) if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def certificates() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in load_docs(MANIFESTS / "cert-manager" / "certificates.yaml")
            if d["kind"] == "Certificate"}


def container(deployment: str) -> dict[str, Any]:
    (found,) = find("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return dict(found)


# -- the pieces agree with each other ------------------------------------------------------------------------


def test_certificates_name_what_each_side_checks() -> None:
    certs = certificates()
    server, client = certs["spillover-xds"]["spec"], certs["spillover-gateway-xds"]["spec"]
    assert server["secretName"] == "spillover-xds-tls" and client["secretName"] == "spillover-gateway-xds-tls"
    # The gateways check spillover's certificate for their bootstrap's server name...
    bootstrap = yaml.safe_load(find("ConfigMap", "spillover-gateway-bootstrap")["data"]["bootstrap.yaml"])
    socket = bootstrap["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]
    checked = socket["common_tls_context"]["combined_validation_context"]["default_validation_context"]
    (san,) = checked["match_typed_subject_alt_names"]
    assert san["matcher"]["exact"] == socket["sni"] in server["dnsNames"]
    assert "server auth" in server["usages"] and "client auth" in client["usages"]
    # ...and spillover admits the gateways' certificate identity to their group, with their pod names.
    admission = yaml.safe_load(find("ConfigMap", "spillover-admission")["data"]["admission.yaml"])
    (rule,) = admission["rules"]
    assert rule["identities"] == client["uris"]
    args = container("spillover-gateway")["args"]
    assert rule["groups"] == [args[args.index("--service-cluster") + 1]]
    assert rule["nodeIds"] == ["spillover-gateway-*"]
    # The identity is the gateways' own ServiceAccount.
    namespace, account = client["uris"][0].removeprefix("spiffe://cluster.local/ns/").split("/sa/")
    gateway_pod = find("Deployment", "spillover-gateway")["spec"]["template"]["spec"]
    assert (namespace, account) == ("spillover-system", gateway_pod["serviceAccountName"])
    find("ServiceAccount", account)


def test_network_policies_let_only_gateways_reach_xds_replicas_the_peer_channel_and_monitoring_admin() -> None:
    documents = docs()
    policy = find("NetworkPolicy", "spillover-control-plane", documents)["spec"]
    control = find("Deployment", "spillover", documents)["spec"]["template"]
    gateway = find("Deployment", "spillover-gateway", documents)["spec"]["template"]
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["podSelector"]["matchLabels"].items() <= control["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in control["spec"]["containers"][0]["ports"]}
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in policy["ingress"]}
    assert set(by_port) == set(ports) == {"grpc-xds", "admin", "fleet"}
    (xds_peer,) = by_port["grpc-xds"]
    assert xds_peer["podSelector"]["matchLabels"].items() <= gateway["metadata"]["labels"].items()
    assert xds_peer["namespaceSelector"] == {}  # gateways next to the models they front, in any namespace
    (admin_peer,) = by_port["admin"]
    assert admin_peer == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    # The fleet's peer channel: only the other control-plane replicas, in their own namespace (no
    # namespaceSelector), reach it.
    (fleet_peer,) = by_port["fleet"]
    assert fleet_peer == {"podSelector": {"matchLabels": policy["podSelector"]["matchLabels"]}}
    # The probes use the admin port: they keep working (kubelet traffic comes from the node, see security.yaml).
    probes = [control["spec"]["containers"][0][p]["httpGet"] for p in ("startupProbe", "livenessProbe", "readinessProbe")]
    assert {p["port"] for p in probes} == {"admin"} and {p["path"] for p in probes} == {"/healthz", "/readyz"}


def test_cert_manager_objects_are_accepted_by_a_real_api_server_with_its_crds(
    cluster: KubeCluster, kubectl_binary: Path
) -> None:
    from tests.harness.cert_manager import cert_manager_crds

    try:
        crds = cert_manager_crds()
    except RuntimeError as error:
        pytest.fail(f"cert-manager's CRDs could not be fetched: {error}")
    cluster.apply(crds)
    cluster.apply(load_docs(MANIFESTS / "namespace.yaml"))
    applied = cluster.apply(load_docs(MANIFESTS / "cert-manager" / "certificates.yaml"))  # strict validation
    assert sorted((o["kind"], o["metadata"]["name"]) for o in applied) == [
        ("Certificate", "spillover-ca"), ("Certificate", "spillover-gateway-xds"), ("Certificate", "spillover-xds"),
        ("Issuer", "spillover-ca"), ("Issuer", "spillover-selfsigned"),
    ]
    built = subprocess.run([str(kubectl_binary), "kustomize", str(MANIFESTS / "cert-manager")], capture_output=True,
                           text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    assert len([d for d in yaml.safe_load_all(built.stdout) if d]) == 5


# -- the real thing: spillover and a gateway Envoy as the manifests start them ----------------------------


def test_a_gateway_started_like_the_manifests_connects_over_mtls_and_is_admitted(tmp_path: Path) -> None:
    """The Deployments' own arguments and mounts, certificates with the SANs of the cert-manager
    Certificates, the ConfigMaps' files (tests/harness/installed.py)."""
    client_spec = certificates()["spillover-gateway-xds"]["spec"]
    started = run_like_installed(tmp_path, [*docs(), *load_docs(MANIFESTS / "cert-manager" / "certificates.yaml")],
                                 TOKEN, pod_name=POD)
    assert started.without_token == 401  # the admin token is needed
    proxy = started.proxy
    assert (proxy["node_id"], proxy["group"], proxy["identity"], proxy["admitted_by"]) == (
        POD, "spillover-gateway", client_spec["uris"][0], "gateways"
    )
    assert started.handshakes
    # Prometheus' port serves the stats, and nothing else of the admin.
    assert started.stats_scrape is not None and "envoy_server_live" in started.stats_scrape
    assert started.stats_other_path == 404
