"""What SotW and Delta streams share: the per-type state of a stream, the node, warming (make-before-break)
and the hooks for metrics. The protocol rules are in the package docstring (`spillover.server.streams`)."""

from __future__ import annotations

import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from spillover.server.bounds import LimitExceeded, StreamLimits, has_control_characters, printable
from spillover.server.cache import Snapshot
from spillover.server.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    RUNTIME,
    Resource,
)

log = logging.getLogger("spillover.server.streams")

# Types whose pending changes or unacknowledged responses delay the removal of clusters.
REFERRING_TYPES = (LISTENER, ROUTE)
# An Envoy whose bootstrap has the split weights' RTDS layer asks for it while it initializes, before its
# clusters, listeners and routes (it stays PRE_INITIALIZING until the layer arrives): one asking for any of
# them first has no layer (BaseStream._check_split_layer, on every publish: kept to a few lookups).
_NONCE_HISTORY = 16
# How Envoy refuses a listener that needs `envoy.bootstrap.internal_listener` (a failover model's
# `<model>/remote`) when its bootstrap lacks the extension. Looked for only in a Listener NACK's error, as
# kept: escaped and cut (`_record_nack`), so the search is bounded whatever the client sends.
INTERNAL_LISTENER_MISSING = "InternalListener bootstrap extension is mandatory"


class SyncStatus(enum.StrEnum):
    SYNCED = "SYNCED"
    STALE = "STALE"
    NACKED = "NACKED"


class ProtocolError(Exception):
    """The client broke the protocol so badly that its stream must end (e.g. no node on the stream)."""


_DEFAULT_LIMITS = StreamLimits()
# Names shown per type in /debug/proxies; the count is always complete.
_DESCRIBED_NAMES = 1000


@dataclass(slots=True)
class TypeState:
    """What one stream has asked for and been sent, for one resource type (slots: thousands of streams
    hold two to five each)."""

    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    # The subscription as sorted names: computed when it changes, shared by the content keys and
    # the snapshot's memo of named subsets (comparing the same tuple object is O(1)).
    names_key: tuple[str, ...] = ()
    # SotW: how many names the last request had, and their encoding when the caller gave the request's
    # bytes: an ACK repeating them is recognised in O(1) (see SotwStream.on_request).
    requested_count: int = -1
    requested_span: bytes | None = None
    nonce: str = ""  # newest nonce sent
    sent_version: str = ""  # version_info (SotW) / system_version_info (Delta) of the newest response
    # What the client has (or was last sent). SotW shares the snapshot's read-only mapping when it
    # can; Delta keeps a dict of its own because it changes name by name.
    sent: Mapping[str, Resource] = field(default_factory=dict)
    sent_key: object = None  # identity of the last SotW response content, to skip identical resends
    acked_nonce: str = ""
    acked_version: str = ""
    nacked_nonce: str = ""
    nack_error: str = ""
    nack_version: str = ""  # the rejected version, held
    versions_by_nonce: OrderedDict[str, str] = field(default_factory=OrderedDict)
    last_sent_at: float = 0.0
    responses: int = 0
    # Delta: the snapshot generation this type was fully diffed against; while it is current and the
    # subscription is unchanged there is nothing to compare (an ACK costs O(1), not O(resources)).
    synced_generation: int | None = None
    # Delta: the bytes of a request that ACKs the newest response (`nonce`) and says nothing else, as a
    # protobuf client encodes it (shared by the streams sent the same response): a request equal to them
    # is handled without being parsed (DeltaStream.plain_ack).
    plain_ack: bytes | None = None

    def subscribed(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def outstanding(self) -> bool:
        """A response was sent that the client has neither ACKed nor NACKed yet."""
        return bool(self.nonce) and self.nonce not in (self.acked_nonce, self.nacked_nonce)

    def status(self) -> SyncStatus:
        if self.nack_error and self.nacked_nonce == self.nonce:
            return SyncStatus.NACKED
        if self.outstanding():
            return SyncStatus.STALE
        return SyncStatus.SYNCED

    def record_sent(self, nonce: str, version: str) -> None:
        self.nonce = nonce
        self.sent_version = version
        self.versions_by_nonce[nonce] = version
        while len(self.versions_by_nonce) > _NONCE_HISTORY:
            self.versions_by_nonce.popitem(last=False)
        self.last_sent_at = time.time()
        self.responses += 1

    def describe(self) -> dict[str, object]:
        return {
            "status": self.status().value,
            "wildcard": self.wildcard,
            "names": sorted(self.names)[:_DESCRIBED_NAMES],
            "names_total": len(self.names),
            "sent_version": self.sent_version,
            "sent_nonce": self.nonce,
            "acked_version": self.acked_version,
            "acked_nonce": self.acked_nonce,
            "nack_error": self.nack_error,
            "nacked_version": self.nack_version,
            "resources": len(self.sent),
            "responses": self.responses,
        }


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One encoded response, with what the metrics need to know about it."""

    type_url: str
    payload: bytes
    resources: int


class StreamEvents:
    """Hooks the service layer uses for metrics; the default does nothing."""

    def on_ack(self, type_url: str) -> None: ...
    def on_nack(self, type_url: str, error: str) -> None: ...
    def on_stale_nonce(self, type_url: str) -> None: ...
    def on_ignored(self, reason: str) -> None: ...
    def on_refused_secret(self, stream: BaseStream, name: str) -> None: ...
    def on_split_layer_missing(self, stream: BaseStream) -> None: ...
    def on_internal_listener_missing(self, stream: BaseStream) -> None: ...


class BaseStream:
    """State shared by SotW and Delta streams: the node, its group and the per-type states."""

    mode = "base"

    def __init__(
        self,
        peer: str,
        group_of: Callable[[base_pb2.Node], str],
        snapshot_of: Callable[[str], Snapshot | None],
        default_type: str = "",
        events: StreamEvents | None = None,
        warm_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        limits: StreamLimits | None = None,
    ) -> None:
        self.peer = peer
        self.limits = limits or _DEFAULT_LIMITS
        # Set by the server once the stream is admitted: who the client is and which rule let it in.
        self.identity = ""
        self.admitted_by = ""
        self.group_of = group_of
        self.snapshot_of = snapshot_of
        self.default_type = default_type
        self.events = events or StreamEvents()
        self.node: base_pb2.Node | None = None
        self.group = ""
        self.types: dict[str, TypeState] = {}
        self._push_order: tuple[str, ...] = ()
        self.connected_at = time.time()
        # Make-before-break: clusters sent as added or changed whose endpoints the client has not
        # acknowledged yet. Listeners and routes wait for them (at most `warm_timeout` seconds).
        self.warm_timeout = warm_timeout
        self.warming: set[str] = set()
        self.warming_since: float | None = None
        self.clock = clock
        # The group serves its split weights over RTDS (`--split-weights runtime`) and this Envoy never
        # asked for them: its bootstrap lacks the layer, so it routes every model all local.
        self.without_split_layer = False
        self._split_layer_reported = False
        # The Listener NACK error by which this Envoy said its bootstrap lacks the internal listener
        # extension (see `without_internal_listener`).
        self._internal_listener_nack = ""
        self._internal_listener_reported = False

    @property
    def node_id(self) -> str:
        return self.node.id if self.node is not None else ""

    def admin_url(self, metadata_key: str = "spillover.admin_port") -> str | None:
        """Where this Envoy's admin endpoint is, when its bootstrap advertises the port."""
        if self.node is None:
            return None
        value = self.node.metadata.fields.get(metadata_key)
        if value is None or value.WhichOneof("kind") != "number_value" or not 0 < value.number_value < 65536:
            return None
        host = _peer_host(self.peer)
        return f"http://{host}:{int(value.number_value)}" if host else None

    def accept_node(self, request_node: base_pb2.Node, has_node: bool) -> bool:
        """Takes the node of the stream's first request (bounded and checked); returns True when this
        request established it. Only what the server reads is kept, not the whole node."""
        if self.node is not None:
            return False
        if not has_node or not request_node.id:
            raise ProtocolError("the first request of a stream must carry a node with an id")
        check_node(request_node, self.limits)
        group = self.group_of(request_node)
        # The group may come from anywhere in the node (metadata:KEY): it gets the bounds of node.cluster.
        if len(group) > self.limits.max_node_cluster_length:
            raise LimitExceeded(f"node group: at most {self.limits.max_node_cluster_length} characters")
        if has_control_characters(group):
            raise LimitExceeded("node group: control characters are not allowed", resource=False)
        self.group = group
        self.node = _trimmed(request_node)
        return True

    def _type_of(self, request_type_url: str) -> str | None:
        type_url = request_type_url or self.default_type
        if not type_url:
            self.events.on_ignored("missing_type_url")
            return None
        if self.default_type and type_url != self.default_type:
            self.events.on_ignored("type_url_mismatch")
            return None
        return type_url

    def _check_split_layer(self, snapshot: Snapshot | None) -> None:
        """After a stream's first request of a type and after each publish (O(1), well under a microsecond):
        decided from what this stream asked for, never asked back."""
        types = self.types
        missing = (
            not self.default_type  # a per-type stream: the layer would come over another one
            and snapshot is not None
            and RUNTIME not in types
            and bool(snapshot.get(RUNTIME))  # only runtime mode has the layer's resource
            and (CLUSTER in types or LISTENER in types or ROUTE in types)
        )
        self.without_split_layer = missing
        if missing and not self._split_layer_reported:
            self._split_layer_reported = True  # one warning per stream
            self.events.on_split_layer_missing(self)

    @property
    def without_internal_listener(self) -> bool:
        """Its Envoy refused the internal listeners of its group's failover models for lack of the bootstrap
        extension, and that NACK still holds: an ACK of a later listener update (the group served
        `failoverRemote: in-place`) clears it. Read by the views and the gauge, never on an ACK."""
        nack = self._internal_listener_nack
        if not nack:
            return False
        state = self.types.get(LISTENER)
        return state is not None and state.nack_error == nack

    def status(self) -> SyncStatus:
        statuses = {state.status() for state in self.types.values()}
        for status in (SyncStatus.NACKED, SyncStatus.STALE):
            if status in statuses:
                return status
        return SyncStatus.SYNCED

    def describe(self) -> dict[str, object]:
        node = self.node
        return {
            "node_id": self.node_id,
            "group": self.group,
            "mode": self.mode,
            "peer": self.peer,
            "identity": self.identity,
            "admitted_by": self.admitted_by,
            "envoy_version": printable(_envoy_version(node), 64) if node is not None else "",
            "admin_url": self.admin_url() or "",
            "connected_at": self.connected_at,
            "status": self.status().value,
            "without_split_layer": self.without_split_layer,
            "without_internal_listener": self.without_internal_listener,
            "types": {type_url: state.describe() for type_url, state in sorted(self.types.items())},
        }

    def sent_resources(self) -> dict[str, list[Resource]]:
        return {type_url: list(state.sent.values()) for type_url, state in self.types.items()}

    def _push_types(self) -> tuple[str, ...]:
        """The stream's types: the known ones in make-before-break order, then any other it asked for. Made
        again only when a type was added (none is ever removed), not on every push and ACK."""
        types = self.types
        if len(types) != len(self._push_order):
            self._push_order = (
                *(t for t in PUSH_ORDER if t in types), *sorted(t for t in types if t not in PUSH_ORDER)
            )
        return self._push_order

    def plain_ack(self, raw: bytes) -> str | None:
        """The type of the response this request ACKs when, by its bytes, it does nothing else (see
        DeltaStream); None: parse it and call `on_request`. Pure: the stream is not changed."""
        return None

    def on_plain_ack(self, type_url: str) -> list[Outgoing]:
        """What `on_request` does with the request `plain_ack` recognised as a plain ACK of `type_url`."""
        raise NotImplementedError

    def _referrers_pending(self, snapshot: Snapshot) -> bool:
        """Listeners or routes are about to change or are not acknowledged yet, so clusters stay."""
        for type_url in REFERRING_TYPES:
            state = self.types.get(type_url)
            if state is None:
                continue
            if state.outstanding() or self._has_changes(type_url, state, snapshot):
                return True
        return False

    def _has_changes(self, type_url: str, state: TypeState, snapshot: Snapshot) -> bool:
        raise NotImplementedError

    def _record_nack(
        self,
        type_url: str,
        state: TypeState,
        request: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest,
        rejected_version: str,
    ) -> None:
        state.nacked_nonce = request.response_nonce
        # Kept escaped and cut: it is shown in logs, /debug/proxies and `spillover status`.
        message = request.error_detail.message
        state.nack_error = printable(message, self.limits.max_error_detail_chars) if message else (
            f"code {request.error_detail.code}"
        )
        state.nack_version = rejected_version
        self.events.on_nack(type_url, state.nack_error)
        if type_url == LISTENER and INTERNAL_LISTENER_MISSING in state.nack_error:
            self._internal_listener_nack = state.nack_error
            if not self._internal_listener_reported:
                self._internal_listener_reported = True  # one warning per stream
                self.events.on_internal_listener_missing(self)

    def _check_request(self, type_url: str, nonce: str, version: str) -> None:
        limits = self.limits
        if len(nonce) > limits.max_nonce_length:
            raise LimitExceeded(f"response_nonce: at most {limits.max_nonce_length} characters", resource=False)
        if len(version) > limits.max_version_length:
            raise LimitExceeded(f"version_info: at most {limits.max_version_length} characters", resource=False)
        if type_url not in self.types:
            limits.check_type_url(type_url, len(self.types))

    def _refuse_unreferenced_secrets(self, names: Iterable[str], snapshot: Snapshot | None) -> None:
        """Secrets asked for that no resource of the group refers to: never sent, each one reported."""
        if snapshot is None:
            return
        referenced = snapshot.referenced_secrets()
        for name in names:
            if name not in referenced:
                self.events.on_refused_secret(self, name)

    def _start_warming(self, names: Iterable[str], snapshot: Snapshot) -> None:
        """Clusters just sent as added or changed; those fed by EDS warm until their endpoints land."""
        endpoints = snapshot.get(ENDPOINT)
        fed_by_eds = [name for name in names if name in endpoints]
        if fed_by_eds:
            self.warming.update(fed_by_eds)
            if self.warming_since is None:
                self.warming_since = self.clock()

    def _still_warming(self) -> bool:
        if not self.warming:
            return False
        assert self.warming_since is not None
        if self.clock() - self.warming_since >= self.warm_timeout:
            log.warning(
                "%s: clusters %s did not warm within %.0fs; sending listeners and routes anyway",
                self.node_id, sorted(self.warming)[:5], self.warm_timeout,
            )
            self._stop_warming()
            return False
        clusters = self.types.get(CLUSTER)
        endpoints = self.types.get(ENDPOINT)
        if clusters is None or clusters.outstanding() or endpoints is None or endpoints.outstanding():
            return True
        self.warming = {n for n in self.warming if not (endpoints.subscribed(n) and n in endpoints.sent)}
        if self.warming:
            return True
        self._stop_warming()
        return False

    def _stop_warming(self) -> None:
        self.warming.clear()
        self.warming_since = None

    @property
    def wake_at(self) -> float | None:
        """When the stream must be looked at again even if nothing arrives: the warming deadline, once
        listeners or routes are asked for. A stream of clusters only (a client that never asks for them)
        has nothing waiting for the deadline, and only its requests for them would clear the warming
        state: without this it woke a push task that had nothing to send, `warm_timeout` after its
        clusters came. It is asked again after every request, so a later LDS or RDS request sets it."""
        if self.warming_since is None or self.types.keys().isdisjoint(REFERRING_TYPES):
            return None
        return self.warming_since + self.warm_timeout

    def on_snapshot(self) -> list[Outgoing]:
        """The group's snapshot was replaced: the responses it calls for."""
        raise NotImplementedError

    def on_tick(self) -> list[Outgoing]:
        """The stream's deadline (`wake_at`) passed: the responses that were waiting for it."""
        raise NotImplementedError


def _peer_host(peer: str) -> str:
    """The host of a gRPC peer string: `ipv4:10.0.0.1:5000` or `ipv6:[::1]:5000`."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0]  # keeps the brackets a URL needs
    return ""


def check_node(node: base_pb2.Node, limits: StreamLimits) -> None:
    """The bounds on a stream's node; LimitExceeded names the one broken (never quoting the client)."""
    for label, value, limit in (
        ("node.id", node.id, limits.max_node_id_length),
        ("node.cluster", node.cluster, limits.max_node_cluster_length),
    ):
        if len(value) > limit:
            raise LimitExceeded(f"{label}: at most {limit} characters")
        if has_control_characters(value):
            raise LimitExceeded(f"{label}: control characters are not allowed", resource=False)
    if node.HasField("metadata") and node.metadata.ByteSize() > limits.max_node_metadata_bytes:
        raise LimitExceeded(f"node.metadata: at most {limits.max_node_metadata_bytes} bytes")
    if node.ByteSize() > limits.max_node_bytes:
        raise LimitExceeded(f"node: at most {limits.max_node_bytes} bytes")


def _trimmed(node: base_pb2.Node) -> base_pb2.Node:
    # Envoy's node lists every extension it was built with (tens of KB): keep only what is read.
    kept = base_pb2.Node(id=node.id, cluster=node.cluster, user_agent_name=node.user_agent_name[:128])
    if node.HasField("metadata"):
        kept.metadata.CopyFrom(node.metadata)
    if node.HasField("locality"):
        kept.locality.CopyFrom(node.locality)
    if node.HasField("user_agent_build_version"):
        kept.user_agent_build_version.CopyFrom(node.user_agent_build_version)
    elif node.user_agent_version:
        kept.user_agent_version = node.user_agent_version
    return kept


def _envoy_version(node: base_pb2.Node) -> str:
    if node.HasField("user_agent_build_version"):
        v = node.user_agent_build_version.version
        return f"{v.major_number}.{v.minor_number}.{v.patch}"
    return node.user_agent_name


def is_nack(request: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest) -> bool:
    return request.HasField("error_detail") and bool(request.error_detail.code or request.error_detail.message)


def state_sent_version(state: TypeState, name: str) -> str | None:
    resource = state.sent.get(name)
    return resource.version if resource is not None else None
