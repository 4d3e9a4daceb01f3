"""An xDS server with mTLS and admission on its own loop for tests that drive it with raw gRPC clients:
the certificates (a test CA, the server's, clients' by identity), the server, and helpers to read what
it counted and which certificate it serves."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from spillover.server.admission import AdmissionPolicy, admission_from_mapping
from spillover.server.cache import Snapshot, SnapshotCache
from spillover.server.service import XdsOptions, XdsServer
from spillover.server.tls import TlsFiles
from spillover.server.workers import WorkerPool
from spillover.translate import translate
from tests.harness.ads import AdsClient, tls_credentials
from tests.harness.ir_yaml import load_gateway
from tests.harness.pki import Pki, serial_of, write_secret_volume

__all__ = [
    "GATEWAY_ID",
    "OTHER_ID",
    "RULES",
    "TOKEN",
    "Certificates",
    "SecureServer",
    "Start",
    "edge_resources",
    "node",
    "other_resources",
    "policy",
    "served_serial",
]

GATEWAY_ID = "spiffe://cluster.local/ns/spillover-system/sa/spillover-gateway"
OTHER_ID = "spiffe://cluster.local/ns/tenant-b/sa/gateway"
GOLDEN = Path(__file__).resolve().parents[1] / "translate" / "golden"
TOKEN = "spillover-token-qwen-0a1b2c3d"  # the secret of the bearer-token golden case
# The admission rules most tests run with: the gateways in group edge, tenant B in group other.
RULES: list[dict[str, Any]] = [
    {"name": "gateways", "identities": [GATEWAY_ID], "groups": ["edge"], "nodeIds": ["edge-*"], "maxStreams": 4},
    {"name": "tenant-b", "identities": [OTHER_ID], "groups": ["other"]},
]


class Certificates:
    """A test CA, the server certificate in a Secret-volume directory (`server_dir`), clients on demand."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.pki = Pki()
        self.server_dir = directory / "server-tls"
        self.rotate_server()
        self._clients: dict[tuple[str, ...], Any] = {}

    @property
    def files(self) -> TlsFiles:
        return TlsFiles(self.server_dir / "tls.crt", self.server_dir / "tls.key", self.server_dir / "ca.crt")

    def rotate_server(self) -> int:
        """A new server certificate, written like the kubelet updates a Secret; returns its serial."""
        issued = self.pki.issue("spillover-xds", dns=["localhost"], ips=["127.0.0.1"], server=True)
        write_secret_volume(self.server_dir, self.pki.tls_secret(issued))
        return issued.serial

    def client(self, *uris: str, dns: Iterable[str] = ()) -> Any:
        """Channel credentials with a client certificate for these SANs (cached per identity)."""
        key = (*uris, "|", *dns)
        if key not in self._clients:
            issued = self.pki.issue("client", dns=list(dns), uris=list(uris), client=True)
            self._clients[key] = (tls_credentials(self.pki.ca_pem, issued.cert_pem, issued.key_pem), issued)
        return self._clients[key][0]

    def client_files(self, name: str, *uris: str) -> tuple[Path, Path]:
        issued = self.pki.issue("client", uris=list(uris), client=True)
        cert, key = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        issued.write(cert, key)
        return cert, key

    def anonymous(self) -> Any:
        """TLS without a client certificate."""
        return tls_credentials(self.pki.ca_pem)

    def foreign(self, *uris: str) -> Any:
        """A client certificate from another CA, for the same identity."""
        other = Pki("someone-else")
        issued = other.issue("client", uris=list(uris), client=True)
        return tls_credentials(self.pki.ca_pem, issued.cert_pem, issued.key_pem)


@dataclass
class SecureServer:
    """XdsServer + SnapshotCache on the running loop (debounce 0), stopped by `close`."""

    certificates: Certificates | None
    admission: AdmissionPolicy | None = None
    options: XdsOptions = field(default_factory=XdsOptions)
    clients: list[AdsClient] = field(default_factory=list)
    # More than 1: the streams are served by that many worker processes.
    workers: int = 1

    async def start(self) -> SecureServer:
        options = replace(
            self.options,
            tls=self.certificates.files if self.certificates is not None else None,
            admission=self.admission,
            tls_check_interval=0.05,
        )
        self.cache = SnapshotCache(debounce=0)
        self.xds = (
            WorkerPool(self.cache, self.workers, options=options) if self.workers > 1
            else XdsServer(self.cache, options=options)
        )
        port = await self.xds.start("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self.port = port
        return self

    def publish(self, group: str, messages: Iterable[Message]) -> Snapshot:
        snapshot = Snapshot.from_messages(list(messages))
        self.cache.set_snapshot(group, snapshot)
        return snapshot

    def client(self, credentials: Any = None, mode: str = "sotw", **kwargs: Any) -> AdsClient:
        if credentials is None and self.certificates is not None:
            credentials = self.certificates.client(GATEWAY_ID)
        client = AdsClient(self.address, mode, credentials=credentials, **kwargs)
        self.clients.append(client)
        return client

    def counter(self, name: str, **labels: str) -> float:
        return self.xds.metrics_registry.get_sample_value(name, labels) or 0.0

    def refused(self, reason: str) -> float:
        return self.counter("spillover_xds_refused_streams_total", reason=reason)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        await self.xds.stop(0)


def policy(rules: list[dict[str, Any]], **extra: Any) -> AdmissionPolicy:
    return admission_from_mapping({"rules": rules, **extra})


async def served_serial(port: int, certificates: Certificates) -> int:
    """The serial of the certificate the server presents to a new TLS connection (with a valid client
    certificate, so the handshake completes)."""
    cert, key = certificates.client_files("probe", GATEWAY_ID)

    def handshake() -> int:
        context = ssl.create_default_context(cadata=certificates.pki.ca_pem.decode())
        context.check_hostname = False
        context.load_cert_chain(cert, key)
        context.set_alpn_protocols(["h2"])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return serial_of(ssl.DER_cert_to_PEM_cert(der).encode())

    return await asyncio.get_running_loop().run_in_executor(None, handshake)


def edge_resources() -> list[Any]:
    """A model with an OAuth token: its remote cluster's credential_injector refers to the SDS secret."""
    return list(translate(load_gateway(GOLDEN / "bearer-token" / "ir.yaml")).messages())


def other_resources() -> list[Any]:
    """Another group's config, holding the same secret without referring to it."""
    stray = secret_pb2.Secret(name=TOKEN, generic_secret=secret_pb2.GenericSecret())
    stray.generic_secret.secret.inline_string = "Bearer token-value"
    return [*translate(load_gateway(GOLDEN / "minimal" / "ir.yaml")).messages(), stray]


def node(node_id: str = "edge-1", cluster: str = "edge", **metadata: Any) -> base_pb2.Node:
    result = base_pb2.Node(id=node_id, cluster=cluster)
    for key, value in metadata.items():
        result.metadata.fields[key].CopyFrom(
            struct_pb2.Value(number_value=value) if isinstance(value, int) else struct_pb2.Value(string_value=value)
        )
    return result


# The `start` fixture of tests/server: `await start(rules=..., tls=..., **XdsOptions fields)`.
Start = Callable[..., Awaitable[SecureServer]]
