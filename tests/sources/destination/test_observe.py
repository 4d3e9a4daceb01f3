"""What cluster B says of a copy: readiness, owner, rollout problems, and where Envoy reaches it."""

from __future__ import annotations

from typing import Any

from spillover.policy import Destination
from spillover.sources.destination.observe import copy_address, observe_copy
from spillover.sources.kube.destinations import CopyLocation, SecretKey

LOCATION = CopyLocation(SecretKey("ml", "cluster-b", "kubeconfig"), "serving", "llama")
OURS = {"app.kubernetes.io/managed-by": "spillover", "spillover.dev/origin-uid": "uid-1",
        "spillover.dev/origin-namespace": "ml", "spillover.dev/origin-name": "llama"}


def destination(**fields: Any) -> Destination:
    return Destination.model_validate({"kubeconfigSecretRef": {"name": "cluster-b"}, **fields})


def deployment(labels: dict[str, str] | None = None, replicas: int = 2, ready: int = 0,
               conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "llama", "labels": OURS if labels is None else labels, "generation": 4,
                         "annotations": {"spillover.dev/template-hash": "abc"}},
            "spec": {"replicas": replicas},
            "status": {"readyReplicas": ready, "updatedReplicas": ready, "observedGeneration": 4,
                       "conditions": conditions or []}}


def service(ports: list[dict[str, Any]] | None = None, ingress: list[dict[str, Any]] | None = None,
            labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"labels": OURS if labels is None else labels},
            "spec": {"ports": ports if ports is not None else [{"port": 8000, "nodePort": 31000}]},
            "status": {"loadBalancer": {"ingress": ingress or []}}}


def test_the_load_balancer_ingress_or_the_given_address() -> None:
    assert copy_address(destination(), service(ingress=[{"ip": "203.0.113.5"}])) == (("203.0.113.5", 8000), "")
    assert copy_address(destination(), service(ingress=[{"hostname": "lb.example.com"}])) == (
        ("lb.example.com", 8000), "")
    assert copy_address(destination(), service())[0] is None
    assert "no load balancer ingress yet" in copy_address(destination(), service())[1]
    assert copy_address(destination(), None) == (None, "the copy's Service does not exist yet")
    assert copy_address(destination(address="10.1.2.3:9000"), None) == (("10.1.2.3", 9000), "")
    assert copy_address(destination(address="10.1.2.3", serviceType="ClusterIP"), service()) == (("10.1.2.3", 8000), "")
    assert copy_address(destination(address="10.1.2.3", serviceType="NodePort"), service()) == (("10.1.2.3", 31000), "")
    assert copy_address(destination(address="10.1.2.3", serviceType="NodePort"), service(ports=[{"port": 1}]))[1] == \
        "the copy's Service has no node port yet"


def test_readiness_owner_and_the_rollout() -> None:
    found = observe_copy(LOCATION, "uid-1", destination(), deployment(ready=0), service(ingress=[{"ip": "1.2.3.4"}]),
                         reachable=True)
    assert found.exists and not found.foreign and found.ready_replicas == 0 and not found.serving
    assert (found.replicas, found.generation, found.template_hash) == (2, 4, "abc")
    ready = observe_copy(LOCATION, "uid-1", destination(), deployment(ready=2), service(ingress=[{"ip": "1.2.3.4"}]),
                         reachable=True)
    assert ready.serving and ready.address == ("1.2.3.4", 8000)
    # Unreachable: nothing below counts.
    assert not observe_copy(LOCATION, "uid-1", destination(), deployment(ready=2), service(ingress=[{"ip": "1.2.3.4"}]),
                            reachable=False, error="gone").serving
    # Someone else's object under the copy's name is never taken for the copy.
    other = observe_copy(LOCATION, "uid-1", destination(), deployment(labels={**OURS, "spillover.dev/origin-uid": "x"},
                                                                       ready=2), None, reachable=True)
    assert other.foreign == "the copy of another ModelDeployment (ml/llama, uid x)" and not other.serving
    hand_made = observe_copy(LOCATION, "uid-1", destination(), deployment(labels={"app": "llama"}), None, reachable=True)
    assert hand_made.foreign == "not made by spillover"
    foreign_service = observe_copy(LOCATION, "uid-1", destination(), deployment(ready=2),
                                   service(ingress=[{"ip": "1.2.3.4"}], labels={}), reachable=True)
    assert foreign_service.address is None and "not made by spillover" in foreign_service.address_problem
    stuck = observe_copy(LOCATION, "uid-1", destination(), deployment(conditions=[
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}]),
        None, reachable=True)
    assert stuck.rollout_problem == "ProgressDeadlineExceeded: too slow"
    assert not observe_copy(LOCATION, "uid-1", destination(), None, None, reachable=True).exists
