"""ModelDeployment documents for end-to-end tests, written as YAML the way users write them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"


def model_deployment(
    name: str,
    endpoints: list[str] | None = None,
    *,
    model: str | None = None,
    rps: float | None = None,
    remote: dict[str, Any] | None = None,
    namespace: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": model or name}
    if endpoints is not None:
        spec["localBackend"] = {"endpoints": endpoints}
    if rps is not None:
        spec["routing"] = {
            "profiles": {"default": {"routingStrategy": "round-robin", "requestsPerSecond": rps}}
        }
    if remote is not None:
        spec["offloadingConfig"] = {"remoteBackend": remote}
    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "spillover.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": metadata,
        "spec": spec,
    }


def write(path: Path, *documents: dict[str, Any]) -> Path:
    """Writes atomically (rename), as editors and ConfigMap mounts do: the watcher never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    tmp.replace(path)
    return path


def beamlit_example(remote_address: str) -> str:
    """examples/policies/beamlit-modeldeployment.yaml with only its remote host changed (the example
    names a cluster-internal DNS name; here the remote is a local upstream)."""
    text = (EXAMPLES / "beamlit-modeldeployment.yaml").read_text()
    original = "host: my-model-on-another-cluster:80"
    assert original in text, "the Beamlit example changed; update this test's adaptation"
    return text.replace(original, f"host: {remote_address}")
