"""DestinationSource without a cluster behind it: what a kubeconfig that cannot be used, a server that does not
answer, or too many clusters look like to the rest of spillover (and that none of it shows the kubeconfig)."""

from __future__ import annotations

import base64
import logging
from dataclasses import replace

import pytest
import yaml
from pydantic import SecretStr

from spillover.sources.destination.source import DestinationOptions, DestinationSource
from spillover.sources.kube.destinations import CopyClaim, SecretKey
from tests.harness.copy_claims import LOCATION, claim
from tests.harness.polling import wait_until
from tests.harness.ports import free_port

TOKEN = "source-test-token-8c1f"


def kubeconfig(port: int, token: str = TOKEN) -> SecretStr:
    pem = "-----BEGIN CERTIFICATE-----\nMIIBdummy\n-----END CERTIFICATE-----\n"
    return SecretStr(yaml.safe_dump({
        "clusters": [{"name": "b", "cluster": {"server": f"https://127.0.0.1:{port}",
                                               "certificate-authority-data": base64.b64encode(pem.encode()).decode()}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "b", "user": "u"}}], "current-context": "c"}))


@pytest.fixture
def source() -> DestinationSource:
    return DestinationSource(DestinationOptions(probe_interval=0.1, probe_timeout=0.5, unreachable_after=1.0,
                                                max_clusters=1))


def test_a_server_that_refuses_is_unreachable_and_its_address_is_not_told(
    source: DestinationSource, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()  # nothing listens there
    c = claim()
    try:
        source.want({"k": c}, {LOCATION.kubeconfig: kubeconfig(port)})
        observation = source.observe(c, LOCATION)
        assert not observation.reachable
        connection = source.connection(LOCATION)
        assert connection is not None
        assert connection.health(LOCATION.namespace)[2] or "cannot connect" in connection.health(LOCATION.namespace)[1]
        # Until it answers: connecting (pending, not a failure); once the probe failed: unreachable.
        wait_until(lambda: "cannot connect" in connection.health(LOCATION.namespace)[1], timeout=5)
        assert connection.health(LOCATION.namespace)[2] is False
        error = source.observe(c, LOCATION).error
        assert error.startswith("destination cluster unreachable (kubeconfig from Secret ml/cluster-b): "), error
        assert str(port) not in error
    finally:
        source.close()
    # spillover's own lines at any level, and everyone's warnings (urllib3's debug lines name the hosts it
    # connects to, like any HTTP client's; never a header).
    told = "\n".join(r.getMessage() for r in caplog.records
                     if r.name.startswith("spillover") or r.levelno >= logging.WARNING)
    assert TOKEN not in caplog.text
    assert f"127.0.0.1:{port}" not in told and str(port) not in told


def test_what_cannot_be_used_says_why(source: DestinationSource) -> None:
    c = claim()
    try:
        source.want({"k": c}, {})
        assert source.observe(c, LOCATION).error == 'reading the kubeconfig from Secret ml/cluster-b key "kubeconfig"'
        source.want({"k": c}, {LOCATION.kubeconfig: 'Secret ml/cluster-b has no key "kubeconfig"'})
        assert source.observe(c, LOCATION).error == (
            'cannot read the kubeconfig: Secret ml/cluster-b has no key "kubeconfig"')
        source.want({"k": c}, {LOCATION.kubeconfig: SecretStr(f"token: {TOKEN}\n")})
        error = source.observe(c, LOCATION).error
        assert error == 'the kubeconfig in Secret ml/cluster-b key "kubeconfig": contexts: must be a non-empty list'
        assert source.connections == []
    finally:
        source.close()


def test_the_number_of_clusters_is_bounded(source: DestinationSource) -> None:
    first = claim()
    other_ref = SecretKey("ml", "cluster-c", "kubeconfig")
    wanted = first.wanted
    assert wanted is not None
    second: CopyClaim = replace(first, name="other", uid="uid-2",
                                wanted=replace(wanted, location=replace(LOCATION, kubeconfig=other_ref)))
    try:
        source.want({"a": first, "b": second},
                    {LOCATION.kubeconfig: kubeconfig(free_port()), other_ref: kubeconfig(free_port(), "t2")})
        assert len(source.connections) == 1
        assert source.observe(second, replace(LOCATION, kubeconfig=other_ref)).error == (
            "too many destination clusters (at most 1)")
        # The same kubeconfig in two Secrets is one cluster, one connection.
        source.want({"a": first, "b": second},
                    {LOCATION.kubeconfig: kubeconfig(7), other_ref: kubeconfig(7)})
        assert len(source.connections) == 1 and source.observe(second, replace(LOCATION, kubeconfig=other_ref)).error \
            != "too many destination clusters (at most 1)"
        source.want({}, {})
        assert source.connections == []
    finally:
        source.close()
