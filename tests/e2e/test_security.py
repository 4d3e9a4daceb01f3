"""`spillover serve` with mTLS, admission and an admin token, against the attacks of issue 12: real Envoys
bootstrapped over mTLS, raw gRPC clients as the attackers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from google.protobuf import struct_pb2

from spillover.server.resources import CLUSTER, SECRET
from tests.harness.ads import AdsClient
from tests.harness.envoy import Envoy
from tests.harness.load import post_model, served_by
from tests.harness.policy_files import model_deployment, write
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.rate_limit import envoy_bucket, sent_bucket
from tests.harness.secure_xds import GATEWAY_ID, OTHER_ID, Certificates
from tests.harness.serve import REPO, Launcher, Spillover, start_mtls_edge
from tests.harness.token_endpoint import TokenEndpoint
from tests.harness.upstream import HttpUpstream

pytestmark = pytest.mark.timeout(240)

ADMIN_TOKEN = "admin-token-0123456789abcdef"
ADMISSION = {
    "rules": [
        {"name": "gateways", "identities": [GATEWAY_ID], "groups": ["edge"], "nodeIds": ["edge-*"]},
        {"name": "tenant-b", "identities": [OTHER_ID], "groups": ["other"]},
    ]
}


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return Certificates(tmp_path / "pki")


@pytest.fixture
def secured(tmp_path: Path, certificates: Certificates) -> Iterator[Callable[..., Spillover]]:
    """`spillover serve --policies` with mTLS on xDS, the admission file above and an admin token."""
    admission = tmp_path / "admission.yaml"
    admission.write_text(yaml.safe_dump(ADMISSION))
    token = tmp_path / "admin-token"
    token.write_text(ADMIN_TOKEN + "\n")
    files = certificates.files
    args = [
        "--xds-tls-cert", str(files.cert), "--xds-tls-key", str(files.key), "--xds-client-ca", str(files.client_ca),
        "--admission", str(admission), "--admin-token-file", str(token),
    ]
    launch = Launcher(tmp_path)

    def factory(policies: Path, extra: list[str] | None = None, **kwargs: Any) -> Spillover:
        return launch(policies=policies, extra_args=[*args, *(extra or [])], admin_token=ADMIN_TOKEN, **kwargs)

    yield factory
    launch.stop_all()


def node(node_id: str, cluster: str, **metadata: Any) -> base_pb2.Node:
    result = base_pb2.Node(id=node_id, cluster=cluster)
    for key, value in metadata.items():
        result.metadata.fields[key].CopyFrom(
            struct_pb2.Value(number_value=value) if isinstance(value, int) else struct_pb2.Value(string_value=value)
        )
    return result


async def attack(address: str, credentials: Any, request_node: base_pb2.Node, secret: str) -> tuple[Any, list[str]]:
    """CDS for the group, then SDS for its token: the status the stream ended with, and the secrets it got."""
    client = AdsClient(address, credentials=credentials) if credentials is not None else AdsClient(address)
    got: list[str] = []
    try:
        client.send(node=request_node, type_url=CLUSTER)
        asked_for_the_secret = False
        while True:
            try:
                # A refusal is quick; the deadline is for a loaded machine (a TLS handshake failing slowly).
                response = await client.recv(timeout=10)
            except grpc.aio.AioRpcError as error:
                return error.code(), got
            except TimeoutError:
                return None, got
            got += [r.type_url for r in response.resources if r.type_url == SECRET]
            if not asked_for_the_secret:
                # Asked once the stream answered: a write racing the server's refusal would make gRPC's
                # client report a generic INTERNAL instead of the status the server ended the stream with.
                client.send(type_url=SECRET, resource_names=[secret])
                asked_for_the_secret = True
    finally:
        await client.close()


def refused(server: Spillover) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in server.get("/metrics").text.splitlines():
        if line.startswith("spillover_xds_refused_streams_total{"):
            labels, _, value = line.rpartition(" ")
            out[labels.split('reason="', 1)[1].split('"', 1)[0]] = float(value)
    return out


def test_the_token_goes_to_the_gateway_and_to_no_attacker(
    tmp_path: Path, policy_dir: Path, secured: Callable[..., Spillover], certificates: Certificates,
    envoy_factory: Callable[..., Envoy], upstream_factory: Callable[..., HttpUpstream],
    token_endpoint: Callable[..., TokenEndpoint],
) -> None:
    remote = upstream_factory("remote")
    oauth = token_endpoint("edge", "client-secret-value")
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("client-secret-value")
    remote_backend = {
        "host": "127.0.0.1", "port": remote.port, "scheme": "http",
        "authConfig": {"type": "oauth", "oauthConfig": {
            "clientId": "edge", "clientSecretRef": {"file": str(secret_file)}, "tokenUrl": oauth.url}},
    }
    write(policy_dir / "qwen.yaml", model_deployment("qwen", remote=remote_backend))
    server = secured(policy_dir)
    start_mtls_edge(envoy_factory, server, tmp_path, certificates.pki, "edge-1", GATEWAY_ID)
    wait_until(lambda: served_by(post_model(server.listen_port, "qwen")) == "remote", timeout=15, message="remote")
    (token,) = oauth.tokens
    assert remote.requests[-1]["headers"]["authorization"] == f"Bearer {token}"
    (secret,) = [r["name"] for r in server.get_json("/debug/config?node=edge-1")["resources"]["SDS"]]

    attempts = {
        "plain text": None,
        "TLS without a client certificate": certificates.anonymous(),
        "a certificate from another CA": certificates.foreign(GATEWAY_ID),
        "another group's identity": certificates.client(OTHER_ID),
        "the gateway identity with a foreign node id": certificates.client(GATEWAY_ID),
    }

    async def all_attacks() -> dict[str, tuple[Any, list[str]]]:
        out = {}
        for what, credentials in attempts.items():
            node_id = "attacker" if "foreign node" in what else "edge-9"
            out[what] = await attack(server.xds_address, credentials, node(node_id, "edge"), secret)
        return out

    results = asyncio.run(all_attacks())
    assert {what: got for what, (_, got) in results.items()} == {what: [] for what in attempts}
    codes = {what: code for what, (code, _) in results.items()}
    assert codes == {
        "plain text": grpc.StatusCode.UNAVAILABLE,
        "TLS without a client certificate": grpc.StatusCode.UNAVAILABLE,
        "a certificate from another CA": grpc.StatusCode.UNAVAILABLE,
        "another group's identity": grpc.StatusCode.PERMISSION_DENIED,
        "the gateway identity with a foreign node id": grpc.StatusCode.PERMISSION_DENIED,
    }
    assert refused(server) == {"group_not_admitted": 1.0, "node_not_admitted": 1.0}
    assert [p["node_id"] for p in server.proxies()] == ["edge-1"]
    assert server.stop() == 0, server.log()
    assert token not in server.log()


def test_48_unadmitted_streams_change_no_limit(
    tmp_path: Path, policy_dir: Path, secured: Callable[..., Spillover], certificates: Certificates,
    envoy_factory: Callable[..., Envoy], upstream_factory: Callable[..., HttpUpstream],
    spillover_factory: Callable[..., Spillover], edge_factory: Callable[..., Envoy],
) -> None:
    """The issue's figure: 48 fake streams joining the group cut the limit from 62 to 2 req/s."""
    pod = upstream_factory("pod")
    write(policy_dir / "llama.yaml", model_deployment("llama", [pod.address], rps=62))
    server = secured(policy_dir)
    envoy = start_mtls_edge(envoy_factory, server, tmp_path, certificates.pki, "edge-1", GATEWAY_ID)
    wait_until(lambda: envoy_bucket(envoy) == [_bucket(62)], timeout=10, message="62 req/s for one Envoy")

    async def flood(address: str, credentials_of: Callable[[int], Any], node_of: Callable[[int], Any]) -> list[Any]:
        clients = [
            AdsClient(address, credentials=credentials_of(i)) if credentials_of(i) is not None else AdsClient(address)
            for i in range(48)
        ]
        for i, client in enumerate(clients):
            client.send(node=node_of(i), type_url=CLUSTER)
        codes = []
        for client in clients:
            codes.append(await client.ended(timeout=10))
        for client in clients:
            await client.close()
        return codes

    kinds = [certificates.client(OTHER_ID), certificates.anonymous(), certificates.client(GATEWAY_ID)]
    codes = asyncio.run(flood(
        server.xds_address, lambda i: kinds[i % 3],
        lambda i: node(f"edge-{i}" if i % 3 != 2 else f"fake-{i}", "edge"),
    ))
    assert codes.count(grpc.StatusCode.PERMISSION_DENIED) == 32 and codes.count(grpc.StatusCode.UNAVAILABLE) == 16
    assert refused(server) == {"group_not_admitted": 16.0, "node_not_admitted": 16.0}
    # A changed replica count would be pushed within the debounce; the limit and the pushed config stay.
    wait_until(lambda: server.metric("spillover_xds_pushes_total") >= 1, message="pushes counted")
    pushes = server.metric("spillover_xds_pushes_total")
    assert envoy_bucket(envoy) == sent_bucket(server, "edge-1") == [_bucket(62)]
    assert [p["node_id"] for p in server.proxies()] == ["edge-1"]
    assert server.metric("spillover_xds_pushes_total") == pushes

    # The control: the same 48 streams on a plain-text loopback server without admission do count.
    open_dir = tmp_path / "open-policies"
    open_dir.mkdir()
    write(open_dir / "llama.yaml", model_deployment("llama", [pod.address], rps=62))
    plain = spillover_factory(open_dir, name="open")
    plain_envoy = edge_factory(plain, "edge-1")
    clients: list[AdsClient] = []

    async def join() -> None:
        for i in range(48):
            client = AdsClient(plain.xds_address)
            client.send(node=node(f"edge-{100 + i}", "edge"), type_url=CLUSTER)
            clients.append(client)
            await client.recv()

    async def leave() -> None:
        for client in clients:
            await client.close()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(join())
        # 62/49 = 1.27 req/s: a bucket of 2 tokens refilled one at a time every 0.79 s.
        wait_until(
            lambda: [(b["max_tokens"], b["tokens_per_fill"]) for b in envoy_bucket(plain_envoy)] == [(2, 1)],
            timeout=10, message="62/49 req/s without admission",
        )
        loop.run_until_complete(leave())
    finally:
        loop.close()


def _bucket(rps: int) -> dict[str, Any]:
    return {"max_tokens": rps, "tokens_per_fill": rps, "fill_interval": "1s"}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_huge_node_metadata_is_refused_and_not_kept(
    policy_dir: Path, secured: Callable[..., Spillover], certificates: Certificates,
) -> None:
    write(policy_dir / "llama.yaml", model_deployment("llama", ["127.0.0.1:9"], rps=10))
    server = secured(policy_dir)
    assert server.proc is not None
    credentials = certificates.client(GATEWAY_ID)

    async def send(size: int, times: int) -> list[Any]:
        codes = []
        for i in range(times):
            client = AdsClient(server.xds_address, credentials=credentials)
            client.send(node=node(f"edge-{i}", "edge", blob="x" * size), type_url=CLUSTER)
            codes.append(await client.ended(timeout=20))
            await client.close()
        return codes

    # Warm up with the same refusals as measured (TLS, parsing, logging, gRPC's buffers, and the allocator's
    # arenas of every thread that reads): what must not grow is what repeated refusals leave behind, not the
    # first round's high-water mark. Kept, each 10 MB one would cost ~28 MB.
    warm = [*asyncio.run(send(100 * 1024, 2))]
    for _ in range(2):
        warm += [*asyncio.run(send(10 * 1024 * 1024, 10)), *asyncio.run(send(1024 * 1024, 10))]
    assert set(warm) == {grpc.StatusCode.RESOURCE_EXHAUSTED}, warm
    before = _rss_kib(server.proc.pid)
    ten_mb = asyncio.run(send(10 * 1024 * 1024, 10))
    one_mb = asyncio.run(send(1024 * 1024, 10))
    after = _rss_kib(server.proc.pid)
    print(f"RSS of spillover serve: {before} KiB before, {after} KiB after 10 x 10 MB and 10 x 1 MB node metadata")
    assert set(ten_mb) == set(one_mb) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    # The 1 MB ones (and the warm-up's 100 KB and 1 MB) by spillover's own bound; gRPC refused the 10 MB ones unread.
    assert refused(server).get("node_limit") == 32, refused(server)
    assert after - before < 16 * 1024, (before, after)
    assert server.proxies() == []


def test_admin_debug_views_need_the_token_and_status_sends_it(
    tmp_path: Path, policy_dir: Path, secured: Callable[..., Spillover], certificates: Certificates,
) -> None:
    write(policy_dir / "llama.yaml", model_deployment("llama", ["127.0.0.1:9"], rps=10))
    server = secured(policy_dir)
    from tests.harness.client import request

    for path in ("/healthz", "/readyz", "/metrics"):
        assert request("GET", server.admin + path).status == 200, path
    for path in ("/debug/proxies", "/debug/config?node=x", "/debug/models"):
        response = request("GET", server.admin + path)
        assert response.status == 401 and response.headers["www-authenticate"].startswith("Bearer"), path
        wrong = request("GET", server.admin + path, headers={"Authorization": "Bearer not-the-token-at-all"})
        assert wrong.status == 401
    assert server.get("/debug/models").status == 200

    # An admitted client NACKs with text that would forge lines in a terminal.
    async def nack() -> AdsClient:
        client = AdsClient(server.xds_address, credentials=certificates.client(GATEWAY_ID))
        client.send(node=node("edge-7", "edge"), type_url=CLUSTER)
        client.nack(await client.recv(), "rejected\n\x1b[2Jforged row" + "z" * 5000)
        return client

    loop = asyncio.new_event_loop()
    try:
        client = loop.run_until_complete(nack())
        wait_until(lambda: server.proxies()[0]["status"] == "NACKED", message="NACK recorded")
        command = [sys.executable, "-m", "spillover", "status", "--admin-address", f"127.0.0.1:{server.admin_port}"]
        denied = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=REPO)
        assert denied.returncode == 1 and "answered 401" in denied.stderr
        token_file = tmp_path / "admin-token"
        shown = subprocess.run([*command, "--admin-token-file", str(token_file)], capture_output=True, text=True,
                               timeout=30, cwd=REPO)
        assert shown.returncode == 0, shown.stderr
        (line,) = [row for row in shown.stdout.splitlines() if row.startswith("NACK edge-7 CDS")]
        assert "rejected\\n\\x1b[2Jforged row" in line and "\x1b" not in shown.stdout and len(line) < 400
        loop.run_until_complete(client.close())
    finally:
        loop.close()


def test_the_controller_configs_admission_section_decides_and_a_file_overrides_it(
    tmp_path: Path, policy_dir: Path, certificates: Certificates, spillover_factory: Callable[..., Spillover],
) -> None:
    """`admission:` of `serve --config` is the xDS admission policy; `--admission FILE` wins over it."""
    write(policy_dir / "llama.yaml", model_deployment("llama", ["127.0.0.1:9"]))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"admission": {"rules": [
        {"name": "tenant-b", "identities": [OTHER_ID], "groups": ["other"]},
    ]}}))
    files = certificates.files
    args = [
        "--xds-tls-cert", str(files.cert), "--xds-tls-key", str(files.key), "--xds-client-ca", str(files.client_ca),
        "--config", str(config),
    ]

    async def outcome(address: str, identity: str, group: str) -> str:
        client = AdsClient(address, credentials=certificates.client(identity))
        try:
            client.send(node=node(f"{group}-1", group), type_url=CLUSTER)
            try:
                response = await client.recv(timeout=10)
            except grpc.aio.AioRpcError as error:
                return error.code().name
            return f"{len(response.resources)} clusters"
        finally:
            await client.close()

    by_config = spillover_factory(policy_dir, extra_args=args, name="by-config")
    assert asyncio.run(outcome(by_config.xds_address, OTHER_ID, "other")) == "1 clusters"
    assert asyncio.run(outcome(by_config.xds_address, GATEWAY_ID, "edge")) == "PERMISSION_DENIED"
    assert "xDS admission: 1 rules (tenant-b)" in by_config.log()
    assert by_config.stop() == 0, by_config.log()

    admission = tmp_path / "admission.yaml"
    admission.write_text(yaml.safe_dump(ADMISSION))
    by_file = spillover_factory(policy_dir, extra_args=[*args, "--admission", str(admission)], name="by-file")
    assert asyncio.run(outcome(by_file.xds_address, GATEWAY_ID, "edge")) == "1 clusters"
    assert "xDS admission: 2 rules (gateways, tenant-b)" in by_file.log()
    assert by_file.stop() == 0, by_file.log()


def test_plain_text_xds_off_loopback_needs_the_flag(policy_dir: Path) -> None:
    write(policy_dir / "llama.yaml", model_deployment("llama", ["127.0.0.1:9"]))
    command = [
        sys.executable, "-m", "spillover", "serve", "--policies", str(policy_dir),
        "--xds-address", f"0.0.0.0:{free_port()}", "--admin-address", f"127.0.0.1:{free_port()}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=REPO)
    assert result.returncode == 2
    assert "--insecure-xds" in result.stderr and "--xds-tls-cert" in result.stderr
