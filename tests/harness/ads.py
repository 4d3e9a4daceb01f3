"""A raw xDS client over real gRPC, for driving the server the way Envoy does (or misbehaves)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

_END = object()

METHODS = {
    "sotw": (
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
        discovery_pb2.DiscoveryRequest,
        discovery_pb2.DiscoveryResponse,
    ),
    "delta": (
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
        discovery_pb2.DeltaDiscoveryRequest,
        discovery_pb2.DeltaDiscoveryResponse,
    ),
}


def node(node_id: str = "envoy-1", cluster: str = "gateway") -> base_pb2.Node:
    return base_pb2.Node(id=node_id, cluster=cluster)


class AdsClient:
    """One xDS stream. `send` queues a request; `recv` waits for the next response with a deadline."""

    def __init__(self, address: str, mode: str = "sotw", method: str | None = None) -> None:
        path, self.request_class, self.response_class = METHODS[mode]
        self.mode = mode
        self.channel = grpc.aio.insecure_channel(address)
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        rpc = self.channel.stream_stream(
            method or path,
            request_serializer=self.request_class.SerializeToString,
            response_deserializer=self.response_class.FromString,
        )
        self.call = rpc(self._requests())
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        # Reading in a task of its own: cancelling a pending read() would cancel the whole RPC.
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self._inbox.put_nowait(response)
        except BaseException as error:  # delivered to whoever waits for the next response
            self._inbox.put_nowait(error)
            return
        self._inbox.put_nowait(EOFError("stream ended"))

    async def _requests(self) -> AsyncIterator[Any]:
        while True:
            request = await self._outbox.get()
            if request is _END:
                return
            yield request

    def send(self, **fields: Any) -> None:
        self._outbox.put_nowait(self.request_class(**fields))

    async def recv(self, timeout: float = 5.0) -> Any:
        item = await asyncio.wait_for(self._inbox.get(), timeout)
        if isinstance(item, BaseException):
            self._inbox.put_nowait(item)  # the stream stays ended for later calls
            raise item
        return item

    async def expect_silence(self, window: float = 0.3) -> None:
        """Asserts nothing arrives within a bounded observation window."""
        try:
            item = await asyncio.wait_for(self._inbox.get(), window)
        except TimeoutError:
            return
        raise AssertionError(f"expected no response, got {item}")

    def ack(self, response: Any, **fields: Any) -> None:
        """Acknowledge like Envoy: same type, the response's nonce (and version for SotW)."""
        if self.mode == "sotw":
            fields.setdefault("version_info", response.version_info)
        self.send(type_url=response.type_url, response_nonce=response.nonce, **fields)

    def nack(self, response: Any, message: str, last_good_version: str = "", **fields: Any) -> None:
        if self.mode == "sotw":
            fields.setdefault("version_info", last_good_version)
        self.send(
            type_url=response.type_url,
            response_nonce=response.nonce,
            error_detail=status_pb2.Status(code=3, message=message),
            **fields,
        )

    async def close(self) -> None:
        self._outbox.put_nowait(_END)
        self.call.cancel()
        self._reader.cancel()
        await self.channel.close()
