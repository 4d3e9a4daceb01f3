"""The fleet's decision table: what the leader decided for every model, as it publishes it (pure).

Per model: the decision (state, remote share, wanted share, reason, remote availability, ready local
endpoints), the durable part of its memory (`spillover.decide.persisted`: mode, share, since, the
activation and buffer timers, the last transition) so that the next leader continues exactly there,
the last metric readings (for the followers' status views), and the least-latency endpoint weights.
The header says who decided it: the leader's identity and term (the leader Lease's
`leaseTransitions` when it took over), a sequence number and when it was published.

Published in Lease annotations (`encode`): the table is split over as many Leases as it needs to stay
within `budget` bytes each (`spillover-decisions`, `spillover-decisions-1`, ...; a model's chunk is a
hash of its name, so one model's change rewrites one chunk). `routing_fingerprint` is what must change
for the table to be published again: a reason text or a metric value alone does not (they change every
evaluation); they go out with the next routing change or the periodic refresh.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from spillover.controller.fleet.codec import pack, unpack
from spillover.decide import Decision, MetricReading, ModelMemory
from spillover.decide.persisted import memory_document, restore_memory
from spillover.policy import OverflowState

__all__ = [
    "BODY_ANNOTATION",
    "HEADER_ANNOTATION",
    "Table",
    "decision_of",
    "decode",
    "encode",
    "entry_of",
    "memory_of",
    "routing_fingerprint",
]

HEADER_ANNOTATION = "spillover.dev/decisions-header"
BODY_ANNOTATION = "spillover.dev/decisions"
DEFAULT_BUDGET = 200_000
_MAX_CHUNKS = 64
_REASON = 240  # characters of a reason kept in the table (the status has it whole)
_REMOTES = ("none", "available", "unhealthy", "unusable")


@dataclass(frozen=True)
class Table:
    leader: str
    term: int
    seq: int
    published_at: float  # wall clock
    entries: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def entry_of(decision: Decision, memory: ModelMemory, weights: Mapping[str, int] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "s": decision.state.value,
        "r": decision.remote_share,
        "w": decision.wanted_share,
        "why": decision.reason[:_REASON],
        "rem": decision.remote,
        "rdy": decision.local_ready,
        "m": memory_document(memory),
        "rd": [
            [r.name, r.threshold, r.condition, r.value, r.at, r.error[:_REASON]]
            for r in memory.readings
            if _finite(r.threshold) and (r.value is None or _finite(r.value))
        ],
    }
    if weights:
        entry["lw"] = dict(sorted(weights.items()))
    return entry


def routing_fingerprint(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """A hash of what Envoy and the next leader need: not reasons, readings or evaluation times."""
    routing = {
        name: [e.get("s"), e.get("r"), e.get("w"), e.get("rem"), e.get("rdy"), e.get("m"), e.get("lw")]
        for name, e in sorted(entries.items())
    }
    return hashlib.sha256(json.dumps(routing, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _share(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ValueError(f"{key}: must be an integer 0-100, got {value!r}")
    return value


def decision_of(entry: Mapping[str, Any]) -> Decision:
    """The decision of a table entry; ValueError (naming the key) when it is not one."""
    try:
        state = OverflowState(str(entry.get("s")))
    except ValueError:
        raise ValueError(f"s: not a state: {entry.get('s')!r}") from None
    remote = entry.get("rem", "available")
    if remote not in _REMOTES:
        raise ValueError(f"rem: not one of {_REMOTES}")
    ready = entry.get("rdy")
    if ready is not None and (isinstance(ready, bool) or not isinstance(ready, int) or ready < 0):
        raise ValueError(f"rdy: must be a count or null, got {ready!r}")
    reason = entry.get("why", "")
    if not isinstance(reason, str):
        raise ValueError("why: must be a string")
    return Decision(
        state, _share(entry.get("r"), "r"), reason[:_REASON], wanted_share=_share(entry.get("w"), "w"),
        remote=remote, local_ready=ready,
    )


def _readings(entry: Mapping[str, Any]) -> tuple[MetricReading, ...]:
    out = []
    for item in entry.get("rd") or []:
        if not (isinstance(item, list) and len(item) == 6 and isinstance(item[0], str) and _finite(item[1])):
            continue
        name, threshold, condition, value, at, error = item
        if condition not in ("breached", "calm", "unknown"):
            continue
        value = float(value) if _finite(value) else None
        at = float(at) if _finite(at) else None
        out.append(MetricReading(name, float(threshold), condition, value, at, str(error or "")[:_REASON]))
    return tuple(out)


def memory_of(entry: Mapping[str, Any], now: float, alive_at: float | None = None, readings: bool = True) -> ModelMemory:
    """The memory of a table entry, its timers resumed at `now` with the time they had run by `alive_at`
    (see `restore_memory`). Without `readings` every metric reads as not sampled yet: a new leader's first
    rounds are no news, so the timers it took over keep running until its own samples arrive."""
    memory = restore_memory(entry.get("m"), now, alive_at)
    return dataclasses.replace(memory, readings=_readings(entry)) if readings else memory


def _chunk_of(name: str, chunks: int) -> int:
    return zlib.crc32(name.encode()) % chunks


def encode(table: Table, budget: int = DEFAULT_BUDGET) -> list[dict[str, str]]:
    """The annotations of each chunk Lease (index 0 first): as few chunks as keep each under `budget`."""
    chunks = 1
    while True:
        parts: list[dict[str, Mapping[str, Any]]] = [{} for _ in range(chunks)]
        for name, entry in table.entries.items():
            parts[_chunk_of(name, chunks)][name] = entry
        bodies = [pack(part) for part in parts]
        if all(len(body) <= budget for body in bodies) or chunks >= _MAX_CHUNKS:
            break
        chunks *= 2
    out = []
    for index, body in enumerate(bodies):
        header = {"v": 1, "leader": table.leader, "term": table.term, "seq": table.seq,
                  "at": round(table.published_at, 3), "chunk": index, "chunks": chunks}
        out.append({HEADER_ANNOTATION: json.dumps(header, sort_keys=True, separators=(",", ":")), BODY_ANNOTATION: body})
    return out


def _header(annotations: Mapping[str, Any]) -> dict[str, Any] | None:
    try:
        header = json.loads(str(annotations.get(HEADER_ANNOTATION) or ""))
    except ValueError:
        return None
    if not isinstance(header, dict) or header.get("v") != 1:
        return None
    fields = ("term", "seq", "chunk", "chunks")
    if not all(isinstance(header.get(k), int) and not isinstance(header.get(k), bool) for k in fields):
        return None
    if not isinstance(header.get("leader"), str) or not _finite(header.get("at")):
        return None
    if not 0 <= header["chunk"] < header["chunks"] <= _MAX_CHUNKS:
        return None
    return header


def decode(chunks: Mapping[int, Mapping[str, Any]], previous: Table | None = None) -> Table | None:
    """The table of the chunk Leases' annotations (by index). Chunks of another leader, term or chunk
    count than chunk 0's are not current yet: their models keep the entries of `previous`."""
    first = _header(chunks.get(0) or {})
    if first is None:
        return previous
    entries: dict[str, Mapping[str, Any]] = {}
    stale: set[int] = set()
    for index in range(first["chunks"]):
        annotations = chunks.get(index) or {}
        header = _header(annotations)
        same = header is not None and all(header[k] == first[k] for k in ("leader", "term", "chunks"))
        body: Any = None
        if same:
            try:
                body = unpack(annotations.get(BODY_ANNOTATION))
            except ValueError:
                body = None
        if not isinstance(body, dict):
            stale.add(index)
            continue
        entries.update({str(k): v for k, v in body.items() if isinstance(v, dict)})
    if previous is not None and stale:
        for name, entry in previous.entries.items():
            if _chunk_of(name, first["chunks"]) in stale:
                entries.setdefault(name, entry)
    return Table(first["leader"], first["term"], first["seq"], float(first["at"]), entries)
