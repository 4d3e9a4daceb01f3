"""The channel between the main process and one xDS worker: length-prefixed pickles over a socketpair.

Both ends are this program (the main process made the socketpair and started the worker with one end),
so pickle carries only what we wrote; no other process can reach the socket. A frame is a 4-byte
big-endian length and the pickled message; a snapshot push is pickled once and the same frame is
written to every worker.

What goes over it (tuples, the first element names the message):

main -> worker   ("config", group_of, warm_timeout, XdsOptions, log level)   first, once
                 ("serve", address)                  bind (SO_REUSEPORT) and start serving
                 ("snapshot", group, frame)          a published snapshot, full or as changes (ShippedSnapshot)
                 ("forget", group)                   the group expired in the main process
                 ("dump", request_id, what, node)    report stream states / metrics / streams without the
                                                     split weights' layer (see child.py)
                 ("reply", request_id, value)        the answer to a worker's question
                 ("stop", grace)
worker -> main   ("ready", port) / ("failed", why)   the answer to "serve"
                 ("open", request_id, key, limit)    may this identity open one more stream?
                 ("closed", key)                     an identity's stream ended
                 ("join", request_id, stream_id, StreamInfo)  admit this stream into the registry?
                 ("left", stream_id)                 an admitted stream ended
                 ("reply", request_id, value)        the answer to a dump
                 ("stopped",)                        the answer to "stop", before it exits
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics import MetricWrapperBase

from spillover.server.metrics import XdsMetrics

__all__ = ["Channel", "Family", "ShippedSnapshot", "StreamInfo", "encode", "worker_metrics"]

_LENGTH = struct.Struct(">I")
# A snapshot of 10,000 clusters and their endpoints is a few MB; the bound only stops a corrupt length.
MAX_FRAME = 1 << 30


def worker_metrics(metrics: XdsMetrics) -> tuple[MetricWrapperBase, ...]:
    """The metrics a worker counts itself (its streams' events); the main process sums them over the
    workers. The others (pushes, snapshot sizes, groups, connected streams, certificate reloads) are the main
    process's own: every worker reloads the same certificate files, a sum would count one change N times."""
    return (
        metrics.responses, metrics.push_latency, metrics.acks, metrics.nacks, metrics.stale, metrics.ignored,
        metrics.refused, metrics.refused_secrets, metrics.request_bytes,
    )


# A stream's type states, as the main process needs them for the sync metric: type -> status.
StreamStates = dict[str, str]
# A metric family: (name, type, documentation, [(sample name, labels, value)]).
Family = tuple[str, str, str, list[tuple[str, dict[str, str], float]]]


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What the main process keeps of an admitted stream of a worker: its registration, which never changes."""

    node: bytes  # the trimmed Node, serialized
    group: str
    peer: str
    identity: str
    admitted_by: str
    mode: str
    connected_at: float


@dataclass(frozen=True, slots=True)
class ShippedSnapshot:
    """A snapshot as the main process published it. `follows` is None for a full snapshot; otherwise the
    worker applies `upserts` and `removed` to the snapshot of generation `follows` it already holds.
    `versions` are the main process's, so every worker serves one version sequence."""

    generation: int
    follows: int | None
    versions: dict[str, str]
    # type -> (name, body, version): the version as the main process has it (a route table's is made of its
    # models' digests: hashing megabytes again in every worker is what it spares)
    upserts: dict[str, list[tuple[str, bytes, str]]]
    removed: dict[str, list[str]]
    types: tuple[str, ...]
    build_seconds: float


def encode(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


class Channel:
    """One end of the socketpair, on asyncio streams."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, sock: Any) -> Channel:
        # The default 64 KiB limit is for readline; frames are read with readexactly.
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
        return cls(reader, writer)

    def send(self, message: tuple[Any, ...]) -> None:
        self.send_frame(encode(message))

    def send_frame(self, frame: bytes) -> None:
        """Buffered at once, in order: a message sent before another always arrives before it."""
        if not self.writer.is_closing():
            self.writer.write(frame)

    async def drain(self) -> None:
        await self.writer.drain()

    async def receive(self) -> tuple[Any, ...] | None:
        """The next message, or None at the end of the stream."""
        try:
            header = await self.reader.readexactly(_LENGTH.size)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        (length,) = _LENGTH.unpack(header)
        if length > MAX_FRAME:
            raise ValueError(f"frame of {length} bytes from the other process: the channel is corrupt")
        try:
            body = await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        message = pickle.loads(body)
        assert isinstance(message, tuple)
        return message

    def close(self) -> None:
        self.writer.close()
