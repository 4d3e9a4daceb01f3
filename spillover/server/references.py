"""Which secrets a set of resources refers to: the names of the `SdsSecretConfig` messages anywhere inside
them (TLS contexts, credential injectors, any typed extension packed in an `Any`).

A secret is only worth sending to streams whose configuration uses it. Looking inside every resource
would cost a full parse per snapshot, so the encoded bytes are searched for each secret's name first and
only the few resources that contain it are parsed and walked.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterable, Iterator

from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from spillover.server.resources import MESSAGE_CLASSES, TYPE_PREFIX, Resource

__all__ = ["secret_references"]

_SDS_SECRET_CONFIG = "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig"
_ANY = any_pb2.Any.DESCRIPTOR.full_name
# Nesting deeper than this is not a configuration anyone writes; the walk stops instead of recursing on.
_MAX_DEPTH = 64


def _message_class(type_url: str) -> type[Message] | None:
    known = MESSAGE_CLASSES.get(type_url)
    if known is not None:
        return known
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(type_url.rsplit("/", 1)[-1])
    except KeyError:
        return None  # a type this process never loaded: nothing we built can be in it
    return message_factory.GetMessageClass(descriptor)


def _message_values(message: Message) -> Iterator[Message]:
    for descriptor, value in message.ListFields():
        if descriptor.type != FieldDescriptor.TYPE_MESSAGE:
            continue
        message_type: Descriptor = descriptor.message_type
        if message_type.GetOptions().map_entry:
            if message_type.fields_by_name["value"].type == FieldDescriptor.TYPE_MESSAGE:
                yield from value.values()
        elif descriptor.is_repeated:
            yield from value
        else:
            yield value


def _sds_names(message: Message, out: set[str], depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        return
    full_name = message.DESCRIPTOR.full_name
    if full_name == _SDS_SECRET_CONFIG:
        out.add(getattr(message, "name", ""))
        return
    if full_name == _ANY:
        assert isinstance(message, any_pb2.Any)
        message_class = _message_class(message.type_url)
        if message_class is None:
            return
        try:
            inner = message_class.FromString(message.value)
        except DecodeError:
            return
        _sds_names(inner, out, depth + 1)
        return
    for value in _message_values(message):
        _sds_names(value, out, depth + 1)


def secret_references(resources: Iterable[Resource], secret_names: Collection[str]) -> frozenset[str]:
    """The names in `secret_names` that some resource in `resources` refers to."""
    wanted = {name for name in secret_names if name}
    if not wanted:
        return frozenset()
    bodies = [r for r in resources if r.body and r.type_url.startswith(TYPE_PREFIX)]
    if not bodies:
        return frozenset()
    # One search per secret name over all bodies joined, then only the resources it was found in.
    blob = b"\0".join(r.body for r in bodies)
    starts = []
    offset = 0
    for resource in bodies:
        starts.append(offset)
        offset += len(resource.body) + 1
    candidates: set[int] = set()
    for name in wanted:
        needle = name.encode()
        position = blob.find(needle)
        while position >= 0:
            index = bisect.bisect_right(starts, position) - 1
            candidates.add(index)
            # Skip to the next resource: one hit per resource is enough.
            next_start = starts[index + 1] if index + 1 < len(starts) else len(blob)
            position = blob.find(needle, next_start)
    found: set[str] = set()
    for index in sorted(candidates):
        resource = bodies[index]
        message_class = _message_class(resource.type_url)
        if message_class is None:
            continue
        _sds_names(message_class.FromString(resource.body), found)
    return frozenset(found & wanted)
