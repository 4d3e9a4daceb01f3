"""Model builders and a fake clock for the overflow engine tests."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spillover.decide import Decision, ModelMemory, Sample, evaluate
from spillover.policy import ModelDeployment

GPU = {"metric": "gpu", "target": 80}  # display name "gpu", threshold 80
QUEUE = {"query": "sum(vllm:num_requests_waiting)", "threshold": 10, "name": "queue"}


def model(
    metrics: list[dict[str, Any]] | None = None,
    remote: bool = True,
    enabled: bool = True,
    generation: int | None = None,
    status: dict[str, Any] | None = None,
    offloading: bool = True,
    **behavior: Any,
) -> ModelDeployment:
    spec: dict[str, Any] = {
        "model": "llama-3",
        "enabled": enabled,
        "localBackend": {"endpoints": ["127.0.0.1:8001"]},
    }
    if offloading:
        config: dict[str, Any] = {"metrics": [GPU] if metrics is None else metrics}
        # Validation refuses metrics without a remote backend; the engine must still cope with such a
        # model built by hand, so it is validated with one and the remote is taken out afterwards.
        config["remoteBackend"] = {"host": "remote.example.com:8080"}
        if behavior:
            config["behavior"] = behavior
        spec["offloadingConfig"] = config
    doc: dict[str, Any] = {
        "apiVersion": "spillover.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "llama", **({"generation": generation} if generation is not None else {})},
        "spec": spec,
    }
    if status is not None:
        doc["status"] = status
    md = ModelDeployment.model_validate(doc)
    if offloading and not remote:
        assert md.spec.offloading_config is not None
        offloading_config = md.spec.offloading_config.model_copy(update={"remote_backend": None})
        md = md.model_copy(update={"spec": md.spec.model_copy(update={"offloading_config": offloading_config})})
    return md


@dataclass
class Run:
    """Drives one model through evaluations on a fake clock, keeping the memory between them."""

    md: ModelDeployment
    now: float = 1_000_000.0
    memory: ModelMemory | None = None
    decision: Decision | None = None
    history: list[Decision] = field(default_factory=list)

    def at(
        self,
        t: float,
        values: Mapping[str, float | None] | None = None,
        samples: Mapping[str, Sample] | None = None,
        local_ready: int | None = None,
        remote_healthy: bool | None = None,
        remote_usable: bool = True,
        **kwargs: Any,
    ) -> Decision:
        """Evaluate at start + t with fresh samples of `values` (taken at that instant) or `samples`."""
        now = self.now + t
        if samples is None:
            samples = {k: Sample(v, now) for k, v in (values or {}).items()}
        self.decision, self.memory = evaluate(
            self.md, samples, now, self.memory, local_ready, remote_healthy, remote_usable, **kwargs
        )
        self.history.append(self.decision)
        return self.decision

    def gpu(self, t: float, value: float | None, **kwargs: Any) -> Decision:
        return self.at(t, {"gpu": value}, **kwargs)
