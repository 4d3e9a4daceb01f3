"""Policy changes that can't hurt: a sudden loss of most models is held, and who serves a model is told.

`RemovalGuard.apply(served, incoming, now)` returns the state to serve. A change that would remove more
than half of the models served (all of them, with one or two) is held for `grace` seconds: the models it
removes keep being served from their last configuration (they are listed as stale), and the hold is
reported. A redeploy that deletes the files and writes them back a moment later (`rm *.yaml; cp ...`)
never reaches Envoy. If the removal persists for the whole grace period, it is applied; if the models
come back earlier, the hold ends. Removing fewer models, or a grace of 0, applies at once.

`takeovers(served, new)` names the models whose definition moved to another file or object: a duplicate
that had been refused serves the model once the definition it collided with is gone, and says so.

`readiness(state, held)` is what /readyz says of the policies: not ready while a policy file can't be
read and nothing it defined is served (after a restart, say: this replica would serve a config without
those models); a file whose models keep their last good config, or a held removal, is a warning (what
is served is right).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from spillover.policy import DesiredState
from spillover.policy.validate import YAML_SUFFIXES

log = logging.getLogger(__name__)

__all__ = ["HeldRemoval", "RemovalGuard", "kept_from", "readiness", "takeovers"]


@dataclass(frozen=True)
class HeldRemoval:
    models: tuple[str, ...]  # removed by the change, still served
    served: int  # how many models were served when the hold began
    since: float  # Unix time the hold began
    until: float  # when the removal applies if it persists

    def describe(self) -> str:
        names = ", ".join(self.models[:10]) + (f" and {len(self.models) - 10} more" if len(self.models) > 10 else "")
        return (
            f"removal of {len(self.models)} of {self.served} models held until the removal has lasted "
            f"{self.until - self.since:g}s ({names}); they are still served"
        )


def _sweeping(before: int, gone: int) -> bool:
    return before > 0 and gone > 0 and gone * 2 > before


class RemovalGuard:
    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.held: HeldRemoval | None = None
        self._before: DesiredState | None = None  # what was served when the hold began

    def apply(self, served: DesiredState, incoming: DesiredState, now: float) -> DesiredState:
        """The state to serve after `incoming` arrived (or, with `incoming` unchanged, after time passed)."""
        before = self._before or served
        gone = [name for name in before.models if name not in incoming.models]
        if self.grace <= 0 or not _sweeping(len(before.models), len(gone)):
            if self.held is not None:
                log.info("policy removal no longer held: the models are back (%s)", self.held.describe())
            self._release()
            return incoming
        if self.held is None:
            self._before = before
            self.held = HeldRemoval(tuple(sorted(gone)), len(before.models), now, now + self.grace)
            log.warning("policy change held: %s", self.held.describe())
        elif now >= self.held.until:
            log.warning("policy change applied after %gs: %s", self.grace, self.held.describe())
            self._release()
            return incoming
        else:
            self.held = dataclasses.replace(self.held, models=tuple(sorted(gone)))
        return _with(incoming, before, gone)

    def _release(self) -> None:
        self.held = None
        self._before = None

    def due(self, now: float) -> bool:
        return self.held is not None and now >= self.held.until


def _with(incoming: DesiredState, before: DesiredState, kept: Iterable[str]) -> DesiredState:
    models, origins = dict(incoming.models), dict(incoming.origins)
    stale = set(incoming.stale)
    for name in kept:
        models[name] = before.models[name]
        if name in before.origins:
            origins[name] = before.origins[name]
        stale.add(name)
    return dataclasses.replace(
        incoming,
        models=dict(sorted(models.items())),
        origins=dict(sorted(origins.items())),
        stale=frozenset(stale),
    )


def takeovers(served: DesiredState, new: DesiredState) -> list[str]:
    """One line per model that the new state serves from another definition than before."""
    out = []
    for name, origin in new.origins.items():
        old = served.origins.get(name)
        if old is None or str(old) == str(origin) or name not in served.models:
            continue
        if old.file == origin.file:
            continue  # moved within a file (documents reordered): the same definition
        out.append(f"model {name}: now defined by {origin}; its definition in {old} is gone or no longer valid")
    return out


def kept_from(state: DesiredState, file: str) -> list[str]:
    """The models still served from an unreadable file's (or a missing directory's) last good config."""
    kept = [name for name, origin in state.origins.items() if origin.file == file]
    if not kept and not file.endswith(YAML_SUFFIXES):  # the whole directory is missing
        kept = sorted(state.stale)
    return sorted(kept)


def readiness(state: DesiredState, held: HeldRemoval | None) -> tuple[bool, list[str]]:
    ready, notes = True, []
    for file in sorted(state.unreadable):
        why = "; ".join(str(e) for e in state.errors_for_file(file)) or f"{file}: unreadable"
        kept = kept_from(state, file)
        if kept:
            notes.append(f"warning: {why}; still served from the last good config: {', '.join(kept)}")
        else:
            ready = False
            notes.append(f"{why}; none of the models it defines is served")
    if held is not None:
        notes.append(f"warning: {held.describe()}")
    return ready, notes
