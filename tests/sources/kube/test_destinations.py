"""The copy claims of the desired state: built purely from the ModelDeployments, the origin workloads and the
kubeconfig Secrets the informers hold."""

from __future__ import annotations

import base64
import json
from typing import Any

from pydantic import SecretStr

from spillover.policy.destination import ABANDON_ANNOTATION, FINALIZER, RECORD_ANNOTATION
from spillover.sources.kube.destinations import CopyLocation, SecretKey
from spillover.sources.kube.state import ClusterView, CRKey, build_kube_state
from tests.harness.kube_objects import md

KEY = CRKey("spillover.dev", "ml", "llama")
WORKLOAD = ("Deployment", "ml", "llama")
KUBECONFIG = "apiVersion: v1\nkind: Config\n# a destination kubeconfig\n"


def with_destination(**destination: Any) -> dict[str, Any]:
    return md(
        localBackend={"endpoints": ["10.0.0.1:8000"]},
        modelSourceRef={"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama"},
        serviceRef=None,
        offloadingConfig={"destination": {"kubeconfigSecretRef": {"name": "cluster-b"}, **destination}},
    )


def clean(doc: dict[str, Any]) -> dict[str, Any]:
    doc["spec"] = {k: v for k, v in doc["spec"].items() if v is not None}
    return doc


def workload(replicas: int = 3, image: str = "vllm:1") -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "llama", "namespace": "ml"},
            "spec": {"replicas": replicas, "template": {"metadata": {"labels": {"app": "llama"}},
                                                         "spec": {"containers": [{"name": "c", "image": image}]}}}}


def kubeconfig_secret(key: str = "kubeconfig", value: str = KUBECONFIG) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cluster-b", "namespace": "ml"},
            "data": {key: base64.b64encode(value.encode()).decode()}}


def view(*docs: dict[str, Any], secret: dict[str, Any] | None = None, origin: dict[str, Any] | None = None,
         known: bool = True) -> ClusterView:
    secrets = {("ml", "cluster-b"): secret} if known else {}
    return ClusterView([clean(d) for d in docs], secrets=secrets, workloads={WORKLOAD: origin} if known else {})


def test_a_served_destination_is_a_wanted_copy_with_its_origin_and_kubeconfig() -> None:
    build = build_kube_state(view(with_destination(namespace="serving", activeReplicas=2),
                                  secret=kubeconfig_secret(), origin=workload()))
    claim = build.state.copies[KEY]
    assert claim.model == "llama-3-8b" and claim.uid == "uid-llama" and not claim.deleting
    assert claim.wanted is not None and claim.recorded is None and not claim.finalizer
    ref = SecretKey("ml", "cluster-b", "kubeconfig")
    assert claim.wanted.location == CopyLocation(ref, "serving", "llama")
    assert claim.wanted.origin.replicas == 3 and claim.wanted.origin.exists
    assert claim.wanted.origin.template is not None
    assert claim.wanted.origin.template["spec"]["containers"][0]["image"] == "vllm:1"
    assert build.state.kubeconfigs == {ref: SecretStr(KUBECONFIG.rstrip())}
    assert ("ml", "cluster-b") in build.secrets and WORKLOAD in build.workloads
    # What is not read yet is absent; what does not exist says so (never the value).
    pending = build_kube_state(view(with_destination(), known=False)).state
    wanted = pending.copies[KEY].wanted
    assert wanted is not None and wanted.origin.exists is None
    assert pending.kubeconfigs == {}
    missing = build_kube_state(view(with_destination(), secret=None, origin=None)).state
    assert missing.kubeconfigs == {ref: "Secret ml/cluster-b does not exist (or is not readable)"}
    wanted = missing.copies[KEY].wanted
    assert wanted is not None and wanted.origin.exists is False
    wrong_key = build_kube_state(view(with_destination(), secret=kubeconfig_secret("config"), origin=workload())).state
    assert wrong_key.kubeconfigs == {ref: 'Secret ml/cluster-b has no key "kubeconfig"'}


def test_a_changed_origin_or_secret_is_a_new_state() -> None:
    first = build_kube_state(view(with_destination(), secret=kubeconfig_secret(), origin=workload()))
    same = build_kube_state(view(with_destination(), secret=kubeconfig_secret(), origin=workload()), first.state)
    assert same.state is first.state
    image = build_kube_state(view(with_destination(), secret=kubeconfig_secret(), origin=workload(image="vllm:2")),
                             first.state)
    assert image.state.version == first.state.version + 1
    rotated = build_kube_state(view(with_destination(), secret=kubeconfig_secret(value="other"), origin=workload()),
                               first.state)
    assert rotated.state.version == first.state.version + 1


def test_the_kubeconfig_secret_lives_in_the_model_deployments_namespace() -> None:
    build = build_kube_state(view(with_destination(kubeconfigSecretRef={"name": "cluster-b", "namespace": "kube-system"}),
                                  secret=kubeconfig_secret(), origin=workload()))
    claim = build.state.copies[KEY]
    assert claim.wanted is None and "own namespace" in claim.problem
    assert [str(e) for e in build.state.errors if "destination" in e.path] == [
        "ml/llama spec.offloadingConfig.destination.kubeconfigSecretRef.namespace: must be the ModelDeployment's "
        "own namespace"]
    assert ("kube-system", "cluster-b") not in build.secrets


def test_the_record_finalizer_deletion_and_abandon_annotation() -> None:
    location = CopyLocation(SecretKey("ml", "cluster-b", "kubeconfig"), "ml", "llama")
    doc = with_destination()
    doc["metadata"].update({"finalizers": ["other/keep", FINALIZER], "deletionTimestamp": "2025-01-02T00:00:00Z",
                            "annotations": {RECORD_ANNOTATION: location.annotation(), ABANDON_ANNOTATION: "True"}})
    claim = build_kube_state(view(doc, secret=kubeconfig_secret(), origin=workload())).state.copies[KEY]
    assert claim.deleting and claim.wanted is None and claim.recorded == location
    assert claim.finalizer and claim.abandon and claim.finalizers == ("other/keep", FINALIZER)
    # The record alone is enough, even for an object whose spec is invalid now.
    broken = with_destination()
    broken["spec"]["routing"] = {"profiles": {"batch": {}}}  # no default profile: invalid
    broken["metadata"].update({"finalizers": [FINALIZER], "annotations": {RECORD_ANNOTATION: location.annotation()}})
    state = build_kube_state(view(broken, secret=kubeconfig_secret(), origin=workload())).state
    assert state.invalid and state.copies[KEY].recorded == location and state.copies[KEY].model is None
    assert state.kubeconfigs[location.kubeconfig] == SecretStr(KUBECONFIG.rstrip())


def test_a_record_that_points_at_another_namespace_is_refused() -> None:
    forged = json.dumps({"kubeconfigSecret": {"namespace": "kube-system", "name": "admin", "key": "kubeconfig"},
                         "namespace": "ml", "name": "llama"})
    doc = with_destination()
    doc["metadata"]["annotations"] = {RECORD_ANNOTATION: forged}
    build = build_kube_state(view(doc, secret=kubeconfig_secret(), origin=workload()))
    claim = build.state.copies[KEY]
    assert claim.recorded is None and "another namespace (kube-system): refused" in claim.problem
    assert ("kube-system", "admin") not in build.secrets
    for junk in ("not json", json.dumps({"kubeconfigSecret": {}}), "x" * 5000,
                 json.dumps({"kubeconfigSecret": {"namespace": "ml", "name": "b", "key": "k"},
                             "namespace": "Bad_Name", "name": "llama"})):
        assert CopyLocation.parse(junk) is None
    assert CopyLocation.parse(CopyLocation(SecretKey("ml", "b", "k"), "ml", "llama").annotation()) is not None


def test_models_without_a_destination_have_no_claim() -> None:
    build = build_kube_state(ClusterView([md()]))
    assert dict(build.state.copies) == {} and dict(build.state.kubeconfigs) == {}
