"""Per-stream xDS protocol state: State of the World (SotW) and incremental (Delta).

The streams are transport-free: they take a DiscoveryRequest or a new snapshot and return the encoded
responses to write, in push order. The gRPC layer (service.py) only moves bytes. That keeps every
protocol rule testable without a network and the write path free of protobuf work.

Rules implemented here (Envoy's xds_protocol documentation):
- A request carrying `error_detail` is a NACK; the rejected content is held, never resent until the
  configuration changes. Its `version_info` is the last good version.
- SotW: a request whose `response_nonce` is not the newest nonce sent for its type is stale and ignored.
  Delta: nonces only identify which response an ACK/NACK is about; they never cause a rejection.
- The node arrives on the first request of a stream only; it is remembered for the stream.
- Only changes are sent; SotW LDS/CDS responses carry the full set.
- Wildcard: `*`, or an empty first request. Newly requested names are answered even when unchanged,
  and names that don't exist yet are answered when they appear.
- Warming: a cluster that was added or changed only warms on a new ClusterLoadAssignment, so EDS for
  it is resent after every CDS change.
- Make-before-break: one push goes CDS -> EDS -> SDS -> LDS -> RDS. Listeners and routes wait until the
  clusters added or changed in that push are warm (CDS and their endpoints acknowledged; at most
  `warm_timeout`), and clusters that left the snapshot are removed only in a later push, once the
  listeners/routes sent alongside are acknowledged.
- Delta: `initial_resource_versions` on reconnect are trusted, removals go in `removed_resources`.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from spillover.server.cache import Snapshot, new_nonce
from spillover.server.resources import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    PUSH_ORDER,
    ROUTE,
    Resource,
    type_version,
)

log = logging.getLogger(__name__)

# Types whose pending changes or unacknowledged responses delay the removal of clusters.
_REFERRING_TYPES = (LISTENER, ROUTE)
_NONCE_HISTORY = 16


class SyncStatus(enum.StrEnum):
    SYNCED = "SYNCED"
    STALE = "STALE"
    NACKED = "NACKED"


class ProtocolError(Exception):
    """The client broke the protocol so badly that its stream must end (e.g. no node on the stream)."""


@dataclass
class TypeState:
    """What one stream has asked for and been sent, for one resource type."""

    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    # The subscription as sorted names: computed when it changes, shared by the content keys and
    # the snapshot's memo of named subsets (comparing the same tuple object is O(1)).
    names_key: tuple[str, ...] = ()
    requested_raw: tuple[str, ...] | None = None  # SotW: the last request's names, as sent
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
            "names": sorted(self.names),
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
    ) -> None:
        self.peer = peer
        self.group_of = group_of
        self.snapshot_of = snapshot_of
        self.default_type = default_type
        self.events = events or StreamEvents()
        self.node: base_pb2.Node | None = None
        self.group = ""
        self.types: dict[str, TypeState] = {}
        self.connected_at = time.time()
        # Make-before-break: clusters sent as added or changed whose endpoints the client has not
        # acknowledged yet. Listeners and routes wait for them (at most `warm_timeout` seconds).
        self.warm_timeout = warm_timeout
        self.warming: set[str] = set()
        self.warming_since: float | None = None
        self.clock = clock

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

    def _accept_node(self, request_node: base_pb2.Node, has_node: bool) -> bool:
        """Returns True when this request established the stream's node (its first request)."""
        if self.node is not None:
            return False
        if not has_node or not request_node.id:
            raise ProtocolError("the first request of a stream must carry a node with an id")
        self.node = base_pb2.Node()
        self.node.CopyFrom(request_node)
        self.group = self.group_of(self.node)
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
            "envoy_version": _envoy_version(node) if node is not None else "",
            "admin_url": self.admin_url() or "",
            "connected_at": self.connected_at,
            "status": self.status().value,
            "types": {type_url: state.describe() for type_url, state in sorted(self.types.items())},
        }

    def sent_resources(self) -> dict[str, list[Resource]]:
        return {type_url: list(state.sent.values()) for type_url, state in self.types.items()}

    def _push_types(self) -> Iterable[str]:
        # Known types in make-before-break order, then anything else the client subscribed to.
        yield from PUSH_ORDER
        yield from sorted(t for t in self.types if t not in PUSH_ORDER)

    def _referrers_pending(self, snapshot: Snapshot) -> bool:
        """Listeners or routes are about to change or are not acknowledged yet, so clusters stay."""
        for type_url in _REFERRING_TYPES:
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
        state.nack_error = request.error_detail.message or f"code {request.error_detail.code}"
        state.nack_version = rejected_version
        self.events.on_nack(type_url, state.nack_error)

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
        """When the stream must be looked at again even if nothing arrives (the warming deadline)."""
        return None if self.warming_since is None else self.warming_since + self.warm_timeout

    def on_tick(self) -> list[Outgoing]:
        raise NotImplementedError


def _peer_host(peer: str) -> str:
    """The host of a gRPC peer string: `ipv4:10.0.0.1:5000` or `ipv6:[::1]:5000`."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0]  # keeps the brackets a URL needs
    return ""


def _envoy_version(node: base_pb2.Node) -> str:
    if node.HasField("user_agent_build_version"):
        v = node.user_agent_build_version.version
        return f"{v.major_number}.{v.minor_number}.{v.patch}"
    return node.user_agent_name


def _is_nack(request: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest) -> bool:
    return request.HasField("error_detail") and bool(request.error_detail.code or request.error_detail.message)


class SotwStream(BaseStream):
    mode = "sotw"

    def on_request(self, request: discovery_pb2.DiscoveryRequest) -> list[Outgoing]:
        self._accept_node(request.node, request.HasField("node"))
        type_url = self._type_of(request.type_url)
        if type_url is None:
            return []
        state = self.types.get(type_url)
        first = state is None
        if state is None:
            state = self.types[type_url] = TypeState()
        elif request.response_nonce != state.nonce:
            # Answers a response that has since been superseded: the client will answer the newer one.
            self.events.on_stale_nonce(type_url)
            return []

        if not first and _is_nack(request):
            self._record_nack(type_url, state, request, state.sent_version)
        elif request.response_nonce and request.response_nonce == state.nonce:
            state.acked_nonce = request.response_nonce
            state.acked_version = request.version_info
            state.nack_error = ""
            self.events.on_ack(type_url)

        raw = tuple(request.resource_names)
        newly_requested = False
        if raw != state.requested_raw:  # ACKs repeat the names: no set to build for them
            requested = set(raw)
            wildcard = "*" in requested or (not requested and (first or state.wildcard))
            requested.discard("*")
            newly_requested = bool(requested - state.names) or (wildcard and not state.wildcard)
            state.wildcard, state.names = wildcard, requested
            state.names_key = tuple(sorted(requested))
            state.requested_raw = raw

        snapshot = self.snapshot_of(self.group)
        force: set[str] = set()
        if first and snapshot is not None and request.version_info == snapshot.version(type_url):
            # A reconnecting Envoy that already runs this exact version: answering would only make
            # it redo work (and count an update), so remember what it has instead.
            state.sent = self._wanted(type_url, state, snapshot)
            state.sent_key = self._content_key(type_url, state, snapshot, {})
            state.sent_version = state.acked_version = request.version_info
            return self._respond(snapshot, force)
        if first or newly_requested:
            force.add(type_url)
        return self._respond(snapshot, force)

    def on_snapshot(self) -> list[Outgoing]:
        return self._respond(self.snapshot_of(self.group), set())

    def on_tick(self) -> list[Outgoing]:
        return self._respond(self.snapshot_of(self.group), set())

    def _wanted(self, type_url: str, state: TypeState, snapshot: Snapshot) -> Mapping[str, Resource]:
        if state.wildcard:
            return snapshot.get(type_url)
        return snapshot.subset(type_url, state.names_key)

    def _content_key(
        self, type_url: str, state: TypeState, snapshot: Snapshot, kept: Mapping[str, Resource]
    ) -> object:
        names_key = None if state.wildcard else state.names_key
        kept_key = tuple(sorted((r.name, r.version) for r in kept.values())) if kept else ()
        return (snapshot.version(type_url), names_key, kept_key)

    def _has_changes(self, type_url: str, state: TypeState, snapshot: Snapshot) -> bool:
        return state.sent_key != self._content_key(type_url, state, snapshot, {})

    def _respond(self, snapshot: Snapshot | None, force: set[str]) -> list[Outgoing]:
        if snapshot is None:
            return []
        out: list[Outgoing] = []
        for type_url in self._push_types():
            state = self.types.get(type_url)
            if state is None or not snapshot.serves(type_url):
                continue
            if type_url not in force and state.sent_key == self._content_key(type_url, state, snapshot, {}):
                continue  # the common case (an ACK, an unrelated change) stays O(1)
            if type_url in _REFERRING_TYPES and self._still_warming():
                continue  # sent from a later request, once the new clusters can take traffic
            wanted = self._wanted(type_url, state, snapshot)
            kept: dict[str, Resource] = {}
            if type_url == CLUSTER:
                removed = [name for name in state.sent if name not in wanted]
                if removed and self._referrers_pending(snapshot):
                    kept = {name: state.sent[name] for name in removed}
            key = self._content_key(type_url, state, snapshot, kept)
            if key == state.sent_key and type_url not in force:
                continue
            out.append(self._encode(type_url, state, snapshot, wanted, kept, key))
            if type_url == CLUSTER:
                changed = [r.name for r in wanted.values() if state_sent_version(state, r.name) != r.version]
                if changed or CLUSTER in force:
                    force.add(ENDPOINT)
                self._start_warming(changed, snapshot)
            state.sent = {**wanted, **kept} if kept else wanted
            state.sent_key = key
        return out

    def _encode(
        self,
        type_url: str,
        state: TypeState,
        snapshot: Snapshot,
        wanted: Mapping[str, Resource],
        kept: Mapping[str, Resource],
        key: object,
    ) -> Outgoing:
        resources = [*wanted.values(), *kept.values()]
        version = snapshot.version(type_url) if not kept else type_version(resources)

        def build(nonce: str) -> bytes:
            header = discovery_pb2.DiscoveryResponse(version_info=version, type_url=type_url, nonce=nonce)
            return header.SerializeToString() + b"".join(r.sotw_entry for r in resources)

        if kept:
            nonce = new_nonce()
            payload = build(nonce)
        else:
            shared = snapshot.shared_response(("sotw", type_url, key), build)
            nonce, payload = shared.nonce, shared.payload
            if nonce == state.nonce:
                # This stream already got exactly this response: a resend needs a nonce of its own.
                nonce = new_nonce()
                payload = build(nonce)
        state.record_sent(nonce, version)
        return Outgoing(type_url, payload, len(resources))


def state_sent_version(state: TypeState, name: str) -> str | None:
    resource = state.sent.get(name)
    return resource.version if resource is not None else None


class DeltaStream(BaseStream):
    mode = "delta"

    def on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> list[Outgoing]:
        self._accept_node(request.node, request.HasField("node"))
        type_url = self._type_of(request.type_url)
        if type_url is None:
            return []
        state = self.types.get(type_url)
        subscribe = set(request.resource_names_subscribe)
        if state is None:
            state = self.types[type_url] = TypeState(sent={})
            state.wildcard = not subscribe or "*" in subscribe
            # Reconnect: the client tells us what it has, so only differences are sent.
            snapshot = self.snapshot_of(self.group)
            available = snapshot.get(type_url) if snapshot is not None else {}
            sent = _mutable(state)
            for name, version in request.initial_resource_versions.items():
                resource = available.get(name)
                sent[name] = resource if resource is not None and resource.version == version else (
                    _placeholder(type_url, name, version)
                )
            if snapshot is not None and request.initial_resource_versions:
                updates, removed = self._diff(type_url, state, snapshot)
                if not updates and not removed:
                    # Reconnected with exactly this config: nothing to send, and status can say so.
                    state.sent_version = state.acked_version = snapshot.version(type_url)
        else:
            if "*" in subscribe:
                state.wildcard = True
        state.names |= subscribe - {"*"}
        for name in request.resource_names_unsubscribe:
            if name == "*":
                state.wildcard = False
            else:
                state.names.discard(name)
                _mutable(state).pop(name, None)
        if subscribe or request.resource_names_unsubscribe:
            state.synced_generation = None

        if request.response_nonce:
            if _is_nack(request):
                self._record_nack(type_url, state, request, state.versions_by_nonce.get(request.response_nonce, ""))
            else:
                state.acked_nonce = request.response_nonce
                state.acked_version = state.versions_by_nonce.get(request.response_nonce, "")
                if state.acked_nonce == state.nonce:
                    state.nack_error = ""
                self.events.on_ack(type_url)
        return self._respond(self.snapshot_of(self.group))

    def on_snapshot(self) -> list[Outgoing]:
        return self._respond(self.snapshot_of(self.group))

    def on_tick(self) -> list[Outgoing]:
        return self._respond(self.snapshot_of(self.group))

    def _diff(
        self, type_url: str, state: TypeState, snapshot: Snapshot
    ) -> tuple[list[Resource], list[str]]:
        available = snapshot.get(type_url)
        changes = snapshot.changes.get(type_url) if snapshot.changes is not None else None
        if changes is not None and state.synced_generation is not None and (
            state.synced_generation == snapshot.previous_generation
        ):
            # One snapshot behind (the usual case): only the names that changed can differ.
            sent = state.sent
            updates = []
            removed = []
            for name in sorted(changes):
                resource = available.get(name)
                if resource is None:
                    if name in sent:
                        removed.append(name)
                elif state.subscribed(name) and state_sent_version(state, name) != resource.version:
                    updates.append(resource)
            return updates, removed
        if state.wildcard:
            candidates: Iterable[Resource] = available.values()
        else:
            candidates = (available[name] for name in sorted(state.names) if name in available)
        # Sent resources are shared objects, so identity is the fast path of the version check.
        updates = [r for r in candidates if state.sent.get(r.name) is not r and state_sent_version(state, r.name) != r.version]
        removed = sorted(name for name in state.sent if name not in available)
        return updates, removed

    def _has_changes(self, type_url: str, state: TypeState, snapshot: Snapshot) -> bool:
        if state.synced_generation == snapshot.generation:
            return False
        updates, removed = self._diff(type_url, state, snapshot)
        return bool(updates or removed)

    def _respond(self, snapshot: Snapshot | None) -> list[Outgoing]:
        if snapshot is None:
            return []
        out: list[Outgoing] = []
        for type_url in self._push_types():
            state = self.types.get(type_url)
            if state is None or not snapshot.serves(type_url) or state.synced_generation == snapshot.generation:
                continue
            if type_url in _REFERRING_TYPES and self._still_warming():
                continue
            updates, removed = self._diff(type_url, state, snapshot)
            deferred = type_url == CLUSTER and bool(removed) and self._referrers_pending(snapshot)
            if deferred:
                removed = []
            # A deferred removal must be looked at again once the referrers are acknowledged.
            state.synced_generation = None if deferred else snapshot.generation
            if not updates and not removed:
                continue
            out.append(self._encode(type_url, state, snapshot, updates, removed))
            sent = _mutable(state)
            for resource in updates:
                sent[resource.name] = resource
            for name in removed:
                del sent[name]
            if type_url == CLUSTER and updates:
                self._start_warming((r.name for r in updates), snapshot)
                endpoints = self.types.get(ENDPOINT)
                if endpoints is not None:
                    # Forget what the client has for these clusters, so their EDS goes out again.
                    for resource in updates:
                        _mutable(endpoints).pop(resource.name, None)
                    endpoints.synced_generation = None
        return out

    def _encode(
        self,
        type_url: str,
        state: TypeState,
        snapshot: Snapshot,
        updates: list[Resource],
        removed: list[str],
    ) -> Outgoing:
        version = snapshot.version(type_url)

        def build(nonce: str) -> bytes:
            header = discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=version, type_url=type_url, nonce=nonce, removed_resources=removed
            )
            return header.SerializeToString() + b"".join(r.delta_entry for r in updates)

        key = ("delta", type_url, tuple(r.name for r in updates), tuple(removed))
        shared = snapshot.shared_response(key, build)
        nonce, payload = shared.nonce, shared.payload
        if nonce == state.nonce:
            nonce = new_nonce()
            payload = build(nonce)
        state.record_sent(nonce, version)
        return Outgoing(type_url, payload, len(updates))


def _mutable(state: TypeState) -> dict[str, Resource]:
    # Delta states are created with a dict of their own (see DeltaStream.on_request).
    assert isinstance(state.sent, dict)
    return state.sent


def _placeholder(type_url: str, name: str, version: str) -> Resource:
    """Stands for a resource the client says it has at a version this server doesn't hold."""
    return Resource(type_url=type_url, name=name, version=version, body=b"", sotw_entry=b"", delta_entry=b"")
