"""Beamlit's tutorial, end to end: its Deployment, Service and ModelDeployment applied unchanged with kubectl
to a real API server that has Beamlit's own CRD, `spillover serve --kubernetes --beamlit`, a real Envoy, and
CPU utilization served by the metrics API through the API server's aggregation layer.

Everything runs in a private network namespace (tests/harness/netns.py), so the tutorial's addresses are
real and nothing leaves the machine: the two pods are 198.51.100.10:80 and 198.51.100.11:80 (upstreams
bound there, the addresses an EndpointSlice may hold, unlike loopback), the remote `my-model-on-another-
cluster:80` resolves (a test DNS server, Envoy's resolver) to 198.51.100.20 where a third upstream listens.
There is no controller-manager or kubelet: the test writes the pods, their status, the EndpointSlice and
the Deployment's status as they would.

CPU goes past the tutorial's 50 %: half the requests go to the remote; it goes down: after the buffer all
traffic is local again; `kubectl get` shows the state in what Beamlit's schema keeps.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from spillover.translate.bootstrap import build_bootstrap
from tests.harness.dns import DnsServer
from tests.harness.envoy import Envoy
from tests.harness.kube import KubeCluster
from tests.harness.kube_fixtures import BEAMLIT_CRD_PATH
from tests.harness.kube_workloads import PodState, run_pods
from tests.harness.load import post_model, served_by
from tests.harness.metrics_api import RESOURCE, VERSIONS, MetricsApiServer
from tests.harness.netns import private_network
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.serve import Spillover
from tests.harness.upstream import HttpUpstream

pytestmark = pytest.mark.timeout(300)

TUTORIAL = Path(__file__).parent / "beamlit" / "tutorial.yaml"
POD_A, POD_B, REMOTE = "198.51.100.10", "198.51.100.11", "198.51.100.20"
GROUP = "deployment.beamlit.com"
REQUESTS = 300


@dataclass(frozen=True)
class Kubectl:
    """The real kubectl (built from the pinned Kubernetes release, never one from PATH) on one cluster."""

    binary: Path
    cluster: KubeCluster

    def __call__(self, *args: str) -> str:
        result = subprocess.run(
            [str(self.binary), "--kubeconfig", str(self.cluster.admin_kubeconfig), "--cache-dir",
             str(self.cluster.workdir / "kubectl-cache"), *args],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout


def state_columns(kubectl: Kubectl) -> list[str]:
    """`kubectl get` of the ModelDeployment, with columns of what Beamlit's schema keeps."""
    columns = ("NAME:.metadata.name,OFFLOADING:.status.offloadingStatus,"
               r"STATE:.metadata.annotations.spillover\.dev/state,REMOTE:.metadata.annotations.spillover\.dev/remote-share")
    out = kubectl("get", f"modeldeployments.{GROUP}", "my-model", "-o", f"custom-columns={columns}")
    header, row = out.strip().splitlines()
    assert header.split() == ["NAME", "OFFLOADING", "STATE", "REMOTE"], out
    return row.split()


def edge(envoy_factory: Callable[..., Envoy], server: Spillover, dns: DnsServer) -> Envoy:
    bootstrap: dict[str, Any] = build_bootstrap("edge-1", "edge", server.xds_address, admin_port=free_port())
    # The remote is a DNS name: Envoy asks the test's DNS server (the namespace has no other).
    bootstrap["typed_dns_resolver_config"] = {
        "name": "envoy.network.dns_resolver.cares",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.network.dns_resolver.cares.v3.CaresDnsResolverConfig",
            "resolvers": [{"socket_address": {"address": "127.0.0.1", "port_value": dns.port}}],
            "dns_resolver_options": {"no_default_search_domain": True},
        },
    }
    envoy = envoy_factory(bootstrap, name="edge-1")
    wait_until(envoy.is_ready, timeout=20, message="envoy never became ready")
    wait_until(lambda: post_model(server.listen_port, "__probe__").status == 404, timeout=15,
               message="the listener never answered")
    return envoy


def traffic(port: int) -> Counter[str]:
    served: Counter[str] = Counter()
    for _ in range(REQUESTS):
        response = post_model(port, "my-model")
        assert response.status == 200, (response.status, response.text[:300])
        served[served_by(response) or "?"] += 1
    return served


def set_cpu(metrics: MetricsApiServer, pods: list[dict[str, Any]], used: str) -> None:
    for pod in pods:
        meta = pod["metadata"]
        metrics.set_pod(meta["namespace"], meta["name"], meta["labels"], {"php-apache": {"cpu": used, "memory": "20Mi"}})


def test_the_beamlit_tutorial_overflows_on_cpu_and_comes_back(
    kube_binaries: tuple[Path, Path], kubectl_binary: Path, tmp_path: Path, envoy_factory: Callable[..., Envoy]
) -> None:
    apiserver, etcd = kube_binaries
    with private_network([POD_A, POD_B, REMOTE]):
        cluster = KubeCluster(tmp_path / "kube", apiserver_binary=apiserver, etcd_binary=etcd, aggregation=True)
        kubectl = Kubectl(kubectl_binary, cluster)
        started: list[Any] = []
        try:
            cluster.start()
            cluster.apply(yaml.safe_load(BEAMLIT_CRD_PATH.read_text()))
            metrics = MetricsApiServer(tmp_path / "metrics", cluster.front_proxy_ca_path).start()
            started.append(metrics)
            cluster.wait_api_service_available(
                cluster.register_api_service(RESOURCE, VERSIONS[RESOURCE], metrics.port, metrics.ca_bundle))

            # The tutorial, unchanged, with the real kubectl: all three objects accepted.
            out = kubectl("apply", "-f", str(TUTORIAL))
            assert out.split("\n")[:3] == ["deployment.apps/php-apache created", "service/php-apache created",
                                           f"modeldeployment.{GROUP}/my-model created"], out

            # What the controllers and kubelets would do: two running, ready pods, their endpoints.
            deployment = cluster.dynamic_client().resources.get(api_version="apps/v1", kind="Deployment").get(
                name="php-apache", namespace="default").to_dict()
            pods = run_pods(cluster, deployment, [PodState("php-apache-6b5d4c7f9-qx2lp", POD_A),
                                                  PodState("php-apache-6b5d4c7f9-z8r4m", POD_B)])
            cluster.apply({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": "php-apache-abcde", "namespace": "default",
                             "labels": {"kubernetes.io/service-name": "php-apache"}},
                "addressType": "IPv4",
                "ports": [{"name": "", "port": 80, "protocol": "TCP"}],
                "endpoints": [{"addresses": [ip], "conditions": {"ready": True, "serving": True, "terminating": False},
                               "targetRef": {"kind": "Pod", "namespace": "default", "name": p["metadata"]["name"]}}
                              for ip, p in zip((POD_A, POD_B), pods, strict=True)],
            })
            set_cpu(metrics, pods, "50m")  # 25 % of the 200m requested

            for name, host in (("pod-a", POD_A), ("pod-b", POD_B), ("remote", REMOTE)):
                started.append(HttpUpstream(name, host=host, port=80).start())
            dns = DnsServer({"my-model-on-another-cluster": REMOTE}).start()
            started.append(dns)

            # Beamlit's controller config: the metric informer is the metrics API (its default); the
            # buffer of a Beamlit resource comes from spillover's defaultBehavior (its CRD has none).
            config = tmp_path / "config.yaml"
            config.write_text("namespaces: default\nmetricInformer: {type: kubernetes}\n"
                              "defaultBehavior: {bufferDuration: 10s}\n")
            server = Spillover(tmp_path, kubeconfig=cluster.admin_kubeconfig, beamlit=True,
                               leader_election_namespace="default", evaluation_interval=0.2,
                               extra_args=["--config", str(config)])
            started.append(server)
            server.start(timeout=30)
            envoy = edge(envoy_factory, server, dns)
            port = server.listen_port

            # STANDBY is also the state before the first sample (the Lease holder decides from its first
            # reading): wait for the CPU reading itself.
            model = server.wait_model(
                "my-model", lambda m: m["state"] == "STANDBY" and any(
                    x.get("value") is not None for x in m["status"].get("metrics", [])),
                timeout=30, message="my-model never sampled its CPU in STANDBY")
            assert model["status"]["metrics"][0]["value"] == 25, model
            assert server.models()["warnings"] == [
                "CustomResourceDefinition modeldeployments.spillover.dev: is not installed: its ModelDeployments "
                "are not watched until it is (API discovery is asked again)"]
            standby = traffic(port)
            assert set(standby) == {"pod-a", "pod-b"}, standby
            wait_until(lambda: state_columns(kubectl) == ["my-model", "false", "STANDBY", "0"], timeout=15,
                       message="kubectl never showed STANDBY")

            # CPU past 50 %: half the traffic overflows to the remote.
            set_cpu(metrics, pods, "150m")  # 75 %
            model = server.wait_state("my-model", "OVERFLOW", timeout=30)
            assert model["remote_share"] == 50 and model["status"]["metrics"][0]["value"] == 75, model
            wait_until(lambda: state_columns(kubectl) == ["my-model", "true", "OVERFLOW", "50"], timeout=15,
                       message="kubectl never showed OVERFLOW")
            writes = cluster.request_count("PATCH", GROUP, "modeldeployments", "status")
            overflow = traffic(port)
            remote_share = overflow["remote"] / REQUESTS
            # 300 requests split at random with p = 0.5: 0.35-0.65 is more than 5 standard deviations.
            assert 0.35 <= remote_share <= 0.65, overflow
            assert overflow["pod-a"] and overflow["pod-b"], overflow
            # The evaluations during that traffic changed nothing Beamlit's schema keeps: no status write.
            assert cluster.request_count("PATCH", GROUP, "modeldeployments", "status") == writes
            annotations = kubectl("get", f"modeldeployments.{GROUP}", "my-model", "-o",
                                  r"jsonpath={.metadata.annotations.spillover\.dev/reason}")
            assert annotations.startswith("resource:cpu at 75 >= threshold 50"), annotations

            # CPU back down: after the 10 s buffer everything is local again.
            set_cpu(metrics, pods, "40m")
            model = server.wait_state("my-model", "STANDBY", timeout=40)
            assert "buffer duration" in model["reason"], model
            # /debug/models shows the decision once made; the Envoy has it once it is written and pushed.
            wait_until(lambda: "remote" not in traffic(port), timeout=10,
                       message="the Envoy kept spilling after STANDBY")
            back = traffic(port)
            assert set(back) == {"pod-a", "pod-b"}, back
            wait_until(lambda: state_columns(kubectl) == ["my-model", "false", "STANDBY", "0"], timeout=15,
                       message="kubectl never showed STANDBY again")
            events = kubectl("get", "events.events.k8s.io", "-n", "default", "-o",
                             "jsonpath={range .items[*]}{.reason}{' '}{end}")
            assert events.split() == ["Overflow", "Standby"], events
            assert server.stop() == 0, server.log()
            assert envoy.is_running()
        finally:
            for thing in reversed(started):
                thing.stop()
            cluster.stop()
