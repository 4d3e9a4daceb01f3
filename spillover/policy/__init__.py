"""Policies: the ModelDeployment schema, its validation, the CRD generated from it, and the desired state.

The sources (spillover.sources) produce a `DesiredState` (valid models by name + errors) with these
types; nothing here knows about Envoy, protobuf, files being watched or the Kubernetes API.

The schema is split by topic (meta, backends, auth, metrics, routing, status, and model for the
resource itself); import its types from here, the package face.
"""

from spillover.policy.auth import AuthConfig, OAuthConfig, SecretRef
from spillover.policy.backends import (
    HealthCheck,
    LocalBackend,
    OutlierDetection,
    RemoteBackend,
    Retries,
    Timeouts,
)
from spillover.policy.destination import Destination, KubeconfigSecretRef, PreWarm
from spillover.policy.errors import PolicyError
from spillover.policy.meta import (
    ACCEPTED_API_VERSIONS,
    API_GROUP,
    API_VERSION,
    BEAMLIT_API_VERSION,
    KIND,
    ObjectMeta,
    ObjectReference,
    ServiceReference,
)
from spillover.policy.metrics import DEFAULT_LATENCY_PERCENTILE, LabelSelector, MetricSpec, MetricTarget
from spillover.policy.model import ModelDeployment, ModelDeploymentSpec, OffloadingBehavior, OffloadingConfig
from spillover.policy.presets import DEFAULT_PRESETS, PRESET_NAMES, Preset, PresetTable
from spillover.policy.routing import ROUTING_STRATEGIES, Profile, Routing
from spillover.policy.state import DesiredState, Origin
from spillover.policy.status import (
    Condition,
    ConditionType,
    CopyState,
    DestinationStatus,
    MetricStatus,
    ModelDeploymentStatus,
    OverflowState,
)
from spillover.policy.validate import load_file, validate_document, validate_documents, validate_main

__all__ = [
    "ACCEPTED_API_VERSIONS",
    "API_GROUP",
    "API_VERSION",
    "BEAMLIT_API_VERSION",
    "DEFAULT_LATENCY_PERCENTILE",
    "DEFAULT_PRESETS",
    "KIND",
    "PRESET_NAMES",
    "ROUTING_STRATEGIES",
    "AuthConfig",
    "Condition",
    "ConditionType",
    "CopyState",
    "DesiredState",
    "Destination",
    "DestinationStatus",
    "HealthCheck",
    "KubeconfigSecretRef",
    "LabelSelector",
    "LocalBackend",
    "MetricSpec",
    "MetricStatus",
    "MetricTarget",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "OAuthConfig",
    "ObjectMeta",
    "ObjectReference",
    "OffloadingBehavior",
    "OffloadingConfig",
    "Origin",
    "OutlierDetection",
    "OverflowState",
    "PolicyError",
    "PreWarm",
    "Preset",
    "PresetTable",
    "Profile",
    "RemoteBackend",
    "Retries",
    "Routing",
    "SecretRef",
    "ServiceReference",
    "Timeouts",
    "load_file",
    "validate_document",
    "validate_documents",
    "validate_main",
]
