"""Helpers of the kubestatus tests: ModelDeployment objects, statuses from the real engine, reads."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from spillover.kube.status import StatusInput
from spillover.metrics.sample import Sample
from spillover.overflow import Decision, ModelMemory, evaluate
from spillover.overflow.status import status_document
from spillover.policy.model import ModelDeployment

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
    return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def create_md(cluster: Any, namespace: str, name: str, **kwargs: Any) -> dict[str, Any]:
    (obj,) = cluster.apply(md_doc(name, namespace, **kwargs))
    return obj


async def eventually(
    predicate: Callable[[], T | Awaitable[T]], timeout: float = 10.0, interval: float = 0.05, message: str = ""
) -> T:
    """Polls `predicate` (sync, run in a thread, or async) until truthy; fails at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            if inspect.iscoroutinefunction(predicate):
                result = await predicate()
            else:
                result = await asyncio.to_thread(predicate)
            last = result
            if result:
                return result  # type: ignore[return-value]
        except AssertionError:
            raise
        except Exception as error:
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"{message or 'condition'} not met within {timeout}s; last: {last!r}")
        await asyncio.sleep(interval)
