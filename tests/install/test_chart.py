"""charts/spillover with the real helm: lint, the default render is exactly `kubectl kustomize manifests/`,
non-default values land where they should (and parse with the real CLI), the gateway bootstrap is
`spillover bootstrap`'s output for any values (the RTDS layer of `splitWeights: runtime` included, run for
real with spillover in that mode), dashboards ConfigMaps for zero or several files, and the
rendered objects are accepted by a real kube-apiserver, including Pod Security `restricted` (and the
cert-manager objects by cert-manager's own CRDs). The security values: tests/install/test_chart_security.py."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.chart import (
    CHART,
    CUSTOM,
    MANIFESTS,
    REPO,
    by_key,
    chart_copy,
    container,
    docs_of,
    find,
    helm_env,
    helm_template,
    is_dashboard,
    run,
)
from tests.harness.kube import KubeCluster

pytestmark = pytest.mark.timeout(180)

@pytest.fixture(scope="module")
def default_docs(helm_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return helm_template(helm_binary, tmp_path_factory.mktemp("helm"))


@pytest.fixture(scope="module")
def custom_docs(helm_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return helm_template(helm_binary, tmp_path_factory.mktemp("helm"), values=CUSTOM)


def test_helm_lint_with_default_and_custom_values(helm_binary: Path, tmp_path: Path) -> None:
    values = tmp_path / "custom.yaml"
    values.write_text(yaml.safe_dump(CUSTOM))
    for extra in ([], ["--values", str(values)]):
        out = run([helm_binary, "lint", "--strict", CHART, *extra], env=helm_env(tmp_path))
        assert "1 chart(s) linted, 0 chart(s) failed" in out, out


def test_default_render_is_exactly_the_kustomization(
    default_docs: list[dict[str, Any]], kubectl_binary: Path
) -> None:
    kustomized = by_key(docs_of(run([kubectl_binary, "kustomize", MANIFESTS])))
    # Dashboards are files outside manifests/, which kustomize may not read: the chart alone ships them.
    rendered = by_key([d for d in default_docs if not is_dashboard(d)])
    assert sorted(rendered) == sorted(kustomized)
    for key, doc in kustomized.items():
        assert rendered[key] == doc, f"{key}: the chart and manifests/ differ"
    # Nothing of Helm's own (helm.sh/chart, app.kubernetes.io/managed-by) is added by the templates.
    for doc in rendered.values():
        meta = doc["metadata"]
        for name in [*meta.get("labels", {}), *meta.get("annotations", {})]:
            assert "helm" not in name and name != "app.kubernetes.io/managed-by", (name, doc["kind"])


def test_custom_values_land_where_they_should(custom_docs: list[dict[str, Any]]) -> None:
    docs = custom_docs
    namespaced = [d for d in docs if d["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole",
                                                        "ClusterRoleBinding")]
    namespaces = {(d["kind"], d["metadata"]["name"]): d["metadata"]["namespace"] for d in namespaced}
    assert find(docs, "Namespace", "llm-gateway")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    # Everything in the chart's namespace but the secrets' RoleBindings and the dashboards (their own values).
    assert {ns for (kind, name), ns in namespaces.items()
            if kind != "RoleBinding" and not name.startswith("spillover-dashboard-")} == {"llm-gateway"}
    assert {ns for (_, name), ns in namespaces.items() if name.startswith("spillover-dashboard-")} == {"monitoring"}

    deployment = find(docs, "Deployment", "spillover")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 3
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"pool": "system"} and pod["tolerations"][0]["key"] == "dedicated"
    c = container(docs, "spillover")
    assert c["image"] == "registry.example.com:5000/ml/spillover:0.1.0-rc1"
    assert c["imagePullPolicy"] == "Always"
    assert c["resources"] == CUSTOM["resources"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc-xds": 18500, "admin": 19500, "fleet": 18600}
    assert "--fleet-address=0.0.0.0:18600" in c["args"]
    (fleet_token,) = [v for v in pod["volumes"] if v["name"] == "fleet-token"]
    assert fleet_token["secret"]["secretName"] == "gateway-peers" and fleet_token["secret"]["optional"] is True
    assert {"name": "GRPC_VERBOSITY", "value": "ERROR"} in c["env"]
    assert c["args"][-1] == "--leader-election-namespace=llm-gateway"
    token_mount = next(m for m in c["volumeMounts"] if m["name"] == "prometheus-token")
    assert "--prometheus-token-file=" + token_mount["mountPath"] + "/token" in c["args"]
    token_volume = next(v for v in pod["volumes"] if v["name"] == "prometheus-token")
    assert token_volume["secret"]["secretName"] == "prom-token"
    # The controller config: a ConfigMap, mounted read-only, read with --config; a change rolls the pods.
    config_mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert config_mount["readOnly"] and "--config=" + config_mount["mountPath"] + "/config.yaml" in c["args"]
    config_volume = next(v for v in pod["volumes"] if v["name"] == "config")
    config_map = find(docs, "ConfigMap", config_volume["configMap"]["name"])
    assert yaml.safe_load(config_map["data"]["config.yaml"]) == CUSTOM["controller"]["config"]
    assert len(deployment["spec"]["template"]["metadata"]["annotations"]["spillover.dev/config-sha256"]) == 64
    assert find(docs, "Service", "spillover-xds")["spec"]["ports"][0]["port"] == 18500
    assert find(docs, "Service", "spillover-admin")["spec"]["ports"][0]["port"] == 19500
    budget = find(docs, "PodDisruptionBudget", "spillover")["spec"]
    assert budget["maxUnavailable"] == 1 and "minAvailable" not in budget

    # Secrets: a RoleBinding in each watched namespace instead of the cluster-wide binding.
    bindings = [d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "spillover-secrets"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["models-a", "models-b"]
    assert all(b["subjects"] == [{"kind": "ServiceAccount", "name": "spillover", "namespace": "llm-gateway"}]
               for b in bindings)
    assert not [d for d in docs if d["kind"] == "ClusterRoleBinding" and d["metadata"]["name"] == "spillover-secrets"]
    role = find(docs, "Role", "spillover-leader-election")
    # The fleet's Leases (gateway-leader, gateway-leader-member-<pod>, gateway-leader-decisions) are named
    # after pods: the Role is narrowed to the control plane's namespace, not to names.
    assert role["metadata"]["namespace"] == "llm-gateway"
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}]
    (subject,) = find(docs, "ClusterRoleBinding", "spillover")["subjects"]
    assert subject["namespace"] == "llm-gateway"

    gateway = find(docs, "Deployment", "spillover-gateway")
    assert gateway["spec"]["replicas"] == 4
    # splitWeights=runtime: a bootstrap with the RTDS layer, and the gateways roll when it is switched.
    assert gateway["spec"]["template"]["metadata"]["annotations"] == {"spillover.dev/split-weights": "runtime"}
    g = container(docs, "spillover-gateway")
    assert g["image"] == "mirror.example.com/envoyproxy/envoy:v1.40.1" and g["imagePullPolicy"] == "Always"
    assert {p["name"]: p["containerPort"] for p in g["ports"]} == {"http": 10080, "admin": 9911, "stats": 9912}
    assert g["args"][g["args"].index("--log-level") + 1] == "debug"
    assert g["args"][g["args"].index("--drain-time-s") + 1] == "45"
    assert g["resources"] == CUSTOM["gateway"]["resources"]
    service = find(docs, "Service", "spillover-gateway")["spec"]
    assert service["type"] == "LoadBalancer" and service["ports"][0]["port"] == 8080
    policy = find(docs, "NetworkPolicy", "spillover-gateway")["spec"]
    assert policy["ingress"][1]["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "llm-gateway"
    }


def test_control_plane_args_parse_with_the_real_cli(
    default_docs: list[dict[str, Any]], custom_docs: list[dict[str, Any]]
) -> None:
    from spillover.cli import build_parser

    default = build_parser().parse_args(container(default_docs, "spillover")["args"])
    assert default.command == "serve" and default.kubernetes
    assert (default.xds_address, default.admin_address, default.listen) == (
        ("0.0.0.0", 18000), ("0.0.0.0", 19000), ("0.0.0.0", 10000))
    # No --no-leader-election: None leaves it to a config's enableLeaderElection, else on.
    assert default.namespace == [] and default.prometheus_url is None and default.leader_election is None
    assert default.config is None and not [d for d in default_docs if d["metadata"]["name"] == "spillover-config"]
    assert default.xds_workers == 1
    assert default.split_weights is None, "the default leaves the mode to spillover (route)"

    custom = build_parser().parse_args(container(custom_docs, "spillover")["args"])
    assert custom.log_level == "DEBUG" and custom.kubernetes
    assert custom.xds_address == ("0.0.0.0", 18500) and custom.admin_address == ("0.0.0.0", 19500)
    assert custom.xds_workers == 3
    assert custom.split_weights == "runtime"
    assert custom.listen == ("0.0.0.0", 10080), "the control plane's listener is the gateway's containerPort"
    assert custom.namespace == ["models-a", "models-b"]
    assert custom.prometheus_url == "http://prometheus.monitoring.svc:9090"
    assert custom.prometheus_token_file == Path("/var/run/secrets/spillover/prometheus/token")
    assert (custom.evaluation_interval, custom.debounce, custom.debounce_max) == (0.25, 0.0, 2.0)
    assert custom.group_by == "metadata:tenant"
    assert custom.beamlit and not custom.aibrix
    assert custom.leader_election is None and custom.leader_election_name == "gateway-leader"
    assert custom.leader_election_namespace == "llm-gateway"
    # The rendered config is one the real config reader accepts, and it says what the values said.
    from spillover.controller.config import parse_controller_config

    assert custom.config == Path("/etc/spillover/config/config.yaml")
    text = find(custom_docs, "ConfigMap", "spillover-config")["data"]["config.yaml"]
    config = parse_controller_config(text, custom.config)
    remote = config.defaults.remote_backend
    assert remote is not None and remote.host == "run.beamlit.dev" and remote.scheme == "https"


def test_a_controller_config_file_is_shipped_as_it_is(helm_binary: Path, tmp_path: Path) -> None:
    """`--set-file controller.config=config.yaml`: Beamlit's config.yaml, text and comments, in the ConfigMap."""
    from spillover.cli import build_parser
    from spillover.controller.config import parse_controller_config

    example = REPO / "examples" / "controller-config.yaml"
    docs = helm_template(helm_binary, tmp_path, "--set-file", f"controller.config={example}")
    text = find(docs, "ConfigMap", "spillover-config")["data"]["config.yaml"]
    assert text == example.read_text().rstrip("\n") + "\n"
    args = build_parser().parse_args(container(docs, "spillover")["args"])
    assert args.config == Path("/etc/spillover/config/config.yaml")
    config = parse_controller_config(text, args.config)
    assert config.beamlit is True and config.namespaces == ("default",)


def test_metadata_patch_rbac_follows_its_values(default_docs: list[dict[str, Any]], helm_binary: Path,
                                                tmp_path: Path) -> None:
    """`patch` on the ModelDeployments themselves: Beamlit's for the annotations, spillover's for the finalizer."""
    def patched_groups(docs: list[dict[str, Any]]) -> set[str]:
        rules = find(docs, "ClusterRole", "spillover")["rules"]
        return {group for r in rules if r["resources"] == ["modeldeployments"] and r["verbs"] == ["patch"]
                for group in r["apiGroups"]}

    assert patched_groups(default_docs) == {"deployment.beamlit.com", "spillover.dev"}
    for values, left in (({"beamlitAnnotations": False}, {"spillover.dev"}),
                         ({"destinationFinalizer": False}, {"deployment.beamlit.com"}),
                         ({"beamlitAnnotations": False, "destinationFinalizer": False}, set())):
        docs = helm_template(helm_binary, tmp_path, values={"rbac": values})
        assert patched_groups(docs) == left, values


def test_leader_election_off_renders_no_lease_rbac(helm_binary: Path, tmp_path: Path) -> None:
    from spillover.cli import build_parser

    docs = helm_template(helm_binary, tmp_path, values={"replicas": 1, "leaderElection": {"enabled": False}})
    assert not [d for d in docs if d["metadata"]["name"] == "spillover-leader-election"]
    args = build_parser().parse_args(container(docs, "spillover")["args"])
    assert args.leader_election is False


PLAIN_XDS: dict[str, Any] = {"tls": {"enabled": False}}
PLAIN_XDS_RUNTIME: dict[str, Any] = {"tls": {"enabled": False}, "splitWeights": "runtime"}


@pytest.mark.parametrize("values", [None, CUSTOM, PLAIN_XDS, PLAIN_XDS_RUNTIME],
                         ids=["default", "custom", "plain-text", "plain-text-runtime"])
def test_gateway_bootstrap_is_spillover_bootstrap_output(
    helm_binary: Path, tmp_path: Path, values: dict[str, Any] | None
) -> None:
    docs = helm_template(helm_binary, tmp_path, values=values)
    configmap = find(docs, "ConfigMap", "spillover-gateway-bootstrap")
    command = shlex.split(configmap["metadata"]["annotations"]["spillover.dev/bootstrap-command"])
    assert command[:2] == ["spillover", "bootstrap"]
    written_to = tmp_path / "bootstrap"
    out = subprocess.run([sys.executable, "-m", "spillover", *command[1:], "--output-dir", str(written_to)],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    written = {p.name: p.read_text() for p in written_to.iterdir()}
    assert configmap["data"] == written, "every file of the ConfigMap is what the annotated command writes"
    boot = yaml.safe_load(written["bootstrap.yaml"])
    # splitWeights=runtime: the layer spillover's generator writes (the custom values set runtime too).
    from spillover.translate.bootstrap import split_weights_runtime

    runtime = values is CUSTOM or values is PLAIN_XDS_RUNTIME
    assert ("--split-weights" in command) is runtime
    assert boot.get("layered_runtime") == (split_weights_runtime() if runtime else None)
    xds = next(c for c in boot["static_resources"]["clusters"] if c["name"] == "spillover_xds")
    socket = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    if values is CUSTOM:
        assert socket == {"address": "spillover-xds.llm-gateway.svc.corp.example", "port_value": 18500}
        assert boot["admin"]["address"]["socket_address"]["port_value"] == 9911
        assert boot["node"]["metadata"]["spillover.admin_port"] == 9911
    else:
        assert socket == {"address": "spillover-xds.spillover-system.svc.cluster.local", "port_value": 18000}
    # Prometheus' port: the stats listener, which proxies to this admin's /stats/prometheus only.
    (stats,) = boot["static_resources"]["listeners"]
    admin = next(c for c in boot["static_resources"]["clusters"] if c["name"] == "spillover_admin")
    admin_socket = admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert stats["address"]["socket_address"]["port_value"] == (9912 if values is CUSTOM else 9902)
    assert admin_socket == {"address": "127.0.0.1", "port_value": 9911 if values is CUSTOM else 9901}
    if values is PLAIN_XDS or values is PLAIN_XDS_RUNTIME:
        assert "transport_socket" not in xds and sorted(written) == ["bootstrap.yaml"]
        return
    tls = xds["transport_socket"]["typed_config"]
    assert tls["sni"] == ("xds.llm.corp.example" if values is CUSTOM else "spillover-xds.spillover-system.svc")
    assert sorted(written) == ["bootstrap.yaml", "xds-client-certificate.yaml", "xds-server-ca.yaml"]
    # The files the SDS configs name are where the Deployment mounts the ConfigMap and the Secret.
    gateway = find(docs, "Deployment", "spillover-gateway")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in container(docs, "spillover-gateway")["volumeMounts"]}
    assert mounts["bootstrap"] == "/etc/envoy" and mounts["xds-tls"] == "/etc/spillover/xds-tls"
    secret = next(v for v in gateway["volumes"] if v["name"] == "xds-tls")["secret"]["secretName"]
    assert secret == ("llm-xds-gateway" if values is CUSTOM else "spillover-gateway-xds-tls")
    certificate = yaml.safe_load(written["xds-client-certificate.yaml"])["resources"][0]["tls_certificate"]
    assert certificate["certificate_chain"]["filename"] == "/etc/spillover/xds-tls/tls.crt"


def test_the_chart_bootstrap_is_regenerated_from_the_generator() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("chart_bootstrap", CHART / "bootstrap.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (CHART / "templates" / "gateway.yaml").read_text()
    assert module.rewritten(text) == text, "run: .venv/bin/python charts/spillover/bootstrap.py"


def test_split_weights_runtime_adds_the_mode_and_the_layer_and_nothing_else(
    helm_binary: Path, tmp_path: Path
) -> None:
    """splitWeights=runtime changes three objects, each only by what the mode needs; `route` written out
    renders byte for byte what the defaults render (which test_default_render_is_exactly_the_kustomization
    holds to manifests/)."""
    from spillover.cli import build_parser
    from spillover.translate.bootstrap import split_weights_runtime

    def text(values: dict[str, Any] | None) -> str:
        argv: list[str | Path] = [helm_binary, "template", "spillover", CHART, "--include-crds"]
        if values is not None:
            (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
            argv += ["--values", tmp_path / "values.yaml"]
        return run(argv, env=helm_env(tmp_path))

    default = text(None)
    assert text({"splitWeights": "route"}) == default
    assert text({"splitWeights": "route", "tls": {"enabled": False}}) == text({"tls": {"enabled": False}})
    before, after = by_key(docs_of(default)), by_key(docs_of(text({"splitWeights": "runtime"})))
    assert sorted(after) == sorted(before)
    changed = {k for k in before if before[k] != after[k]}
    assert {(kind, name) for _, kind, _, name in changed} == {
        ("Deployment", "spillover"), ("ConfigMap", "spillover-gateway-bootstrap"),
        ("Deployment", "spillover-gateway")}
    docs, runtime_docs = list(before.values()), list(after.values())

    args = container(runtime_docs, "spillover")["args"]
    assert build_parser().parse_args(args).split_weights == "runtime"
    assert [a for a in args if a not in container(docs, "spillover")["args"]] == ["--split-weights=runtime"]

    bootstrap, runtime_bootstrap = (find(d, "ConfigMap", "spillover-gateway-bootstrap") for d in (docs, runtime_docs))
    route_boot, runtime_boot = (yaml.safe_load(b["data"]["bootstrap.yaml"]) for b in (bootstrap, runtime_bootstrap))
    assert runtime_boot.pop("layered_runtime") == split_weights_runtime() and runtime_boot == route_boot
    command = runtime_bootstrap["metadata"]["annotations"]["spillover.dev/bootstrap-command"]
    assert command == bootstrap["metadata"]["annotations"]["spillover.dev/bootstrap-command"] + " --split-weights runtime"
    assert {k: v for k, v in runtime_bootstrap["data"].items() if k != "bootstrap.yaml"} == {
        k: v for k, v in bootstrap["data"].items() if k != "bootstrap.yaml"}

    gateway = find(runtime_docs, "Deployment", "spillover-gateway")
    assert gateway["spec"]["template"]["metadata"].pop("annotations") == {"spillover.dev/split-weights": "runtime"}
    assert gateway == find(docs, "Deployment", "spillover-gateway")


def test_split_weights_runtime_without_the_charts_gateway_once_confirmed(helm_binary: Path, tmp_path: Path) -> None:
    """The refusals of test_invalid_values_fail_with_a_clear_message end with the confirmation, and a
    controller config that says the same as the chart is no disagreement."""
    from spillover.cli import build_parser

    for values in ({"splitWeights": "runtime", "splitWeightsLayerConfirmed": True, "gateway": {"enabled": False}},
                   {"splitWeights": "runtime", "controller": {"config": {"splitWeights": "runtime"}}},
                   {"splitWeights": "runtime", "controller": {"config": "splitWeights: runtime\n"}}):
        docs = helm_template(helm_binary, tmp_path, values=values)
        assert build_parser().parse_args(container(docs, "spillover")["args"]).split_weights == "runtime"
        assert bool([d for d in docs if d["metadata"]["name"] == "spillover-gateway-bootstrap"]) == (
            values.get("gateway") is None)


def test_split_weights_runtime_runs_a_gateway_that_takes_the_layer(helm_binary: Path, tmp_path: Path) -> None:
    """The render started as the cluster would start it (tests/harness/installed.py): spillover in the
    runtime mode, and the gateway Envoy of the chart's bootstrap, which asks for the layer, gets it and is
    ready. With the route bootstrap it never asks (no RTDS state at all)."""
    from tests.harness.installed import run_like_installed

    for mode in ("runtime", "route"):
        docs = helm_template(helm_binary, tmp_path, values={"tls": {"enabled": False}, "splitWeights": mode})
        (tmp_path / mode).mkdir()
        started = run_like_installed(tmp_path / mode, docs, "chart-admin-token-0123456789")
        states = {state["type"]: state["status"] for state in started.proxy["types"].values()}
        if mode == "runtime":
            assert states.get("RTDS") == "SYNCED", states
        else:
            assert "RTDS" not in states, states


DASHBOARD = {"title": "Fleet: \"overview\"", "uid": "spillover-fleet", "panels": [{"type": "timeseries"}],
             "schemaVersion": 39}


@pytest.mark.parametrize("files", [None, {}, {"fleet.json": json.dumps(DASHBOARD, indent=2) + "\n",
                                             "Model_Drilldown.json": "{\"title\": \"model\"}",
                                             "notes.md": "not a dashboard"}],
                         ids=["no-directory", "empty", "several"])
def test_dashboards_become_configmaps_for_grafanas_sidecar(
    helm_binary: Path, tmp_path: Path, files: dict[str, str] | None
) -> None:
    chart = chart_copy(tmp_path, files)
    docs = helm_template(helm_binary, tmp_path, chart=chart)
    dashboards = {d["metadata"]["name"]: d for d in docs if is_dashboard(d)}
    expected = {n: c for n, c in (files or {}).items() if n.endswith(".json")}
    assert len(dashboards) == len(expected)
    for name, content in expected.items():
        configmap = dashboards["spillover-dashboard-" + name.removesuffix(".json").lower().replace("_", "-")]
        assert configmap["metadata"]["namespace"] == "spillover-system"
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert configmap["data"] == {name: content}, "the JSON file, byte for byte"
    # Everything else is unaffected by the dashboards.
    assert len(docs) - len(dashboards) == len(helm_template(helm_binary, tmp_path, chart=chart_copy(
        tmp_path / "plain", None)))
    if files:
        off = helm_template(helm_binary, tmp_path, chart=chart, values={"dashboards": {"enabled": False}})
        assert not [d for d in off if is_dashboard(d)]
        moved = helm_template(helm_binary, tmp_path, chart=chart, values=CUSTOM)
        moved_dashboards = [d for d in moved if is_dashboard(d)]
        assert {d["metadata"]["namespace"] for d in moved_dashboards} == {"monitoring"}
        assert all(d["metadata"]["annotations"] == {"grafana_folder": "spillover"} for d in moved_dashboards)


def test_the_repository_dashboards_are_the_charts(helm_binary: Path, tmp_path: Path) -> None:
    """charts/spillover/dashboards is the repository's dashboards/ (generated by spillover.dashboards and
    checked against the generator in tests/dashboards): every JSON file there is shipped, byte for byte."""
    link = CHART / "dashboards"
    assert link.is_symlink() and link.resolve() == (REPO / "dashboards").resolve()
    generated = {p.name: p.read_text() for p in (REPO / "dashboards").glob("*.json")}
    assert {"spillover-fleet.json", "spillover-model.json", "spillover-control-plane.json"} <= set(generated)
    docs = helm_template(helm_binary, tmp_path)
    shipped = {k: v for d in docs if is_dashboard(d) for k, v in d["data"].items()}
    assert shipped == generated
    crds = CHART / "crds" / "crd-modeldeployment.yaml"
    assert crds.resolve() == (MANIFESTS / "crd-modeldeployment.yaml").resolve()


def test_invalid_values_fail_with_a_clear_message(helm_binary: Path, tmp_path: Path) -> None:
    """values.schema.json names the field and the rule; a typo is an error, not silently ignored."""
    for values, message in (
        ({"rbac": {"secrets": "watched"}}, "rbac.secrets=watched needs watchNamespaces"),
        ({"rbac": {"secrets": "everywhere"}}, "at '/rbac/secrets': value must be one of 'cluster', 'watched'"),
        ({"controller": {"beamlit": True}, "rbac": {"beamlitAnnotations": False}},
         "controller.beamlit needs rbac.beamlitAnnotations"),
        ({"controller": {"config": 5}}, "at '/controller/config'"),
        ({"replica": 3}, "at '': additional properties 'replica' not allowed"),
        ({"controller": {"xdsPort": "18000x"}}, "at '/controller/xdsPort': got string, want integer"),
        ({"controller": {"xdsWorkers": 0}}, "at '/controller/xdsWorkers': minimum: got 0, want 1"),
        ({"gateway": {"listenPort": 70000}}, "at '/gateway/listenPort'"),
        ({"watchNamespaces": ["Models"]}, "at '/watchNamespaces/0'"),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
        ({"splitWeights": "rtds"}, "at '/splitWeights': value must be one of 'route', 'runtime'"),
        ({"splitWeightsLayerConfirmed": "yes"}, "at '/splitWeightsLayerConfirmed': got string, want boolean"),
        # Envoys whose bootstrap the chart does not write: runtime only once their layer is confirmed.
        ({"splitWeights": "runtime", "gateway": {"enabled": False}},
         "splitWeights=runtime with Envoys whose bootstrap this chart does not write (gateway.enabled=false): "
         "each one routes every model all local unless its bootstrap has the RTDS layer spillover_split"),
        ({"splitWeights": "runtime", "admission": {"rules": [{"name": "b", "unauthenticated": True, "groups": ["b"]}]}},
         "(the fleets of admission.rules)"),
        # A controller config's own splitWeights must agree with the chart's (map or file text).
        ({"controller": {"config": {"splitWeights": "runtime"}}},
         'controller.config sets splitWeights: runtime but the chart value splitWeights is "route"'),
        ({"splitWeights": "runtime", "controller": {"config": "beamlit: true\nsplitWeights: route\n"}},
         'controller.config sets splitWeights: route but the chart value splitWeights is "runtime"'),
        ({"controller": {"extraArgs": ["--split-weights=runtime"]}},
         "controller.extraArgs: --split-weights=runtime: set the chart value splitWeights instead"),
    ):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(values))
        out = subprocess.run([str(helm_binary), "template", "spillover", str(CHART), "--values", str(path)],
                             capture_output=True, text=True, timeout=60, env=helm_env(tmp_path))
        assert out.returncode != 0 and message in out.stderr, out.stderr


def _pods_of_deployments(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A Pod from each Deployment's template: Pod Security is enforced on Pods (no controller here makes them)."""
    pods = []
    for d in docs:
        if d["kind"] == "Deployment":
            pods.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": d["metadata"]["name"] + "-psa-check",
                                      "namespace": d["metadata"]["namespace"],
                                      "labels": d["spec"]["template"]["metadata"]["labels"]},
                         "spec": d["spec"]["template"]["spec"]})
    return pods


@pytest.mark.parametrize("which", ["default", "custom"])
def test_rendered_objects_apply_to_a_real_api_server(
    which: str, default_docs: list[dict[str, Any]], custom_docs: list[dict[str, Any]], cluster: KubeCluster,
    kubectl_binary: Path, tmp_path: Path,
) -> None:
    docs = default_docs if which == "default" else custom_docs
    if any(d["apiVersion"].startswith("cert-manager.io/") for d in docs):
        # The custom values render cert-manager's Certificates: checked against cert-manager's own CRDs.
        from tests.harness.cert_manager import cert_manager_crds

        cluster.apply(cert_manager_crds())
    # Namespaces the chart puts objects in but does not create (watched namespaces, the dashboards' one).
    for ns in {d["metadata"]["namespace"] for d in docs if "namespace" in d["metadata"]} - {
            d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}:
        cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    # The real kubectl, as a user would: `helm template ... | kubectl apply -f -`.
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    out = subprocess.run(
        [str(kubectl_binary), "--kubeconfig", str(cluster.admin_kubeconfig), "--cache-dir",
         str(tmp_path / "kubectl-cache"), "apply", "--server-side", "--field-manager", "chart-test", "-f",
         str(manifest)],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "Warning" not in out.stderr, out.stderr
    applied = [line for line in out.stdout.splitlines() if line.endswith(" serverside-applied")]
    assert len(applied) == len(docs), out.stdout
    # What the server stored is what was rendered.
    from kubernetes import client

    apps = client.AppsV1Api(cluster.api_client())
    ns = find(docs, "Deployment", "spillover")["metadata"]["namespace"]
    stored = apps.read_namespaced_deployment("spillover", ns)
    assert stored.spec is not None and stored.spec.template.spec is not None
    assert stored.spec.replicas == find(docs, "Deployment", "spillover")["spec"]["replicas"]
    assert stored.spec.template.spec.containers[0].args == container(docs, "spillover")["args"]
    # Pod Security `restricted` (the namespace's enforce label) admits both pods as they would be created.
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(cluster.api_client())
    for pod in _pods_of_deployments(docs):
        cluster.apply(pod)
        core.delete_namespaced_pod(pod["metadata"]["name"], pod["metadata"]["namespace"])
        # And the check has teeth: without the container's securityContext the same pod is refused.
        del pod["spec"]["containers"][0]["securityContext"]
        pod["metadata"]["name"] += "-unconfined"
        with pytest.raises(ApiException) as refused:
            cluster.apply(pod)
        assert refused.value.status == 403 and "violates PodSecurity" in str(refused.value.body)
