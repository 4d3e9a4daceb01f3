"""The Kubernetes source against a real API server (etcd + kube-apiserver, tests/harness/kube.py).

Objects are written through the API as a user or a controller would; the source's informers list and
watch them over HTTPS with the real `kubernetes` client. Nothing is mocked. Each test has its namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any, TypedDict

import pytest

from spillover.policy import DesiredState
from spillover.sources.kube.informer import Informer
from spillover.sources.kube.kinds import MODEL_DEPLOYMENTS, SECRETS, Resource
from spillover.sources.kube.source import KubernetesPolicySource
from spillover.sources.kube.state import CRKey, KubeDesiredState
from spillover.sources.oauth import credentials_of
from tests.harness.kube import KubeCluster
from tests.harness.kube_objects import endpoint_slice, model_deployment, secret, service, serving_cr
from tests.harness.polling import async_wait_until, wait_until

CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")


class InformerTiming(TypedDict):
    watch_timeout: float
    read_timeout_slack: float
    backoff_initial: float
    backoff_max: float


FAST: InformerTiming = {"watch_timeout": 5.0, "read_timeout_slack": 5.0, "backoff_initial": 0.1, "backoff_max": 1.0}


@pytest.fixture
def source_factory(cluster: KubeCluster) -> Iterator[Any]:
    started: list[KubernetesPolicySource] = []

    def factory(namespaces: list[str], token: str | None = None, **kwargs: Any) -> KubernetesPolicySource:
        source = KubernetesPolicySource(cluster.api_client(token), namespaces=namespaces, informer_options=FAST, **kwargs)
        started.append(source.start())
        assert source.wait_synced(20), [i.name for i in source.informers if not i.synced.is_set()]
        return source

    yield factory
    for source in started:
        source.stop()


def until(source: KubernetesPolicySource, predicate: Any, timeout: float = 15.0, message: str = "") -> KubeDesiredState:
    """Polls the source (a rebuild when its informers saw a change) until predicate(state) holds."""

    def check() -> KubeDesiredState | None:
        source.poll()
        return source.state if predicate(source.state) else None

    return wait_until(check, timeout=timeout, message=message or "state never matched")


def endpoints_of(state: KubeDesiredState, model: str) -> list[str] | None:
    md = state.models.get(model)
    return None if md is None or md.spec.local_backend is None else list(md.spec.local_backend.endpoints)


def test_model_deployment_service_and_endpoint_slices_reach_the_state(cluster: KubeCluster, namespace: str,
                                                                      source_factory: Any) -> None:
    source = source_factory([namespace])
    assert dict(source.state.models) == {}
    cluster.apply([
        service("llama", namespace, port=80, target="http"),
        endpoint_slice("llama-a", namespace, "llama", 8000, [("10.0.0.1", True), ("10.0.0.2", True), ("10.0.0.3", False)]),
        model_deployment("llama", "llama-3-8b", namespace, serviceRef={"name": "llama", "targetPort": 80},
                         routing={"profiles": {"default": {"routingStrategy": "round-robin"}}}),
    ])
    state = until(source, lambda s: endpoints_of(s, "llama-3-8b") == ["10.0.0.1:8000", "10.0.0.2:8000"])
    origin = state.object_of("llama-3-8b")
    assert origin is not None and (origin.namespace, origin.name, origin.generation) == (namespace, "llama", 1)
    assert state.models["llama-3-8b"].spec.routing.strategy_for("default") == "round-robin"
    assert state.errors == ()

    # An endpoint stops being ready, another starts terminating: both leave the model.
    cluster.apply(endpoint_slice("llama-a", namespace, "llama", 8000, [("10.0.0.1", False), ("10.0.0.2", True)]))
    until(source, lambda s: endpoints_of(s, "llama-3-8b") == ["10.0.0.2:8000"])
    cluster.apply(endpoint_slice("llama-b", namespace, "llama", 9000, [("10.0.0.9", True)]))
    until(source, lambda s: endpoints_of(s, "llama-3-8b") == ["10.0.0.2:8000", "10.0.0.9:9000"])
    cluster.apply(endpoint_slice("llama-b", namespace, "llama", 9000, [("10.0.0.9", False)], terminating=True))
    until(source, lambda s: endpoints_of(s, "llama-3-8b") == ["10.0.0.2:8000"])

    # Editing the CR changes the model; its generation follows.
    cluster.apply(model_deployment("llama", "llama-3-8b", namespace, serviceRef={"name": "llama", "targetPort": 80},
                                   routing={"profiles": {"default": {"routingStrategy": "prefix-cache"}}}))
    state = until(source, lambda s: s.models["llama-3-8b"].spec.routing.strategy_for("default") == "prefix-cache")
    assert serving_cr(state, "llama-3-8b").generation == 2

    # Valid for the CRD's schema, invalid for spillover: reported on the object, the last good config stays.
    cluster.apply(model_deployment("llama", "llama-3-8b", namespace, serviceRef={"name": "llama", "targetPort": 80},
                                   routing={"profiles": {"batch": {"routingStrategy": "random"}}}))
    key = CRKey("spillover.dev", namespace, "llama")
    state = until(source, lambda s: key in s.invalid)
    (error,) = state.invalid[key]
    assert error.path == "spec.routing.defaultProfile" and str(error).startswith(f"{namespace}/llama spec.routing")
    assert state.stale == frozenset({"llama-3-8b"})
    assert state.models["llama-3-8b"].spec.routing.strategy_for("default") == "prefix-cache"
    assert state.objects[key].generation == 3

    # Deleted: gone.
    status, _ = cluster.request("DELETE", f"/apis/spillover.dev/v1alpha1/namespaces/{namespace}/modeldeployments/llama")
    assert status == 200
    until(source, lambda s: "llama-3-8b" not in s.models and key not in s.objects)


def test_client_secret_ref_is_watched_alone_and_rotates(cluster: KubeCluster, namespace: str, source_factory: Any) -> None:
    cluster.apply([
        secret("creds", namespace, {"client-secret": "first-s3cret\n"}),
        secret("unrelated", namespace, {"password": "not-for-spillover"}),
        model_deployment("remote", "gpt-x", namespace, offloadingConfig={"remoteBackend": {
            "host": "api.example.com", "scheme": "https",
            "authConfig": {"type": "oauth", "oauthConfig": {
                "clientId": "spillover", "tokenUrl": "https://auth.example.com/token",
                "clientSecretRef": {"name": "creds", "key": "client-secret"}}},
        }}),
    ])
    source = source_factory([namespace])
    state = until(source, lambda s: "gpt-x" in s.models and credentials_of(s.models["gpt-x"]) is not None
                  and _secret(s) == "first-s3cret")
    # Only the referenced Secret is watched (a field selector RBAC resourceNames can grant).
    (secret_informer,) = [i for i in source.informers if i.resource == SECRETS]
    assert secret_informer.field_selector == "metadata.name=creds"
    assert [k[1] for k in secret_informer.snapshot()] == ["creds"]
    first = credentials_of(state.models["gpt-x"])
    assert first is not None
    first_key = first.key()

    cluster.apply(secret("creds", namespace, {"client-secret": "second-s3cret"}))
    state = until(source, lambda s: _secret(s) == "second-s3cret", message="the rotated secret never arrived")
    rotated = credentials_of(state.models["gpt-x"])
    assert rotated is not None and rotated.key() != first_key

    # The key disappears: an error naming the Secret and the key, never the value.
    cluster.apply(secret("creds", namespace, {"other": "x"}))
    state = until(source, lambda s: any("clientSecretRef" in e.path for e in s.errors))
    assert any(f'Secret {namespace}/creds has no key "client-secret"' in str(e) for e in state.errors)
    assert all("s3cret" not in str(e) for e in state.errors)


def _secret(state: KubeDesiredState) -> str | None:
    md = state.models.get("gpt-x")
    creds = credentials_of(md) if md else None
    try:
        return creds.client_secret() if creds else None
    except LookupError:
        return None


def test_model_source_ref_ready_replicas(cluster: KubeCluster, namespace: str, source_factory: Any) -> None:
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "llama", "namespace": namespace},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "llama"}}, "template": {
            "metadata": {"labels": {"app": "llama"}},
            "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]}}},
    }
    cluster.apply([deployment, model_deployment(
        "llama", "llama-3-8b", namespace, modelSourceRef={"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama"},
        serviceRef={"name": "llama", "targetPort": 8000})])
    source = source_factory([namespace])
    until(source, lambda s: s.ready_replicas.get("llama-3-8b") == 0)
    # No controller runs here: write the status a Deployment controller would.
    from kubernetes import client

    apps = client.AppsV1Api(cluster.api_client())
    apps.patch_namespaced_deployment_status("llama", namespace, {"status": {"replicas": 2, "readyReplicas": 2}})
    until(source, lambda s: s.ready_replicas.get("llama-3-8b") == 2)
    apps.patch_namespaced_deployment_status("llama", namespace, {"status": {"readyReplicas": 0}})
    until(source, lambda s: s.ready_replicas.get("llama-3-8b") == 0)


def test_aibrix_pods_serve_their_model(cluster: KubeCluster, namespace: str, source_factory: Any) -> None:
    from kubernetes import client

    core = client.CoreV1Api(cluster.api_client())
    config = '{"defaultProfile": "default", "profiles": {"default": {"routingStrategy": "least-latency", "requestsPerSecond": 50}}}'
    for name in ("vllm-0", "vllm-1"):
        cluster.apply({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"model.aibrix.ai/name": "deepseek-r1", "model.aibrix.ai/port": "8000"},
                         "annotations": {"model.aibrix.ai/config": config}},
            "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai"}]},
        })
    source = source_factory([namespace])
    state = until(source, lambda s: "deepseek-r1" in s.models)
    assert endpoints_of(state, "deepseek-r1") == []  # Pending pods are not endpoints
    assert state.models["deepseek-r1"].spec.routing.strategy_for("default") == "least-latency"
    # The kubelet's part: the pod runs and is Ready.
    core.patch_namespaced_pod_status("vllm-0", namespace, {"status": {
        "phase": "Running", "podIP": "10.4.0.7", "podIPs": [{"ip": "10.4.0.7"}],
        "conditions": [{"type": "Ready", "status": "True"}]}})
    until(source, lambda s: endpoints_of(s, "deepseek-r1") == ["10.4.0.7:8000"])
    # A ModelDeployment declaring the model takes over.
    cluster.apply(model_deployment("deepseek", "deepseek-r1", namespace, localBackend={"endpoints": ["10.9.9.9:80"]}))
    until(source, lambda s: endpoints_of(s, "deepseek-r1") == ["10.9.9.9:80"])


def test_beamlit_model_deployments_when_asked(cluster: KubeCluster, namespace: str, source_factory: Any) -> None:
    doc = model_deployment("my-model", "my-model", namespace, serviceRef={"name": "php-apache", "targetPort": 80})
    doc["apiVersion"] = "deployment.beamlit.com/v1alpha1"
    cluster.apply([doc, service("php-apache", namespace, port=80, target=80),
                   endpoint_slice("php-apache-x", namespace, "php-apache", 80, [("10.0.1.1", True)])])
    plain = source_factory([namespace])
    beamlit = source_factory([namespace], beamlit=True)
    until(beamlit, lambda s: endpoints_of(s, "my-model") == ["10.0.1.1:80"])
    plain.poll()
    assert "my-model" not in plain.state.models


def test_least_privilege_service_account(cluster: KubeCluster, namespace: str, source_factory: Any) -> None:
    """RBAC as manifests would grant it: namespace-wide list/watch of the watched kinds, and only the
    referenced Secret by name. The source works with exactly that."""
    token = cluster.service_account_token(namespace, "spillover")
    cluster.apply([
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": "spillover", "namespace": namespace},
         "rules": [
             {"apiGroups": ["spillover.dev"], "resources": ["modeldeployments"], "verbs": ["list", "watch"]},
             {"apiGroups": [""], "resources": ["services", "pods"], "verbs": ["list", "watch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
             {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["creds"], "verbs": ["get", "list", "watch"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "spillover", "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "spillover"},
         "subjects": [{"kind": "ServiceAccount", "name": "spillover", "namespace": namespace}]},
        secret("creds", namespace, {"client-secret": "sa-s3cret"}),
        model_deployment("remote", "gpt-x", namespace, offloadingConfig={"remoteBackend": {
            "host": "api.example.com", "scheme": "https",
            "authConfig": {"type": "oauth", "oauthConfig": {
                "clientId": "spillover", "tokenUrl": "https://auth.example.com/token",
                "clientSecretRef": {"name": "creds", "key": "client-secret"}}},
        }}),
    ])
    source = source_factory([namespace], token=token)
    state = until(source, lambda s: _secret(s) == "sa-s3cret")
    assert all(i.stats.errors == 0 for i in source.informers), [(i.name, i.stats.last_error) for i in source.informers]
    assert state.errors == ()


def test_informer_relists_after_410_gone_and_keeps_watching(cluster: KubeCluster, namespace: str) -> None:
    events: list[tuple[str, str]] = []
    for name in ("aaa", "bbb"):
        cluster.apply(model_deployment(name, name, namespace, localBackend={"endpoints": ["10.0.0.1:80"]}))
    informer = Informer(cluster.api_client(), MODEL_DEPLOYMENTS, namespace=namespace,
                        on_event=lambda t, o: events.append((t, o["metadata"]["name"])), **FAST).start()
    try:
        assert informer.wait_synced(10)
        assert sorted(k[1] for k in informer.snapshot()) == ["aaa", "bbb"]
        assert informer.stats.lists == 1 and informer.stats.relists == 0
        wait_until(lambda: informer.stats.watches >= 1, message="no watch opened")
        # The CRD's watch cache starts at the resourceVersion the CRD was created at: "1" is long gone
        # (what etcd compaction does to a watch that was away too long). The API server answers 410 Gone.
        informer.restart_watch("1")
        wait_until(lambda: informer.stats.relists >= 1, timeout=15,
                   message=f"no relist after 410; stats {informer.stats}")
        assert "1" in informer.stats.gone_at
        assert informer.stats.lists >= 2
        # The watch goes on from the relist's resourceVersion.
        cluster.apply(model_deployment("ccc", "ccc", namespace, localBackend={"endpoints": ["10.0.0.1:80"]}))
        wait_until(lambda: ("ADDED", "ccc") in events, message=f"event after relist missing: {events}")
        status, _ = cluster.request("DELETE", f"/apis/spillover.dev/v1alpha1/namespaces/{namespace}/modeldeployments/aaa")
        assert status == 200
        wait_until(lambda: ("DELETED", "aaa") in events)
        assert sorted(k[1] for k in informer.snapshot()) == ["bbb", "ccc"]
        assert informer.stats.errors == 0, informer.stats.last_error
    finally:
        informer.stop()
    assert not informer.running


def test_informer_relist_diffs_the_store(cluster: KubeCluster, namespace: str) -> None:
    """Objects deleted and changed while the watch was away come out of the relist as DELETED/MODIFIED."""
    for name in ("keep", "gone", "edit"):
        cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}})
    events: list[tuple[str, str]] = []
    informer = Informer(cluster.api_client(), CONFIGMAPS, namespace=namespace, **FAST)
    informer.start()
    try:
        assert informer.wait_synced(10)
        informer.stop()  # the watch is away...
        cluster.request("DELETE", f"/api/v1/namespaces/{namespace}/configmaps/gone")
        cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "edit", "namespace": namespace},
                       "data": {"k": "v"}})
        # ...and comes back with the old store: its first LIST diffs against it.
        revived = Informer(cluster.api_client(), CONFIGMAPS, namespace=namespace,
                           on_event=lambda t, o: events.append((t, o["metadata"]["name"])), **FAST)
        revived._store = informer.snapshot()
        revived.start()
        assert revived.wait_synced(10)
        assert sorted(events) == [("DELETED", "gone"), ("MODIFIED", "edit")]
        revived.stop()
    finally:
        informer.stop()


def test_informer_backs_off_on_errors_and_recovers(cluster: KubeCluster, namespace: str) -> None:
    """A token RBAC refuses: the informer retries with backoff (errors counted), then a Role fixes it."""
    token = cluster.service_account_token(namespace, "late")
    informer = Informer(cluster.api_client(token), CONFIGMAPS, namespace=namespace, **FAST).start()
    try:
        wait_until(lambda: informer.stats.errors >= 2, timeout=10, message="no retried errors")
        assert "403" in informer.stats.last_error
        assert not informer.synced.is_set()
        cluster.apply([
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "cm", "namespace": namespace},
             "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list", "watch"]}]},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "cm", "namespace": namespace},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm"},
             "subjects": [{"kind": "ServiceAccount", "name": "late", "namespace": namespace}]},
        ])
        assert informer.wait_synced(15)
    finally:
        informer.stop()


async def test_run_delivers_states_to_the_callback(cluster: KubeCluster, namespace: str) -> None:
    source = KubernetesPolicySource(cluster.api_client(), namespaces=[namespace], informer_options=FAST)
    seen: list[DesiredState] = []
    task = asyncio.get_running_loop().create_task(source.run(seen.append))
    informer_md = None
    try:
        await async_wait_until(lambda: len(seen) >= 1, timeout=20, message="no initial state")
        informer_md = source.informer(MODEL_DEPLOYMENTS, namespace)
        await asyncio.to_thread(cluster.apply, model_deployment(
            "llama", "llama-3-8b", namespace, localBackend={"endpoints": ["10.0.0.1:8000"]}))
        await async_wait_until(lambda: "llama-3-8b" in seen[-1].models, timeout=15)
        assert [s.version for s in seen] == sorted({s.version for s in seen})  # each a new version
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert source.informers == []
    assert informer_md is not None and not informer_md.running
