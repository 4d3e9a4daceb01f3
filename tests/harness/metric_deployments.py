"""Building ModelDeployments for the metrics tests."""

from __future__ import annotations

from typing import Any

from spillover.policy import ModelDeployment


def deployment(
    metrics: list[dict[str, Any]], model: str = "llama-3.1-8b", namespace: str | None = "ai", **spec: Any
) -> ModelDeployment:
    meta: dict[str, Any] = {"name": model.replace(".", "-").replace("/", "-").lower()}
    if namespace:
        meta["namespace"] = namespace
    body: dict[str, Any] = {
        "model": model,
        "localBackend": {"endpoints": ["127.0.0.1:8000"]},
        "offloadingConfig": {"remoteBackend": {"host": "remote.example:80"}, "metrics": metrics},
    }
    body.update(spec)
    return ModelDeployment.model_validate(
        {"apiVersion": "spillover.dev/v1alpha1", "kind": "ModelDeployment", "metadata": meta, "spec": body}
    )
