"""Status of Beamlit ModelDeployments against Beamlit's own CRD (tests/harness/beamlit-crd.yaml, its published
schema) on a real kube-apiserver: nothing spillover reports is silently pruned, and no write goes out
unless the stored object differs from what is wanted, as the API server counts PATCH requests."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from spillover.controller.kubernetes.documents import StatusInput
from spillover.controller.kubernetes.shapes import BEAMLIT_SHAPE, SPILLOVER_SHAPE
from spillover.controller.kubernetes.writer import StatusWriter
from spillover.decide import Decision, ModelMemory, evaluate
from spillover.decide.status import status_document
from spillover.policy import ModelDeployment
from spillover.sources.metrics.sample import Sample
from tests.harness.clock import FakeClock
from tests.harness.kube import KubeCluster
from tests.harness.kube_fixtures import Crds
from tests.harness.kube_status import eventually

pytestmark = pytest.mark.timeout(120)

GROUP, VERSION, PLURAL = "deployment.beamlit.com", "v1alpha1", "modeldeployments"
TUTORIAL = Path(__file__).resolve().parents[2] / "e2e" / "beamlit" / "tutorial.yaml"


@pytest.fixture(scope="module")
def kube_crds() -> Crds:
    return Crds.BEAMLIT


def tutorial_model_deployment(namespace: str) -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(TUTORIAL.read_text()) if d["kind"] == "ModelDeployment"]
    doc["metadata"]["namespace"] = namespace
    return doc


class CpuModel:
    """The tutorial's model through the real engine on a fake clock, fed CPU utilization readings."""

    def __init__(self, stored: dict[str, Any]) -> None:
        doc = {k: stored[k] for k in ("apiVersion", "kind", "spec")}
        doc["metadata"] = {k: stored["metadata"][k] for k in ("name", "namespace", "generation")}
        self.md = ModelDeployment.model_validate(doc)
        self.key = (stored["metadata"]["namespace"], stored["metadata"]["name"])
        self.now = 1_700_000_000.0
        self.memory: ModelMemory | None = None
        self.decision: Decision | None = None

    def step(self, cpu: float, dt: float = 1.0) -> StatusInput:
        self.now += dt
        previous = self.decision.state.value if self.decision else None
        self.decision, self.memory = evaluate(self.md, {"resource:cpu": Sample(cpu, self.now)}, self.now,
                                              self.memory, local_ready=2)
        doc = status_document(self.md, self.decision, self.memory, self.now)
        return StatusInput(self.md.metadata.generation, doc, previous_state=previous, serving_port=80,
                           workspace=self.md.workspace)


def get(cluster: KubeCluster, namespace: str, name: str) -> dict[str, Any]:
    from kubernetes import client

    obj: Any = client.CustomObjectsApi(cluster.api_client()).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name)
    return dict(obj)


@pytest.fixture
async def writer(cluster: KubeCluster) -> AsyncIterator[StatusWriter]:
    w = StatusWriter(cluster.api_client(), group=GROUP, shape=BEAMLIT_SHAPE, clock=FakeClock(),
                     reporting_instance="beamlit-test")
    w.start()
    yield w
    await w.close()


def patches(cluster: KubeCluster) -> tuple[int, int]:
    """(PATCHes of /status, PATCHes of the objects) of Beamlit ModelDeployments the API server answered."""
    return (cluster.request_count("PATCH", GROUP, PLURAL, "status"), cluster.request_count("PATCH", GROUP, PLURAL))


async def test_what_spillover_reports_survives_beamlits_schema(
    cluster: KubeCluster, namespace: str, writer: StatusWriter
) -> None:
    (stored,) = cluster.apply(tutorial_model_deployment(namespace))
    model = CpuModel(stored)
    before = patches(cluster)
    await writer.publish({model.key: model.step(cpu=30)})  # STANDBY
    await eventually(lambda: get(cluster, namespace, "my-model").get("status"), message="a status")
    assert await writer.idle()

    # CPU past the tutorial's 50 %: OVERFLOW at 50 %; then 20 more evaluations whose readings wobble.
    await writer.publish({model.key: model.step(cpu=80)})
    assert await writer.idle()
    after_overflow = patches(cluster)
    for i in range(20):
        await writer.publish({model.key: model.step(cpu=70 + i % 5)})
        assert await writer.idle()

    obj = get(cluster, namespace, "my-model")
    # Read back from the API server: Beamlit's fields in status, nothing else there (nothing pruned).
    assert obj["status"] == {"offloadingStatus": True, "servingPort": 80, "workspace": namespace}
    annotations = obj["metadata"]["annotations"]
    assert annotations["spillover.dev/state"] == "OVERFLOW"
    assert annotations["spillover.dev/remote-share"] == "50"
    assert annotations["spillover.dev/reason"].startswith("resource:cpu at 80 >= threshold 50")
    assert annotations["spillover.dev/observed-generation"] == "1"
    # The spec is untouched: only metadata and status were written.
    assert obj["spec"] == stored["spec"]
    # Two transitions' worth of writes (each a status and an annotations patch), none for the 20
    # evaluations that changed nothing the schema keeps but metric values.
    assert (after_overflow[0] - before[0], after_overflow[1] - before[1]) == (2, 2)
    assert patches(cluster) == after_overflow
    assert (writer.writes, writer.annotation_writes, writer.errors) == (2, 2, 0)
    assert writer.pruned.paths == set()


async def test_a_pruning_schema_never_causes_a_write_per_evaluation(
    cluster: KubeCluster, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer that sends spillover's whole status document to Beamlit's CRD (what the issue saw: a
    PATCH every tick, each answered 200, the stored object never changing) learns what is pruned from
    the first answer and stops."""
    (stored,) = cluster.apply(tutorial_model_deployment(namespace))
    model = CpuModel(stored)
    writer = StatusWriter(cluster.api_client(), group=GROUP, shape=SPILLOVER_SHAPE, clock=FakeClock())
    writer.start()
    caplog.set_level(logging.WARNING, logger="spillover.controller.kubernetes.writer")
    try:
        before = patches(cluster)
        await writer.publish({model.key: model.step(cpu=80)})
        assert await writer.idle()
        for i in range(20):
            await writer.publish({model.key: model.step(cpu=80 + i)})
            assert await writer.idle()
    finally:
        await writer.close()
    assert patches(cluster)[0] - before[0] == 1
    assert get(cluster, namespace, "my-model")["status"] == {"offloadingStatus": True}
    assert {"state", "remoteShare", "conditions", "metrics"} <= {p[0] for p in writer.pruned.paths}
    (warning,) = [r.getMessage() for r in caplog.records if "prunes status field" in r.getMessage()]
    assert warning.startswith("the deployment.beamlit.com CRD prunes status field(s) state, remoteShare")


async def test_an_invalid_beamlit_object_is_reported_in_an_annotation(
    cluster: KubeCluster, namespace: str, writer: StatusWriter
) -> None:
    doc = tutorial_model_deployment(namespace)
    doc["metadata"]["name"] = "broken"
    (stored,) = cluster.apply(doc)
    message = "spec.offloadingConfig.remoteBackend.host: must be a host name without scheme"
    await writer.publish({(namespace, "broken"): StatusInput(stored["metadata"]["generation"], invalid=message)})
    obj = await eventually(lambda: (o := get(cluster, namespace, "broken"))["metadata"].get("annotations") and o)
    assert obj["metadata"]["annotations"]["spillover.dev/invalid"] == message
    assert obj["status"] == {"offloadingStatus": False}
    # Fixed: the annotation goes away.
    model = CpuModel(stored)
    await writer.publish({model.key: model.step(cpu=10)})
    obj = await eventually(
        lambda: (o := get(cluster, namespace, "broken"))["metadata"]["annotations"].get("spillover.dev/state") and o)
    assert "spillover.dev/invalid" not in obj["metadata"]["annotations"]
    assert obj["metadata"]["annotations"]["spillover.dev/state"] == "STANDBY"
