"""xDS resources serialized once, with their wire encodings ready to be shared by every stream.

A DiscoveryResponse is `header fields + repeated resources`; protobuf concatenation of encoded fields
is a valid message, so each resource's encoded `resources` entry (for SotW and for Delta) is built once
per version and responses become a join of shared bytes instead of a re-serialization per stream.
"""

from __future__ import annotations

import functools
import hashlib
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.runtime.v3 import rtds_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from spillover.wire import varint

TYPE_PREFIX = "type.googleapis.com/"
CLUSTER = TYPE_PREFIX + cluster_pb2.Cluster.DESCRIPTOR.full_name
ENDPOINT = TYPE_PREFIX + endpoint_pb2.ClusterLoadAssignment.DESCRIPTOR.full_name
LISTENER = TYPE_PREFIX + listener_pb2.Listener.DESCRIPTOR.full_name
ROUTE = TYPE_PREFIX + route_pb2.RouteConfiguration.DESCRIPTOR.full_name
SECRET = TYPE_PREFIX + secret_pb2.Secret.DESCRIPTOR.full_name
RUNTIME = TYPE_PREFIX + rtds_pb2.Runtime.DESCRIPTOR.full_name

# Make-before-break: a cluster must exist (and be warm) before anything routes to it. Runtime layers
# (the split weights, when routes read them from runtime) go before the listeners and routes that read
# them: a new route then finds its weights already there instead of running on its fallback weights.
PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, SECRET, RUNTIME, LISTENER, ROUTE)
# In SotW these types carry the full set in every response: a missing name is a deletion.
FULL_STATE_TYPES = frozenset({CLUSTER, LISTENER})
MESSAGE_CLASSES: Mapping[str, type[Message]] = MappingProxyType(
    {
        CLUSTER: cluster_pb2.Cluster,
        ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
        LISTENER: listener_pb2.Listener,
        ROUTE: route_pb2.RouteConfiguration,
        SECRET: secret_pb2.Secret,
        RUNTIME: rtds_pb2.Runtime,
    }
)
SHORT_NAMES: Mapping[str, str] = MappingProxyType(
    {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS", SECRET: "SDS", RUNTIME: "RTDS"}
)


def short_type(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, type_url.rsplit(".", 1)[-1])


_SHORT_LENGTHS = tuple(bytes([n]) for n in range(128))


def _size(size: int) -> bytes:
    # Snapshot builds encode a handful of fields per resource: the one-byte length is the common case.
    return _SHORT_LENGTHS[size] if size < 128 else varint(size)


def _length_delimited(tag: bytes, payload: bytes) -> bytes:
    return tag + _size(len(payload)) + payload


def _tag(message_class: type[Message], name: str) -> bytes:
    # Field numbers come from the descriptors, so a proto change can't silently desync the encoding.
    return varint((int(message_class.DESCRIPTOR.fields_by_name[name].number) << 3) | 2)


_ANY_TYPE_URL = _tag(any_pb2.Any, "type_url")
_ANY_VALUE = _tag(any_pb2.Any, "value")
_SOTW_RESOURCES = _tag(discovery_pb2.DiscoveryResponse, "resources")
_DELTA_RESOURCES = _tag(discovery_pb2.DeltaDiscoveryResponse, "resources")
_RESOURCE_NAME = _tag(discovery_pb2.Resource, "name")
_RESOURCE_VERSION = _tag(discovery_pb2.Resource, "version")
_RESOURCE_BODY = _tag(discovery_pb2.Resource, "resource")


@functools.lru_cache(maxsize=64)
def _type_url_field(type_url: str) -> bytes:
    return _length_delimited(_ANY_TYPE_URL, type_url.encode())


def resource_name(message: Message) -> str:
    if isinstance(message, endpoint_pb2.ClusterLoadAssignment):
        return message.cluster_name
    name = getattr(message, "name", "")
    if not name:
        raise ValueError(f"{type(message).__name__} has no name: every xDS resource needs one")
    return str(name)


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Resource:
    """One named resource at one version. Immutable; shared by every snapshot and stream holding it, and
    by every node group whose snapshot holds the same bytes (see `from_bytes`)."""

    type_url: str
    name: str
    version: str
    body: bytes  # deterministic serialization of the message itself
    # What goes before `body` in its DiscoveryResponse.resources entry (tag, length, the Any's type URL and
    # the value's tag and length) and in its DeltaDiscoveryResponse one: built on first use, so a resource
    # pays for the protocol its streams speak. A response is the join of its header and, per resource, the
    # head and the body: the body is copied once, into the response, and never kept twice (a table of
    # every model's routes is megabytes).
    _sotw: bytes | None = field(default=None, repr=False, compare=False)
    _delta: bytes | None = field(default=None, repr=False, compare=False)
    # This resource's term in its type's version (see `type_version`).
    mix: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        term = hashlib.blake2b(f"{self.name}\0{self.version}".encode(), digest_size=8).digest()
        object.__setattr__(self, "mix", int.from_bytes(term, "little"))

    @property
    def sotw_head(self) -> bytes:
        head = self._sotw
        if head is None:
            size = len(self.body)
            any_head = _type_url_field(self.type_url) + _ANY_VALUE + _size(size)
            head = _SOTW_RESOURCES + _size(len(any_head) + size) + any_head
            object.__setattr__(self, "_sotw", head)
        return head

    @property
    def delta_head(self) -> bytes:
        head = self._delta
        if head is None:
            size = len(self.body)
            any_head = _type_url_field(self.type_url) + _ANY_VALUE + _size(size)
            any_size = len(any_head) + size
            fields = (
                _length_delimited(_RESOURCE_NAME, self.name.encode())
                + _length_delimited(_RESOURCE_VERSION, self.version.encode())
                + _RESOURCE_BODY
                + _size(any_size)
            )
            head = _DELTA_RESOURCES + _size(len(fields) + any_size) + fields + any_head
            object.__setattr__(self, "_delta", head)
        return head

    @property
    def sotw_entry(self) -> bytes:
        """The whole DiscoveryResponse.resources entry (a copy of the body: see `sotw_payload`)."""
        return self.sotw_head + self.body

    @property
    def delta_entry(self) -> bytes:
        return self.delta_head + self.body

    @classmethod
    def from_message(cls, message: Message, name: str | None = None) -> Resource:
        type_url = TYPE_PREFIX + message.DESCRIPTOR.full_name
        body = message.SerializeToString(deterministic=True)
        return cls.from_bytes(type_url, name or resource_name(message), body)

    @classmethod
    def from_bytes(cls, type_url: str, name: str, body: bytes, version: str | None = None) -> Resource:
        """`version`: a digest the caller already has of what `body` was made from (by default, of `body`:
        hashing a table of many megabytes for each change is what the caller avoids)."""
        if version is None:
            version = hashlib.blake2b(body, digest_size=8).hexdigest()
        # Node groups often get identical resources (the same models everywhere): one copy of the
        # bytes serves them all, so memory grows with distinct resources, not with groups.
        key = (type_url, name, version)
        known = _LIVE.get(key)
        if known is not None and known.body == body:
            return known
        resource = cls(type_url=type_url, name=name, version=version, body=body)
        _LIVE[key] = resource
        return resource

    def message(self) -> Message:
        message_class = MESSAGE_CLASSES.get(self.type_url)
        if message_class is None:
            raise KeyError(f"no message class registered for {self.type_url}")
        return message_class.FromString(self.body)


def sotw_payload(header: bytes, resources: Iterable[Resource]) -> bytes:
    """A DiscoveryResponse: its encoded `header` (no resources) and the resources, each body copied once."""
    parts = [header]
    for resource in resources:
        parts += (resource.sotw_head, resource.body)
    return b"".join(parts)


def delta_payload(header: bytes, resources: Iterable[Resource]) -> bytes:
    """A DeltaDiscoveryResponse, as `sotw_payload`."""
    parts = [header]
    for resource in resources:
        parts += (resource.delta_head, resource.body)
    return b"".join(parts)


# Every Resource some snapshot or stream still holds, by (type, name, version): gone with its last holder.
_LIVE: weakref.WeakValueDictionary[tuple[str, str, str], Resource] = weakref.WeakValueDictionary()


def type_version(resources: Iterable[Resource]) -> str:
    """A version for a whole type: stable across restarts, so a reconnecting Envoy causes no churn.

    Made of the sum of the resources' terms (a digest of name and version each, computed once per
    resource), so it takes no sort and no hashing of every resource, and a builder that knows what
    changed can update the sum instead (`version_of_sum`)."""
    total = count = 0
    for resource in resources:
        total += resource.mix
        count += 1
    return version_of_sum(total, count)


def version_of_sum(total: int, count: int) -> str:
    """`type_version` of `count` resources whose `mix` terms add up to `total`."""
    summary = (total & 0xFFFF_FFFF_FFFF_FFFF).to_bytes(8, "little") + count.to_bytes(8, "little")
    return hashlib.blake2b(summary, digest_size=8).hexdigest()
