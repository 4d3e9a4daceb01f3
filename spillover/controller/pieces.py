"""One model's resources, encoded (`Piece`), and the cache of them every group shares (`PieceCache`): what
spillover.controller.encoding builds each group's snapshot from."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from spillover import ir
from spillover.server.references import secret_references
from spillover.server.resources import CLUSTER, ENDPOINT, LISTENER, SECRET, Resource
from spillover.translate.encoded import encode_model, route_term

__all__ = ["VARIANTS", "Piece", "PieceCache"]

# The IR values kept per model name: one per distinct Envoy count among the groups, in practice.
VARIANTS = 4


@dataclass(eq=False, slots=True)
class Piece:
    """One model's IR value and its resources, encoded."""

    model: ir.Model
    routes: bytes
    route_digest: bytes
    route_term: int  # `route_term(route_digest)`: its share of the route table's version
    clusters: tuple[Resource, ...]
    endpoints: tuple[Resource, ...]
    secrets: tuple[Resource, ...]
    # The secret names its own resources refer to (of its own secrets and its remote's).
    references: frozenset[str]
    runtime_weights: bool = False  # rendered with its split in runtime (its routes then without it)
    weights: tuple[tuple[str, int], ...] = ()  # its entries in the split weights' layer
    listeners: tuple[Resource, ...] = ()  # its remote's internal listener (failover)
    failover_remote: str = "internal-listener"  # rendered with this Gateway.failover_remote
    prefix_hash: bool = False  # its routes turn spillover.prefix_hash on (`EncodedModel.prefix_hash`)

    def of_type(self, type_url: str) -> tuple[Resource, ...]:
        if type_url == CLUSTER:
            return self.clusters
        if type_url == ENDPOINT:
            return self.endpoints
        if type_url == LISTENER:
            return self.listeners
        return self.secrets


def _piece(model: ir.Model, runtime_weights: bool = False, failover_remote: str = "internal-listener") -> Piece:
    encoded = encode_model(model, runtime_weights, failover_remote)
    clusters = tuple(Resource.from_bytes(CLUSTER, name, body) for name, body in encoded.clusters)
    endpoints = tuple(Resource.from_bytes(ENDPOINT, name, body) for name, body in encoded.endpoints)
    secrets = tuple(Resource.from_bytes(SECRET, name, body) for name, body in encoded.secrets)
    candidates = {name for name, _ in encoded.secrets}
    if model.remote is not None and model.remote.bearer_token_secret_name:
        candidates.add(model.remote.bearer_token_secret_name)
    references = secret_references((*clusters, *endpoints), candidates) if candidates else frozenset()
    return Piece(
        model, encoded.routes, encoded.route_digest, route_term(encoded.route_digest), clusters, endpoints, secrets,
        references, runtime_weights, encoded.weights,
        tuple(Resource.from_bytes(LISTENER, name, body) for name, body in encoded.listeners), failover_remote,
        encoded.prefix_hash,
    )


class PieceCache:
    """Encoded models by IR value, shared by every group; at most `variants` values per model name."""

    def __init__(self, variants: int = VARIANTS) -> None:
        self.variants = variants
        self._by_name: dict[str, list[Piece]] = {}
        self.encoded = 0  # models translated so far (what the tests and benchmarks count)

    def piece(self, model: ir.Model, runtime_weights: bool = False, failover_remote: str = "internal-listener") -> Piece:
        entries = self._by_name.get(model.name)
        if entries is not None:
            for index, known in enumerate(entries):
                if (
                    (known.model is model or known.model == model)
                    and known.runtime_weights == runtime_weights
                    and known.failover_remote == failover_remote
                ):
                    if index:
                        entries.insert(0, entries.pop(index))
                    return known
        piece = _piece(model, runtime_weights, failover_remote)  # a ValueError leaves nothing behind
        self.encoded += 1
        if entries is None:
            self._by_name[model.name] = [piece]
        else:
            entries.insert(0, piece)
            del entries[self.variants :]
        return piece

    def retain(self, names: Collection[str]) -> None:
        """Forget the models not named (gone from the policies)."""
        for name in [n for n in self._by_name if n not in names]:
            del self._by_name[name]

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._by_name.values())
