"""How a status is stored on the objects of one CRD, and what the API server prunes of it (pure).

spillover's own CRD (`spillover.dev`) keeps the whole status document. Beamlit's published CRD
(`deployment.beamlit.com`) has a status of six fields (`offloadingStatus`, `servingPort`, `metricPort`,
`workspace`, `createdAtOnBeamlit`, `updatedAtOnBeamlit`) and no `x-kubernetes-preserve-unknown-fields`:
anything else sent to its `/status` is pruned, the write "succeeds" and the stored object never changes.
So `BEAMLIT_SHAPE` stores:

- in `status`, Beamlit's own fields where they fit: `offloadingStatus` (traffic goes remote),
  `servingPort` (the one port the local endpoints are served on), `metricPort` (a numeric
  `metricServiceRef.targetPort`), `workspace` (the value of `$workspace` of a model with a remote);
- the rest in annotations, which every schema keeps (metadata): `spillover.dev/state`,
  `spillover.dev/remote-share`, `spillover.dev/reason`, `spillover.dev/state-since`,
  `spillover.dev/observed-generation` and, for an invalid object, `spillover.dev/invalid`;
- each transition is an Event as for any ModelDeployment.

`PrunedFields` is the safety net for any schema (an older spillover CRD, a hand-made one): after a write
it compares what was sent with what the server kept, remembers the fields that were dropped, logs them
once and never sends them again, so a pruned field can never cause a write per evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from spillover.controller.kubernetes.documents import OWNED_STATUS_KEYS, StatusInput

__all__ = [
    "ANNOTATION_PREFIX",
    "BEAMLIT_SHAPE",
    "SOFT_ANNOTATIONS",
    "SPILLOVER_SHAPE",
    "PrunedFields",
    "StatusShape",
    "our_annotations",
]

ANNOTATION_PREFIX = "spillover.dev/"
STATE, REMOTE_SHARE, REASON, STATE_SINCE = (f"{ANNOTATION_PREFIX}{k}" for k in ("state", "remote-share", "reason", "state-since"))
OBSERVED_GENERATION, INVALID = f"{ANNOTATION_PREFIX}observed-generation", f"{ANNOTATION_PREFIX}invalid"
ANNOTATIONS = (STATE, REMOTE_SHARE, REASON, STATE_SINCE, OBSERVED_GENERATION, INVALID)
# Changes of only these wait for the writer's refresh interval (texts and times, like the status's).
SOFT_ANNOTATIONS = frozenset({REASON, STATE_SINCE})
_TEXT_LIMIT = 1024


def _text(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _TEXT_LIMIT else text[: _TEXT_LIMIT - 3] + "..."


def our_annotations(annotations: Mapping[str, Any] | None) -> dict[str, str]:
    """The annotations of an object that a shape writes (the others are someone else's)."""
    return {k: str(v) for k, v in (annotations or {}).items() if k in ANNOTATIONS}


@dataclass(frozen=True)
class StatusShape:
    """`status()` maps the full status document onto what the CRD stores; `annotations()` carries what
    it cannot. `owned` are the top-level status keys removed (merge-patch null) when not wanted."""

    name: str
    owned: tuple[str, ...]
    beamlit: bool = False

    def status(self, full: Mapping[str, Any], item: StatusInput) -> dict[str, Any]:
        if not self.beamlit:
            return dict(full)
        out: dict[str, Any] = {"offloadingStatus": bool(full.get("offloadingStatus"))}
        for key, value in (("servingPort", item.serving_port), ("metricPort", item.metric_port),
                           ("workspace", item.workspace)):
            if value is not None:
                out[key] = value
        return out

    def annotations(self, full: Mapping[str, Any], item: StatusInput) -> dict[str, str]:
        if not self.beamlit:
            return {}
        out: dict[str, str] = {}
        status = item.status
        if status is not None:
            out[STATE] = str(status.get("state", ""))
            out[REMOTE_SHARE] = str(status.get("remoteShare", 0))
            if status.get("reason"):
                out[REASON] = _text(status["reason"])
            if status.get("stateSince"):
                out[STATE_SINCE] = str(status["stateSince"])
        if item.invalid:
            out[INVALID] = _text(item.invalid)
        if item.generation is not None:
            out[OBSERVED_GENERATION] = str(item.generation)
        return out


SPILLOVER_SHAPE = StatusShape("spillover.dev", OWNED_STATUS_KEYS)
# Only offloadingStatus is ours to remove: the other Beamlit fields may be Beamlit's controller's.
BEAMLIT_SHAPE = StatusShape("deployment.beamlit.com", ("offloadingStatus",), beamlit=True)

Path = tuple[str, ...]  # "conditions[]" stands for every item of a list


def _paths(value: Any, prefix: Path = ()) -> Iterable[Path]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            path = (*prefix, str(key))
            yield path
            yield from _paths(item, path)
    elif isinstance(value, list):
        for item in value:
            yield from _paths(item, (*prefix[:-1], f"{prefix[-1]}[]") if prefix else ("[]",))


def _present(value: Any, path: Path) -> bool:
    """Whether `value` holds `path` (for a list step: whether any item does)."""
    if not path:
        return True
    head, rest = path[0], path[1:]
    if head.endswith("[]"):
        key = head[:-2]
        items = value.get(key) if isinstance(value, Mapping) else None
        if not isinstance(items, list):
            return False
        return any(_present(item, rest) for item in items) if rest else True
    return isinstance(value, Mapping) and head in value and _present(value[head], rest)


@dataclass
class PrunedFields:
    """The status fields an API server has been seen to prune, per CRD (see the module docstring)."""

    paths: set[Path] = field(default_factory=set)

    def learn(self, sent: Mapping[str, Any], kept: Mapping[str, Any]) -> list[str]:
        """Compares a status sent with the status stored; returns the newly pruned fields, dotted."""
        new = []
        for path in _paths(sent):
            if self._covered(path):
                continue
            # A list item's field counts only when no stored item has it, a dict's when it is missing.
            if _present(sent, path) and not _present(kept, path):
                self.paths.add(path)
                new.append(".".join(path))
        return new

    def _covered(self, path: Path) -> bool:
        for i in range(1, len(path) + 1):
            ancestor = path[:i]
            if ancestor in self.paths or (*ancestor[:-1], ancestor[-1].removesuffix("[]")) in self.paths:
                return True
        return False

    def drop(self, status: Mapping[str, Any]) -> dict[str, Any]:
        """`status` without the fields known to be pruned."""
        return _drop(status, (), self.paths) if self.paths else dict(status)


def _drop(value: Mapping[str, Any], prefix: Path, pruned: set[Path]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        path = (*prefix, str(key))
        if path in pruned:
            continue
        if isinstance(item, Mapping):
            out[key] = _drop(item, path, pruned)
        elif isinstance(item, list):
            listed = (*prefix, f"{key}[]")
            out[key] = [_drop(i, listed, pruned) if isinstance(i, Mapping) else i for i in item]
        else:
            out[key] = item
    return out
