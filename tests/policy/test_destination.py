"""offloadingConfig.destination: the copy on cluster B. Every rule with the exact text users read."""

from __future__ import annotations

from typing import Any

import pytest

from spillover.policy.defaults import PolicyDefaults
from spillover.policy.validate import file_mode_warnings
from tests.harness.policy_docs import base, errors, ok

P = "t.yaml[0] spec.offloadingConfig."
SOURCE = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama"}
QUEUE = {"metric": "queue_length", "target": 8}


def with_destination(destination: dict[str, Any] | None = None, metrics: list[dict[str, Any]] | None = None,
                     **offloading: Any) -> dict[str, Any]:
    dest = {"kubeconfigSecretRef": {"name": "cluster-b"}, **(destination or {})}
    return base(modelSourceRef=SOURCE, offloadingConfig={
        "destination": dest, "metrics": [QUEUE] if metrics is None else metrics, **offloading})


def test_a_destination_is_the_remote_backend() -> None:
    md = ok(with_destination({"standbyReplicas": 1, "activeReplicas": 4, "preWarm": {"percent": 75},
                              "cooldown": "2m", "namespace": "serving", "name": "llama-copy"}))
    offloading = md.spec.offloading_config
    assert offloading is not None and offloading.remote_backend is None and offloading.has_remote
    destination = offloading.destination
    assert destination is not None
    assert destination.kubeconfig_secret_ref.key == "kubeconfig"
    assert (destination.standby_replicas, destination.active_replicas, destination.cooldown) == (1, 4, 120.0)
    assert destination.pre_warm_threshold("queue_length", 8.0) == 6.0
    # Defaults: cold, the origin's replicas, Simplismart's 300 s cooldown, a LoadBalancer Service.
    default = ok(with_destination()).spec.offloading_config
    assert default is not None and default.destination is not None
    assert (default.destination.standby_replicas, default.destination.active_replicas) == (0, None)
    assert default.destination.cooldown == 300.0 and default.destination.service_type == "LoadBalancer"
    assert default.destination.pre_warm_threshold("queue_length", 8.0) is None


def test_per_metric_pre_warm_thresholds_win_over_the_percent() -> None:
    md = ok(with_destination({"preWarm": {"percent": 50, "thresholds": {"queue_length": 7}}},
                             metrics=[QUEUE, {"metric": "kv_cache", "target": 90}]))
    destination = md.spec.offloading_config.destination  # type: ignore[union-attr]
    assert destination is not None
    assert destination.pre_warm_threshold("queue_length", 8.0) == 7
    assert destination.pre_warm_threshold("kv_cache", 90.0) == 45.0


def test_the_default_remote_backend_does_not_apply_to_a_destination() -> None:
    from spillover.policy import RemoteBackend

    defaults = PolicyDefaults(remote_backend=RemoteBackend.model_validate({"host": "cloud.example.com"}))
    offloading = ok(with_destination(), defaults=defaults).spec.offloading_config
    assert offloading is not None and offloading.remote_backend is None


@pytest.mark.parametrize(("doc", "expected"), [
    (with_destination(remoteBackend={"host": "r.example.com"}),
     [f"{P}remoteBackend: must not be set with destination: the copy on the destination cluster is the remote "
      "backend"]),
    (base(offloadingConfig={"destination": {"kubeconfigSecretRef": {"name": "cluster-b"}}}),
     ["t.yaml[0] spec.offloadingConfig.destination: requires modelSourceRef: the copy is made of that workload's "
      "pod template"]),
    (with_destination({"kubeconfigSecretRef": None}), [f"{P}destination.kubeconfigSecretRef: must be a mapping"]),
    (with_destination({"kubeconfigSecretRef": {"name": "Cluster_B"}}),
     [f"{P}destination.kubeconfigSecretRef.name: must be a DNS-1123 label: lowercase letters, digits and '-', "
      "starting and ending with a letter or digit"]),
    (with_destination({"kubeconfigSecretRef": {"name": "cluster-b", "key": "a/b"}}),
     [f"{P}destination.kubeconfigSecretRef.key: must be a Secret key (1-253 letters, digits, '-', '_' or '.')"]),
    (with_destination({"standbyReplicas": -1}), [f"{P}destination.standbyReplicas: must be >= 0"]),
    (with_destination({"activeReplicas": 0}), [f"{P}destination.activeReplicas: must be >= 1"]),
    (with_destination({"activeReplicas": 20000}), [f"{P}destination.activeReplicas: must be <= 10000"]),
    (with_destination({"standbyReplicas": 3, "activeReplicas": 2}),
     [f"{P}destination.standbyReplicas: must be <= activeReplicas"]),
    (with_destination({"cooldown": "soon"}),
     [f'{P}destination.cooldown: must be a duration such as "30s", "1m30s" or "500ms"']),
    (with_destination({"preWarm": {}}), [f"{P}destination.preWarm: set percent or thresholds"]),
    (with_destination({"preWarm": {"percent": 100}}), [f"{P}destination.preWarm.percent: must be <= 99"]),
    (with_destination({"preWarm": {"thresholds": {"queue_length": 8}}}),
     [f'{P}destination.preWarm.thresholds.queue_length: must be below the metric\'s overflow threshold (8)']),
    (with_destination({"preWarm": {"thresholds": {"gpu": 1}}}),
     [f'{P}destination.preWarm.thresholds.gpu: no overflow metric is named "gpu" (metrics: queue_length)']),
    (with_destination({"preWarm": {"percent": 50}}, metrics=[]),
     [f"{P}destination.preWarm: needs metrics: a pre-warm threshold is a metric's"]),
    (with_destination({"serviceType": "NodePort"}),
     [f"{P}destination.address: is required with serviceType NodePort (no load balancer ingress to read the "
      "copy's address from)"]),
    (with_destination({"serviceType": "ExternalName"}),
     [f"{P}destination.serviceType: must be one of: LoadBalancer, NodePort, ClusterIP"]),
    (with_destination({"address": "http://b.example.com"}),
     [f"{P}destination.address: must be host or host:port, without a scheme or a path"]),
    (with_destination({"address": "b.example.com:99999"}),
     [f"{P}destination.address: must be host or host:port (port must be between 1 and 65535)"]),
    (with_destination({"serviceAccountName": "Model SA"}),
     [f"{P}destination.serviceAccountName: must be a DNS-1123 subdomain"]),
    (with_destination({"kubeconfig": "apiVersion: v1"}),
     [f'{P}destination.kubeconfig: unknown field (did you mean "kubeconfigSecretRef"?)']),
])
def test_destination_rules(doc: dict[str, Any], expected: list[str]) -> None:
    assert errors(doc) == expected


def test_a_node_port_copy_is_reached_at_the_given_address() -> None:
    md = ok(with_destination({"serviceType": "NodePort", "address": "203.0.113.7"}))
    destination = md.spec.offloading_config.destination  # type: ignore[union-attr]
    assert destination is not None and destination.address_host_port == ("203.0.113.7", None)


def test_file_mode_says_it_makes_no_copy() -> None:
    md = ok(with_destination())
    warnings = [str(w) for w in file_mode_warnings(md, "t.yaml", 0)]
    assert "t.yaml[0] spec.offloadingConfig.destination: managed only in Kubernetes mode (serve --kubernetes): no " \
           "copy is made here and the model has no remote backend" in warnings
