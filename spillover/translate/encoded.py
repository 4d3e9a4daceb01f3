"""The translation in encoded pieces: one model at a time, and the route table joined from them as bytes.

`translate` renders a whole gateway; a change to one model of 10,000 then re-renders and re-serializes
all of them, and the single RouteConfiguration (megabytes: every model's routes) with them. Protobuf's
wire format allows better: a message is the concatenation of its encoded fields, and a map is one
encoded entry per key. So each model's routes are encoded once, as its entry of the table's ``x-model``
map (spillover.translate.route_table), and the RouteConfiguration is the fixed fields
around the join of every model's entries, with the lengths of the messages that enclose the map: a
model that changes costs its own translation and one join (a copy), never a re-encoding of the rest.

Deterministic serialization writes fields in field-number order and map entries sorted by key, so the
join of the entries in name order is byte for byte what `SerializeToString(deterministic=True)` of the
whole message gives; the tests compare the two after every kind of change. Like `translate`, everything
here is pure.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from google.protobuf.message import Message

from spillover.ir import Gateway, Listener, Model
from spillover.translate.listener import build_listener
from spillover.translate.route_table import model_table_entry, route_configuration
from spillover.translate.routes import uses_prefix_hash
from spillover.translate.translator import split_layer, translate_model
from spillover.wire import varint

__all__ = ["EncodedModel", "RouteTable", "encode_listener", "encode_model", "encode_split_layer", "route_term"]

_DIGEST_SIZE = 16
_TERM_MASK = (1 << (8 * _DIGEST_SIZE)) - 1


def _tag(message_class: type[Message], name: str) -> bytes:
    return varint((int(message_class.DESCRIPTOR.fields_by_name[name].number) << 3) | 2)


# The messages that enclose the `x-model` map, outermost first, and the field each holds the next in.
_MAP_PATH = ("virtual_hosts", "matcher", "on_no_match", "matcher", "matcher_tree", "exact_match_map")


def _encode(message: Message) -> bytes:
    return message.SerializeToString(deterministic=True)


def _around(message: Message, field: str) -> tuple[bytes, bytes]:
    """The encoding of `message` without `field`, split where that field's entries go."""
    number = message.DESCRIPTOR.fields_by_name[field].number
    before, after = type(message)(), type(message)()
    before.CopyFrom(message)
    after.CopyFrom(message)
    for descriptor, _ in message.ListFields():
        if descriptor.number >= number:
            before.ClearField(descriptor.name)
        if descriptor.number <= number:
            after.ClearField(descriptor.name)
    return _encode(before), _encode(after)


@dataclass(frozen=True, slots=True)
class EncodedModel:
    """One model's resources, serialized: its route table entries and its (name, bytes) per type."""

    routes: bytes  # its entry of the table's `x-model` map (tag, length, name and routes)
    route_digest: bytes  # of `routes`: what the route table's version is made of
    clusters: tuple[tuple[str, bytes], ...]
    endpoints: tuple[tuple[str, bytes], ...]
    secrets: tuple[tuple[str, bytes], ...]
    # Its runtime entries (key, weight) when its split goes to runtime (see `translate_model`), sorted.
    weights: tuple[tuple[str, int], ...] = ()
    # The internal listener of its remote with failover (see spillover.translate.failover).
    listeners: tuple[tuple[str, bytes], ...] = ()
    # Its routes turn spillover.prefix_hash on: the table needs `RouteTable(prefix_hash=True)` while any does.
    prefix_hash: bool = False


def encode_model(
    model: Model, runtime_weights: bool = False, failover_remote: str = "internal-listener"
) -> EncodedModel:
    """`translate_model`, serialized; raises ValueError on what it can't render (as `translate` does)."""
    own = translate_model(model, runtime_weights, failover_remote)
    routes = _encode(model_table_entry(model.name, own.routes))
    return EncodedModel(
        routes=routes,
        route_digest=hashlib.blake2b(routes, digest_size=_DIGEST_SIZE).digest(),
        clusters=tuple((name, _encode(m)) for name, m in own.clusters.items()),
        endpoints=tuple((name, _encode(m)) for name, m in own.endpoints.items()),
        secrets=tuple((name, _encode(m)) for name, m in own.secrets.items()),
        weights=tuple(sorted(own.weights.items())),
        listeners=tuple((name, _encode(m)) for name, m in own.listeners.items()),
        prefix_hash=uses_prefix_hash(own.routes),
    )


def encode_split_layer(weights: Iterable[tuple[str, int]]) -> bytes:
    """The split weights' Runtime resource (`split_layer`) from the spilling models' entries: a few
    entries per model that spills, so it is built whole (no join)."""
    return _encode(split_layer(dict(weights)))


def encode_listener(listener: Listener) -> bytes:
    # The listener depends on the gateway's listener alone (the filter chain is the same everywhere).
    return _encode(build_listener(Gateway(name="-", listener=listener)))


def route_term(digest: bytes) -> int:
    """A model's term in the route table's version (`RouteTable.version`), from its `route_digest`."""
    return int.from_bytes(digest, "little")


class RouteTable:
    """The RouteConfiguration's fixed parts (its name, the virtual host, the slow-path and 404 routes,
    the matchers around the `x-model` map), encoded once; `join` puts the models' entries in the map.
    `prefix_hash`: the slow-path routes put spillover.prefix_hash in the chain, as a table of which some
    model uses it needs (`EncodedModel.prefix_hash`); the two tables' versions differ."""

    def __init__(self, prefix_hash: bool = True) -> None:
        self.prefix_hash = prefix_hash
        # A table of one model, for the messages around the map; without models there is no map at all.
        empty = route_configuration([], prefix_hash)
        self._empty = _encode(empty)
        config = route_configuration([("-", [])], prefix_hash)
        if len(config.virtual_hosts) != 1:
            raise AssertionError("the route table is joined for exactly one virtual host")
        self._levels: list[tuple[bytes, bytes, bytes]] = []  # (before, tag, after), outermost first
        message: Message = config
        for field in _MAP_PATH:
            before, after = _around(message, field)
            self._levels.append((before, _tag(type(message), field), after))
            inner = getattr(message, field)
            message = inner[0] if field == "virtual_hosts" else inner
        fixed = self._empty + b"\0" + b"\0".join(b"\0".join((b, a)) for b, _, a in self._levels)
        self._fixed_digest = hashlib.blake2b(fixed, digest_size=_DIGEST_SIZE).digest()

    def join(self, routes: Sequence[bytes]) -> bytes:
        """The RouteConfiguration's bytes from the models' `EncodedModel.routes`, in model order:
        `SerializeToString(deterministic=True)` of the whole table. An element may be the concatenation
        of several models' entries (a map's entries concatenate), so a caller can keep the models'
        entries in runs of many and redo only the run of a changed model: then this one copy of the
        table is the only work proportional to the whole fleet."""
        size = sum(map(len, routes))
        if not size:
            return self._empty
        # Inside out: each enclosing message's length is its fixed parts' plus the one it encloses.
        sizes = []
        for before, tag, after in reversed(self._levels):
            sizes.append(size)
            size = len(before) + len(tag) + len(varint(size)) + size + len(after)
        parts: list[bytes] = []
        for (before, tag, _), inner in zip(self._levels, reversed(sizes), strict=True):
            parts += (before, tag, varint(inner))
        parts += routes
        parts += (after for _, _, after in reversed(self._levels))
        return b"".join(parts)

    def version(self, total: int, count: int) -> str:
        """A version of the table joined from `count` models whose `route_term`s add up to `total`. A sum
        (as `type_version` is) so that a builder that keeps sums per run of models adds a few numbers
        instead of hashing every model's digest, let alone megabytes, for one model's change; and the same
        whatever the runs. The order of the models needs no term: it is their names' (each model's routes
        match its name)."""
        digest = hashlib.blake2b(self._fixed_digest, digest_size=8)
        digest.update((total & _TERM_MASK).to_bytes(_DIGEST_SIZE, "little") + count.to_bytes(8, "little"))
        return digest.hexdigest()
