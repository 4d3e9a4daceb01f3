"""The harness tested against the real things it drives: Envoy, sockets, TLS, a gRPC ADS endpoint."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from spillover.translate.bootstrap import build_bootstrap, static_bootstrap
from tests.harness import client
from tests.harness.configs import http_proxy_listener, static_cluster, static_proxy_resources
from tests.harness.envoy import Envoy
from tests.harness.polling import async_wait_until, wait_until
from tests.harness.ports import free_port
from tests.harness.upstream import (
    HttpsUpstream,
    HttpUpstream,
    make_self_signed_ca_and_cert,
)

# -- polling --------------------------------------------------------------------------------------


def test_wait_until_returns_the_truthy_value() -> None:
    calls: Iterator[object] = iter([0, None, [], {"ok": 1}])
    assert wait_until(lambda: next(calls), timeout=5, interval=0.001) == {"ok": 1}


def test_wait_until_reports_message_and_last_value() -> None:
    with pytest.raises(AssertionError, match=r"upstream never ready.*last value: \[\]"):
        wait_until(lambda: [], timeout=0.1, interval=0.01, message="upstream never ready")


def test_wait_until_treats_exceptions_as_not_yet_and_reports_the_last() -> None:
    state = {"n": 0}

    def flaky() -> str:
        state["n"] += 1
        if state["n"] < 3:
            raise ConnectionRefusedError("not yet")
        return "up"

    assert wait_until(flaky, timeout=5, interval=0.001) == "up"
    with pytest.raises(AssertionError, match="ConnectionRefusedError: never"):
        wait_until(lambda: (_ for _ in ()).throw(ConnectionRefusedError("never")), timeout=0.1, interval=0.01)


def test_wait_until_honours_the_deadline() -> None:
    start = time.monotonic()
    with pytest.raises(AssertionError):
        wait_until(lambda: False, timeout=0.3, interval=0.05)
    assert 0.3 <= time.monotonic() - start < 2.0


async def test_async_wait_until_accepts_sync_and_async_predicates() -> None:
    ticks = {"n": 0}

    async def async_predicate() -> int:
        ticks["n"] += 1
        return ticks["n"] if ticks["n"] >= 3 else 0

    assert await async_wait_until(async_predicate, timeout=5, interval=0.001) == 3
    assert await async_wait_until(lambda: "sync", timeout=5) == "sync"
    with pytest.raises(AssertionError, match="never true"):
        await async_wait_until(async_predicate_false, timeout=0.1, interval=0.01, message="never true")


async def async_predicate_false() -> bool:
    await asyncio.sleep(0)
    return False


# -- ports ------------------------------------------------------------------------------------------


def test_free_port_is_bindable_on_loopback() -> None:
    port = free_port()
    assert 1 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_free_port_never_hands_out_a_port_twice_in_a_row_of_calls() -> None:
    # A server's xDS and admin ports are taken one after the other before it binds either: the kernel's
    # random pick once gave both the same port (CI-like run, "address already in use"). 2,000 picks in a
    # ~28,000-port range repeat dozens of times by chance alone, so this fails without the guard.
    ports = [free_port() for _ in range(2000)]
    assert len(set(ports)) == len(ports)


# -- upstreams --------------------------------------------------------------------------------------


def test_upstream_echoes_requests_and_counts_them(upstream_factory: Callable[..., HttpUpstream]) -> None:
    up = upstream_factory("alpha")
    assert up.address == f"127.0.0.1:{up.port}" and up.port > 0
    resp = client.request("POST", f"{up.url}/v1/chat?x=1", body={"model": "m1"}, headers={"X-Test": "yes"})
    assert resp.status == 200
    assert resp.headers["x-upstream-name"] == "alpha"
    echoed = resp.json()
    assert echoed["upstream"] == "alpha"
    assert echoed["method"] == "POST"
    assert echoed["path"] == "/v1/chat?x=1"
    assert echoed["headers"]["x-test"] == "yes"
    assert json.loads(echoed["body"]) == {"model": "m1"}
    assert client.request("GET", f"{up.url}/").json()["body"] == ""
    assert up.request_count == 2
    assert [r["method"] for r in up.requests] == ["POST", "GET"]
    up.reset()
    assert up.request_count == 0 and up.requests == []


def test_upstream_keep_alive_and_chunked_request_body(upstream_factory: Callable[..., HttpUpstream]) -> None:
    up = upstream_factory("keepalive")
    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=5)
    try:
        conn.request("GET", "/one")
        first = conn.getresponse()
        first.read()
        sock = conn.sock
        conn.request("POST", "/two", body=iter([b"hel", b"lo"]), encode_chunked=True)
        second = conn.getresponse()
        body = json.loads(second.read())
        assert conn.sock is sock, "the server closed a keep-alive connection"
    finally:
        conn.close()
    assert first.status == second.status == 200
    assert body["body"] == "hello"
    assert body["headers"]["transfer-encoding"] == "chunked"


def test_upstream_serves_concurrent_requests(upstream_factory: Callable[..., HttpUpstream]) -> None:
    up = upstream_factory("slow", delay_s=1.0)
    start = time.monotonic()
    with futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: client.request("GET", up.url).status, range(8)))
    elapsed = time.monotonic() - start
    assert statuses == [200] * 8
    # Serially this would take 8 s; anything near 1 s means the requests overlapped.
    assert elapsed < 4.0, elapsed


def test_upstream_settings_change_at_run_time(upstream_factory: Callable[..., HttpUpstream]) -> None:
    up = upstream_factory("mutable")
    up.status = 503
    assert client.request("GET", up.url).status == 503
    up.status = 200
    assert client.request("GET", up.url).status == 200
    assert client.request("GET", up.url, headers={"x-upstream-status": "429"}).status == 429
    up.delay_s = 0.3
    start = time.monotonic()
    assert client.request("GET", up.url).status == 200
    assert time.monotonic() - start >= 0.3


def test_upstream_stop_refuses_connections_and_restarts_on_same_port() -> None:
    up = HttpUpstream("restartable").start()
    try:
        port = up.port
        assert client.request("GET", up.url).status == 200
        up.stop()
        up.stop()
        with pytest.raises(ConnectionRefusedError):
            client.request("GET", f"http://127.0.0.1:{port}/", timeout=2)
        up.start()
        assert up.port == port
        assert client.request("GET", up.url).json()["upstream"] == "restartable"
    finally:
        up.stop()


def test_upstream_stop_cuts_idle_keep_alive_connections() -> None:
    up = HttpUpstream("cut").start()
    conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=5)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        up.stop()
        # A peer that closed shows up as EOF (b"") on the idle connection.
        assert wait_until(lambda: conn.sock.recv(1) == b"", timeout=5, message="connection not closed")
    finally:
        conn.close()
        up.stop()


def test_https_upstream_with_ca_verification_and_sni(tmp_path: Path) -> None:
    ca, cert, key = make_self_signed_ca_and_cert(tmp_path, "api.remote.test")
    up = HttpsUpstream("remote", cert, key).start()
    try:
        assert up.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(ca))
        conn = http.client.HTTPSConnection("127.0.0.1", up.port, timeout=5, context=ctx)
        # Connect to the loopback IP but verify (and send SNI) as the certificate's hostname.
        conn.sock = ctx.wrap_socket(
            socket.create_connection(("127.0.0.1", up.port), timeout=5), server_hostname="api.remote.test"
        )
        conn.request("GET", "/secure")
        resp = conn.getresponse()
        body = json.loads(resp.read())
        conn.close()
        assert resp.status == 200
        assert body["upstream"] == "remote" and body["sni"] == "api.remote.test"
        # The wrong name must fail verification: the SAN holds only the requested hostname.
        with pytest.raises(ssl.SSLCertVerificationError):
            ctx.wrap_socket(
                socket.create_connection(("127.0.0.1", up.port), timeout=5), server_hostname="other.test"
            ).close()
    finally:
        up.stop()


# -- Envoy --------------------------------------------------------------------------------------------


def test_envoy_proxies_real_requests_to_the_upstream(
    envoy_factory: Callable[..., Envoy], upstream_factory: Callable[..., HttpUpstream]
) -> None:
    up = upstream_factory("backend-a")
    listener_port = free_port()
    bootstrap = static_bootstrap(
        "edge-1", "edge", free_port(), static_proxy_resources(listener_port, [up.address])
    )
    envoy = envoy_factory(bootstrap, name="edge")
    assert envoy.is_running()
    wait_until(envoy.is_ready, timeout=10, message="envoy never LIVE")

    for i in range(5):
        resp = client.request("POST", f"http://127.0.0.1:{listener_port}/v1/x/{i}", body={"i": i})
        assert resp.status == 200, resp.text
        echoed = resp.json()
        assert echoed["upstream"] == "backend-a"
        assert echoed["path"] == f"/v1/x/{i}"
        assert json.loads(echoed["body"]) == {"i": i}
        # Present only if the request really crossed Envoy's router.
        assert "x-request-id" in echoed["headers"]
        assert echoed["headers"]["x-envoy-expected-rq-timeout-ms"] == "15000"
    assert up.request_count == 5

    stats = wait_until(
        lambda: (s := envoy.stats()).get("cluster.backend.upstream_rq_200") == 5 and s,
        timeout=10,
        message="cluster stats never reached 5",
    )
    assert stats["http.ingress.downstream_rq_completed"] >= 5
    assert envoy.stat("cluster.backend.upstream_rq_total") == 5
    assert envoy.stat("no.such.stat") is None
    assert envoy.cluster_endpoint_hosts("backend") == [up.address]
    assert envoy.cluster_endpoint_hosts("nope") == []
    assert envoy.server_info()["node"]["id"] == "edge-1"
    static_listeners = envoy.config_dump("static_listeners")["configs"]
    assert [c["listener"]["name"] for c in static_listeners] == ["ingress"]
    assert envoy.listener_names() == [] and envoy.cluster_names() == []


def test_envoy_stop_ends_the_process(envoy_factory: Callable[..., Envoy], tmp_path: Path) -> None:
    envoy = envoy_factory(static_bootstrap("n1", "c", free_port(), {}), name="stopper")
    pid = envoy.pid
    assert pid is not None and Path(f"/proc/{pid}").exists()
    envoy.stop()
    assert not envoy.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert envoy.stop() == envoy.returncode  # idempotent
    with pytest.raises(OSError):
        envoy.admin_get("/ready")


def test_several_envoys_at_once_and_admin_port_zero(envoy_factory: Callable[..., Envoy]) -> None:
    first = envoy_factory(static_bootstrap("a", "c", 0, {}), name="one")
    second = envoy_factory(static_bootstrap("b", "c", 0, {}), name="two")
    assert first.admin_port and second.admin_port and first.admin_port != second.admin_port
    assert first.server_info()["node"]["id"] == "a"
    assert second.server_info()["node"]["id"] == "b"


def test_envoy_start_failure_reports_the_log(tmp_path: Path) -> None:
    bad = static_bootstrap("n1", "c", free_port(), {"clusters": [{"name": "x", "type": "NOT_A_TYPE"}]})
    envoy = Envoy(bad, tmp_path, name="broken")
    with pytest.raises(RuntimeError, match=r"exited with code \d+ during start(.|\n)*NOT_A_TYPE"):
        envoy.start(timeout=20)
    assert not envoy.is_running()
    envoy.stop()


def test_envoy_helpers_read_dynamic_sections(
    envoy_factory: Callable[..., Envoy], upstream_factory: Callable[..., HttpUpstream], tmp_path: Path
) -> None:
    # Filesystem xDS puts resources in the dynamic_active_* sections without needing a control plane.
    up = upstream_factory("dyn")
    listener_port = free_port()
    config_dir = tmp_path / "xds"
    config_dir.mkdir()

    def discovery(type_name: str, resources: list[dict]) -> str:
        type_url = f"type.googleapis.com/envoy.config.{type_name}"
        return json.dumps({"resources": [{"@type": type_url, **r} for r in resources]})

    (config_dir / "cds.json").write_text(
        discovery("cluster.v3.Cluster", [static_cluster("dyn-cluster", [up.address])])
    )
    (config_dir / "lds.json").write_text(
        discovery("listener.v3.Listener", [http_proxy_listener("dyn-listener", listener_port, "dyn-cluster")])
    )
    bootstrap = static_bootstrap("n1", "c", free_port(), {})
    bootstrap["dynamic_resources"] = {
        kind: {
            "path_config_source": {"path": str(config_dir / f"{kind[:3]}.json")},
            "resource_api_version": "V3",
        }
        for kind in ("cds_config", "lds_config")
    }
    envoy = envoy_factory(bootstrap, name="fs-xds")
    wait_until(envoy.is_ready, timeout=10, message="envoy never LIVE")
    assert wait_until(envoy.listener_names, timeout=10) == ["dyn-listener"]
    assert envoy.cluster_names() == ["dyn-cluster"]
    assert envoy.cluster_endpoint_hosts("dyn-cluster") == [up.address]
    assert client.request("GET", f"http://127.0.0.1:{listener_port}/hello").json()["upstream"] == "dyn"


# -- the ADS wiring of the generated bootstrap, against nothing and against a real gRPC server ---------


def test_ads_envoy_without_control_plane_stays_up_disconnected(envoy_factory: Callable[..., Envoy]) -> None:
    dead_port = free_port()
    bootstrap = build_bootstrap(
        "lonely", "edge", f"127.0.0.1:{dead_port}", admin_port=free_port(), xds_connect_timeout_s=0.25
    )
    envoy = envoy_factory(bootstrap, name="lonely")
    # connected_state flips to 1 for an instant on each retry, so read both stats from one snapshot.
    stats = wait_until(
        lambda: (
            (s := envoy.stats()).get("cluster.spillover_xds.upstream_cx_connect_fail", 0) >= 1
            and s.get("control_plane.connected_state") == 0
            and s
        ),
        timeout=15,
        message="envoy never tried (and failed) to reach the control plane",
    )
    assert stats["control_plane.connected_state"] == 0
    assert envoy.is_running()
    assert envoy.listener_names() == [] and envoy.cluster_names() == []


class _RecordingAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """A real gRPC ADS endpoint that records requests and never answers: enough to see Envoy connect."""

    def __init__(self) -> None:
        self.sotw: list[discovery_pb2.DiscoveryRequest] = []
        self.delta: list[discovery_pb2.DeltaDiscoveryRequest] = []
        self.lock = threading.Lock()

    def StreamAggregatedResources(self, request_iterator, context):
        for request in request_iterator:
            with self.lock:
                self.sotw.append(request)
        yield from ()

    def DeltaAggregatedResources(self, request_iterator, context):
        for request in request_iterator:
            with self.lock:
                self.delta.append(request)
        yield from ()


@pytest.fixture
def recording_ads() -> Iterator[tuple[_RecordingAds, int]]:
    servicer = _RecordingAds()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(grace=0).wait(5)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_ads_envoy_connects_and_subscribes(
    envoy_factory: Callable[..., Envoy], recording_ads: tuple[_RecordingAds, int], delta: bool
) -> None:
    servicer, port = recording_ads
    bootstrap = build_bootstrap("node-7", "edge", f"127.0.0.1:{port}", admin_port=free_port(), delta=delta)
    envoy = envoy_factory(bootstrap, name="connected")
    wait_until(
        lambda: envoy.stat("control_plane.connected_state") == 1, timeout=15, message="never connected"
    )

    def requests() -> list:
        with servicer.lock:
            return list(servicer.delta if delta else servicer.sotw)

    # CDS comes first on a fresh ADS stream; LDS follows once CDS is answered (we never answer).
    first = wait_until(requests, timeout=10, message="no discovery request on the stream")[0]
    assert first.type_url == "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    assert first.node.id == "node-7" and first.node.cluster == "edge"
    assert (servicer.sotw == []) if delta else (servicer.delta == [])


def test_upstream_accepts_a_burst_of_new_connections_at_once() -> None:
    """A route switching to a new cluster makes Envoy open many connections to it at once; with
    socketserver's default backlog of 5 the kernel dropped SYNs and connects took 1 s (Envoy's connect
    timeout in the xDS tests), which showed up as a 503 UF in the make-before-break test."""
    upstream = HttpUpstream("burst").start()
    slow: list[float] = []
    lock = threading.Lock()

    def connect() -> None:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", upstream.port), timeout=5):
            took = time.monotonic() - started
            time.sleep(0.3)  # held open, as Envoy's pool does, so later connects queue behind it
        if took > 0.5:
            with lock:
                slow.append(took)

    try:
        for _ in range(3):
            threads = [threading.Thread(target=connect) for _ in range(64)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        upstream.stop()
    assert not slow, f"{len(slow)} connects waited for a SYN retransmit: {slow[:5]}"
