"""The controller config (`serve --config`, `validate --config`): Beamlit's config.yaml as it is, spillover's
own keys, errors naming the key, the secret never shown, flags over the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from spillover.controller.config import ConfigError, load_controller_config, parse_controller_config
from spillover.names import FAILOVER_REMOTE
from spillover.policy.validate import validate_document
from spillover.server.admission import AdmissionRule, Refusal
from spillover.server.identity import PeerIdentity

REPO = Path(__file__).resolve().parents[2]
SECRET = "beamlit-client-s3cret"

# Beamlit's documented config.yaml (reference: Beamlit Controller, "Configuring Controller"), with the metric
# informer section of "Configuring Metric Source for Offloading" and a real-looking secret.
BEAMLIT_CONFIG = f"""
# -- enable-http2
enableHTTP2: false
# -- secure-metrics
secureMetrics: false
# -- namespaces
namespaces: default
# -- default-remote-backend
defaultRemoteBackend:
  # -- host
  host: "run.beamlit.dev"
  # -- path-prefix
  pathPrefix: "/$workspace/$model"
  # -- auth-config
  authConfig:
    # -- type
    type: oauth
    # -- oauth2
    oauthConfig:
      # -- client-id
      clientId: "my-client"
      # -- client-secret
      clientSecret: "{SECRET}"
      # -- token-url
      tokenUrl: "https://api.beamlit.dev/v0/oauth/token"
  # -- scheme
  scheme: https
metricInformer:
  type: prometheus
  prometheus:
    address: my-local-prom:9090
"""

SAMPLE_NO_REMOTE: dict[str, Any] = {
    "apiVersion": "deployment.beamlit.com/v1alpha1", "kind": "ModelDeployment",
    "metadata": {"name": "whisper", "namespace": "ml"},
    "spec": {"model": "whisper", "modelSourceRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "whisper"},
             "offloadingConfig": {"behavior": {"percentage": 50}, "metrics": [
                 {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}]}},
}


def parse(text: str, tmp_path: Path) -> object:
    return parse_controller_config(text.encode(), tmp_path / "config.yaml")


def problems(text: str, tmp_path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, tmp_path)
    return [str(e).replace(str(tmp_path) + "/", "") for e in info.value.errors]


def test_beamlits_documented_config_as_it_is(tmp_path: Path) -> None:
    config = parse_controller_config(BEAMLIT_CONFIG.encode(), tmp_path / "config.yaml")
    assert config.namespaces == ("default",)
    assert config.prometheus_url == "http://my-local-prom:9090"
    assert config.defaults.metric_source == "prometheus"
    remote = config.defaults.remote_backend
    assert remote is not None and (remote.host, remote.scheme, remote.path_prefix) == (
        "run.beamlit.dev", "https", "/$workspace/$model")
    oauth = remote.auth_config.oauth_config if remote.auth_config else None
    assert oauth is not None and oauth.client_secret is not None
    assert oauth.client_id == "my-client" and oauth.client_secret.get_secret_value() == SECRET
    assert SECRET not in repr(config) and SECRET not in str(config)
    # A ModelDeployment with metrics and no remoteBackend overflows to the default backend, its source
    # the metric informer's.
    md = validate_document(SAMPLE_NO_REMOTE, defaults=config.defaults)
    assert not isinstance(md, list), md
    assert md.spec.offloading_config is not None
    assert md.spec.offloading_config.remote_backend == remote
    assert md.spec.offloading_config.metrics[0].effective_source == "prometheus"
    assert remote.render_path_prefix(md.model, md.workspace) == "/ml/whisper"


def test_helm_values_nesting_and_the_other_keys(tmp_path: Path) -> None:
    config = parse_controller_config(yaml.safe_dump({"config": {
        "metricsAddr": ":8080", "probeAddr": ":8080", "enableLeaderElection": False,
        "namespaces": "team-a, team-b", "metricInformer": {"type": "kubernetes"},
        "proxyService": {"namespace": "beamlit", "name": "proxy", "port": 8000, "adminPort": 8081},
        "deployment": {"enabled": True, "configuration": {"type": "beamlit"}},
        "beamlit": True,
        "defaultBehavior": {"bufferDuration": "10s", "onMetricError": "standby"},
        "defaultRemoteBackend": {"host": "remote.example.com:8443", "scheme": "https", "workspace": "acme",
                                 "headers": {"X-Tenant": "acme"},
                                 "authConfig": {"type": "oauth", "oauthConfig": {
                                     "clientId": "c", "tokenUrl": "https://auth.example.com/token",
                                     "clientSecretRef": {"name": "remote-oauth", "key": "secret"}}}},
    }}).encode(), tmp_path / "values.yaml")
    assert config.admin_address == ("0.0.0.0", 8080)
    assert config.leader_election is False
    assert config.namespaces == ("team-a", "team-b")
    assert config.listen_port == 8000
    assert config.beamlit is True
    assert config.defaults.metric_source == "kubernetes"
    assert dict(config.defaults.behavior) == {"bufferDuration": "10s", "onMetricError": "standby"}
    remote = config.defaults.remote_backend
    assert remote is not None and remote.headers_to_add == {"x-tenant": "acme"} and remote.workspace == "acme"
    assert config.defaults.secret_namespace == "spillover-system"  # a Secret of the controller's namespace
    assert len(config.notes) == 2  # proxyService's other fields, deployment: accepted, said to do nothing
    md = validate_document(SAMPLE_NO_REMOTE, defaults=config.defaults)
    assert not isinstance(md, list), md
    assert md.spec.offloading_config is not None
    behavior = md.spec.offloading_config.behavior
    assert (behavior.percentage, behavior.buffer_duration, behavior.on_metric_error) == (50, 10.0, "standby")
    assert md.spec.offloading_config.metrics[0].effective_source == "kubernetes"


@pytest.mark.parametrize(("text", "expected"), [
    ("namespace: default\n", ['config.yaml namespace: unknown field (did you mean "namespaces"?)']),
    ("metricInformer: {type: datadog}\n", ["config.yaml metricInformer.type: must be one of: kubernetes, prometheus"]),
    ("metricInformer: {type: prometheus}\n", ["config.yaml metricInformer.prometheus.address: is required with type prometheus"]),
    ("secureMetrics: true\n", ["config.yaml secureMetrics: spillover's admin endpoint is plain HTTP: secureMetrics must be false"]),
    ("metricsAddr: '8080'\n", ['config.yaml metricsAddr: must be an address such as ":8080" or "127.0.0.1:8080"']),
    ("metricsAddr: ':8080'\nprobeAddr: ':8081'\n",
     ["config.yaml probeAddr: must equal metricsAddr: one admin endpoint serves /metrics, /healthz and /readyz"]),
    ("defaultRemoteBackend: {host: run.beamlit.dev, bogus: 1}\n", ["config.yaml defaultRemoteBackend.bogus: unknown field"]),
    ("defaultRemoteBackend: {host: 'https://run.beamlit.dev'}\n",
     ["config.yaml defaultRemoteBackend.host: must be a host name without scheme (set scheme: https instead)"]),
    ("defaultRemoteBackend: {host: h, headers: {a: b}, headersToAdd: {a: b}}\n",
     ["config.yaml defaultRemoteBackend.headers: set headers (Beamlit) or headersToAdd, not both"]),
    ("defaultBehavior: {bufferDuration: soon}\n",
     ['config.yaml defaultBehavior.bufferDuration: must be a duration such as "30s", "1m30s" or "500ms"']),
    ("- a\n- b\n", ["config.yaml: must be a mapping of configuration keys"]),
    ("a: 1\n---\nb: 2\n", ["config.yaml: must hold one document"]),
    # libyaml's words (the config is read with the policies' loader, PyYAML's C one).
    ("namespaces: [\n", ["config.yaml:2: invalid YAML: while parsing a flow node: did not find expected node content "
                         "(line 2, column 1)"]),
])
def test_errors_name_the_key_and_the_rule(tmp_path: Path, text: str, expected: list[str]) -> None:
    assert problems(text, tmp_path) == expected


def test_the_admission_section_is_the_xds_admission_policy(tmp_path: Path) -> None:
    config = parse_controller_config(yaml.safe_dump({"admission": {
        "maxStreamsPerIdentity": 8,
        "rules": [
            {"name": "gateways", "identities": ["spiffe://cluster.local/ns/*/sa/spillover-gateway"],
             "groups": ["spillover-gateway"], "nodeIds": ["spillover-gateway-*"], "maxStreams": 64},
            {"name": "local", "unauthenticated": True, "groups": ["dev-*"]},
        ],
    }}).encode(), tmp_path / "config.yaml")
    policy = config.admission
    assert policy is not None and [rule.name for rule in policy.rules] == ["gateways", "local"]
    gateway = PeerIdentity(True, "spiffe://cluster.local/ns/a/sa/spillover-gateway",
                           uris=("spiffe://cluster.local/ns/a/sa/spillover-gateway",))
    plain = PeerIdentity(False, "127.0.0.1")
    def decision(identity: PeerIdentity, node_id: str, group: str) -> str:
        verdict = policy.admit(identity, node_id, group)
        assert isinstance(verdict, AdmissionRule | Refusal), verdict
        return verdict.name if isinstance(verdict, AdmissionRule) else verdict.reason

    assert decision(gateway, "spillover-gateway-1", "spillover-gateway") == "gateways"
    assert decision(gateway, "spillover-gateway-1", "dev-1") == "group_not_admitted"
    assert decision(gateway, "someone-else", "spillover-gateway") == "node_not_admitted"
    assert decision(plain, "laptop", "dev-1") == "local"
    assert decision(plain, "laptop", "spillover-gateway") == "group_not_admitted"
    assert policy.stream_limit(gateway) == 64 and policy.stream_limit(plain) == 8
    assert parse_controller_config(b"namespaces: default\n", tmp_path / "config.yaml").admission is None


@pytest.mark.parametrize(("section", "expected"), [
    ("{rules: []}", "admission.rules: must be a non-empty list (a policy without rules admits nobody)"),
    ("{rules: [{name: a, groups: [g]}]}",
     "admission.rules[0]: needs identities (certificate SAN patterns) or unauthenticated: true"),
    ("{rules: [{name: a, identities: [x], groups: [g], bogus: 1}]}",
     "admission.rules[0]: unknown field 'bogus' (known: name, identities, unauthenticated, groups, nodeIds, maxStreams)"),
    ("{maxStreamsPerIdentity: 0, rules: [{name: a, identities: [x], groups: [g]}]}",
     "admission.maxStreamsPerIdentity: must be an integer from 1 to 1000000, got 0"),
])
def test_admission_errors_name_the_field(tmp_path: Path, section: str, expected: str) -> None:
    assert problems(f"admission: {section}\n", tmp_path) == [f"config.yaml {expected}"]


def test_split_weights(tmp_path: Path) -> None:
    assert parse_controller_config(b"splitWeights: runtime\n", tmp_path / "c.yaml").split_weights == "runtime"
    # Nothing said: the command line's default applies.
    assert parse_controller_config(b"namespaces: default\n", tmp_path / "c.yaml").split_weights is None
    assert problems("splitWeights: rtds\n", tmp_path) == ["config.yaml splitWeights: must be one of: route, runtime"]


def test_failover_remote(tmp_path: Path) -> None:
    # Every value the translator knows, and only those.
    for value in FAILOVER_REMOTE:
        config = parse_controller_config(f"failoverRemote: {value}\n", tmp_path / "c.yaml")
        assert config.failover_remote == value
    # Nothing said: the command line's default applies.
    assert parse_controller_config(b"namespaces: default\n", tmp_path / "c.yaml").failover_remote is None
    assert problems("failoverRemote: inplace\n", tmp_path) == [
        "config.yaml failoverRemote: must be one of: internal-listener, in-place"
    ]


def test_the_secret_is_never_in_an_error(tmp_path: Path) -> None:
    text = BEAMLIT_CONFIG.replace('tokenUrl: "https://api.beamlit.dev/v0/oauth/token"', "tokenUrl: nope")
    text = text.replace("clientId:", f"clientIdd: {SECRET}\n      clientId:")
    errors = problems(text, tmp_path)
    assert errors and all(SECRET not in e for e in errors), errors


def test_the_example_config(tmp_path: Path) -> None:
    config = load_controller_config(REPO / "examples" / "controller-config.yaml")
    assert config.namespaces == ("default",) and config.listen_port == 10000 and config.beamlit is True
    assert config.admin_address == ("0.0.0.0", 8080) and config.leader_election is True
    assert config.prometheus_url == "http://prometheus.monitoring:9090"
    assert config.defaults.metric_source == "kubernetes" and config.defaults.secret_namespace == "spillover-system"
    assert config.defaults.remote_backend is not None and config.defaults.remote_backend.workspace == "my-workspace"
    assert config.notes == ()


def test_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: No such file or directory"):
        load_controller_config(tmp_path / "missing.yaml")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spillover", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=60)


def test_validate_knows_the_default_remote_backend(tmp_path: Path) -> None:
    policy = tmp_path / "whisper.yaml"
    policy.write_text(yaml.safe_dump(SAMPLE_NO_REMOTE))
    without = run("validate", str(policy))
    assert without.returncode == 1
    assert (f"{policy}[0] spec.offloadingConfig.remoteBackend: is required with metrics (or a destination, or a defaultRemoteBackend "
            "in the controller config, --config): without it the model can never overflow") in without.stderr
    config = tmp_path / "config.yaml"
    config.write_text(BEAMLIT_CONFIG)
    with_config = run("validate", "--config", str(config), str(policy))
    assert with_config.returncode == 0, with_config.stderr
    assert with_config.stdout.startswith("ok: 1 model(s) valid")
    assert SECRET not in with_config.stdout + with_config.stderr
    config.write_text("namespace: default\n")
    broken = run("validate", "--config", str(config), str(policy))
    assert broken.returncode == 2
    assert 'spillover validate: --config ' in broken.stderr and 'namespace: unknown field' in broken.stderr


def test_serve_refuses_a_policy_directory_that_does_not_exist(tmp_path: Path) -> None:
    result = run("serve", "--policies", str(tmp_path / "nowhere"), "--admin-address", "127.0.0.1:0")
    assert result.returncode == 2
    assert result.stderr.strip() == f"spillover serve: --policies {tmp_path / 'nowhere'}: no such directory"


def test_serve_refuses_a_broken_config_before_starting(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(f"metricInformer: {{type: prometheus}}\ndefaultRemoteBackend: {{host: h, authConfig: {{type: oauth, oauthConfig: {{clientId: c, clientSecret: {SECRET}, tokenUrl: t}}}}}}\n")
    result = run("serve", "--config", str(config), "--policies", str(tmp_path / "policies"))
    assert result.returncode == 2
    assert "metricInformer.prometheus.address: is required with type prometheus" in result.stderr
    assert "defaultRemoteBackend.authConfig.oauthConfig.tokenUrl: must be an http:// or https:// URL" in result.stderr
    assert SECRET not in result.stderr
    config.write_text("admission: {rules: [{name: gateways, identities: ['spiffe://td/*'], groups: []}]}\n")
    result = run("serve", "--config", str(config), "--policies", str(tmp_path / "policies"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"spillover serve: --config {config} admission.rules[0].groups: must be a non-empty list of patterns"
    ), result.stderr
