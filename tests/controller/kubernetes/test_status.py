"""StatusWriter against a real kube-apiserver: status subresource, printer columns, Events, no needless
writes, Invalid, conflicts and deleted objects."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from spillover.controller.kubernetes.documents import StatusInput
from spillover.controller.kubernetes.writer import StatusWriter
from tests.harness.clock import FakeClock
from tests.harness.kube import KubeCluster
from tests.harness.kube_objects import as_object
from tests.harness.kube_status import GROUP, PLURAL, VERSION, Model, create_md, eventually, get_md

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def writer(cluster: KubeCluster) -> AsyncIterator[StatusWriter]:
    w = StatusWriter(cluster.api_client(), reporting_instance="test-writer")
    w.start()
    yield w
    await w.close()


def jsonpath(obj: Any, path: str) -> Any:
    """The simple `.a.b.c` JSONPaths of additionalPrinterColumns."""
    assert path.startswith("."), path
    for part in path[1:].split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def printer_columns(crd: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == VERSION]
    return {c["name"]: jsonpath(obj, c["jsonPath"]) for c in version["additionalPrinterColumns"]}


def events_for(cluster: KubeCluster, namespace: str, name: str) -> list[dict[str, Any]]:
    from kubernetes import client

    api = client.CustomObjectsApi(cluster.api_client())
    items = as_object(api.list_namespaced_custom_object("events.k8s.io", "v1", namespace, "events"))["items"]
    return sorted(
        (e for e in items if e.get("regarding", {}).get("name") == name),
        key=lambda e: e.get("eventTime") or "",
    )


async def test_status_written_and_printer_columns(
    cluster: KubeCluster, namespace: str, writer: StatusWriter, crd_applied: dict[str, Any], tmp_path: Any,
    kubectl_binary: Path,
) -> None:
    stored = create_md(cluster, namespace, "llama", model="llama-3-8b")
    model = Model(stored)
    await writer.publish({model.key: model.step(gpu=95)})  # breached: OVERFLOW, 40 % remote

    obj = await eventually(
        lambda: (o := get_md(cluster, namespace, "llama")).get("status", {}).get("state") == "OVERFLOW" and o,
        message="status OVERFLOW written",
    )
    status = obj["status"]
    assert status["remoteShare"] == 40
    assert status["observedGeneration"] == obj["metadata"]["generation"] == 1
    assert "timeInState" not in status
    assert status["metrics"][0]["name"] == "gpu" and status["metrics"][0]["value"] == 95
    assert "age" not in status["metrics"][0]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Overflowing"]["status"] == "True"
    assert conditions["Invalid"]["status"] == "False"
    assert all(c["observedGeneration"] == 1 for c in conditions.values())

    # The CRD's printer columns, evaluated on the stored object.
    columns = printer_columns(crd_applied, obj)
    assert columns["MODEL"] == "llama-3-8b"
    assert columns["STATE"] == "OVERFLOW"
    assert columns["REMOTE%"] == 40
    assert columns["AGE"] == obj["metadata"]["creationTimestamp"]

    # And what `kubectl get modeldeployments` really prints (the server computes the table).
    out = await asyncio.to_thread(
        subprocess.run,
        # Fully qualified, and a discovery cache of its own: another test cluster may have served a
        # second `modeldeployments` group on the same host:port earlier.
        [
            str(kubectl_binary), "--kubeconfig", str(cluster.admin_kubeconfig), "--cache-dir", str(cluster.workdir / "kubectl"),
            "-n", namespace, "get", "modeldeployments.spillover.dev",
        ],
        capture_output=True, text=True, timeout=30, check=True,
    )
    header, row = out.stdout.strip().splitlines()
    assert header.split() == ["NAME", "MODEL", "STATE", "REMOTE%", "COPY", "COPY-READY", "AGE"]
    # No destination: the copy's columns are empty, the age follows the share.
    assert row.split()[:4] == ["llama", "llama-3-8b", "OVERFLOW", "40"] and len(row.split()) == 5


async def test_event_on_each_transition(cluster: KubeCluster, namespace: str, writer: StatusWriter) -> None:
    model = Model(create_md(cluster, namespace, "qwen"))
    await writer.publish({model.key: model.step(gpu=10)})  # STANDBY, first sight: no transition
    await eventually(lambda: get_md(cluster, namespace, "qwen").get("status", {}).get("state") == "STANDBY")
    assert await writer.idle()
    assert events_for(cluster, namespace, "qwen") == []

    item = model.step(gpu=99)  # STANDBY -> OVERFLOW
    assert item.previous_state == "STANDBY" and item.state == "OVERFLOW"
    await writer.publish({model.key: item})
    for _ in range(3):  # the next evaluations stay in OVERFLOW: no more events
        await writer.publish({model.key: model.step(gpu=99)})
    events = await eventually(lambda: events_for(cluster, namespace, "qwen"), message="an Event")
    assert await writer.idle()
    events = events_for(cluster, namespace, "qwen")
    assert len(events) == 1, events
    event = events[0]
    assert event["reason"] == "Overflow"
    assert event["type"] == "Normal"
    assert "gpu at 99 >= threshold 80" in event["note"]
    assert event["regarding"]["kind"] == "ModelDeployment"
    assert event["regarding"]["apiVersion"] == f"{GROUP}/{VERSION}"
    assert event["regarding"]["uid"] == get_md(cluster, namespace, "qwen")["metadata"]["uid"]
    assert event["reportingController"] == "spillover.dev/spillover"
    assert event["reportingInstance"] == "test-writer"

    # Back to STANDBY after the 30 s buffer duration: a second Event, reason Standby.
    model.step(gpu=10)
    await writer.publish({model.key: model.step(gpu=10, dt=31)})
    events = await eventually(lambda: len(events_for(cluster, namespace, "qwen")) == 2 and
                              events_for(cluster, namespace, "qwen"), message="a second Event")
    assert [e["reason"] for e in events] == ["Overflow", "Standby"]


async def test_unchanged_status_is_not_rewritten(cluster: KubeCluster, namespace: str) -> None:
    clock = FakeClock()  # stands still: the refresh interval never passes
    writer = StatusWriter(cluster.api_client(), clock=clock)
    writer.start()
    try:
        model = Model(create_md(cluster, namespace, "mistral"))
        await writer.publish({model.key: model.step(gpu=50)})
        first = await eventually(lambda: (o := get_md(cluster, namespace, "mistral")).get("status") and o)
        rv = first["metadata"]["resourceVersion"]
        # The API server shows the write a moment before the writer's call returns and counts it.
        assert await writer.idle()
        assert writer.writes == 1

        # Ten evaluations: timeInState, metric ages, sampledAt, values and texts change; the routing does not.
        for i in range(10):
            item = model.step(gpu=50 + i % 3)
            assert item.status is not None and item.status["timeInState"] > 0
            await writer.publish({model.key: item})
            assert await writer.idle()
        assert get_md(cluster, namespace, "mistral")["metadata"]["resourceVersion"] == rv
        assert writer.writes == 1

        # A routing change is written at once, whatever the refresh interval.
        await writer.publish({model.key: model.step(gpu=95)})
        changed = await eventually(
            lambda: (o := get_md(cluster, namespace, "mistral"))["status"]["state"] == "OVERFLOW" and o
        )
        assert changed["metadata"]["resourceVersion"] != rv
        assert await writer.idle()
        assert writer.writes == 2
        # Conditions whose status did not change keep their lastTransitionTime.
        before = {c["type"]: c for c in first["status"]["conditions"]}
        after = {c["type"]: c for c in changed["status"]["conditions"]}
        assert after["Ready"]["lastTransitionTime"] == before["Ready"]["lastTransitionTime"]
        assert after["Invalid"]["lastTransitionTime"] == before["Invalid"]["lastTransitionTime"]
        assert after["Overflowing"]["status"] == "True" and before["Overflowing"]["status"] == "False"
    finally:
        await writer.close()


async def test_metric_values_refresh_after_interval(cluster: KubeCluster, namespace: str) -> None:
    clock = FakeClock()
    writer = StatusWriter(cluster.api_client(), clock=clock)  # the default: texts and values every 30 s
    writer.start()
    try:
        model = Model(create_md(cluster, namespace, "phi"))
        await writer.publish({model.key: model.step(gpu=50)})
        await eventually(lambda: get_md(cluster, namespace, "phi").get("status"))
        assert await writer.idle()
        clock.advance(29)
        await writer.publish({model.key: model.step(gpu=51)})
        assert await writer.idle()
        assert get_md(cluster, namespace, "phi")["status"]["metrics"][0]["value"] == 50  # too soon
        assert writer.writes == 1
        clock.advance(1)
        await writer.publish({model.key: model.step(gpu=52)})
        await eventually(lambda: get_md(cluster, namespace, "phi")["status"]["metrics"][0]["value"] == 52)
        assert await writer.idle()
        assert writer.writes == 2
    finally:
        await writer.close()


async def test_invalid_condition_with_message(cluster: KubeCluster, namespace: str, writer: StatusWriter) -> None:
    stored = create_md(cluster, namespace, "broken")
    message = 'spec.offloadingConfig.metrics[0].metric: unknown metric "gpux"'
    await writer.publish({("ns-unused", "x"): StatusInput(1, invalid="x")} | {
        (namespace, "broken"): StatusInput(stored["metadata"]["generation"], invalid=message)
    })
    obj = await eventually(lambda: (o := get_md(cluster, namespace, "broken")).get("status") and o)
    conditions = {c["type"]: c for c in obj["status"]["conditions"]}
    assert conditions["Invalid"] == {
        **conditions["Invalid"], "status": "True", "reason": "ValidationFailed", "message": message,
    }
    assert conditions["Ready"]["status"] == "False" and conditions["Ready"]["reason"] == "Invalid"
    assert obj["status"]["observedGeneration"] == 1
    assert "state" not in obj["status"]

    # Fixed: the valid status replaces it, Invalid turns False.
    model = Model(stored)
    await writer.publish({model.key: model.step(gpu=10)})
    obj = await eventually(lambda: (o := get_md(cluster, namespace, "broken"))["status"].get("state") and o)
    conditions = {c["type"]: c for c in obj["status"]["conditions"]}
    assert conditions["Invalid"]["status"] == "False" and conditions["Invalid"]["message"] == ""
    assert conditions["Ready"]["status"] == "True"


async def test_conflict_rereads_and_keeps_foreign_conditions(
    cluster: KubeCluster, namespace: str, writer: StatusWriter
) -> None:
    from kubernetes import client

    api = client.CustomObjectsApi(cluster.api_client())
    model = Model(create_md(cluster, namespace, "gemma"))
    await writer.publish({model.key: model.step(gpu=10)})
    await eventually(lambda: get_md(cluster, namespace, "gemma").get("status"))
    assert await writer.idle()

    # Another controller writes the status meanwhile: our cached resourceVersion is stale.
    obj = get_md(cluster, namespace, "gemma")
    obj["status"]["conditions"].append({"type": "Scheduled", "status": "True", "reason": "Other"})
    api.replace_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, "gemma", obj)

    await writer.publish({model.key: model.step(gpu=99)})
    obj = await eventually(
        lambda: (o := get_md(cluster, namespace, "gemma"))["status"]["state"] == "OVERFLOW" and o
    )
    assert writer.conflicts >= 1
    assert "Scheduled" in {c["type"] for c in obj["status"]["conditions"]}

    # A spec change bumps the generation; the next status carries it as observedGeneration.
    obj["spec"]["model"] = "gemma-2"
    api.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gemma", obj)
    item = model.step(gpu=99)
    await writer.publish({model.key: StatusInput(2, item.status, previous_state=item.previous_state)})
    await eventually(lambda: get_md(cluster, namespace, "gemma")["status"]["observedGeneration"] == 2)


async def test_deleted_object_is_tolerated(cluster: KubeCluster, namespace: str, writer: StatusWriter) -> None:
    from kubernetes import client

    api = client.CustomObjectsApi(cluster.api_client())
    model = Model(create_md(cluster, namespace, "gone"))
    await writer.publish({model.key: model.step(gpu=10)})
    await eventually(lambda: get_md(cluster, namespace, "gone").get("status"))
    assert await writer.idle()
    api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gone")
    await writer.publish({model.key: model.step(gpu=99)})  # a routing change for a deleted object
    await writer.publish({(namespace, "never-existed"): model.step(gpu=99)}, complete=False)
    assert await writer.idle()
    assert writer.errors == 0
    assert writer.task_running()


async def test_publish_never_blocks_and_latest_wins(cluster: KubeCluster, namespace: str) -> None:
    """publish() returns at once even when the API server is unreachable; only the latest status per object
    is kept."""
    from kubernetes import client

    configuration = client.Configuration(host="https://127.0.0.1:9")  # nothing listens on port 9
    configuration.verify_ssl = False
    writer = StatusWriter(client.ApiClient(configuration), request_timeout=2, concurrency=1)
    model = Model(create_md(cluster, namespace, "slow"))
    items = [model.step(gpu=g) for g in (10, 95, 96, 97)]
    started = asyncio.get_running_loop().time()
    for item in items:
        await writer.publish({model.key: item})
    assert asyncio.get_running_loop().time() - started < 0.05
    assert writer.pending() == {model.key: items[-1]}
