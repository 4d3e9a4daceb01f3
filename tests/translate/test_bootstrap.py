"""The bootstrap generator: Envoy itself must accept what it produces; bad input is refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from spillover.translate.bootstrap import (
    SDS_FILES,
    XDS_CLUSTER_NAME,
    XdsTls,
    build_bootstrap,
    build_xds_tls_sds,
    dump_yaml,
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
@pytest.mark.parametrize("xds_address", ["127.0.0.1:24018", "spillover.system.svc:24018", "[::1]:24018"])
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


def test_with_the_splits_in_runtime_the_bootstrap_adds_the_rtds_layer(tmp_path: Path) -> None:
    bootstrap = build_bootstrap("node-1", "edge", "127.0.0.1:24018", split_weights="runtime")
    result = Envoy.validate(bootstrap, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    layers = bootstrap["layered_runtime"]["layers"]
    assert layers[0] == {
        "name": "spillover_split",
        "rtds_layer": {
            "name": "spillover_split",
            # Envoy waits for the layer as long as it takes: it never routes on the fallback weights.
            "rtds_config": {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "0s"},
        },
    }
    assert layers[1] == {"name": "admin", "admin_layer": {}}  # /runtime_modify still works
    assert "layered_runtime" not in build_bootstrap("node-1", "edge", "127.0.0.1:24018")
    with pytest.raises(ValueError, match="split_weights must be route or runtime"):
        build_bootstrap("node-1", "edge", "127.0.0.1:24018", split_weights="rtds")


def test_validate_rejects_a_broken_bootstrap(tmp_path: Path) -> None:
    # Guards the test above: if validate accepted anything, "passes validate" would prove nothing.
    bootstrap = build_bootstrap("node-1", "edge", "127.0.0.1:24018")
    bootstrap["dynamic_resources"]["ads_config"]["api_type"] = "CARRIER_PIGEON"
    result = Envoy.validate(bootstrap, tmp_path)
    assert result.returncode != 0


def test_cluster_type_follows_host_kind() -> None:
    ip = _xds_cluster(build_bootstrap("n1", "c", "10.0.0.7:24018"))
    assert ip["type"] == "STATIC"
    assert ip["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "10.0.0.7", "port_value": 24018}
    }
    dns = _xds_cluster(build_bootstrap("n1", "c", "spillover.svc.cluster.local:443"))
    assert dns["type"] == "STRICT_DNS"
    v6 = _xds_cluster(build_bootstrap("n1", "c", "[fd00::1]:24018"))
    assert v6["type"] == "STATIC"
    assert v6["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] == {
        "socket_address": {"address": "fd00::1", "port_value": 24018}
    }


def test_admin_and_node() -> None:
    bootstrap = build_bootstrap(
        "pod-a", "edge-fleet", "127.0.0.1:1", admin_port=24019, admin_address="0.0.0.0"
    )
    assert bootstrap["node"] == {
        "id": "pod-a",
        "cluster": "edge-fleet",
        "metadata": {"spillover.admin_port": 24019},
    }
    assert bootstrap["admin"] == {"address": {"socket_address": {"address": "0.0.0.0", "port_value": 24019}}}


@pytest.mark.parametrize(
    "xds_address",
    [
        "",
        "localhost",
        "localhost:",
        ":24018",
        "localhost:0",
        "localhost:65536",
        "localhost:http",
        "localhost:-1",
        "::1:24018",
        "[::1]24018",
        "[not-v6]:24018",
        " localhost:24018",
        "local host:24018",
        None,
        24018,
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
    args = {"node_id": "n1", "cluster": "c", "xds_address": "127.0.0.1:24018", **kwargs}
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
    args: dict[str, Any] = {"node_id": "n1", "cluster": "c", "xds_address": "xds.example:24018", "delta": True}
    first = render_bootstrap_yaml(**args)
    assert first == render_bootstrap_yaml(**args)
    assert yaml.safe_load(first) == build_bootstrap(**args)
    assert "&id" not in first and "*id" not in first
    # Construction order, not alphabetical: node first reads naturally and diffs stay small.
    assert first.splitlines()[0] == "node:"


def test_yaml_quotes_words_envoy_reads_as_booleans(tmp_path: Path) -> None:
    # Envoy's yaml-cpp reads a bare `n` or `y` as a boolean and then refuses it for node.id.
    bootstrap = build_bootstrap("n", "y", "127.0.0.1:24018")
    text = render_bootstrap_yaml("n", "y", "127.0.0.1:24018")
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


def _tls(tmp_path: Path) -> XdsTls:
    from tests.harness.pki import Pki

    pki = Pki()
    tls_dir = tmp_path / "xds-tls"
    tls_dir.mkdir()
    issued = pki.issue("gw", uris=["spiffe://td/sa/gw"], client=True)
    for name, content in pki.tls_secret(issued).items():
        (tls_dir / name).write_bytes(content)
    return XdsTls(tls_dir=str(tls_dir), sds_dir=str(tmp_path / "sds"), server_name="spillover-xds.system.svc")


def test_mtls_bootstrap_passes_envoy_validate(tmp_path: Path) -> None:
    tls = _tls(tmp_path)
    (tmp_path / "sds").mkdir()
    for name, document in build_xds_tls_sds(tls).items():
        (tmp_path / "sds" / name).write_text(dump_yaml(document))
    bootstrap = build_bootstrap("n1", "edge", "spillover-xds.system.svc:24018", tls=tls)
    result = Envoy.validate(bootstrap, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    socket = _xds_cluster(bootstrap)["transport_socket"]["typed_config"]
    assert socket["sni"] == "spillover-xds.system.svc"
    context = socket["common_tls_context"]
    assert context["alpn_protocols"] == ["h2"]
    assert context["combined_validation_context"]["default_validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "spillover-xds.system.svc"}}
    ]
    (client,) = context["tls_certificate_sds_secret_configs"]
    assert client["sds_config"]["path_config_source"]["path"] == str(tmp_path / "sds" / SDS_FILES[client["name"]])
    # The certificate files are watched through their directory (Kubernetes swaps a symlink there).
    client_sds = build_xds_tls_sds(tls)[SDS_FILES[client["name"]]]["resources"][0]
    assert client_sds["tls_certificate"]["watched_directory"] == {"path": tls.tls_dir}


def test_mtls_bootstrap_validation_fails_without_its_sds_files(tmp_path: Path) -> None:
    # Guards the test above: the SDS files are really read.
    bootstrap = build_bootstrap("n1", "edge", "127.0.0.1:24018", tls=_tls(tmp_path))
    assert Envoy.validate(bootstrap, tmp_path).returncode != 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tls_dir": "relative/dir"}, "xds_tls_dir"),
        ({"sds_dir": "/with space"}, "xds_sds_dir"),
        ({"server_name": ""}, "xds_server_name"),
        ({"server_name": "host:443"}, "xds_server_name"),
    ],
)
def test_bad_tls_arguments_are_refused_by_name(kwargs: dict, field: str) -> None:
    args = {"tls_dir": "/etc/tls", "sds_dir": "/etc/envoy", "server_name": "xds.example", **kwargs}
    with pytest.raises(ValueError, match=field):
        XdsTls(**args)


def test_bootstrap_command_writes_the_bootstrap_and_its_sds_files(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "spillover", "bootstrap", "--node-id", "gw", "--cluster", "edge",
        "--xds-address", "spillover-xds.system.svc:24018", "--xds-tls-dir", "/etc/spillover/xds-tls",
        "--xds-sds-dir", "/etc/envoy", "--output-dir", str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(["bootstrap.yaml", *SDS_FILES.values()])
    bootstrap = yaml.safe_load((out / "bootstrap.yaml").read_text())
    tls = XdsTls("/etc/spillover/xds-tls", "/etc/envoy", "spillover-xds.system.svc")
    assert bootstrap == build_bootstrap("gw", "edge", "spillover-xds.system.svc:24018", tls=tls)
    for name, document in build_xds_tls_sds(tls).items():
        assert yaml.safe_load((out / name).read_text()) == document
    refused = subprocess.run([*command[:-6], "--xds-server-name", "x"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "need --xds-tls-dir" in refused.stderr


def test_bootstrap_command_adds_the_rtds_layer_and_serve_refuses_it_without_models(tmp_path: Path) -> None:
    import subprocess
    import sys

    command = [
        sys.executable, "-m", "spillover", "bootstrap", "--node-id", "gw", "--cluster", "edge",
        "--xds-address", "127.0.0.1:24018", "--split-weights", "runtime",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    expected = build_bootstrap("gw", "edge", "127.0.0.1:24018", split_weights="runtime")
    assert yaml.safe_load(result.stdout) == expected
    # A file of resources has no models to split: the option is refused, naming itself.
    resources = tmp_path / "resources.yaml"
    resources.write_text("[]\n")
    serve = [sys.executable, "-m", "spillover", "serve", "--resources", str(resources), "--split-weights", "runtime"]
    refused = subprocess.run(serve, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--split-weights applies to --policies and --kubernetes" in refused.stderr
    serve[-2:] = ["--failover-remote", "in-place"]
    refused = subprocess.run(serve, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--failover-remote applies to --policies and --kubernetes" in refused.stderr
    serve[-1] = "inplace"
    refused = subprocess.run(serve, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "--failover-remote: invalid choice: 'inplace'" in refused.stderr
