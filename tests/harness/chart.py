"""Running the real helm and kubectl on the chart (charts/spillover) and the manifests, and comparing what
they render (the chart and image tests of tests/install)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "spillover"
MANIFESTS = REPO / "manifests"

Key = tuple[str, str, str, str]


def helm_env(home: Path) -> dict[str, str]:
    """Helm's cache, config and data in a temp dir (no ~/.cache/helm, no repositories of the user)."""
    env = dict(os.environ)
    for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[var] = str(home / var.lower())
    env.pop("KUBECONFIG", None)
    return env


def run(argv: Iterable[str | Path], env: dict[str, str] | None = None, timeout: float = 120) -> str:
    """stdout of a command that must succeed; its stderr in the assertion message otherwise."""
    command = [str(a) for a in argv]
    out = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, f"{' '.join(command)} exited {out.returncode}:\n{out.stderr}\n{out.stdout[-2000:]}"
    return out.stdout


def helm_template(
    helm: Path, home: Path, *args: str | Path, chart: Path = CHART, values: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """The objects `helm template spillover CHART --include-crds ARGS` renders (a values file when given)."""
    argv: list[str | Path] = [helm, "template", "spillover", chart, "--include-crds", *args]
    if values is not None:
        path = home / "values.yaml"
        path.write_text(yaml.safe_dump(values))
        argv += ["--values", path]
    return docs_of(run(argv, env=helm_env(home)))


def docs_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def key(doc: dict[str, Any]) -> Key:
    meta = doc["metadata"]
    return doc["apiVersion"], doc["kind"], meta.get("namespace", ""), meta["name"]


def by_key(docs: list[dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    keyed = {key(d): d for d in docs}
    assert len(keyed) == len(docs), "two objects with the same apiVersion, kind, namespace and name"
    return keyed


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def is_dashboard(doc: dict[str, Any]) -> bool:
    return doc["kind"] == "ConfigMap" and doc["metadata"].get("labels", {}).get("grafana_dashboard") == "1"


def chart_copy(tmp_path: Path, dashboards: dict[str, str] | None) -> Path:
    """A copy of the chart with its links resolved, and dashboards/ holding exactly ``dashboards``
    (file name -> content; None: no dashboards/ directory at all)."""
    target = tmp_path / "chart" / "spillover"
    shutil.copytree(CHART, target, symlinks=False, ignore=shutil.ignore_patterns("dashboards"))
    if dashboards is not None:
        (target / "dashboards").mkdir()
        for name, content in dashboards.items():
            (target / "dashboards" / name).write_text(content)
    return target


# Every value the chart has, set to something other than its default (the switches that turn a part off
# are tested on their own).
CUSTOM: dict[str, Any] = {
    "namespace": {"name": "llm-gateway"},
    "image": {"repository": "registry.example.com:5000/ml/spillover", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "replicas": 3,
    # The splits over RTDS; admission.rules admits Envoys the chart writes no bootstrap for: confirmed.
    "splitWeights": "runtime",
    "splitWeightsLayerConfirmed": True,
    "watchNamespaces": ["models-a", "models-b"],
    "prometheus": {"url": "http://prometheus.monitoring.svc:9090", "tokenSecret": "prom-token"},
    "controller": {
        "xdsPort": 18500,
        "xdsWorkers": 3,
        "adminPort": 19500,
        "logLevel": "DEBUG",
        "evaluationInterval": 0.25,
        "debounce": 0,  # meaningful: a zero must not be dropped as "unset"
        "debounceMax": 2,
        "groupBy": "metadata:tenant",
        "beamlit": True,
        "aibrix": False,
        "config": {  # Beamlit's controller config.yaml, as a map
            "metricInformer": {"type": "kubernetes"},
            "defaultRemoteBackend": {"host": "run.beamlit.dev", "scheme": "https", "pathPrefix": "/$workspace/$model"},
            "defaultBehavior": {"bufferDuration": "2m"},
        },
        "extraArgs": ["--leader-election-namespace=llm-gateway"],
        "extraEnv": [{"name": "GRPC_VERBOSITY", "value": "ERROR"}],
    },
    "leaderElection": {"enabled": True, "leaseName": "gateway-leader"},
    "fleet": {"port": 18600, "tokenSecret": "gateway-peers"},
    "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
    "podDisruptionBudget": {"maxUnavailable": 1},  # with the default minAvailable: only one may be rendered
    "nodeSelector": {"pool": "system"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "system", "effect": "NoSchedule"}],
    "rbac": {"secrets": "watched", "beamlitAnnotations": True},  # True: controller.beamlit needs it
    "gateway": {
        "replicas": 4,
        "image": {"repository": "mirror.example.com/envoyproxy/envoy", "tag": "v1.40.1", "pullPolicy": "Always"},
        "listenPort": 10080,
        "adminPort": 9911,
        "statsPort": 9912,
        "servicePort": 8080,
        "serviceType": "LoadBalancer",
        "logLevel": "debug",
        "drainTimeSeconds": 45,
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "3Gi"}},
    },
    "clusterDomain": "corp.example",
    "tls": {
        "serverSecret": "llm-xds-server",
        "gatewaySecret": "llm-xds-gateway",
        "serverName": "xds.llm.corp.example",
        "gatewayIdentity": "spiffe://corp.example/ns/llm-gateway/sa/edge",
        "certManager": {
            "enabled": True,
            "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"},
            "duration": "2160h",
            "renewBefore": "720h",
        },
    },
    "admission": {
        "maxStreamsPerIdentity": 64,
        "rules": [{"name": "tenant-b", "identities": ["spiffe://corp.example/ns/tenant-b/sa/gateway"],
                   "groups": ["tenant-b"], "maxStreams": 8}],
    },
    "admin": {"tokenSecret": "ops-admin-token"},
    "networkPolicy": {"monitoringNamespaceLabels": {"team": "observability"}},
    "dashboards": {"namespace": "monitoring", "annotations": {"grafana_folder": "spillover"}},
}


def container(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    """The one container of a rendered Deployment."""
    (c,) = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return c
