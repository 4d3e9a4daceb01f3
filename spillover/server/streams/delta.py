"""Incremental (Delta) xDS streams: only the resources that changed, and the names of those removed."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from sys import intern

from envoy.service.discovery.v3 import discovery_pb2

from spillover.server.bounds import LimitExceeded
from spillover.server.cache import Snapshot, new_nonce
from spillover.server.resources import CLUSTER, ENDPOINT, SECRET, Resource, delta_payload
from spillover.server.streams.base import (
    REFERRING_TYPES,
    BaseStream,
    Outgoing,
    TypeState,
    is_nack,
    state_sent_version,
)
from spillover.server.streams.subscriptions import SHARED_SUBSCRIPTIONS


class DeltaStream(BaseStream):
    mode = "delta"

    def on_request(self, request: discovery_pb2.DeltaDiscoveryRequest, raw: bytes | None = None) -> list[Outgoing]:
        """`raw` (the request's bytes) is accepted for the same call as SotwStream's and not needed: an ACK
        carries no names, so it costs O(1) as it is."""
        self.accept_node(request.node, request.HasField("node"))
        type_url = self._type_of(request.type_url)
        if type_url is None:
            return []
        self._check_request(type_url, request.response_nonce, "")
        limits = self.limits
        state = self.types.get(type_url)
        # Names are interned: thousands of streams subscribing to the same names hold one copy of each.
        subscribe = {intern(name) for name in request.resource_names_subscribe} if (
            request.resource_names_subscribe
        ) else set()
        snapshot = self.snapshot_of(self.group)
        first = state is None
        if state is None:
            initial = request.initial_resource_versions
            if initial:
                limits.check_names(initial.keys(), len(initial))
                if any(len(version) > limits.max_version_length for version in initial.values()):
                    raise LimitExceeded(
                        f"initial_resource_versions: versions of at most {limits.max_version_length} characters",
                        resource=False,
                    )
            state = self.types[type_url] = TypeState(sent={})
            state.wildcard = not subscribe or "*" in subscribe
            # Reconnect: the client tells us what it has, so only differences are sent.
            available = snapshot.visible(type_url) if snapshot is not None else {}
            sent = _mutable(state)
            for name, version in initial.items():
                resource = available.get(name)
                sent[name] = resource if resource is not None and resource.version == version else (
                    _placeholder(type_url, name, version)
                )
            if snapshot is not None and initial:
                updates, removed = self._diff(type_url, state, snapshot)
                if not updates and not removed:
                    # Reconnected with exactly this config: nothing to send, and status can say so.
                    state.sent_version = state.acked_version = snapshot.version(type_url)
        else:
            if "*" in subscribe:
                state.wildcard = True
        if subscribe:
            added = subscribe - state.names
            added.discard("*")
            if added:
                limits.check_names(added, len(state.names) + len(added))
                if type_url == SECRET:
                    self._refuse_unreferenced_secrets(sorted(added), snapshot)
                # A new set, never changed in place: streams subscribing to the same names share it.
                state.names, state.names_key = SHARED_SUBSCRIPTIONS.names(state.names | added)
            state.synced_generation = None
        if request.resource_names_unsubscribe:
            gone = set(request.resource_names_unsubscribe)
            if "*" in gone:
                state.wildcard = False
                gone.discard("*")
            if gone:
                if any(name in state.sent for name in gone):
                    sent = _mutable(state)
                    for name in gone:
                        sent.pop(name, None)
                state.names, state.names_key = SHARED_SUBSCRIPTIONS.names(state.names - gone)
            state.synced_generation = None

        if request.response_nonce:
            if is_nack(request):
                self._record_nack(type_url, state, request, state.versions_by_nonce.get(request.response_nonce, ""))
            else:
                state.acked_nonce = request.response_nonce
                state.acked_version = state.versions_by_nonce.get(request.response_nonce, "")
                if state.acked_nonce == state.nonce:
                    state.nack_error = ""
                self.events.on_ack(type_url)
        if first:
            self._check_split_layer(snapshot)
        return self._respond(snapshot)

    def plain_ack(self, raw: bytes) -> str | None:
        """Envoy answers nearly every response with a request that only ACKs it (its type URL and nonce):
        one equal to the bytes such an ACK of a type's newest response has is that ACK, so it needs no
        parsing and no look at every field. Anything else (a NACK, a node, names, another nonce, the same
        fields in another order) is not equal to them and goes the whole way."""
        if self.node is None:
            return None
        for type_url, state in self.types.items():
            if state.plain_ack == raw:
                return type_url
        return None

    def on_plain_ack(self, type_url: str) -> list[Outgoing]:
        # What on_request does with a request of only this type URL and the newest nonce of its type: the
        # node is known, no names change, it is no NACK, and the nonce is within the bound (`_encode`).
        state = self.types[type_url]
        state.acked_nonce = state.nonce
        state.acked_version = state.versions_by_nonce.get(state.nonce, "")
        state.nack_error = ""
        self.events.on_ack(type_url)
        return self._respond(self.snapshot_of(self.group))

    def on_snapshot(self) -> list[Outgoing]:
        snapshot = self.snapshot_of(self.group)
        self._check_split_layer(snapshot)
        return self._respond(snapshot)

    def on_tick(self) -> list[Outgoing]:
        return self._respond(self.snapshot_of(self.group))

    def _diff(
        self, type_url: str, state: TypeState, snapshot: Snapshot
    ) -> tuple[list[Resource], list[str]]:
        available = snapshot.visible(type_url)
        changes = snapshot.changes.get(type_url) if snapshot.changes is not None else None
        if changes is not None and state.synced_generation is not None and (
            state.synced_generation == snapshot.previous_generation
        ):
            # One snapshot behind (the usual case): only the names that changed can differ.
            sent = state.sent
            updates = []
            removed = []
            for name in changes if len(changes) < 2 else sorted(changes):
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

    @staticmethod
    def _offered(type_url: str, state: TypeState, snapshot: Snapshot) -> Mapping[str, Resource]:
        if state.wildcard:
            return snapshot.visible(type_url)
        return snapshot.subset(type_url, state.names_key)

    def _has_changes(self, type_url: str, state: TypeState, snapshot: Snapshot) -> bool:
        if state.synced_generation == snapshot.generation:
            return False
        updates, removed = self._diff(type_url, state, snapshot)
        return bool(updates or removed)

    def _respond(self, snapshot: Snapshot | None) -> list[Outgoing]:
        if snapshot is None:
            return []
        generation = snapshot.generation
        for known in self.types.values():
            if known.synced_generation != generation:
                break
        else:
            return []  # every type is in sync with this snapshot (after most ACKs): the loop below would skip each
        out: list[Outgoing] = []
        for type_url in self._push_types():
            state = self.types.get(type_url)
            if state is None or not snapshot.serves(type_url) or state.synced_generation == snapshot.generation:
                continue
            if type_url in REFERRING_TYPES and self._still_warming():
                continue
            updates, removed = self._diff(type_url, state, snapshot)
            deferred = type_url == CLUSTER and bool(removed) and self._referrers_pending(snapshot)
            if deferred:
                removed = []
            # A deferred removal must be looked at again once the referrers are acknowledged.
            state.synced_generation = None if deferred else snapshot.generation
            if updates or removed:
                out.append(self._encode(type_url, state, snapshot, updates, removed))
            if not deferred:
                # In sync, the client has exactly what the snapshot offers it: the stream shares that
                # read-only mapping (one per snapshot and subscription) instead of a dict of its own.
                state.sent = self._offered(type_url, state, snapshot)
            elif updates:
                sent = _mutable(state)
                for resource in updates:
                    sent[resource.name] = resource
            if not updates:
                continue
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
            return delta_payload(header.SerializeToString(), updates)

        key = ("delta", type_url, tuple([r.name for r in updates]), tuple(removed))
        shared = snapshot.shared_response(key, build)
        nonce, payload = shared.nonce, shared.payload
        if nonce == state.nonce:
            nonce = new_nonce()
            payload = build(nonce)
        state.record_sent(nonce, version)
        state.plain_ack = _plain_ack(type_url, nonce) if len(nonce) <= self.limits.max_nonce_length else None
        return Outgoing(type_url, payload, len(updates))


@functools.lru_cache(maxsize=256)
def _plain_ack(type_url: str, nonce: str) -> bytes:
    """A request that ACKs `nonce` of `type_url` and says nothing else, as protobuf encodes it (memoized: the
    streams of a group are sent the same nonces)."""
    return discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=nonce).SerializeToString()


def _mutable(state: TypeState) -> dict[str, Resource]:
    """What the client has, as a dict of the stream's own (copied when it was the snapshot's mapping)."""
    sent = state.sent
    if not isinstance(sent, dict):
        sent = state.sent = dict(sent)
    return sent


def _placeholder(type_url: str, name: str, version: str) -> Resource:
    """Stands for a resource the client says it has at a version this server doesn't hold."""
    return Resource(type_url=type_url, name=name, version=version, body=b"", _sotw=b"", _delta=b"")
