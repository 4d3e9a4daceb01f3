"""The copy's Deployment and Service from the origin's pod template: copied as it is, except what names cluster
A's things, which is changed or listed (status warnings)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from spillover.controller.destination.manifests import copy_manifests, service_differs
from spillover.sources.kube.destinations import OriginWorkload
from tests.harness.copy_claims import claim, origin_template


def test_the_template_is_copied_with_the_copys_labels_and_selector() -> None:
    made = copy_manifests(claim(), claim().wanted, 2)  # type: ignore[arg-type]
    assert made.error == "" and made.warnings == ()
    deployment = made.deployment
    assert deployment["metadata"]["name"] == "llama" and deployment["metadata"]["namespace"] == "serving"
    assert deployment["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "spillover", "spillover.dev/origin-namespace": "ml",
        "spillover.dev/origin-name": "llama", "spillover.dev/origin-uid": "uid-1", "spillover.dev/copy": "llama"}
    assert deployment["metadata"]["annotations"]["spillover.dev/template-hash"] == made.template_hash
    spec = deployment["spec"]
    assert spec["replicas"] == 2 and spec["selector"] == {"matchLabels": {"spillover.dev/copy": "llama"}}
    template = spec["template"]
    assert template["metadata"] == {"labels": {"app": "llama", "spillover.dev/copy": "llama"}}
    assert template["spec"]["containers"] == origin_template()["spec"]["containers"]
    service = made.service["spec"]
    assert service == {"type": "LoadBalancer", "selector": {"spillover.dev/copy": "llama"},
                       "ports": [{"name": "serving", "protocol": "TCP", "port": 8000, "targetPort": 8000}]}


def test_the_hash_follows_the_template_not_the_replicas() -> None:
    one = copy_manifests(claim(), claim().wanted, 1)  # type: ignore[arg-type]
    four = copy_manifests(claim(), claim().wanted, 4)  # type: ignore[arg-type]
    assert one.template_hash == four.template_hash
    changed = claim(template=origin_template(terminationGracePeriodSeconds=5))
    assert copy_manifests(changed, changed.wanted, 1).template_hash != one.template_hash  # type: ignore[arg-type]


def test_what_names_cluster_a_is_changed_or_listed() -> None:
    template = origin_template(
        serviceAccountName="llama-sa", nodeName="gpu-node-7", nodeSelector={"pool": "a100"},
        priorityClassName="inference", imagePullSecrets=[{"name": "registry"}],
        volumes=[{"name": "cfg", "configMap": {"name": "llama-config"}},
                 {"name": "weights", "persistentVolumeClaim": {"claimName": "weights"}},
                 {"name": "tok", "projected": {"sources": [{"secret": {"name": "hf-token"}}]}},
                 {"name": "host", "hostPath": {"path": "/mnt/models"}}],
    )
    template["spec"]["containers"][0]["env"] = [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "t"}}}]
    template["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": "env"}}]
    made = copy_manifests(claim(template=template), claim(template=template).wanted, 1)  # type: ignore[arg-type]
    pod = made.deployment["spec"]["template"]["spec"]
    assert "serviceAccountName" not in pod and "nodeName" not in pod
    assert pod["nodeSelector"] == {"pool": "a100"} and pod["volumes"] == template["spec"]["volumes"]
    assert made.warnings == (
        "serviceAccountName llama-sa is cluster A's: the copy runs as its namespace's default ServiceAccount "
        "(set destination.serviceAccountName)",
        "nodeName is a node of cluster A: removed",
        "needs on the destination, in namespace serving: ConfigMap env, ConfigMap llama-config, "
        "PersistentVolumeClaim weights, PriorityClass inference, Secret hf-token, Secret registry, "
        "hostPath /mnt/models",
    )
    # The destination's own choices win, silently.
    chosen = claim(template=template, destination={"serviceAccountName": "copy-sa", "nodeSelector": {"pool": "l4"}})
    pod = copy_manifests(chosen, chosen.wanted, 1).deployment["spec"]["template"]["spec"]  # type: ignore[arg-type]
    assert pod["serviceAccountName"] == "copy-sa" and pod["nodeSelector"] == {"pool": "l4"}


def test_ports() -> None:
    named = claim(serving_port="http")
    assert copy_manifests(named, named.wanted, 1).service["spec"]["ports"][0] == {  # type: ignore[arg-type]
        "name": "serving", "protocol": "TCP", "port": 8000, "targetPort": "http"}
    chosen = claim(destination={"port": 80, "targetPort": 8000})
    ports = copy_manifests(chosen, chosen.wanted, 1).service["spec"]["ports"][0]  # type: ignore[arg-type]
    assert (ports["port"], ports["targetPort"]) == (80, 8000)
    bare = origin_template()
    del bare["spec"]["containers"][0]["ports"]
    none = claim(template=bare)
    assert copy_manifests(none, none.wanted, 1).error == (  # type: ignore[arg-type]
        "the origin's pod template declares no container port: set destination.targetPort")
    missing = claim(destination={"targetPort": "grpc"})
    assert copy_manifests(missing, missing.wanted, 1).error == (  # type: ignore[arg-type]
        'the origin\'s pod template has no container port named "grpc": set destination.port')


def test_an_origin_that_cannot_be_copied_yet() -> None:
    base = claim()
    wanted = base.wanted
    assert wanted is not None

    def with_origin(**fields: Any) -> str:
        return copy_manifests(base, replace(wanted, origin=replace(wanted.origin, **fields)), 1).error

    assert with_origin(exists=False) == "the origin Deployment ml/llama does not exist"
    assert with_origin(template=None, exists=None) == "reading the origin Deployment ml/llama"
    assert with_origin(template={"spec": {}}) == "the origin Deployment ml/llama has no pod template with containers"
    stateful = replace(wanted, origin=OriginWorkload("StatefulSet", "ml", "llama", origin_template(), 1, True))
    assert copy_manifests(base, stateful, 1).warnings == (
        "the origin is a StatefulSet: the copy is a Deployment (its pod template only)",)


def test_a_service_differs_only_in_what_spillover_sets() -> None:
    made = copy_manifests(claim(), claim().wanted, 1)  # type: ignore[arg-type]
    live = {"metadata": {"annotations": dict(made.service["metadata"]["annotations"])},
            "spec": {**made.service["spec"], "clusterIP": "10.96.0.9",
                     "ports": [{**made.service["spec"]["ports"][0], "nodePort": 31000}]}}
    assert service_differs(live, made.service) == ""
    assert service_differs({**live, "spec": {**live["spec"], "type": "ClusterIP"}}, made.service) == \
        "its type is ClusterIP"
    assert service_differs({**live, "spec": {**live["spec"], "selector": {"app": "x"}}}, made.service) == \
        "its selector was changed"
    assert service_differs({**live, "metadata": {}}, made.service) == "its template hash differs"
