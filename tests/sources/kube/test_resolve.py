"""Pure resolution: EndpointSlices -> endpoints, Secrets -> SecretStr, workloads -> ready replicas,
AIBrix pods -> models. Objects are written as the API server returns them (JSON dicts)."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest
from pydantic import SecretStr

from spillover.sources.kube.resolve import (
    PortError,
    SecretLookupError,
    aibrix_models,
    endpoint_usable,
    secret_value,
    slice_endpoints,
    slices_of_service,
    synthetic_name,
    workload_ready_replicas,
)
from tests.harness.kube_objects import endpoint, eps, pod
from tests.harness.model_parts import local_backend


def service(*ports: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "llama", "namespace": "ml"},
            "spec": {"ports": list(ports)}}


HTTP = [{"name": "http", "port": 8000, "protocol": "TCP"}]


class TestEndpointConditions:
    def test_ready_and_not_terminating_only(self) -> None:
        slice_ = eps([
            endpoint("10.0.0.1"),
            endpoint("10.0.0.2", ready=False),
            endpoint("10.0.0.3", ready=False, serving=True, terminating=True),  # draining: no new traffic
            endpoint("10.0.0.4", ready=True, terminating=True),  # publishNotReadyAddresses-style
            endpoint("10.0.0.5", ready=None),  # unknown readiness reads as ready
        ], HTTP)
        assert slice_endpoints([slice_], 8000) == ["10.0.0.1:8000", "10.0.0.5:8000"]

    def test_missing_conditions_read_as_ready(self) -> None:
        assert endpoint_usable({"addresses": ["10.0.0.1"]})
        assert not endpoint_usable({"addresses": ["10.0.0.1"], "conditions": {"terminating": True}})

    def test_every_address_of_an_endpoint_and_every_slice(self) -> None:
        a = eps([endpoint("10.0.0.1", "10.0.0.9")], HTTP, name="a")
        b = eps([endpoint("10.0.0.2"), endpoint("10.0.0.1")], HTTP, name="b")
        assert slice_endpoints([a, b], 8000) == ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.9:8000"]

    def test_ipv6_addresses_are_bracketed(self) -> None:
        slice_ = eps([endpoint("fd00::1")], HTTP, address_type="IPv6")
        assert slice_endpoints([slice_], "http") == ["[fd00::1]:8000"]

    def test_only_the_services_slices(self) -> None:
        slices = [eps([endpoint("10.0.0.1")], HTTP), eps([endpoint("10.0.0.2")], HTTP, service="other"),
                  eps([endpoint("10.0.0.3")], HTTP, namespace="elsewhere")]
        assert [s["endpoints"][0]["addresses"] for s in slices_of_service(slices, "ml", "llama")] == [["10.0.0.1"]]


class TestPorts:
    def test_named_port_resolves_per_slice(self) -> None:
        # During a rollout the named port may map to different numbers in different slices.
        old = eps([endpoint("10.0.0.1")], [{"name": "http", "port": 8000}], name="old")
        new = eps([endpoint("10.0.0.2")], [{"name": "http", "port": 9000}, {"name": "metrics", "port": 9100}], name="new")
        assert slice_endpoints([old, new], "http") == ["10.0.0.1:8000", "10.0.0.2:9000"]
        assert slice_endpoints([old, new], "metrics") == ["10.0.0.2:9100"]
        assert slice_endpoints([old, new], "grpc") == []

    def test_number_matching_a_pod_port(self) -> None:
        slice_ = eps([endpoint("10.0.0.1")], [{"name": "http", "port": 8000}, {"name": "metrics", "port": 9100}])
        assert slice_endpoints([slice_], 9100) == ["10.0.0.1:9100"]

    def test_number_of_the_service_port_maps_through_its_name(self) -> None:
        # Service port 80 -> targetPort 8000 (named "http"): serviceRef.targetPort 80 means the pods' 8000.
        slice_ = eps([endpoint("10.0.0.1")], [{"name": "http", "port": 8000}])
        svc = service({"name": "http", "port": 80, "targetPort": 8000})
        assert slice_endpoints([slice_], 80, svc) == ["10.0.0.1:8000"]
        assert slice_endpoints([slice_], 81, svc) == []

    def test_number_without_slice_ports_is_used_as_is(self) -> None:
        slice_ = eps([endpoint("10.0.0.1")], [])
        assert slice_endpoints([slice_], 8080) == ["10.0.0.1:8080"]

    def test_no_target_port_takes_the_only_one(self) -> None:
        slice_ = eps([endpoint("10.0.0.1")], HTTP)
        assert slice_endpoints([slice_], None) == ["10.0.0.1:8000"]
        assert slice_endpoints([slice_], None, service({"name": "http", "port": 80})) == ["10.0.0.1:8000"]

    def test_no_target_port_with_several_is_an_error(self) -> None:
        slice_ = eps([endpoint("10.0.0.1")], [{"name": "http", "port": 8000}, {"name": "metrics", "port": 9100}])
        with pytest.raises(PortError, match="required"):
            slice_endpoints([slice_], None)
        with pytest.raises(PortError, match="Service has 2 ports"):
            slice_endpoints([slice_], None, service({"name": "http", "port": 80}, {"name": "metrics", "port": 9100}))

    def test_udp_ports_are_ignored(self) -> None:
        slice_ = eps([endpoint("10.0.0.1")], [{"name": "dns", "port": 53, "protocol": "UDP"}, *HTTP])
        assert slice_endpoints([slice_], None) == ["10.0.0.1:8000"]


def secret(data: dict[str, bytes], name: str = "creds") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "ml"},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


class TestSecrets:
    VALUE = "s3cr3t-value-never-shown"

    def test_value_is_a_secret_str_without_the_trailing_newline(self) -> None:
        value = secret_value(secret({"client-secret": (self.VALUE + "\n").encode()}), "ml", "creds", "client-secret")
        assert isinstance(value, SecretStr)
        assert value.get_secret_value() == self.VALUE
        assert self.VALUE not in repr(value) and self.VALUE not in str(value)

    @pytest.mark.parametrize(
        ("obj", "message"),
        [
            (None, "Secret ml/creds does not exist"),
            (secret({"other": b"x"}), 'has no key "client-secret"'),
            (secret({"client-secret": b"\n"}), "is empty"),
            (secret({"client-secret": b"\xff\xfe" + VALUE.encode()}), "is not UTF-8"),
        ],
    )
    def test_errors_name_the_secret_and_key_never_the_value(self, obj: Any, message: str,
                                                            caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG)
        with pytest.raises(SecretLookupError) as info:
            secret_value(obj, "ml", "creds", "client-secret")
        assert message in str(info.value)
        assert self.VALUE not in str(info.value)
        assert self.VALUE not in caplog.text

    def test_invalid_base64(self) -> None:
        obj = {"metadata": {"name": "creds"}, "data": {"k": "!!!not base64"}}
        with pytest.raises(SecretLookupError):
            secret_value(obj, "ml", "creds", "k")


def test_workload_ready_replicas() -> None:
    assert workload_ready_replicas(None) == 0
    assert workload_ready_replicas({"status": {}}) == 0
    assert workload_ready_replicas({"status": {"replicas": 3, "readyReplicas": 2}}) == 2


class TestAIBrix:
    def test_ready_pods_become_endpoints_at_the_port_label(self) -> None:
        pods = [pod("a", ip="10.1.0.1"), pod("b", ip="10.1.0.2", ready=False), pod("c", ip="10.1.0.3", deleting=True),
                pod("d", ip=None), pod("e", ip="10.1.0.5", port="9000")]
        (model,), errors = aibrix_models(pods)
        assert errors == []
        md = model.model
        assert md.model == "llama"
        assert md.spec.local_backend is not None
        assert md.spec.local_backend.endpoints == ["10.1.0.1:8000", "10.1.0.5:9000"]
        assert md.metadata.name == "aibrix-llama" and md.metadata.namespace == "ml"
        assert md.spec.routing.strategy_for("default") == "least-request"
        assert model.pods == ("ml/a", "ml/b", "ml/c", "ml/d", "ml/e")

    def test_profiles_of_the_config_annotation(self) -> None:
        config = {"defaultProfile": "default", "profiles": {
            "default": {"routingStrategy": "least-latency", "requestsPerSecond": 100},
            "batch": {"routingStrategy": "throughput", "requestsPerSecond": 20},
        }}
        (model,), errors = aibrix_models([pod("a", config=config)])
        assert errors == []
        routing = model.model.spec.routing
        assert routing.effective_default_profile == "default"
        assert routing.strategy_for("default") == "least-latency"
        assert routing.strategy_for("batch") == "throughput"
        assert routing.profiles["default"].requests_per_second == 100
        assert routing.profiles["batch"].requests_per_second == 20

    def test_newest_pods_config_wins(self) -> None:
        old = pod("a", config={"profiles": {"default": {"routingStrategy": "random"}}}, created="2025-01-01T00:00:00Z")
        new = pod("b", config={"profiles": {"default": {"routingStrategy": "prefix-cache"}}}, created="2025-01-02T00:00:00Z")
        (model,), _ = aibrix_models([new, old])
        assert model.model.spec.routing.strategy_for("default") == "prefix-cache"

    def test_unknown_strategy_drops_only_that_profile(self) -> None:
        config = {"defaultProfile": "default", "profiles": {
            "default": {"routingStrategy": "least-latency"}, "pd": {"routingStrategy": "pd"}}}
        (model,), errors = aibrix_models([pod("a", config=config)])
        assert set(model.model.spec.routing.profiles) == {"default"}
        assert len(errors) == 1
        assert errors[0].file == "ml/a (pod)"
        assert errors[0].path.startswith('metadata.annotations["model.aibrix.ai/config"].profiles')
        assert "pd" in errors[0].message

    def test_broken_config_falls_back_to_defaults(self) -> None:
        (model,), errors = aibrix_models([pod("a", config="{not json")])
        assert model.model.spec.routing.profiles == {}
        assert [e.path for e in errors] == ['metadata.annotations["model.aibrix.ai/config"]']
        assert "invalid JSON" in errors[0].message

    def test_bad_port_label_is_reported_and_the_pod_skipped(self) -> None:
        (model,), errors = aibrix_models([pod("a", port="http"), pod("b", ip="10.1.0.2"), pod("c", port=None)])
        assert local_backend(model.model).endpoints == ["10.1.0.2:8000"]
        assert sorted((e.file, e.message) for e in errors) == [
            ("ml/a (pod)", "must be a port number between 1 and 65535"), ("ml/c (pod)", "is required")]

    def test_models_declared_by_a_model_deployment_are_not_synthesized(self) -> None:
        models, _ = aibrix_models([pod("a"), pod("b", model="mistral")], taken={"llama"})
        assert [m.model.model for m in models] == ["mistral"]

    def test_odd_model_names(self) -> None:
        (model,), errors = aibrix_models([pod("a", model="Meta-Llama.3_8B")])
        assert errors == []
        assert model.model.model == "Meta-Llama.3_8B"
        assert synthetic_name("Meta-Llama.3_8B") == "aibrix-meta-llama-3-8b"

    def test_pods_in_several_namespaces_make_one_model(self) -> None:
        (model,), _ = aibrix_models([pod("a", ip="10.1.0.1"), pod("a", ip="10.2.0.1", namespace="other")])
        assert local_backend(model.model).endpoints == ["10.1.0.1:8000", "10.2.0.1:8000"]
        assert model.model.metadata.namespace is None
        assert model.namespaces == ("ml", "other")
