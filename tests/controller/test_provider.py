"""PolicyProvider over a Kubernetes state: any PolicySource, workload readiness, and status sinks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spillover import ir
from spillover.controller.contracts import PolicySource, StatusReport
from spillover.controller.policies import PolicyProvider
from spillover.policy import DesiredState
from spillover.sources.kube.state import ClusterView, CRKey, KubeDesiredState, build_kube_state
from tests.harness.kube_objects import md, serving_cr, slices


class FixedSource:
    """A PolicySource holding one state (what a source looks like to the provider)."""

    def __init__(self, state: DesiredState) -> None:
        self._state = state

    @property
    def state(self) -> DesiredState:
        return self._state

    def poll(self) -> DesiredState | None:
        return self._state

    async def run(self, callback: Callable[[DesiredState], Any]) -> None:
        callback(self._state)


def state_with(workload: dict[str, Any] | None, *extra: dict[str, Any]) -> KubeDesiredState:
    doc = md(modelSourceRef={"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama"},
             serviceRef={"name": "llama", "targetPort": 8000},
             offloadingConfig={"remoteBackend": {"host": "remote.example:80"}})
    return build_kube_state(ClusterView([doc, *extra], endpoint_slices=slices("10.0.0.1"),
                                        workloads={("Deployment", "ml", "llama"): workload})).state


def test_a_kubernetes_state_is_a_policy_source_and_no_ready_replica_means_failover() -> None:
    source = FixedSource(state_with({"status": {"readyReplicas": 0}}))
    assert isinstance(source, PolicySource)
    provider = PolicyProvider(source, ir.Listener(address="127.0.0.1", port=24010))
    decision = provider.evaluator.decision("llama-3-8b")
    assert decision is not None and decision.state.value == "FAILOVER" and decision.remote_share == 100

    ready = PolicyProvider(FixedSource(state_with({"status": {"readyReplicas": 2}})), ir.Listener("127.0.0.1", 24010))
    decision = ready.evaluator.decision("llama-3-8b")
    assert decision is not None and decision.state.value == "STANDBY"


async def test_status_sinks_get_statuses_and_errors_after_each_evaluation() -> None:
    broken = md("broken", model="other")
    broken["spec"]["routing"] = {"lockedRoutingStrategy": "fastest"}
    state = state_with({"status": {"readyReplicas": 1}}, broken)
    provider = PolicyProvider(FixedSource(state), ir.Listener("127.0.0.1", 24010))
    reports: list[StatusReport] = []
    provider.status_sinks.append(reports.append)

    def broken_sink(report: StatusReport) -> None:
        raise RuntimeError("a sink that fails")

    provider.status_sinks.insert(0, broken_sink)  # a failing sink does not stop the others
    await provider.evaluate_once()
    (report,) = reports
    assert set(report.statuses) == {"llama-3-8b"}
    status = report.statuses["llama-3-8b"]
    assert status["state"] == "STANDBY" and status["observedGeneration"] == 1
    assert [c["type"] for c in status["conditions"]] == ["Ready", "Overflowing", "BufferRunning", "ActivationPending"]
    assert report.state is state
    assert [e.path for e in report.errors] == ["spec.routing.lockedRoutingStrategy"]
    assert isinstance(report.state, KubeDesiredState)
    assert CRKey("spillover.dev", "ml", "broken") in report.state.invalid
    assert serving_cr(report.state, "llama-3-8b").name == "llama"


def test_a_destination_without_the_kubernetes_side_never_gets_traffic() -> None:
    """No destination manager (file mode): a model with a destination sends no share to a copy that is not there."""
    doc = md(modelSourceRef={"apiVersion": "apps/v1", "kind": "Deployment", "name": "llama"},
             localBackend={"endpoints": ["10.0.0.1:8000"]}, serviceRef=None,
             offloadingConfig={"destination": {"kubeconfigSecretRef": {"name": "cluster-b"}}})
    doc["spec"] = {k: v for k, v in doc["spec"].items() if v is not None}
    state = build_kube_state(ClusterView([doc], workloads={("Deployment", "ml", "llama"): {"status": {}}})).state
    provider = PolicyProvider(FixedSource(state), ir.Listener("127.0.0.1", 24010))
    decision = provider.evaluator.decision("llama-3-8b")
    assert decision is not None and decision.remote_share == 0 and decision.state.value == "STANDBY"
    assert provider.statuses()["llama-3-8b"].get("destination") is None
    # Even when nothing local is ready: no share goes to a copy that is not there.
    state = build_kube_state(ClusterView([doc], workloads={("Deployment", "ml", "llama"): {"status": {
        "readyReplicas": 0}}})).state
    provider = PolicyProvider(FixedSource(state), ir.Listener("127.0.0.1", 24010))
    decision = provider.evaluator.decision("llama-3-8b")
    assert decision is not None and decision.remote_share == 0
    assert "a destination is managed only in Kubernetes mode" in decision.reason
