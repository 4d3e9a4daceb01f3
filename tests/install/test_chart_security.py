"""The chart's security values with the real helm: mTLS on by default and plain-text xDS only when asked
for (and then explicit in the arguments), the admission ConfigMap read by spillover's own reader, the
NetworkPolicies, the admin token, and cert-manager objects (the self-signed CA exactly as
manifests/cert-manager/, or an issuer of yours). The renders that change the wire are run for real: the
control plane and a gateway Envoy started from the rendered objects (tests/harness/installed.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from spillover import app
from spillover.cli import build_parser
from spillover.server.admission import AdmissionPolicy, AdmissionRule, Refusal
from spillover.server.identity import PeerIdentity
from tests.harness.chart import (
    CHART,
    MANIFESTS,
    by_key,
    container,
    docs_of,
    find,
    helm_env,
    helm_template,
    run,
)
from tests.harness.installed import run_like_installed

pytestmark = pytest.mark.timeout(180)

GATEWAY_ID = "spiffe://cluster.local/ns/spillover-system/sa/spillover-gateway"
TOKEN = "chart-admin-token-0123456789"


def _kinds(docs: list[dict[str, Any]], kind: str) -> list[str]:
    return sorted(d["metadata"]["name"] for d in docs if d["kind"] == kind)


def _volumes(docs: list[dict[str, Any]], deployment: str) -> dict[str, dict[str, Any]]:
    pod = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    return {v["name"]: v for v in pod["volumes"]}


def _mounts(docs: list[dict[str, Any]], deployment: str) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container(docs, deployment)["volumeMounts"]}


def _admission(docs: list[dict[str, Any]], tmp_path: Path) -> AdmissionPolicy:
    """The rendered admission.yaml through the reader `spillover serve --admission` uses."""
    path = tmp_path / "admission.yaml"
    path.write_text(find(docs, "ConfigMap", "spillover-admission")["data"]["admission.yaml"])
    return app.load_admission_file(path)


def _verdict(policy: AdmissionPolicy, identity: PeerIdentity, node_id: str, group: str) -> str:
    verdict = policy.admit(identity, node_id, group)
    assert isinstance(verdict, AdmissionRule | Refusal), verdict
    return verdict.name if isinstance(verdict, AdmissionRule) else verdict.reason


def _certified(uri: str) -> PeerIdentity:
    return PeerIdentity(True, uri, uris=(uri,))


@pytest.fixture(scope="module")
def default_docs(helm_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return helm_template(helm_binary, tmp_path_factory.mktemp("helm"))


def test_defaults_are_mtls_admission_token_and_network_policies(
    default_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    docs = default_docs
    args = build_parser().parse_args(container(docs, "spillover")["args"])
    assert not args.insecure_xds
    mounts = _mounts(docs, "spillover")
    assert args.xds_tls_cert == Path(mounts["xds-tls"]) / "tls.crt"
    assert args.xds_client_ca == Path(mounts["xds-tls"]) / "ca.crt"
    assert args.admission == Path(mounts["admission"]) / "admission.yaml"
    assert args.admin_token_file == Path(mounts["admin-token"]) / "token"
    volumes = _volumes(docs, "spillover")
    assert volumes["xds-tls"]["secret"]["secretName"] == "spillover-xds-tls"
    assert volumes["admin-token"]["secret"] == {"secretName": "spillover-admin-token", "optional": True,
                                               "defaultMode": 0o440}
    assert _volumes(docs, "spillover-gateway")["xds-tls"]["secret"]["secretName"] == "spillover-gateway-xds-tls"
    assert find(docs, "Deployment", "spillover-gateway")["spec"]["template"]["spec"]["serviceAccountName"] == (
        "spillover-gateway")
    assert _kinds(docs, "NetworkPolicy") == ["spillover-control-plane", "spillover-gateway"]
    assert not [d for d in docs if d["apiVersion"].startswith("cert-manager.io/")]  # tls.certManager is off

    policy = _admission(docs, tmp_path)
    assert _verdict(policy, _certified(GATEWAY_ID), "spillover-gateway-5c9-x2x", "spillover-gateway") == "gateways"
    assert _verdict(policy, PeerIdentity(False, ""), "spillover-gateway-5c9-x2x", "spillover-gateway") != "gateways"
    assert _verdict(policy, _certified(GATEWAY_ID), "spillover-gateway-1", "another-group") == "group_not_admitted"


def test_plain_text_xds_is_explicit_and_refused_without_the_flag(helm_binary: Path, tmp_path: Path) -> None:
    docs = helm_template(helm_binary, tmp_path, values={"tls": {"enabled": False}})
    rendered = container(docs, "spillover")["args"]
    args = build_parser().parse_args(rendered)
    assert args.insecure_xds and (args.xds_tls_cert, args.xds_tls_key, args.xds_client_ca) == (None, None, None)
    assert "xds-tls" not in _volumes(docs, "spillover") and "xds-tls" not in _mounts(docs, "spillover")
    assert "xds-tls" not in _volumes(docs, "spillover-gateway")
    bootstrap = yaml.safe_load(find(docs, "ConfigMap", "spillover-gateway-bootstrap")["data"]["bootstrap.yaml"])
    # The xDS cluster, and the stats listener's cluster of the admin (gateway.statsPort): neither has TLS.
    clusters = {cluster["name"]: cluster for cluster in bootstrap["static_resources"]["clusters"]}
    assert sorted(clusters) == ["spillover_admin", "spillover_xds"]
    assert not [name for name, cluster in clusters.items() if "transport_socket" in cluster]
    # The gateways have no certificate: their rule admits plain-text clients, to their group only.
    policy = _admission(docs, tmp_path)
    anonymous = PeerIdentity(False, "")
    assert _verdict(policy, anonymous, "spillover-gateway-5c9-x2x", "spillover-gateway") == "gateways"
    assert _verdict(policy, anonymous, "spillover-gateway-5c9-x2x", "other") == "group_not_admitted"

    # serve takes the rendered arguments; the same without --insecure-xds is refused on 0.0.0.0.
    security = app.security_options(xds_host=args.xds_address[0], insecure_xds=args.insecure_xds)
    assert security.xds.insecure and security.xds.tls is None
    with pytest.raises(ValueError, match=r"--xds-address 0\.0\.0\.0: plain text .* --insecure-xds to accept that"):
        app.security_options(xds_host=args.xds_address[0], insecure_xds=False)


def test_network_policies_follow_their_switches(helm_binary: Path, tmp_path: Path) -> None:
    docs = helm_template(helm_binary, tmp_path, values={"networkPolicy": {"enabled": False}})
    assert _kinds(docs, "NetworkPolicy") == ["spillover-gateway"]
    docs = helm_template(helm_binary, tmp_path, values={
        "networkPolicy": {"enabled": False}, "gateway": {"networkPolicy": False}})
    assert _kinds(docs, "NetworkPolicy") == []
    docs = helm_template(helm_binary, tmp_path, values={
        "networkPolicy": {"monitoringNamespaceLabels": {"team": "observability"}}})
    ingress = find(docs, "NetworkPolicy", "spillover-control-plane")["spec"]["ingress"]
    by_port = {rule["ports"][0]["port"]: rule["from"] for rule in ingress}
    assert by_port["admin"] == [{"namespaceSelector": {"matchLabels": {"team": "observability"}}}]
    assert by_port["grpc-xds"] == [{"namespaceSelector": {}, "podSelector": {
        "matchLabels": {"app.kubernetes.io/name": "spillover-gateway"}}}]
    docs = helm_template(helm_binary, tmp_path, values={"networkPolicy": {"monitoringNamespace": "prometheus"}})
    ingress = find(docs, "NetworkPolicy", "spillover-control-plane")["spec"]["ingress"]
    assert {rule["ports"][0]["port"]: rule["from"] for rule in ingress}["admin"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "prometheus"}}}]
    # The fleet's peer channel is open to the other replicas only while there is one.
    assert by_port["fleet"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "spillover", "app.kubernetes.io/component": "control-plane"}}}]
    docs = helm_template(helm_binary, tmp_path, values={"fleet": {"tokenSecret": ""}})
    ingress = find(docs, "NetworkPolicy", "spillover-control-plane")["spec"]["ingress"]
    assert {rule["ports"][0]["port"] for rule in ingress} == {"grpc-xds", "admin"}


def test_admission_off_rules_of_yours_and_no_admin_token(helm_binary: Path, tmp_path: Path) -> None:
    docs = helm_template(helm_binary, tmp_path, values={"admission": {"enabled": False}, "admin": {"tokenSecret": ""}})
    args = build_parser().parse_args(container(docs, "spillover")["args"])
    assert args.admission is None and args.admin_token_file is None
    assert not {"admission", "admin-token"} & (set(_volumes(docs, "spillover")) | set(_mounts(docs, "spillover")))
    assert "spillover-admission" not in _kinds(docs, "ConfigMap")

    tenant = "spiffe://cluster.local/ns/tenant-b/sa/gateway"
    docs = helm_template(helm_binary, tmp_path, values={"admission": {"maxStreamsPerIdentity": 16, "rules": [
        {"name": "tenant-b", "identities": [tenant], "groups": ["tenant-b"], "maxStreams": 4}]}})
    policy = _admission(docs, tmp_path)
    assert [rule.name for rule in policy.rules] == ["gateways", "tenant-b"]
    assert _verdict(policy, _certified(tenant), "edge-1", "tenant-b") == "tenant-b"
    assert _verdict(policy, _certified(tenant), "spillover-gateway-1", "spillover-gateway") == "group_not_admitted"
    assert _verdict(policy, _certified(GATEWAY_ID), "spillover-gateway-1", "spillover-gateway") == "gateways"
    assert policy.stream_limit(_certified(tenant)) == 4 and policy.stream_limit(_certified(GATEWAY_ID)) == 16

    docs = helm_template(helm_binary, tmp_path, values={"admission": {"gatewayRule": False, "rules": [
        {"name": "tenant-b", "identities": [tenant], "groups": ["tenant-b"]}]}})
    assert [rule.name for rule in _admission(docs, tmp_path).rules] == ["tenant-b"]


def test_security_values_fail_with_a_clear_message(helm_binary: Path, tmp_path: Path) -> None:
    for values, message in (
        ({"admission": {"gatewayRule": False}},
         "admission: gatewayRule is false and rules is empty: a policy without rules admits nobody"),
        ({"admission": {"maxStreamsPerIdentity": 0}}, "at '/admission/maxStreamsPerIdentity'"),
        ({"admission": {"rules": [{"name": "x", "groups": []}]}}, "at '/admission/rules/0/groups'"),
        ({"admission": {"rules": [{"name": "x", "groups": ["g"], "group": "g"}]}},
         "at '/admission/rules/0': additional properties 'group' not allowed"),
        ({"tls": {"serverSecret": "Not_A_Name"}}, "at '/tls/serverSecret'"),
        ({"tls": {"gatewayIdentity": "not a uri"}}, "at '/tls/gatewayIdentity'"),
        ({"tls": {"certManager": {"duration": "30 days"}}}, "at '/tls/certManager/duration'"),
        ({"networkPolicy": {"enable": False}}, "at '/networkPolicy': additional properties 'enable' not allowed"),
        ({"networkPolicy": {"monitoringNamespace": "Monitoring"}}, "at '/networkPolicy/monitoringNamespace'"),
    ):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(values))
        out = subprocess.run([str(helm_binary), "template", "spillover", str(CHART), "--values", str(path)],
                             capture_output=True, text=True, timeout=60, env=helm_env(tmp_path))
        assert out.returncode != 0 and message in out.stderr, (values, out.stderr)


def test_cert_manager_self_signed_is_exactly_the_manifests(
    helm_binary: Path, kubectl_binary: Path, tmp_path: Path
) -> None:
    docs = helm_template(helm_binary, tmp_path, values={"tls": {"certManager": {"enabled": True}}})
    rendered = by_key([d for d in docs if d["apiVersion"].startswith("cert-manager.io/")])
    kustomized = by_key(docs_of(run([kubectl_binary, "kustomize", MANIFESTS / "cert-manager"])))
    assert sorted(rendered) == sorted(kustomized)
    for key, doc in kustomized.items():
        assert rendered[key] == doc, f"{key}: the chart and manifests/cert-manager differ"


def test_cert_manager_with_an_issuer_of_yours(helm_binary: Path, tmp_path: Path) -> None:
    issuer = {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    docs = helm_template(helm_binary, tmp_path, values={
        "namespace": {"name": "llm-gateway"},
        "tls": {"serverName": "xds.llm.example", "gatewayIdentity": "spiffe://example/ns/llm-gateway/sa/edge",
                "serverSecret": "llm-xds-server", "gatewaySecret": "llm-xds-gateway",
                "certManager": {"enabled": True, "issuerRef": issuer, "duration": "2160h", "renewBefore": "720h"}},
    })
    assert _kinds(docs, "Issuer") == []  # no CA of the chart's own
    server, gateway = find(docs, "Certificate", "spillover-xds")["spec"], find(
        docs, "Certificate", "spillover-gateway-xds")["spec"]
    assert server["issuerRef"] == issuer and gateway["issuerRef"] == issuer
    assert (server["duration"], server["renewBefore"]) == ("2160h", "720h")
    assert server["secretName"] == "llm-xds-server" and gateway["secretName"] == "llm-xds-gateway"
    assert server["dnsNames"][0] == "xds.llm.example" and "spillover-xds.llm-gateway.svc" in server["dnsNames"]
    assert gateway["uris"] == ["spiffe://example/ns/llm-gateway/sa/edge"]
    # The gateways check that name, and the admission rule admits that identity.
    bootstrap = yaml.safe_load(find(docs, "ConfigMap", "spillover-gateway-bootstrap")["data"]["bootstrap.yaml"])
    xds = next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "spillover_xds")
    assert xds["transport_socket"]["typed_config"]["sni"] == "xds.llm.example"
    policy = _admission(docs, tmp_path)
    assert _verdict(policy, _certified("spiffe://example/ns/llm-gateway/sa/edge"), "spillover-gateway-1",
                    "spillover-gateway") == "gateways"
    assert _verdict(policy, _certified(GATEWAY_ID), "spillover-gateway-1", "spillover-gateway") != "gateways"


# -- the real thing: spillover and a gateway Envoy as the chart's objects start them ----------------------


def test_a_gateway_installed_by_the_chart_is_admitted_over_mtls(helm_binary: Path, tmp_path: Path) -> None:
    identity = "spiffe://corp.example/ns/llm-gateway/sa/edge"
    docs = helm_template(helm_binary, tmp_path, values={
        "namespace": {"name": "llm-gateway"},
        "clusterDomain": "corp.example",
        "tls": {"serverName": "xds.llm.corp.example", "gatewayIdentity": identity,
                "serverSecret": "llm-xds-server", "gatewaySecret": "llm-xds-gateway",
                "certManager": {"enabled": True}},
        "admin": {"tokenSecret": "ops-admin-token"},
    })
    (tmp_path / "run").mkdir()
    started = run_like_installed(tmp_path / "run", docs, TOKEN, pod_name="spillover-gateway-7d9f-abcde")
    assert started.without_token == 401
    proxy = started.proxy
    assert (proxy["node_id"], proxy["group"], proxy["identity"], proxy["admitted_by"]) == (
        "spillover-gateway-7d9f-abcde", "spillover-gateway", identity, "gateways")
    assert started.handshakes >= 1


def test_a_gateway_installed_with_plain_text_xds_is_admitted_by_its_rule(helm_binary: Path, tmp_path: Path) -> None:
    docs = helm_template(helm_binary, tmp_path, values={"tls": {"enabled": False}})
    (tmp_path / "run").mkdir()
    started = run_like_installed(tmp_path / "run", docs, TOKEN, pod_name="spillover-gateway-7d9f-abcde")
    assert started.without_token == 401
    proxy = started.proxy
    assert (proxy["node_id"], proxy["group"], proxy["admitted_by"]) == (
        "spillover-gateway-7d9f-abcde", "spillover-gateway", "gateways")
    assert started.handshakes == 0  # no TLS on the xDS cluster
