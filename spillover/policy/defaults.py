"""Defaults a controller configuration gives every policy (Beamlit's `defaultRemoteBackend` and co.).

They are applied during validation, through the validation context (`validate_document(...,
defaults=...)`), so file mode, Kubernetes mode and `spillover validate --config` apply exactly the same
ones, and an error caused by a missing default names the field as any other error does:

- `remote_backend`: the remote backend of an `offloadingConfig` that has none (Beamlit: "by default,
  the model deployment will be offloaded to the default backend"). Without it, metrics and no
  `remoteBackend` is an error: such a model would never overflow.
- `behavior`: values for the `offloadingConfig.behavior` fields a policy leaves out (a Beamlit CRD keeps
  only `percentage`, so this is how a Beamlit resource gets another `bufferDuration`).
- `metric_source`: the source of HPA-form metrics (`type: Resource|Pods|...`) that name none
  (Beamlit's `metricInformer.type`: `kubernetes` reads every type from the metrics APIs, `prometheus`
  renders every type as PromQL).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pydantic import ValidationInfo

from spillover.policy.backends import RemoteBackend
from spillover.policy.presets import Source

__all__ = ["NO_DEFAULTS", "PolicyDefaults", "defaults_of"]


@dataclass(frozen=True)
class PolicyDefaults:
    remote_backend: RemoteBackend | None = None
    # camelCase keys of OffloadingBehavior, values as a policy would write them (validated by the loader).
    behavior: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    metric_source: Source | None = None
    # Where the default remote backend's Kubernetes Secret lives (a clientSecretRef without namespace).
    secret_namespace: str | None = None

    def __bool__(self) -> bool:
        return self.remote_backend is not None or bool(self.behavior) or self.metric_source is not None


NO_DEFAULTS = PolicyDefaults()


def defaults_of(info: ValidationInfo) -> PolicyDefaults:
    """The defaults passed in the validation context (none when validating without one)."""
    context = info.context
    found = context.get("defaults") if isinstance(context, dict) else None
    return found if isinstance(found, PolicyDefaults) else NO_DEFAULTS
