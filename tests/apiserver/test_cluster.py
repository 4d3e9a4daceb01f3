"""Smoke tests of the real API server the Kubernetes tests run against (tests/harness/kube.py)."""

from __future__ import annotations

import copy
import ipaddress
import json
import queue
import re
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tests.harness.kube import KubeCluster
from tests.harness.kube_objects import as_object
from tests.harness.polling import wait_until

REPO = Path(__file__).resolve().parents[2]
CRD_PATH = REPO / "manifests" / "crd-modeldeployment.yaml"
GROUP, VERSION, PLURAL = "spillover.dev", "v1alpha1", "modeldeployments"
# Our ModelDeployments (examples/policies also holds a Beamlit-format one, another API group).
EXAMPLES = sorted(
    p
    for p in (REPO / "examples" / "policies").glob("*.yaml")
    if any(
        isinstance(d, dict)
        and d.get("kind") == "ModelDeployment"
        and d.get("apiVersion") == f"{GROUP}/{VERSION}"
        for d in yaml.safe_load_all(p.read_text())
    )
)


def _pinned_kubernetes_version() -> str:
    text = (REPO / "tests" / "apiserver" / "kube-apiserver" / "go.mod").read_text()
    match = re.search(r"^(?:require)?\s*k8s\.io/kubernetes (v\S+)", text, re.MULTILINE)
    assert match, "tests/apiserver/kube-apiserver/go.mod does not pin k8s.io/kubernetes"
    return match.group(1)


def _namespace(cluster: KubeCluster, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def _model_deployment(path: Path, namespace: str) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    doc["metadata"]["namespace"] = namespace
    return doc


def _assert_contains(sent: Any, stored: Any, where: str = "") -> None:
    """Everything sent came back unchanged (the server may add defaults, never drop or alter)."""
    if isinstance(sent, dict):
        assert isinstance(stored, dict), f"{where}: {stored!r} is not an object"
        for key, value in sent.items():
            assert key in stored, f"{where}.{key} was dropped by the API server"
            _assert_contains(value, stored[key], f"{where}.{key}")
    elif isinstance(sent, list):
        assert isinstance(stored, list) and len(stored) == len(sent), f"{where}: {stored!r} != {sent!r}"
        for i, (a, b) in enumerate(zip(sent, stored, strict=True)):
            _assert_contains(a, b, f"{where}[{i}]")
    else:
        assert stored == sent, f"{where}: stored {stored!r}, sent {sent!r}"


@pytest.fixture(scope="module")
def crd(cluster: KubeCluster) -> dict[str, Any]:
    (applied,) = cluster.apply(CRD_PATH.read_text())
    return applied


def test_api_server_is_up_and_authenticates(cluster: KubeCluster) -> None:
    status, body = cluster.request("GET", "/version")
    assert status == 200, body
    assert json.loads(body)["gitVersion"] == _pinned_kubernetes_version()
    assert cluster.request("GET", "/readyz")[0] == 200
    # A token the server does not know is unauthenticated (anonymous auth is off).
    assert cluster.request("GET", "/api/v1/namespaces", token="not-a-token")[0] == 401
    assert cluster.server_url.startswith("https://127.0.0.1:")
    assert cluster.is_running()


def test_admin_kubeconfig_works_with_the_python_client(cluster: KubeCluster) -> None:
    api = config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))
    try:
        names = {ns.metadata and ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items}
    finally:
        api.close()
    assert {"default", "kube-system"} <= names


def test_namespace_service_and_endpointslice(cluster: KubeCluster) -> None:
    ns = _namespace(cluster, "svc")
    cluster.apply(
        f"""
apiVersion: v1
kind: Service
metadata:
  name: llama
  namespace: {ns}
spec:
  selector: {{app: llama}}
  ports:
  - {{name: http, port: 8000, targetPort: 8000}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: llama-abc
  namespace: {ns}
  labels: {{kubernetes.io/service-name: llama}}
addressType: IPv4
ports:
- {{name: http, port: 8000, protocol: TCP}}
endpoints:
- addresses: [10.0.1.10]
  conditions: {{ready: true}}
- addresses: [10.0.1.11]
  conditions: {{ready: false}}
"""
    )
    api = cluster.api_client()
    service = client.CoreV1Api(api).read_namespaced_service("llama", ns)
    assert service.spec is not None and service.spec.cluster_ip is not None
    assert ipaddress.ip_address(service.spec.cluster_ip) in ipaddress.ip_network(
        cluster.service_cluster_ip_range
    )
    slices = client.DiscoveryV1Api(api).list_namespaced_endpoint_slice(
        ns, label_selector="kubernetes.io/service-name=llama"
    )
    assert [s.metadata and s.metadata.name for s in slices.items] == ["llama-abc"]
    ready = {e.addresses[0]: e.conditions and e.conditions.ready for e in slices.items[0].endpoints or []}
    assert ready == {"10.0.1.10": True, "10.0.1.11": False}

    # apply again = replace: the second version wins.
    cluster.apply(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "llama-abc",
                "namespace": ns,
                "labels": {"kubernetes.io/service-name": "llama"},
            },
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8000, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["10.0.1.12"], "conditions": {"ready": True}}],
        }
    )
    again = client.DiscoveryV1Api(api).read_namespaced_endpoint_slice("llama-abc", ns)
    assert [e.addresses for e in again.endpoints or []] == [["10.0.1.12"]]

    # The server validates built-in kinds too.
    with pytest.raises(ApiException) as refused:
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "bad", "namespace": ns},
                "spec": {"ports": [{"port": 70000}]},
            }
        )
    assert refused.value.status == 422


def test_crd_is_established_with_a_structural_schema(crd: dict[str, Any], cluster: KubeCluster) -> None:
    established = cluster.wait_crd_established(crd["metadata"]["name"])
    conditions = {c["type"]: c for c in established["status"]["conditions"]}
    assert conditions["Established"]["status"] == "True"
    assert conditions["NamesAccepted"]["status"] == "True"
    # The API server reports a non-structural schema as a condition rather than rejecting the CRD.
    assert conditions.get("NonStructuralSchema", {}).get("status") != "True", conditions
    assert established["status"]["acceptedNames"]["kind"] == "ModelDeployment"


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_model_deployments_are_accepted_unchanged(
    crd: dict[str, Any], cluster: KubeCluster, example: Path
) -> None:
    ns = _namespace(cluster, "md")
    doc = _model_deployment(example, ns)
    cluster.apply(doc)
    stored = as_object(client.CustomObjectsApi(cluster.api_client()).get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, doc["metadata"]["name"]
    ))
    _assert_contains(doc["spec"], stored["spec"], "spec")


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 1, "no ModelDeployment under examples/policies"


def test_invalid_model_deployment_is_rejected_by_the_schema(
    crd: dict[str, Any], cluster: KubeCluster
) -> None:
    ns = _namespace(cluster, "bad")
    good = _model_deployment(REPO / "examples" / "policies" / "llama-profiles.yaml", ns)
    profile = next(iter(good["spec"]["routing"]["profiles"]))

    bad = copy.deepcopy(good)
    bad["spec"]["routing"]["profiles"][profile]["requestsPerSecond"] = "fast"
    with pytest.raises(ApiException) as refused:
        cluster.apply(bad)
    assert refused.value.status == 422, refused.value.body
    assert "requestsPerSecond" in str(refused.value.body)

    missing = copy.deepcopy(good)
    del missing["spec"]["model"]
    with pytest.raises(ApiException) as refused:
        cluster.apply(missing)
    assert refused.value.status == 422, refused.value.body

    unknown = copy.deepcopy(good)
    unknown["spec"]["noSuchField"] = 1
    with pytest.raises(ApiException) as refused:
        cluster.apply(unknown)  # Strict field validation: unknown fields are an error
    assert refused.value.status in (400, 422), refused.value.body
    assert "noSuchField" in str(refused.value.body)

    # None of them was stored; the valid one is.
    objects = client.CustomObjectsApi(cluster.api_client())
    assert as_object(objects.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL))["items"] == []
    cluster.apply(good)
    assert len(as_object(objects.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL))["items"]) == 1


def test_list_then_watch_sees_added_and_modified(crd: dict[str, Any], cluster: KubeCluster) -> None:
    ns = _namespace(cluster, "watch")
    objects = client.CustomObjectsApi(cluster.api_client())
    listed = as_object(objects.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL))
    assert listed["items"] == []
    resource_version = listed["metadata"]["resourceVersion"]

    doc = _model_deployment(REPO / "examples" / "policies" / "llama-profiles.yaml", ns)
    name = doc["metadata"]["name"]
    events: queue.Queue[tuple[str, str, Any]] = queue.Queue()
    failure: list[BaseException] = []

    def run() -> None:
        # The watch thread stops by itself on the MODIFIED event, or when the server ends the
        # watch after timeoutSeconds (the deadline if no event comes).
        try:
            for event in watch.Watch().stream(
                objects.list_namespaced_custom_object,
                GROUP,
                VERSION,
                ns,
                PLURAL,
                resource_version=resource_version,
                timeout_seconds=20,
            ):
                obj = event["object"]
                events.put((event["type"], obj["metadata"]["name"], obj["spec"]))
                if event["type"] == "MODIFIED" and obj["metadata"]["name"] == name:
                    return
        except BaseException as exc:
            failure.append(exc)
        finally:
            events.put(("END", "", None))

    thread = threading.Thread(target=run, name="watch-modeldeployments", daemon=True)
    thread.start()
    cluster.apply(doc)
    assert events.get(timeout=25)[:2] == ("ADDED", name), failure

    doc["spec"]["enabled"] = False
    cluster.apply(doc)
    kind, got, spec = events.get(timeout=25)
    assert (kind, got) == ("MODIFIED", name), failure
    assert spec.get("enabled") is False
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert not failure, failure


def test_service_account_is_refused_without_rbac_and_allowed_with_it(
    crd: dict[str, Any], cluster: KubeCluster, tmp_path: Path
) -> None:
    ns = _namespace(cluster, "rbac")
    token = cluster.service_account_token(ns, "spillover", expiration_s=600)

    review = cluster.request(
        "POST",
        "/apis/authentication.k8s.io/v1/selfsubjectreviews",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        token=token,
    )
    assert review[0] == 201, review
    assert json.loads(review[1])["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:spillover"

    kubeconfig = cluster.kubeconfig_for_token(token, tmp_path / "sa.kubeconfig")
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        objects = client.CustomObjectsApi(api)
        with pytest.raises(ApiException) as refused:
            objects.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
        assert refused.value.status == 403, refused.value.body
        with pytest.raises(ApiException) as refused:
            objects.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        assert refused.value.status == 403

        cluster.apply(
            f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: read-modeldeployments, namespace: {ns}}}
rules:
- apiGroups: [{GROUP}]
  resources: [{PLURAL}]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: spillover-reads, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-modeldeployments}}
subjects:
- {{kind: ServiceAccount, name: spillover, namespace: {ns}}}
"""
        )
        # The RBAC authorizer works from an informer cache: allowed shortly after the binding.
        listed = wait_until(
            lambda: as_object(objects.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)),
            timeout=15,
            message="RoleBinding not effective",
        )
        assert listed["items"] == []
        # Still namespaced: other namespaces and writes stay forbidden.
        with pytest.raises(ApiException) as refused:
            objects.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        assert refused.value.status == 403
        with pytest.raises(ApiException) as refused:
            cluster.apply(_model_deployment(EXAMPLES[0], ns), token=token)
        assert refused.value.status == 403
    finally:
        api.close()
