"""State of the World xDS streams: every response carries the full set of the resources asked for."""

from __future__ import annotations

from collections.abc import Mapping
from sys import intern

from envoy.service.discovery.v3 import discovery_pb2

from spillover.server.cache import Snapshot, new_nonce
from spillover.server.resources import CLUSTER, ENDPOINT, SECRET, Resource, sotw_payload, type_version
from spillover.server.streams.base import (
    REFERRING_TYPES,
    BaseStream,
    Outgoing,
    TypeState,
    is_nack,
    state_sent_version,
)
from spillover.server.streams.subscriptions import SHARED_SUBSCRIPTIONS


class SotwStream(BaseStream):
    mode = "sotw"

    def on_request(self, request: discovery_pb2.DiscoveryRequest, raw: bytes | None = None) -> list[Outgoing]:
        """`raw`: the request as received, when the caller has it: an ACK that repeats the names is then
        recognised by comparing bytes, without making a string per name."""
        self.accept_node(request.node, request.HasField("node"))
        type_url = self._type_of(request.type_url)
        if type_url is None:
            return []
        self._check_request(type_url, request.response_nonce, request.version_info)
        state = self.types.get(type_url)
        first = state is None
        if state is None:
            state = self.types[type_url] = TypeState()
        elif request.response_nonce != state.nonce:
            # Answers a response that has since been superseded: the client will answer the newer one.
            self.events.on_stale_nonce(type_url)
            return []

        if not first and is_nack(request):
            self._record_nack(type_url, state, request, state.sent_version)
        elif request.response_nonce and request.response_nonce == state.nonce:
            state.acked_nonce = request.response_nonce
            # The version of that nonce as this server sent it: the client's text is not kept.
            state.acked_version = state.sent_version
            state.nack_error = ""
            self.events.on_ack(type_url)

        snapshot = self.snapshot_of(self.group)
        newly_requested = False
        count = len(request.resource_names)
        span = state.requested_span
        same = (
            not first and raw is not None and span is not None and count == state.requested_count
            and raw.startswith(span, _names_offset(raw))
        )
        if not same:  # ACKs repeat the names: no set to build for them
            names = request.resource_names
            self.limits.check_names(names, count)
            requested = {intern(name) for name in names}
            wildcard = "*" in requested or (not requested and (first or state.wildcard))
            requested.discard("*")
            added = requested - state.names
            newly_requested = bool(added) or (wildcard and not state.wildcard)
            if type_url == SECRET and added:
                self._refuse_unreferenced_secrets(sorted(added), snapshot)
            if first or requested != state.names:
                # Only a new subscription gets a new key: the memo lookups compare the same tuple object.
                state.names, state.names_key = SHARED_SUBSCRIPTIONS.names(requested)
            state.wildcard = wildcard
            state.requested_count = count
            state.requested_span = SHARED_SUBSCRIPTIONS.span(_names_span(raw, count)) if raw is not None else None

        force: set[str] = set()
        if first and snapshot is not None and request.version_info == snapshot.version(type_url):
            # A reconnecting Envoy that already runs this exact version: answering would only make
            # it redo work (and count an update), so remember what it has instead.
            state.sent = self._wanted(type_url, state, snapshot)
            state.sent_key = self._content_key(type_url, state, snapshot, {})
            state.sent_version = state.acked_version = snapshot.version(type_url)
            self._check_split_layer(snapshot)
            return self._respond(snapshot, force)
        if first or newly_requested:
            force.add(type_url)
        if first:
            self._check_split_layer(snapshot)
        return self._respond(snapshot, force)

    def on_snapshot(self) -> list[Outgoing]:
        snapshot = self.snapshot_of(self.group)
        self._check_split_layer(snapshot)
        return self._respond(snapshot, set())

    def on_tick(self) -> list[Outgoing]:
        return self._respond(self.snapshot_of(self.group), set())

    def _wanted(self, type_url: str, state: TypeState, snapshot: Snapshot) -> Mapping[str, Resource]:
        if state.wildcard:
            return snapshot.visible(type_url)
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
            if type_url in REFERRING_TYPES and self._still_warming():
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
            return sotw_payload(header.SerializeToString(), resources)

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


# DiscoveryRequest fields as protobuf serializers write them (in field order): version_info (1), node (2),
# then resource_names (3), one length-delimited entry each.
_VERSION_INFO_TAG, _NODE_TAG, _NAME_TAG = 0x0A, 0x12, 0x1A


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _names_offset(raw: bytes) -> int:
    """Where the names begin: after version_info and node when they come first (O(1): two headers)."""
    pos = 0
    try:
        for tag in (_VERSION_INFO_TAG, _NODE_TAG):
            if pos < len(raw) and raw[pos] == tag:
                length, pos = _varint(raw, pos + 1)
                pos += length
    except IndexError:
        return 0
    return pos


def _names_span(raw: bytes, count: int) -> bytes | None:
    """The encoded names of a request when they are one run of `count` entries at `_names_offset`, else
    None. A later request whose names field has `count` entries and holds these same bytes at its own
    offset has exactly these names, in this order (its other entries would make the count larger)."""
    start = pos = _names_offset(raw)
    try:
        for _ in range(count):
            if raw[pos] != _NAME_TAG:
                return None
            length, pos = _varint(raw, pos + 1)
            pos += length
    except IndexError:
        return None
    if pos > len(raw):
        return None
    return raw[start:pos]
