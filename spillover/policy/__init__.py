"""Policies: the ModelDeployment schema, its validation, and the file source.

Data flows out of this package as a `DesiredState` (valid models by name + errors);
nothing here knows about Envoy or protobuf.
"""

from spillover.policy.errors import PolicyError
from spillover.policy.model import (
    ACCEPTED_API_VERSIONS,
    API_VERSION,
    BEAMLIT_API_VERSION,
    ROUTING_STRATEGIES,
    Condition,
    ConditionType,
    MetricSpec,
    MetricStatus,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    OffloadingBehavior,
    OffloadingConfig,
    OverflowState,
    Profile,
    RemoteBackend,
    Routing,
)
from spillover.policy.presets import DEFAULT_PRESETS, PRESET_NAMES, Preset, PresetTable
from spillover.policy.source import DesiredState, DirectorySource, Origin, build_desired_state
from spillover.policy.validate import load_file, validate_document, validate_documents, validate_main

__all__ = [
    "ACCEPTED_API_VERSIONS",
    "API_VERSION",
    "BEAMLIT_API_VERSION",
    "DEFAULT_PRESETS",
    "PRESET_NAMES",
    "ROUTING_STRATEGIES",
    "Condition",
    "ConditionType",
    "DesiredState",
    "DirectorySource",
    "MetricSpec",
    "MetricStatus",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "OffloadingBehavior",
    "OffloadingConfig",
    "Origin",
    "OverflowState",
    "PolicyError",
    "Preset",
    "PresetTable",
    "Profile",
    "RemoteBackend",
    "Routing",
    "build_desired_state",
    "load_file",
    "validate_document",
    "validate_documents",
    "validate_main",
]
