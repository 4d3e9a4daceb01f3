"""What every policy model shares: the API identity, the strict pydantic base, object references.

Models are frozen and strict (no "5" -> 5 coercion) so that file mode accepts exactly
what the Kubernetes API server would accept with the generated CRD. Unknown fields are
rejected to catch typos. Fields are spelled in camelCase in YAML (the aliases); build
objects from dicts with `model_validate`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator
from pydantic.alias_generators import to_camel

from spillover.policy.types import Label, PortOrName, ResourceName

API_GROUP = "spillover.dev"
API_VERSION = f"{API_GROUP}/v1alpha1"
BEAMLIT_API_VERSION = "deployment.beamlit.com/v1alpha1"
ACCEPTED_API_VERSIONS = (API_VERSION, BEAMLIT_API_VERSION)
KIND = "ModelDeployment"


class Base(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        strict=True,
        extra="forbid",
        frozen=True,
        hide_input_in_errors=True,  # inputs may be secrets; never echo them
        allow_inf_nan=False,
    )


def resolve_path(path: str, info: ValidationInfo) -> str:
    """Relative file references are relative to the policy file that names them."""
    base = (info.context or {}).get("base_dir")
    if base and not os.path.isabs(path):
        return str(Path(base, path))
    return path


# --- Kubernetes object references (Beamlit shapes) ----------------------------------------


class ObjectReference(Base):
    """corev1.ObjectReference as Beamlit uses it for modelSourceRef."""

    api_version: str = Field(description="e.g. apps/v1")
    kind: str = Field(description="e.g. Deployment, StatefulSet")
    name: str
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    field_path: str | None = None


class ServiceReference(Base):
    """A Service (ObjectReference fields inline) and the port the model is served on."""

    name: str
    namespace: str | None = None
    api_version: str | None = None
    kind: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    field_path: str | None = None
    target_port: PortOrName | None = None


class PolicyRef(Base):
    """Beamlit policy reference; accepted for compatibility, not enforced by spillover."""

    ref_type: Literal["remotePolicy", "localPolicy"] = "remotePolicy"
    name: str | None = None
    api_version: str | None = None
    kind: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    field_path: str | None = None


class ObjectMeta(Base):
    # Kubernetes adds many fields (uid, managedFields, ...); accept and keep them.
    model_config = ConfigDict(extra="allow")

    name: ResourceName
    namespace: Label | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    generation: int | None = None
    resource_version: str | None = None
    uid: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_empty_extras(cls, data: Any) -> Any:
        # A field of Kubernetes' we don't know, set to null, is the same as one not given: keeping it would
        # make a policy differ from its own document (which omits nulls).
        if not isinstance(data, dict):
            return data
        known = set(cls.model_fields) | {field.alias for field in cls.model_fields.values() if field.alias}
        return {key: value for key, value in data.items() if value is not None or key in known}
