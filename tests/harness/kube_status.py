"""Helpers of the Kubernetes status tests (tests/controller/kubernetes, tests/manifests, tests/e2e):
ModelDeployment objects, statuses from the real engine, reads."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, overload

import yaml

from spillover.controller.kubernetes.documents import StatusInput
from spillover.decide import Decision, ModelMemory, evaluate
from spillover.decide.status import status_document
from spillover.policy import ModelDeployment
from spillover.sources.metrics.sample import Sample
from tests.harness.kube_objects import as_object
from tests.harness.polling import Outcome, async_wait_until

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = REPO / "manifests"
GROUP, VERSION, PLURAL = "spillover.dev", "v1alpha1", "modeldeployments"

T = TypeVar("T")


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def md_doc(name: str, namespace: str, model: str = "llama-3", threshold: float = 80) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": model,
            "localBackend": {"endpoints": ["10.0.0.1:8000"]},
            "offloadingConfig": {
                "remoteBackend": {"host": "remote.example.com:8080"},
                "metrics": [{"metric": "gpu", "target": threshold}],
                "behavior": {"percentage": 40, "bufferDuration": "30s"},
            },
        },
    }


class Model:
    """One ModelDeployment driven through the real overflow engine on a fake clock."""

    def __init__(self, stored: dict[str, Any]) -> None:
        self.stored = stored
        doc = {k: v for k, v in stored.items() if k in ("apiVersion", "kind", "spec")}
        doc["metadata"] = {
            "name": stored["metadata"]["name"],
            "namespace": stored["metadata"]["namespace"],
            "generation": stored["metadata"].get("generation", 1),
        }
        self.md = ModelDeployment.model_validate(doc)
        self.key = (stored["metadata"]["namespace"], stored["metadata"]["name"])
        self.now = 1_700_000_000.0
        self.memory: ModelMemory | None = None
        self.decision: Decision | None = None

    def step(self, gpu: float, dt: float = 1.0) -> StatusInput:
        self.now += dt
        previous = self.decision.state.value if self.decision else None
        self.decision, self.memory = evaluate(
            self.md, {"gpu": Sample(gpu, self.now)}, self.now, self.memory, local_ready=1
        )
        doc = status_document(self.md, self.decision, self.memory, self.now)
        return StatusInput(self.md.metadata.generation, doc, previous_state=previous)


def get_md(cluster: Any, namespace: str, name: str) -> dict[str, Any]:
    from kubernetes import client

    api = client.CustomObjectsApi(cluster.api_client())
    return as_object(api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))


def create_md(cluster: Any, namespace: str, name: str, **kwargs: Any) -> dict[str, Any]:
    (obj,) = cluster.apply(md_doc(name, namespace, **kwargs))
    return obj


@overload
async def eventually(
    predicate: Callable[[], Awaitable[Outcome[T]]],
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
) -> T: ...


@overload
async def eventually(
    predicate: Callable[[], Outcome[T]],
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
) -> T: ...


async def eventually(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, message: str = ""
) -> Any:
    """`async_wait_until` for API-server predicates: a plain one runs in a thread (its client blocks), and
    an assertion inside it fails at once instead of being retried."""

    async def attempt() -> Any:
        if inspect.iscoroutinefunction(predicate):
            return await predicate()
        return await asyncio.to_thread(predicate)

    return await async_wait_until(attempt, timeout, interval, message, fail_fast=(AssertionError,))
