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


def tls_credentials(ca_pem: bytes, cert_pem: bytes | None = None, key_pem: bytes | None = None) -> Any:
    """Channel credentials verifying the server with `ca_pem`, presenting a client certificate if given."""
    return grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)


class AdsClient:
    """One xDS stream. `send` queues a request; `recv` waits for the next response with a deadline.

    `credentials` (see `tls_credentials`) makes it a TLS client of `server_name`; `channel` shares one
    connection among streams."""

    def __init__(
        self,
        address: str,
        mode: str = "sotw",
        method: str | None = None,
        *,
        credentials: Any = None,
        server_name: str = "localhost",
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        path, self.request_class, self.response_class = METHODS[mode]
        self.mode = mode
        self._own_channel = channel is None
        # The status the stream ended with, as the reader received it (see details()).
        self._ended: grpc.aio.AioRpcError | None = None
        if channel is not None:
            self.channel = channel
        elif credentials is not None:
            self.channel = grpc.aio.secure_channel(
                address, credentials, options=[("grpc.ssl_target_name_override", server_name)]
            )
        else:
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

    async def ended(self, timeout: float = 5.0) -> grpc.StatusCode:
        """Waits for the stream to end and returns its status code."""
        while True:
            try:
                await self.recv(timeout)
            except grpc.aio.AioRpcError as error:
                self._ended = error
                return error.code()
            except EOFError:
                return grpc.StatusCode.OK

    async def details(self) -> str:
        """The details of the status the stream ended with. Those ended() saw come first: when a write of
        ours races the server's status, the call's own details() can be gRPC's generic "Internal error from
        Core" while the status received (code and details) is the server's."""
        if self._ended is not None:
            return str(self._ended.details() or "")
        return str(await self.call.details() or "")

    async def close(self) -> None:
        self._outbox.put_nowait(_END)
        self.call.cancel()
        self._reader.cancel()
        if self._own_channel:
            await self.channel.close()
