"""The bootstrap generator: Envoy itself must accept what it produces; bad input is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spillover.bootstrap import (
    XDS_CLUSTER_NAME,
    build_bootstrap,
    parse_host_port,
    render_bootstrap_yaml,
    static_bootstrap,
)
from tests.harness.configs import static_proxy_resources
from tests.harness.envoy import Envoy


def _xds_cluster(bootstrap: dict) -> dict:
    (cluster,) = bootstrap["static_resources"]["clusters"]
    assert cluster["name"] == XDS_CLUSTER_NAME
    return cluster


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
@pytest.mark.parametrize("xds_address", ["127.0.0.1:18000", "spillover.system.svc:18000", "[::1]:18000"])
def test_ads_bootstrap_passes_envoy_validate(tmp_path: Path, delta: bool, xds_address: str) -> None:
    bootstrap = build_bootstrap("node-1", "edge", xds_address, delta=delta, xds_connect_timeout_s=0.25)
    result = Envoy.validate(bootstrap, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout

    ads = bootstrap["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == ("DELTA_GRPC" if delta else "GRPC")
    assert ads["grpc_services"] == [{"envoy_grpc": {"cluster_name": XDS_CLUSTER_NAME}}]
    assert ads["set_node_on_first_message_only"] is True
    for key in ("cds_config", "lds_config"):
        assert bootstrap["dynamic_resources"][key] == {"ads": {}, "resource_api_version": "V3"}
    cluster = _xds_cluster(bootstrap)
    assert cluster["connect_timeout"] == "0.25s"
    http2 = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert set(http2["explicit_http_config"]["http2_protocol_options"]["connection_keepalive"]) == {
        "interval",
        "timeout",
    }


def test_validate_rejects_a_broken_bootstrap(tmp_path: Path) -> None:
    # Guards the test above: if validate accepted anything, "passes validate" would prove nothing.
    bootstrap = build_bootstrap("node-1", "edge", "127.0.0.1:18000")
    bootstrap["dynamic_resources"]["ads_config"]["api_type"] = "CARRIER_PIGEON"
    result = Envoy.validate(bootstrap, tmp_path)
    assert result.returncode != 0


def test_cluster_type_follows_host_kind() -> None:
    ip = _xds_cluster(build_bootstrap("n1", "c", "10.0.0.7:18000"))
    assert ip["type"] == "STATIC"
    assert ip["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "10.0.0.7", "port_value": 18000}
    }
    dns = _xds_cluster(build_bootstrap("n1", "c", "spillover.svc.cluster.local:443"))
    assert dns["type"] == "STRICT_DNS"
    v6 = _xds_cluster(build_bootstrap("n1", "c", "[fd00::1]:18000"))
    assert v6["type"] == "STATIC"
    assert v6["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "fd00::1", "port_value": 18000}
    }


def test_admin_and_node() -> None:
    bootstrap = build_bootstrap(
        "pod-a", "edge-fleet", "127.0.0.1:1", admin_port=19000, admin_address="0.0.0.0"
    )
    assert bootstrap["node"] == {
        "id": "pod-a",
        "cluster": "edge-fleet",
        "metadata": {"spillover.admin_port": 19000},
    }
    assert bootstrap["admin"] == {"address": {"socket_address": {"address": "0.0.0.0", "port_value": 19000}}}


@pytest.mark.parametrize(
    "xds_address",
    [
        "",
        "localhost",
        "localhost:",
        ":18000",
        "localhost:0",
        "localhost:65536",
        "localhost:http",
        "localhost:-1",
        "::1:18000",
        "[::1]18000",
        "[not-v6]:18000",
        " localhost:18000",
        "local host:18000",
        None,
        18000,
    ],
)
def test_bad_xds_address_is_refused_by_name(xds_address: object) -> None:
    with pytest.raises(ValueError, match=r"xds_address must be 'host:port'.*port in 1-65535"):
        build_bootstrap("n1", "c", xds_address)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"node_id": ""}, "node_id"),
        ({"cluster": "  "}, "cluster"),
        ({"admin_port": 70000}, "admin_port"),
        ({"admin_port": -1}, "admin_port"),
        ({"admin_address": "localhost"}, "admin_address"),
        ({"xds_connect_timeout_s": 0}, "xds_connect_timeout_s"),
        ({"xds_connect_timeout_s": float("nan")}, "xds_connect_timeout_s"),
        ({"xds_connect_timeout_s": "1s"}, "xds_connect_timeout_s"),
    ],
)
def test_other_bad_arguments_are_refused_by_name(kwargs: dict, field: str) -> None:
    args = {"node_id": "n1", "cluster": "c", "xds_address": "127.0.0.1:18000", **kwargs}
    with pytest.raises(ValueError, match=field):
        build_bootstrap(**args)


def test_parse_host_port() -> None:
    assert parse_host_port("a.b:1") == ("a.b", 1)
    assert parse_host_port("[::1]:65535") == ("::1", 65535)
    with pytest.raises(ValueError, match="remote_address"):
        parse_host_port("nope", "remote_address")


@pytest.mark.parametrize(
    ("seconds", "text"), [(1, "1s"), (1.0, "1s"), (0.25, "0.25s"), (2.5, "2.5s"), (0.001, "0.001s")]
)
def test_connect_timeout_is_protobuf_duration_text(seconds: float, text: str) -> None:
    assert (
        _xds_cluster(build_bootstrap("n1", "c", "127.0.0.1:1", xds_connect_timeout_s=seconds))[
            "connect_timeout"
        ]
        == text
    )


def test_yaml_is_stable_and_round_trips() -> None:
    args = {"node_id": "n1", "cluster": "c", "xds_address": "xds.example:18000", "delta": True}
    first = render_bootstrap_yaml(**args)
    assert first == render_bootstrap_yaml(**args)
    assert yaml.safe_load(first) == build_bootstrap(**args)
    assert "&id" not in first and "*id" not in first
    # Construction order, not alphabetical: node first reads naturally and diffs stay small.
    assert first.splitlines()[0] == "node:"


def test_yaml_quotes_words_envoy_reads_as_booleans(tmp_path: Path) -> None:
    # Envoy's yaml-cpp reads a bare `n` or `y` as a boolean and then refuses it for node.id.
    bootstrap = build_bootstrap("n", "y", "127.0.0.1:18000")
    text = render_bootstrap_yaml("n", "y", "127.0.0.1:18000")
    assert 'id: "n"' in text and 'cluster: "y"' in text
    result = Envoy.validate(bootstrap, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_static_bootstrap_passes_envoy_validate(tmp_path: Path) -> None:
    bootstrap = static_bootstrap("n1", "c", 19001, static_proxy_resources(18080, ["127.0.0.1:18081"]))
    assert "dynamic_resources" not in bootstrap
    result = Envoy.validate(bootstrap, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    with pytest.raises(ValueError, match="static_resources"):
        static_bootstrap("n1", "c", 19001, [])  # type: ignore[arg-type]
