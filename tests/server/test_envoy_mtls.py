"""Real Envoys on mTLS xDS, bootstrapped by `spillover bootstrap`'s TLS output (the xDS cluster reads its
client certificate and spillover's CA through watched SDS files): they connect, are admitted by identity,
verify spillover's certificate, and pick up a rotated client certificate without a restart."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from spillover.server.admission import admission_from_mapping
from spillover.server.service import XdsOptions
from spillover.translate.bootstrap import XdsTls, build_bootstrap, build_xds_tls_sds, dump_yaml
from tests.harness import envoyconfig as ec
from tests.harness.envoy import Envoy
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.secure_xds import GATEWAY_ID, OTHER_ID, Certificates
from tests.harness.upstream import HttpUpstream
from tests.harness.xds import XdsThread

pytestmark = pytest.mark.timeout(180)

GROUP = "edge"
ADMISSION = {
    "rules": [
        {"name": "gateways", "identities": [GATEWAY_ID, GATEWAY_ID + "-v2"], "groups": [GROUP], "nodeIds": ["gw-*"]},
    ]
}


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    return Certificates(tmp_path / "pki")


@pytest.fixture
def xds(certificates: Certificates) -> Iterator[XdsThread]:
    options = XdsOptions(
        tls=certificates.files, admission=admission_from_mapping(ADMISSION), tls_check_interval=0.05
    )
    server = XdsThread(debounce=0, options=options)
    try:
        server.start()
        yield server
    finally:
        server.close()


def envoy_tls_files(workdir: Path, certificates: Certificates, identity: str, server_name: str = "localhost") -> XdsTls:
    """The Envoy side as a pod has it: a TLS Secret volume (tls.crt, tls.key, ca.crt) and the SDS files."""
    from tests.harness.pki import write_secret_volume

    tls = XdsTls(tls_dir=str(workdir / "xds-tls"), sds_dir=str(workdir / "sds"), server_name=server_name)
    issued = certificates.pki.issue("gateway", uris=[identity], client=True)
    write_secret_volume(workdir / "xds-tls", certificates.pki.tls_secret(issued))
    (workdir / "sds").mkdir(parents=True, exist_ok=True)
    for name, document in build_xds_tls_sds(tls).items():
        (workdir / "sds" / name).write_text(dump_yaml(document))
    return tls


def start_envoy(
    factory: Callable[..., Envoy], xds: XdsThread, tls: XdsTls, node_id: str, wait: bool = True
) -> Envoy:
    envoy = factory(build_bootstrap(node_id, GROUP, xds.xds_address, admin_port=0, tls=tls), name=node_id)
    if wait:
        wait_until(envoy.is_ready, timeout=20, message=f"envoy {node_id} never became ready over mTLS")
    return envoy


def publish(xds: XdsThread, listener_port: int, upstream: HttpUpstream) -> None:
    xds.set_snapshot(
        GROUP,
        [
            ec.http_listener("ingress", "127.0.0.1", listener_port, "routes"),
            ec.weighted_route("routes", {"backend": 100}),
            ec.eds_cluster("backend"),
            ec.endpoints("backend", [("127.0.0.1", upstream.port)]),
        ],
    )


def served_by(port: int) -> str:
    from tests.harness import client

    response = client.request("GET", f"http://127.0.0.1:{port}/", timeout=5)
    return response.headers.get("x-upstream-name", "") if response.status == 200 else ""


def identities(xds: XdsThread) -> list[tuple[str, str]]:
    return [(p["node_id"], p["identity"]) for p in xds.proxies()]


def test_an_envoy_on_mtls_gets_its_config_and_rotates_its_certificate(
    tmp_path: Path, envoy_factory: Callable[..., Envoy], upstream_factory: Callable[..., HttpUpstream],
    xds: XdsThread, certificates: Certificates,
) -> None:
    upstream = upstream_factory("backend")
    listener_port = free_port()
    publish(xds, listener_port, upstream)
    tls = envoy_tls_files(tmp_path / "gw-1", certificates, GATEWAY_ID)
    envoy = start_envoy(envoy_factory, xds, tls, "gw-1")
    wait_until(lambda: served_by(listener_port) == "backend", timeout=15, message="traffic through the mTLS config")
    assert identities(xds) == [("gw-1", GATEWAY_ID)]
    assert envoy.stat("cluster.spillover_xds.ssl.handshake") >= 1  # type: ignore[operator]

    # cert-manager renews the certificate (a new identity, to tell them apart): the kubelet swaps the
    # Secret volume, Envoy's SDS file watch reloads it.
    from tests.harness.pki import write_secret_volume

    renewed = certificates.pki.issue("gateway", uris=[GATEWAY_ID + "-v2"], client=True)
    rotated_at = time.monotonic()
    write_secret_volume(Path(tls.tls_dir), certificates.pki.tls_secret(renewed))
    serial = format(renewed.serial, "x")
    wait_until(lambda: serial in envoy.admin_get("/certs").lower(), timeout=15, message="Envoy reloaded its cert")
    print(f"Envoy loaded its renewed client certificate {(time.monotonic() - rotated_at) * 1000:.0f} ms after the swap")
    # The open connection keeps the old one; the next connection (here: after a control-plane restart)
    # presents the renewed certificate.
    xds.restart()
    wait_until(lambda: identities(xds) == [("gw-1", GATEWAY_ID + "-v2")], timeout=20, message="reconnected as v2")
    assert served_by(listener_port) == "backend"


def test_an_identity_not_admitted_gets_nothing(
    tmp_path: Path, envoy_factory: Callable[..., Envoy], upstream_factory: Callable[..., HttpUpstream],
    xds: XdsThread, certificates: Certificates,
) -> None:
    publish(xds, free_port(), upstream_factory("backend"))
    tls = envoy_tls_files(tmp_path / "intruder", certificates, OTHER_ID)
    envoy = start_envoy(envoy_factory, xds, tls, "gw-9", wait=False)
    wait_until(
        lambda: xds.metric("spillover_xds_refused_streams_total", {"reason": "identity_not_admitted"}) >= 1,
        timeout=20, message="the intruding Envoy refused",
    )
    assert xds.proxies() == []
    assert envoy.cluster_names() == [] and not envoy.is_ready()


def test_envoy_refuses_a_control_plane_without_the_expected_name(
    tmp_path: Path, envoy_factory: Callable[..., Envoy], upstream_factory: Callable[..., HttpUpstream],
    xds: XdsThread, certificates: Certificates,
) -> None:
    """Envoy checks spillover's certificate for the DNS SAN it was given: an impostor with a certificate
    from the same CA but another name gets no connection (so no NACKs, no node metadata, nothing)."""
    publish(xds, free_port(), upstream_factory("backend"))
    tls = envoy_tls_files(tmp_path / "gw-2", certificates, GATEWAY_ID, server_name="spillover-xds.example")
    envoy = start_envoy(envoy_factory, xds, tls, "gw-2", wait=False)

    def verify_failures() -> Any:
        return envoy.stat("cluster.spillover_xds.ssl.fail_verify_san")

    assert wait_until(verify_failures, timeout=20, message="Envoy refused the server certificate's SAN")
    assert xds.proxies() == []
