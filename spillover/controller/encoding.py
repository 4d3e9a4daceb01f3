"""Snapshots that cost what changed: a model's resources are translated and serialized when its IR changes,
and a group's next snapshot is its previous one with the changed models' resources swapped in.

Two things are kept, neither of them a copy per group:

- `PieceCache`, one for every group: per model name, the last few IR values seen (groups whose Envoy
  counts differ have different rate-limit shares, hence different IR) with their encoded resources as
  `Resource`s. A model whose IR is the same object as before (the planner returns it when nothing it
  depends on changed) or an equal value costs a lookup; only new values are translated.
- The group's previous snapshot, which carries in `Snapshot.basis` which pieces it was made of. The next
  one copies its maps and replaces the entries of the pieces that differ; the route table is re-joined
  from the models' encoded routes (bytes, no re-encoding) only when some model's routes changed, and
  then from runs of models of which only the changed ones' are joined anew (`_Routes`).

A group that is forgotten drops its snapshot and with it its basis; the cache drops the models that
leave the policies (`retain`). The result is byte for byte the full translation's (`translate`), which
tests/controller/test_encoding.py checks after every kind of change.
"""

from __future__ import annotations

import itertools
import operator
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from spillover import ir
from spillover.controller.pieces import Piece, PieceCache
from spillover.names import (
    FAILOVER_REMOTE,
    LISTENER_NAME,
    ROUTE_CONFIG_NAME,
    SPLIT_RUNTIME_LAYER,
    SPLIT_WEIGHTS,
)
from spillover.server.cache import Snapshot
from spillover.server.references import secret_references
from spillover.server.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    RUNTIME,
    SECRET,
    Resource,
    version_of_sum,
)
from spillover.translate.encoded import (
    RouteTable,
    encode_listener,
    encode_split_layer,
)
from spillover.translate.translator import check_gateway

__all__ = ["Piece", "PieceCache", "SnapshotBuilder"]

# Per-model resource types (the route table is per gateway). The listeners: the gateway's own, and the
# internal listeners of its failover models' remotes.
_PER_MODEL = (CLUSTER, ENDPOINT, LISTENER)
_MODEL_TYPES = (CLUSTER, ENDPOINT, SECRET)
# The route table is kept as runs of this many models' encoded routes: a model whose routes change costs
# its run's join (~100 KiB at 10,000 models) and one join of the runs (the table's one copy), never a
# pass over every model.
RUN = 64
_NO_LAYER: Mapping[str, Resource] = MappingProxyType({})


@dataclass(frozen=True, eq=False, slots=True)
class _Routes:
    """The route table and what it was joined from: the pieces' routes in runs of `run` pieces."""

    resource: Resource
    run: int
    runs: tuple[bytes, ...]  # the concatenated routes of pieces[i * run : (i + 1) * run]
    sums: tuple[int, ...]  # the sum of those pieces' `route_term`s
    prefix_hash: bool  # joined by the table whose slow-path routes enable spillover.prefix_hash


@dataclass(eq=False, slots=True)
class _Basis:
    """What a snapshot was built from, for building the group's next one."""

    builder: SnapshotBuilder
    listener: ir.Listener
    pieces: tuple[Piece, ...]
    routes: _Routes
    # The IR values the pieces were looked up with, in the pieces' order (the gateway's models when they
    # came sorted): a model given again as the same object has the same piece.
    models: tuple[ir.Model, ...]
    # How many pieces hold each secret name, and refer to each: a name shared by two models stays while
    # one of them still has it.
    holders: dict[str, int]
    references: dict[str, int]
    sums: dict[str, tuple[int, int]]  # per model type: the sum of the resources' `mix` terms, and their count
    split_weights: str = "route"
    failover_remote: str = "internal-listener"
    # With split_weights "runtime": the entries of each model that has any (those that spill), and the layer.
    weights: dict[str, tuple[tuple[str, int], ...]] | None = None
    layer: Mapping[str, Resource] = field(default_factory=lambda: _NO_LAYER)
    prefix_hashed: int = 0  # how many pieces' routes turn spillover.prefix_hash on


def _layer(weights: Mapping[str, tuple[tuple[str, int], ...]]) -> Mapping[str, Resource]:
    """The split weights' Runtime resource of the spilling models' entries (a flip changes only this)."""
    body = encode_split_layer(entry for entries in weights.values() for entry in entries)
    return MappingProxyType({SPLIT_RUNTIME_LAYER: Resource.from_bytes(RUNTIME, SPLIT_RUNTIME_LAYER, body)})


def _sorted(named: Mapping[str, Resource]) -> Mapping[str, Resource]:
    return MappingProxyType({name: named[name] for name in sorted(named)})


def _add(named: dict[str, Resource], resource: Resource, type_url: str) -> None:
    existing = named.get(resource.name)
    if existing is not None and existing is not resource and existing.body != resource.body:
        if type_url == SECRET:
            raise ValueError(f"secret {resource.name!r} is given two different token values")
        raise ValueError(f"two models render a {type_url.rsplit('.', 1)[-1]} named {resource.name!r}")
    named[resource.name] = resource


def _copy(named: Mapping[str, Resource]) -> dict[str, Resource]:
    # A proxy's copy() is its dict's: a C-level copy, not a walk through the mapping protocol.
    return named.copy() if isinstance(named, MappingProxyType) else dict(named)


def _count(counts: dict[str, int], names: Iterable[str], step: int) -> None:
    for name in names:
        left = counts.get(name, 0) + step
        if left:
            counts[name] = left
        else:
            del counts[name]


class SnapshotBuilder:
    """Builds a group's snapshot from its gateway IR: from the group's previous snapshot when given, else
    from the last one this builder built (another group's: any snapshot with a basis will do)."""

    def __init__(self, pieces: PieceCache | None = None, run: int = RUN) -> None:
        if run < 1:
            raise ValueError("run must be >= 1")
        self.pieces = pieces if pieces is not None else PieceCache()
        self.run = run
        # The slow-path routes differ with whether some model uses prefix_hash (routes.py `_slow_path`).
        self._tables = {flag: RouteTable(prefix_hash=flag) for flag in (False, True)}
        self._listeners: dict[ir.Listener, Resource] = {}
        # The last snapshot built, whatever its group: a group seen for the first time is built from it
        # (most groups serve the same models). Weak: it is the groups' to keep, not the builder's.
        self._last: weakref.ref[Snapshot] | None = None

    def _listener(self, listener: ir.Listener) -> Resource:
        resource = self._listeners.get(listener)
        if resource is None:
            if len(self._listeners) >= 16:
                self._listeners.clear()
            resource = Resource.from_bytes(LISTENER, LISTENER_NAME, encode_listener(listener))
            self._listeners[listener] = resource
        return resource

    def _route_table(
        self, pieces: Sequence[Piece], prefix_hash: bool, previous: _Routes | None = None, dirty: Iterable[int] = ()
    ) -> _Routes:
        """From `previous` (of pieces with the same names in the same places) with the pieces at `dirty`
        changed, else from every piece; `prefix_hash`: some piece turns it on (the other table's runs are
        the same)."""
        run = self.run
        if previous is not None and previous.run == run:
            runs, sums = list(previous.runs), list(previous.sums)
            for r in sorted({i // run for i in dirty}):
                part = pieces[r * run : (r + 1) * run]
                runs[r] = b"".join([p.routes for p in part])
                sums[r] = sum(p.route_term for p in part)
        else:
            starts = range(0, len(pieces), run)
            runs = [b"".join([p.routes for p in pieces[s : s + run]]) for s in starts]
            sums = [sum(p.route_term for p in pieces[s : s + run]) for s in starts]
        table = self._tables[prefix_hash]
        resource = Resource.from_bytes(
            ROUTE, ROUTE_CONFIG_NAME, table.join(runs), version=table.version(sum(sums), len(pieces))
        )
        return _Routes(resource, run, tuple(runs), tuple(sums), prefix_hash)

    def snapshot(self, gateway: ir.Gateway, previous: Snapshot | None = None) -> Snapshot:
        """Raises ValueError on what the translation refuses, as `translate` does."""
        started = time.perf_counter()
        if previous is None and self._last is not None:
            previous = self._last()
        basis = previous.basis if previous is not None else None
        if gateway.split_weights not in SPLIT_WEIGHTS or gateway.failover_remote not in FAILOVER_REMOTE:
            check_gateway(gateway)  # the same refusal as translate's
        if not (
            isinstance(basis, _Basis) and basis.builder is self and previous is not None
            and basis.split_weights == gateway.split_weights and basis.failover_remote == gateway.failover_remote
        ):
            snapshot = self._first(gateway, *self._pieces(gateway))
        else:
            snapshot = self._next(gateway, previous, basis)
        snapshot.build_seconds = time.perf_counter() - started
        self._last = weakref.ref(snapshot)
        return snapshot

    def _pieces(self, gateway: ir.Gateway) -> tuple[tuple[ir.Model, ...], tuple[Piece, ...]]:
        """The gateway's models sorted by name, and their pieces."""
        models = gateway.models
        if not gateway.name or any(a.name >= b.name for a, b in itertools.pairwise(models)):
            check_gateway(gateway)  # the same refusals as translate's
            models = tuple(sorted(models, key=lambda m: m.name))
        runtime = gateway.split_weights == "runtime"
        return models, tuple(self.pieces.piece(m, runtime, gateway.failover_remote) for m in models)

    def _first(self, gateway: ir.Gateway, models: tuple[ir.Model, ...], pieces: tuple[Piece, ...]) -> Snapshot:
        by_type: dict[str, Mapping[str, Resource]] = {}
        sums = {}
        for type_url in _PER_MODEL:
            named: dict[str, Resource] = {}
            if type_url == LISTENER:
                # The gateway's own listener beside the models' internal listeners.
                named[LISTENER_NAME] = self._listener(gateway.listener)
            for piece in pieces:
                for resource in piece.of_type(type_url):
                    _add(named, resource, type_url)
            by_type[type_url] = _sorted(named)
            sums[type_url] = (sum(r.mix for r in named.values()), len(named))
        secrets: dict[str, Resource] = {}
        holders: dict[str, int] = {}
        references: dict[str, int] = {}
        for piece in pieces:
            for resource in piece.secrets:
                _add(secrets, resource, SECRET)
            _count(holders, (r.name for r in piece.secrets), 1)
            _count(references, piece.references, 1)
        by_type[SECRET] = _sorted(secrets)
        hashed = sum(p.prefix_hash for p in pieces)
        routes = self._route_table(pieces, hashed > 0)
        by_type[ROUTE] = MappingProxyType({ROUTE_CONFIG_NAME: routes.resource})
        weights, layer = None, _NO_LAYER
        if gateway.split_weights == "runtime":
            # Always a layer in this mode, empty or not: Envoy waits for it before it initializes.
            weights = {p.model.name: p.weights for p in pieces if p.weights}
            layer = _layer(weights)
        by_type[RUNTIME] = layer
        basis = _Basis(
            self, gateway.listener, pieces, routes, models, holders, references, sums, gateway.split_weights,
            gateway.failover_remote, weights, layer, hashed,
        )
        return self._snapshot(by_type, basis)

    def _changed(
        self, gateway: ir.Gateway, basis: _Basis
    ) -> tuple[tuple[ir.Model, ...], tuple[Piece, ...], list[Piece], list[Piece], list[int] | None]:
        """The gateway's models sorted and their pieces, the pieces of the basis that are gone and those that
        replace them, and where they are when the names are those of the basis in the same places."""
        before, models = basis.pieces, gateway.models
        if gateway.name and len(before) == len(models):
            # The planner gives the same IR object for a model that did not change: one identity check each
            # (of two tuples, in C).
            changed = [] if models is basis.models else list(
                itertools.compress(range(len(models)), map(operator.is_not, basis.models, models))
            )
            if all(before[i].model.name == models[i].name for i in changed):
                # Same names at the same places as in the basis, which was sorted: so is this.
                replaced = list(before)
                for i in changed:
                    replaced[i] = self.pieces.piece(
                        models[i], gateway.split_weights == "runtime", gateway.failover_remote
                    )
                at = [i for i in changed if replaced[i] is not before[i]]
                return models, tuple(replaced), [before[i] for i in at], [replaced[i] for i in at], at
        models, pieces = self._pieces(gateway)
        now = {p.model.name: p for p in pieces}
        then = {p.model.name: p for p in before}
        removed = [p for name, p in then.items() if now.get(name) is not p]
        added = [p for name, p in now.items() if then.get(name) is not p]
        return models, pieces, removed, added, None

    def _next(self, gateway: ir.Gateway, previous: Snapshot, basis: _Basis) -> Snapshot:
        models, pieces, removed, added, at = self._changed(gateway, basis)
        by_type: dict[str, Mapping[str, Resource]] = {}
        changes: dict[str, frozenset[str]] = {}
        sums = dict(basis.sums)
        for type_url in _PER_MODEL:
            out = [r for p in removed for r in p.of_type(type_url)]
            into = [r for p in added for r in p.of_type(type_url)]
            current = previous.get(type_url)
            gone, names = {r.name for r in out}, {r.name for r in into}
            if gone == names and all(current.get(r.name) is r for r in into):
                # None (a decision moves only routes), or the same resources again (`Resource.from_bytes`
                # gives the one object for the same bytes): the map is kept as it is.
                by_type[type_url] = current
                changes[type_url] = frozenset()
                continue
            named = _copy(current)
            for name in gone - names:
                del named[name]
            seen: set[str] = set()
            for resource in into:
                if resource.name in gone and resource.name not in seen:
                    named[resource.name] = resource  # replaced where it was: the order stays sorted
                else:
                    _add(named, resource, type_url)
                seen.add(resource.name)
            # Other names than before (a model added, removed, a strategy changed): sorted again.
            by_type[type_url] = MappingProxyType(named) if gone == names else _sorted(named)
            total, _ = sums[type_url]
            sums[type_url] = (total - sum(r.mix for r in out) + sum(r.mix for r in into), len(named))
            kept = {r.name for r in out if (b := named.get(r.name)) is not None and b.version == r.version}
            changes[type_url] = frozenset((gone | names) - kept)
        holders, references = basis.holders, basis.references
        same_secrets = len(removed) == len(added) and all(
            old.references == new.references and len(old.secrets) == len(new.secrets)
            and all(map(operator.is_, old.secrets, new.secrets))
            for old, new in zip(removed, added, strict=True)
        )
        if not same_secrets and any(p.secrets or p.references for p in (*removed, *added)):
            holders, references = dict(holders), dict(references)
            secrets = _copy(previous.get(SECRET))
            for piece in removed:
                _count(holders, (r.name for r in piece.secrets), -1)
                _count(references, piece.references, -1)
            for name in {r.name for p in removed for r in p.secrets}:
                if name not in holders:
                    del secrets[name]
            seen = set()
            for piece in added:
                for resource in piece.secrets:
                    if resource.name in holders or resource.name in seen:
                        _add(secrets, resource, SECRET)  # another model gives this name too: the same token?
                    else:
                        secrets[resource.name] = resource
                    seen.add(resource.name)
                _count(holders, (r.name for r in piece.secrets), 1)
                _count(references, piece.references, 1)
            by_type[SECRET] = _sorted(secrets)
        else:
            by_type[SECRET] = previous.get(SECRET)
        if gateway.listener != basis.listener:
            listeners = _copy(by_type[LISTENER])
            old, new = listeners[LISTENER_NAME], self._listener(gateway.listener)
            listeners[LISTENER_NAME] = new  # replaced where it was: the order stays sorted
            by_type[LISTENER] = MappingProxyType(listeners)
            total, number = sums[LISTENER]
            sums[LISTENER] = (total - old.mix + new.mix, number)
            changes[LISTENER] = changes[LISTENER] | {LISTENER_NAME}
        routes = basis.routes
        # A model that starts or stops using prefix_hash may change the slow-path routes (the other table).
        hashed = basis.prefix_hashed + sum(p.prefix_hash for p in added) - sum(p.prefix_hash for p in removed)
        if at is not None:
            dirty = [i for i in at if pieces[i].route_digest != basis.pieces[i].route_digest]
            if dirty or (hashed > 0) != routes.prefix_hash:
                routes = self._route_table(pieces, hashed > 0, basis.routes, dirty)
        elif len(removed) != len(added) or any(
            old.model.name != new.model.name or old.route_digest != new.route_digest
            for old, new in zip(removed, added, strict=True)
        ):
            routes = self._route_table(pieces, hashed > 0)  # other names, or in other places: every run again
        if routes is basis.routes:
            by_type[ROUTE] = previous.get(ROUTE)
            changes[ROUTE] = frozenset()
        else:
            by_type[ROUTE] = MappingProxyType({ROUTE_CONFIG_NAME: routes.resource})
            changed_routes = routes.resource.version != basis.routes.resource.version
            changes[ROUTE] = frozenset({ROUTE_CONFIG_NAME}) if changed_routes else frozenset()
        weights, layer = basis.weights, basis.layer
        if weights is not None and any(p.weights for p in (*removed, *added)):
            # A model that starts or stops spilling, or spills another share: the layer only.
            weights = dict(weights)
            for piece in removed:
                weights.pop(piece.model.name, None)
            for piece in added:
                if piece.weights:
                    weights[piece.model.name] = piece.weights
            built = _layer(weights)
            if built[SPLIT_RUNTIME_LAYER] is not layer.get(SPLIT_RUNTIME_LAYER):
                layer = built
        changes[RUNTIME] = frozenset() if layer is basis.layer else frozenset({SPLIT_RUNTIME_LAYER})
        by_type[RUNTIME] = layer
        basis = _Basis(
            self, gateway.listener, pieces, routes, models, holders, references, sums, gateway.split_weights,
            gateway.failover_remote, weights, layer, hashed,
        )
        return self._snapshot(by_type, basis, previous, changes)

    def _snapshot(
        self,
        by_type: dict[str, Mapping[str, Resource]],
        basis: _Basis,
        previous: Snapshot | None = None,
        changes: Mapping[str, frozenset[str]] | None = None,
    ) -> Snapshot:
        secrets = by_type[SECRET]
        before = previous.basis if previous is not None else None
        if (
            previous is not None and isinstance(before, _Basis) and secrets is previous.get(SECRET)
            and basis.references is before.references and len(previous.referenced_secrets()) == len(secrets)
        ):
            # The same secrets, each referenced by its own model as before: no walk over them.
            referenced = previous.referenced_secrets()
        else:
            referenced = frozenset(n for n in secrets if n in basis.references)
        if len(referenced) < len(secrets):
            # A secret its own model does not refer to: whether anything else does is looked up the slow way.
            others = (r for type_url, named in by_type.items() if type_url != SECRET for r in named.values())
            referenced |= secret_references(others, [n for n in secrets if n not in referenced])
        versions = {t: version_of_sum(total, count) for t, (total, count) in basis.sums.items()}
        return Snapshot.from_encoded(
            {t: by_type[t] for t in PUSH_ORDER},
            referenced_secrets=referenced,
            basis=basis,
            previous=previous,
            versions=versions,
            changes=changes,
        )
