"""The destination side of the evaluation loop: what the policy provider asks of the copies, each round.

`DestinationManager` joins the stages for the models with a destination cluster:

- `set_state(state)`: the claims of a new desired state go to the `DestinationSource` (connections and
  watches on cluster B);
- `gate(models)`, before the overflow engine decides: per model whether its copy may take traffic (and
  why not), and where Envoy reaches it (`CopyRoute`, from the copy's Service). The route is planned as soon
  as the copy has an address, with no traffic until it is ready, so that readiness moves traffic with a
  route change only (Envoy already has the cluster warm);
- `decided(models, evaluation, now)`, after it: the copy's size (`decide.copies`), its status document
  and a `CopyIntent` per ModelDeployment for the actuator (which acts only on the Lease holder);
- `status(model)`: the `status.destination` document.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from spillover.controller.destination.actuator import CopyActuator, CopyIntent
from spillover.controller.destination.manifests import CopyManifests, copy_manifests
from spillover.controller.destination.status import copy_state, destination_status, unusable_reason
from spillover.decide import Evaluation
from spillover.decide.copies import CopyRoute, CopySizer, CopySizing
from spillover.policy import DesiredState, ModelDeployment
from spillover.sources.destination.observe import CopyObservation
from spillover.sources.destination.source import DestinationSource
from spillover.sources.kube.destinations import CopyClaim
from spillover.sources.kube.state import CRKey, KubeDesiredState

__all__ = ["DestinationManager"]


def _has_destination(md: ModelDeployment) -> bool:
    offloading = md.spec.offloading_config
    return offloading is not None and offloading.destination is not None


class DestinationManager:
    def __init__(self, source: DestinationSource, actuator: CopyActuator | None = None) -> None:
        self.source = source
        self.actuator = actuator
        self.sizer = CopySizer()
        self._claims: Mapping[CRKey, CopyClaim] = MappingProxyType({})
        self._by_model: dict[str, CRKey] = {}
        self._observed: dict[CRKey, tuple[CopyObservation | None, CopyObservation | None]] = {}
        self._manifests: dict[CRKey, CopyManifests | None] = {}
        self._statuses: dict[str, dict[str, Any]] = {}
        self._seen: set[str] = set()  # models whose copy has been sized once (observed replicas used)

    @property
    def claims(self) -> Mapping[CRKey, CopyClaim]:
        return self._claims

    def set_state(self, state: DesiredState) -> None:
        if isinstance(state, KubeDesiredState):
            self._claims, kubeconfigs = state.copies, state.kubeconfigs
        else:
            self._claims, kubeconfigs = MappingProxyType({}), MappingProxyType({})
        self._by_model = {c.model: k for k, c in self._claims.items() if c.model is not None}
        self.source.want(self._claims, kubeconfigs)

    def _observe(self) -> None:
        observed: dict[CRKey, tuple[CopyObservation | None, CopyObservation | None]] = {}
        for key, claim in self._claims.items():
            wanted = self.source.observe(claim, claim.wanted.location) if claim.wanted is not None else None
            recorded: CopyObservation | None = None
            if claim.recorded is not None:
                same = claim.wanted is not None and claim.wanted.location == claim.recorded
                recorded = wanted if same else self.source.observe(claim, claim.recorded)
            observed[key] = (wanted, recorded)
        self._observed = observed

    def gate(self, models: Mapping[str, ModelDeployment]) -> tuple[dict[str, bool], dict[str, str], dict[str, CopyRoute]]:
        """(usable, why not, routes) per model with a destination, from what cluster B shows now."""
        self._observe()
        usable: dict[str, bool] = {}
        reasons: dict[str, str] = {}
        routes: dict[str, CopyRoute] = {}
        for name, md in models.items():
            if not _has_destination(md):
                continue
            key = self._by_model.get(name)
            claim = self._claims.get(key) if key is not None else None
            if claim is None:
                usable[name], reasons[name] = False, "no copy on a destination (not read from the cluster yet)"
                continue
            observed = self._observed.get(key, (None, None))[0] if key is not None else None
            why = unusable_reason(claim, observed, self.sizer.sizings.get(name))
            usable[name], reasons[name] = not why, why
            if (observed is not None and observed.address is not None and observed.exists and not observed.foreign
                    and not claim.deleting):
                routes[name] = CopyRoute(*observed.address)
        return usable, reasons, routes

    def decided(self, models: Mapping[str, ModelDeployment], evaluation: Evaluation, now: float) -> None:
        """Size every copy from this round's decisions and readings; hand the intents to the actuator."""
        # A copy is sized once cluster B has been seen: the first size takes the copy as found there (a
        # restart must not shrink a warm copy), and nothing can be done on B before anyway.
        sizable: dict[str, ModelDeployment] = {}
        origin: dict[str, int | None] = {}
        observed_replicas: dict[str, int | None] = {}
        for name, md in models.items():
            key = self._by_model.get(name)
            if key is None or not _has_destination(md):
                continue
            claim = self._claims[key]
            observed = self._observed.get(key, (None, None))[0]
            if name not in self._seen and (observed is None or not observed.reachable):
                continue
            sizable[name] = md
            origin[name] = claim.wanted.origin.replicas if claim.wanted is not None else None
            observed_replicas[name] = observed.replicas if observed is not None and observed.exists else None
        readings = {name: memory.readings for name, memory in evaluation.memories.items()}
        sizings = self.sizer.size(sizable, evaluation.decisions, readings, now, origin, observed_replicas)
        self._seen = set(sizings)
        intents: dict[CRKey, CopyIntent] = {}
        statuses: dict[str, dict[str, Any]] = {}
        manifests_by_key: dict[CRKey, CopyManifests | None] = {}
        for key, claim in self._claims.items():
            sizing: CopySizing | None = sizings.get(claim.model) if claim.model is not None else None
            replicas = sizing.replicas if sizing is not None else 0
            manifests = copy_manifests(claim, claim.wanted, replicas) if claim.wanted is not None else None
            manifests_by_key[key] = manifests
            wanted, recorded = self._observed.get(key, (None, None))
            blocked = self.actuator.blocked(key) if self.actuator is not None else ""
            last_error = self.actuator.last_error(key) if self.actuator is not None else ""
            state, why = copy_state(claim, wanted, sizing, manifests, blocked)
            if claim.model is not None:
                statuses[claim.model] = destination_status(claim, wanted, sizing, manifests, blocked=blocked,
                                                           last_error=last_error)
            # Not sized yet (the destination not seen): reported, but nothing is made before its size is known.
            size = None if claim.wanted is not None and sizing is None else replicas
            intents[key] = CopyIntent(claim, size, manifests, wanted, recorded, state.value, why)
        self._manifests, self._statuses = manifests_by_key, statuses
        if self.actuator is not None:
            self.actuator.offer(intents)

    def status(self, model: str) -> dict[str, Any] | None:
        return self._statuses.get(model)

    def close(self) -> None:
        self.source.close()
