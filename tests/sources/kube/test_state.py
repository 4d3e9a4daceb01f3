"""build_kube_state: the pure step from the cluster's objects to the desired state."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from spillover.sources.kube.state import (
    ClusterView,
    CRKey,
    CROrigin,
    KubeDesiredState,
    PodsOrigin,
    build_kube_state,
)
from spillover.sources.oauth import credentials_of
from tests.harness.kube_objects import md, pod, serving_cr, slices
from tests.harness.model_parts import local_backend, oauth_config


def remote(secret_ref: dict[str, Any]) -> dict[str, Any]:
    return {"offloadingConfig": {"remoteBackend": {
        "host": "remote.example:443", "scheme": "https",
        "authConfig": {"type": "oauth", "oauthConfig": {
            "clientId": "id", "tokenUrl": "https://auth.example/token", "clientSecretRef": secret_ref}},
    }}}


def secret_obj(value: bytes, key: str = "secret") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds", "namespace": "ml"},
            "data": {key: base64.b64encode(value).decode()}}


def test_service_ref_becomes_local_endpoints_and_origin_carries_the_object() -> None:
    build = build_kube_state(ClusterView([md(generation=3)], endpoint_slices=slices("10.0.0.1", "10.0.0.2")))
    state = build.state
    assert isinstance(state, KubeDesiredState)
    assert state.version == 1 and state.errors == ()
    model = state.models["llama-3-8b"]
    assert model.spec.local_backend is not None
    assert model.spec.local_backend.endpoints == ["10.0.0.1:8000", "10.0.0.2:8000"]
    origin = state.object_of("llama-3-8b")
    assert isinstance(origin, CROrigin)
    assert (origin.namespace, origin.name, origin.generation) == ("ml", "llama", 3)
    assert str(origin) == "ModelDeployment ml/llama"
    assert state.objects[CRKey("spillover.dev", "ml", "llama")].generation == 3


def test_version_bumps_only_on_change() -> None:
    view = ClusterView([md()], endpoint_slices=slices("10.0.0.1"))
    first = build_kube_state(view).state
    again = build_kube_state(view, first).state
    assert again is first
    changed = build_kube_state(ClusterView([md()], endpoint_slices=slices("10.0.0.1", ready=False)), first).state
    assert changed.version == 2
    assert local_backend(changed.models["llama-3-8b"]).endpoints == []


def test_invalid_cr_keeps_the_last_good_config_and_is_reported_per_object() -> None:
    good = build_kube_state(ClusterView([md()], endpoint_slices=slices("10.0.0.1")))
    broken = md(generation=2)
    broken["spec"]["routing"] = {"profiles": {"default": {"requestsPerSecond": -1}}}
    build = build_kube_state(ClusterView([broken], endpoint_slices=slices("10.0.0.1", "10.0.0.2")),
                             good.state, good.last_good)
    state = build.state
    key = CRKey("spillover.dev", "ml", "llama")
    assert state.stale == frozenset({"llama-3-8b"})
    assert state.models["llama-3-8b"].spec.routing.profiles == {}  # the last good spec...
    assert local_backend(state.models["llama-3-8b"]).endpoints == ["10.0.0.1:8000", "10.0.0.2:8000"]  # ...resolved now
    (error,) = state.invalid[key]
    assert error.path == "spec.routing.profiles.default.requestsPerSecond"
    assert str(error).startswith("ml/llama spec.routing.profiles.default.requestsPerSecond: ")
    assert state.errors == (error,)
    assert serving_cr(state, "llama-3-8b").generation == 2  # what the status writer observed
    # Deleting the invalid CR removes the model: nothing is resurrected.
    gone = build_kube_state(ClusterView([], endpoint_slices=slices("10.0.0.1")), state, build.last_good).state
    assert dict(gone.models) == {} and gone.invalid == {} and build_kube_state(ClusterView([]), gone).state is gone


def test_invalid_cr_without_a_good_past_serves_nothing() -> None:
    broken = md()
    broken["spec"]["routing"] = {"lockedRoutingStrategy": "fastest"}
    state = build_kube_state(ClusterView([broken])).state
    assert dict(state.models) == {}
    assert [e.path for e in state.invalid[CRKey("spillover.dev", "ml", "llama")]] == ["spec.routing.lockedRoutingStrategy"]


def test_duplicate_model_oldest_wins_and_incumbent_keeps_it() -> None:
    old = md("aaa-old", created="2025-01-01T00:00:00Z")
    new = md("zzz-new", created="2025-01-02T00:00:00Z")
    state = build_kube_state(ClusterView([new, old])).state
    assert serving_cr(state, "llama-3-8b").name == "aaa-old"
    (error,) = state.invalid[CRKey("spillover.dev", "ml", "zzz-new")]
    assert error.path == "spec.model" and "also defined in ml/aaa-old" in error.message
    # An older CR appearing later does not take the model away from the one serving it.
    older = md("mmm-older", created="2024-01-01T00:00:00Z")
    after = build_kube_state(ClusterView([new, old, older]), state).state
    assert serving_cr(after, "llama-3-8b").name == "aaa-old"


def test_beamlit_group_is_named_in_errors() -> None:
    broken = md(group="deployment.beamlit.com")
    broken["spec"]["routing"] = {"lockedRoutingStrategy": "fastest"}
    state = build_kube_state(ClusterView([broken])).state
    key = CRKey("deployment.beamlit.com", "ml", "llama")
    assert str(state.invalid[key][0]).startswith("ml/llama (deployment.beamlit.com) spec.routing")


def test_client_secret_ref_is_resolved_in_memory_and_rotation_changes_credentials() -> None:
    doc = md(**remote({"name": "creds", "key": "secret"}))
    pending = build_kube_state(ClusterView([doc]))
    assert pending.secrets == {("ml", "creds")}  # the Secret to watch
    assert pending.state.errors == ()  # not known yet: not an error

    first = build_kube_state(ClusterView([doc], secrets={("ml", "creds"): secret_obj(b"s3cr3t-one\n")}), pending.state).state
    oauth = oauth_config(first.models["llama-3-8b"])
    assert isinstance(oauth.client_secret, SecretStr) and oauth.client_secret.get_secret_value() == "s3cr3t-one"
    assert "s3cr3t-one" not in repr(first.models["llama-3-8b"])
    assert "s3cr3t-one" not in str(first.models["llama-3-8b"].to_document())
    creds1 = credentials_of(first.models["llama-3-8b"])
    assert creds1 is not None and creds1.client_secret() == "s3cr3t-one"

    second = build_kube_state(ClusterView([doc], secrets={("ml", "creds"): secret_obj(b"two")}), first).state
    assert second.version == first.version + 1
    creds2 = credentials_of(second.models["llama-3-8b"])
    assert creds2 is not None and creds2.client_secret() == "two" and creds2.key() != creds1.key()


def test_missing_secret_or_key_is_an_error_naming_the_reference() -> None:
    doc = md(**remote({"name": "creds", "key": "secret"}))
    state = build_kube_state(ClusterView([doc], secrets={("ml", "creds"): None})).state
    (error,) = state.errors
    assert error.path == "spec.offloadingConfig.remoteBackend.authConfig.oauthConfig.clientSecretRef"
    assert "Secret ml/creds does not exist" in error.message
    assert "llama-3-8b" in state.models  # served; the remote is unusable without a secret
    wrong_key = build_kube_state(ClusterView([doc], secrets={("ml", "creds"): secret_obj(b"x", key="other")})).state
    assert 'has no key "secret"' in wrong_key.errors[0].message


def test_secret_in_another_namespace_is_refused_and_not_watched() -> None:
    doc = md(**remote({"name": "creds", "key": "secret", "namespace": "kube-system"}))
    build = build_kube_state(ClusterView([doc]))
    assert build.secrets == set()
    (error,) = build.state.errors
    assert error.path.endswith("clientSecretRef.namespace")


def test_model_source_ref_readiness() -> None:
    doc = md(modelSourceRef={"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama"},
             serviceRef={"name": "llama", "targetPort": 8000})
    unknown = build_kube_state(ClusterView([doc]))
    assert unknown.workloads == {("Deployment", "ml", "llama")}
    assert unknown.state.ready_replicas == {"llama-3-8b": None}
    ready = build_kube_state(ClusterView([doc], workloads={("Deployment", "ml", "llama"): {"status": {"readyReplicas": 2}}}))
    assert ready.state.ready_replicas == {"llama-3-8b": 2}
    missing = build_kube_state(ClusterView([doc], workloads={("Deployment", "ml", "llama"): None}))
    assert missing.state.ready_replicas == {"llama-3-8b": 0}
    odd = copy.deepcopy(doc)
    odd["spec"]["modelSourceRef"]["kind"] = "CronJob"
    assert "unsupported workload" in build_kube_state(ClusterView([odd])).state.errors[0].message


def test_unwatched_namespace_is_reported() -> None:
    doc = md(serviceRef={"name": "llama", "namespace": "other", "targetPort": 8000})
    state = build_kube_state(ClusterView([doc], namespaces=frozenset({"ml"}))).state
    assert state.errors[0].path == "spec.serviceRef.namespace"


def test_aibrix_pods_serve_models_no_cr_declares() -> None:
    pods = [pod("a", model="llama-3-8b", ip="10.9.0.1"), pod("b", model="mistral", ip="10.9.0.2")]
    state = build_kube_state(ClusterView([md()], endpoint_slices=slices("10.0.0.1"), pods=pods)).state
    assert local_backend(state.models["llama-3-8b"]).endpoints == ["10.0.0.1:8000"]  # the CR wins
    assert local_backend(state.models["mistral"]).endpoints == ["10.9.0.2:8000"]
    assert isinstance(state.origins["mistral"], PodsOrigin)
    assert build_kube_state(ClusterView([], pods=pods), aibrix=False).state.models == {}


def test_the_default_remote_backend_and_its_secret_in_the_controllers_namespace() -> None:
    from spillover.controller.config import parse_controller_config

    config = parse_controller_config(
        b"defaultRemoteBackend: {host: run.beamlit.dev, scheme: https, pathPrefix: /$workspace/$model,\n"
        b"  authConfig: {type: oauth, oauthConfig: {clientId: id, tokenUrl: 'https://auth.example/token',\n"
        b"    clientSecretRef: {name: creds, key: secret, namespace: spillover-system}}}}\n",
        Path("config.yaml"),
    )
    doc = md(serviceRef={"name": "llama", "targetPort": 8000},
             offloadingConfig={"metrics": [{"metric": "gpu", "target": 80}]})
    controllers = secret_obj(b"from-the-config\n")
    controllers["metadata"]["namespace"] = "spillover-system"
    view = ClusterView([doc], endpoint_slices=slices("10.0.0.1"), secrets={("spillover-system", "creds"): controllers})
    build = build_kube_state(view, defaults=config.defaults)
    assert build.state.errors == (), build.state.errors
    assert build.secrets == {("spillover-system", "creds")}  # watched where the config says, not in "ml"
    creds = credentials_of(build.state.models["llama-3-8b"])
    assert creds is not None and creds.client_secret() == "from-the-config"
    # A ModelDeployment's own remote backend still reads Secrets of its own namespace only.
    own = md(**{"serviceRef": {"name": "llama", "targetPort": 8000},
                **remote({"name": "creds", "key": "secret", "namespace": "spillover-system"})})
    errors = build_kube_state(ClusterView([own], endpoint_slices=slices("10.0.0.1")), defaults=config.defaults).state.errors
    assert [e.message for e in errors] == ["must be the ModelDeployment's own namespace"]
