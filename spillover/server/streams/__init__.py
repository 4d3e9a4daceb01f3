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
- The split weights' RTDS layer: an Envoy with it in its bootstrap asks for it before its clusters,
  listeners and routes. An ADS stream of a group whose snapshot holds Runtime resources that asks for any
  of those first lacks it (`without_split_layer`, reported once through `events`).
- The internal listener extension: an Envoy whose bootstrap lacks `envoy.bootstrap.internal_listener`
  NACKs the listeners that need it with Envoy's reason (`without_internal_listener` while that NACK holds,
  reported once through `events`; looked for only in Listener NACKs).

How a transport drives a stream (service.py over grpc.aio, with spillover.server.stream_writer; any other
transport, e.g. a worker process, the same way). Every call is synchronous and returns the encoded
responses to write, in order; the transport writes them one at a time, in that order:
- construct `SotwStream(peer, group_of, snapshot_of, default_type, events, warm_timeout, limits=...)` (or
  `DeltaStream`): `group_of(node)` names the node's group, `snapshot_of(group)` returns its current
  Snapshot (or None), `default_type` is set for the per-type services, `events` gets the metric hooks;
- admit it: `accept_node(request.node, request.HasField("node"))` on the first request (raises
  ProtocolError / LimitExceeded), then check `node_id` and `group`, and set `identity`/`admitted_by`;
- `on_request(request, raw)` for each request (parsed; `raw` its bytes, which lets a SotW ACK that repeats
  its names cost O(1)); ProtocolError or LimitExceeded ends the stream;
- `on_snapshot()` after a snapshot of its group was published (calls may be coalesced: the stream always
  answers with the newest one);
- `on_tick()` once `wake_at` (monotonic seconds, or None) has passed, when nothing else arrived;
- `describe()`, `status()`, `sent_resources()` for the debug views and metrics.
"""

from spillover.server.streams.base import (
    BaseStream,
    Outgoing,
    ProtocolError,
    StreamEvents,
    SyncStatus,
    TypeState,
)
from spillover.server.streams.delta import DeltaStream
from spillover.server.streams.sotw import SotwStream

__all__ = [
    "BaseStream",
    "DeltaStream",
    "Outgoing",
    "ProtocolError",
    "SotwStream",
    "StreamEvents",
    "SyncStatus",
    "TypeState",
]
