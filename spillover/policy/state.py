"""The desired state: what the policies ask for right now, whichever source produced them.

The contract between the sources (a directory of files, the Kubernetes API) and the decision stage.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from spillover.policy.errors import PolicyError
from spillover.policy.model import ModelDeployment


@dataclass(frozen=True, order=True)
class Origin:
    file: str
    index: int

    def __str__(self) -> str:
        return f"{self.file}[{self.index}]"


def frozen_mapping(d: Mapping) -> Mapping:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class DesiredState:
    """What the policies ask for right now. Immutable; a new one is built on every change.

    models:  valid models by model name (spec.model), including those kept from their last
             good config while their current document is invalid (listed in `stale`).
    origins: where each model is defined (file and document index).
    errors:  every current problem, each naming file, document and field.
    version: increases by one with every change.
    ready_replicas: per model whose local backend is a workload (modelSourceRef), its ready replicas
             (None: not known yet); the failover decision honours a 0.
    warnings: what is served but cannot work as written (a serviceRef in file mode, a CRD that is not
             installed), each naming where it comes from; never a reason to reject a policy.
    unreadable: policy files that are there but could not be read or parsed now (too large, no
             permission, a dangling link, still parsing, broken YAML); their models keep their last
             good config, if they have one.
    """

    models: Mapping[str, ModelDeployment] = field(default_factory=lambda: MappingProxyType({}))
    origins: Mapping[str, Origin] = field(default_factory=lambda: MappingProxyType({}))
    errors: tuple[PolicyError, ...] = ()
    stale: frozenset[str] = frozenset()
    version: int = 0
    ready_replicas: Mapping[str, int | None] = field(default_factory=lambda: MappingProxyType({}))
    warnings: tuple[PolicyError, ...] = ()
    unreadable: frozenset[str] = frozenset()

    def errors_for_file(self, file: str) -> tuple[PolicyError, ...]:
        return tuple(e for e in self.errors if e.file == file)

    def errors_for_model(self, model: str) -> tuple[PolicyError, ...]:
        return tuple(e for e in self.errors if e.model == model)

    def same_content(self, other: DesiredState | None) -> bool:
        return (
            other is not None
            and dict(self.models) == dict(other.models)
            and dict(self.origins) == dict(other.origins)
            and self.errors == other.errors
            and self.stale == other.stale
            and dict(self.ready_replicas) == dict(other.ready_replicas)
            and self.warnings == other.warnings
            and self.unreadable == other.unreadable
        )


