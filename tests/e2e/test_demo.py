"""`make run` (spillover demo): it comes up, serves the model, spills under load, and stops on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness.client import request
from tests.harness.polling import wait_until
from tests.harness.ports import free_port

REPO = Path(__file__).resolve().parents[2]


def test_the_demo_serves_spills_under_load_and_stops_cleanly(tmp_path: Path) -> None:
    listen, xds, admin, envoy_admin = free_port(), free_port(), free_port(), free_port()
    log = (tmp_path / "demo.log").open("w")
    demo = subprocess.Popen(
        [
            sys.executable, "-m", "spillover", "demo",
            "--listen-port", str(listen),
            "--xds-address", f"127.0.0.1:{xds}",
            "--admin-address", f"127.0.0.1:{admin}",
            "--envoy-admin-port", str(envoy_admin),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{listen}/v1/chat/completions"
    body = json.dumps({"model": "demo-llm"}).encode()
    try:
        answer = wait_until(
            lambda: (r := request("POST", url, body=body, headers={"content-type": "application/json"}))
            and r.status == 200
            and r,
            timeout=30,
            message="the demo model answers through Envoy",
        )
        assert answer.json()["served_by"] in {"local-a", "local-b"}

        def models() -> dict:
            return request("GET", f"http://127.0.0.1:{admin}/debug/models").json()["models"]["demo-llm"]

        assert models()["state"] == "STANDBY"
        load = subprocess.Popen(
            [sys.executable, "-m", "spillover", "load", "--url", url, "--concurrency", "24", "--seconds", "8"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            wait_until(lambda: models()["state"] == "OVERFLOW", timeout=8, message="overflow under load")
            status = subprocess.run(
                [sys.executable, "-m", "spillover", "status", "--admin-address", f"127.0.0.1:{admin}"],
                capture_output=True, text=True, timeout=20, check=True,
            ).stdout
            (row,) = [line for line in status.splitlines() if line.startswith("demo-llm")]
            assert row.split()[1:3] == ["OVERFLOW", "50"], status
            assert "demo-envoy" in status and "SYNCED" in status, status
            output, _ = load.communicate(timeout=30)
        finally:
            load.kill()
        totals = json.loads(output.strip().splitlines()[-1].removeprefix("total: ").replace("'", '"'))
        assert totals.get("cloud", 0) > 0 and totals.get("local-a", 0) > 0, totals
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            code = demo.wait(timeout=20)
        finally:
            demo.kill()
            log.close()
    assert code == 0, (tmp_path / "demo.log").read_text()[-3000:]


# -- ports: configurable, and a busy one stops the demo with one line before anything starts -----------

DEMO_OPTIONS = {"listen": "--listen-port", "xds": "--xds-address", "admin": "--admin-address",
                "envoy_admin": "--envoy-admin-port"}


def demo_argv(ports: dict[str, int]) -> list[str]:
    return [
        sys.executable, "-m", "spillover", "demo",
        "--listen-port", str(ports["listen"]),
        "--xds-address", f"127.0.0.1:{ports['xds']}",
        "--admin-address", f"127.0.0.1:{ports['admin']}",
        "--envoy-admin-port", str(ports["envoy_admin"]),
    ]


def run_refused(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The demo with its temp dir in tmp_path/tmp (which must stay empty), expected to refuse at once."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env, cwd=REPO)
    assert list(tmp.iterdir()) == [], "the demo left its temp dir behind"
    return out


@pytest.mark.parametrize("role", ["listen", "xds", "admin", "envoy_admin"])
def test_a_busy_port_stops_the_demo_with_one_line(role: str, tmp_path: Path) -> None:
    ports = {name: free_port() for name in DEMO_OPTIONS}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[role]))
        holder.listen(1)
        out = run_refused(demo_argv(ports), tmp_path)
    assert out.returncode == 1
    assert out.stdout == ""
    (line,) = out.stderr.splitlines()
    assert line.startswith(f"spillover demo: port {ports[role]} on 127.0.0.1 (") and " is in use: " in line, line
    assert DEMO_OPTIONS[role] in line, line
    # Nothing was started: every other port is still free.
    for name, port in ports.items():
        if name != role:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", port))


def test_a_listener_port_held_by_another_envoy_is_refused_not_shared(envoy_factory: Any, tmp_path: Path) -> None:
    """Envoy listens with SO_REUSEPORT: a second Envoy would bind the same port and take half of its
    connections. The demo sees the port taken and stops instead."""
    port = free_port()
    envoy = envoy_factory({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "static_resources": {"listeners": [{
            "name": "other", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
                             "HttpConnectionManager",
                    "stat_prefix": "other",
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
                    "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
                        "match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {
                            "inline_string": "the other envoy"}}}]}]},
                },
            }]}],
        }]},
    }, name="other")
    wait_until(lambda: request("GET", f"http://127.0.0.1:{port}/").status == 200, timeout=20,
               message="the other Envoy serves its listener")
    ports = {name: free_port() for name in DEMO_OPTIONS} | {"listen": port}
    out = run_refused(demo_argv(ports), tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    (line,) = out.stderr.splitlines()
    assert f"port {port} on 127.0.0.1 (the model listener of Envoy) is in use" in line, line
    assert envoy.is_running() and request("GET", f"http://127.0.0.1:{port}/").body == b"the other envoy"


def test_make_run_takes_the_ports_and_refuses_a_busy_one(tmp_path: Path) -> None:
    ports = {name: free_port() for name in DEMO_OPTIONS}
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports["xds"]))
        holder.listen(1)
        out = run_refused(["make", "--no-print-directory", "run", f"PORT={ports['listen']}",
                           f"XDS_PORT={ports['xds']}", f"ADMIN_PORT={ports['admin']}",
                           f"ENVOY_ADMIN_PORT={ports['envoy_admin']}", f"PY={sys.executable}"], tmp_path)
    assert out.returncode != 0
    ours = [line for line in out.stderr.splitlines() if line.startswith("spillover demo:")]
    assert len(ours) == 1 and f"port {ports['xds']} on 127.0.0.1 (spillover's xDS server) is in use" in ours[0]
    assert "XDS_PORT=N" in ours[0]
    assert "Traceback" not in out.stderr + out.stdout


def test_the_commands_the_demo_prints_work_as_printed(tmp_path: Path) -> None:
    """Started from the repository as `make run` starts it: the printed curl and spillover commands run
    in a shell from the same directory (the load with fewer seconds, and status without --watch)."""
    ports = {name: free_port() for name in DEMO_OPTIONS}
    log_path = tmp_path / "demo.log"
    with log_path.open("w") as log:
        demo = subprocess.Popen(demo_argv(ports), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        text = wait_until(lambda: "Ctrl-C stops everything" in (t := log_path.read_text()) and t, timeout=30,
                          message="the demo prints its commands")
        commands = [line.strip().split("   #")[0] for line in text.splitlines()
                    if line.startswith("  curl ") or line.startswith("  .venv/bin/spillover ")]
        assert len(commands) == 4, text
        assert all(not c.startswith("spillover ") for c in commands), "spillover is not on PATH here"
        url = f"http://127.0.0.1:{ports['listen']}/v1/chat/completions"
        wait_until(lambda: request("POST", url, body=b'{"model": "demo-llm"}',
                                   headers={"content-type": "application/json"}).status == 200,
                   timeout=30, message="the model answers")
        for command in commands:
            command = command.replace("--seconds 20", "--seconds 2").replace(" --watch", "")
            out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, cwd=REPO,
                                 env={"PATH": "/usr/bin:/bin"})
            assert out.returncode == 0, (command, out.stdout, out.stderr)
            if "/v1/chat/completions -H" in command:
                assert json.loads(out.stdout)["served_by"] in {"local-a", "local-b", "cloud"}
            elif " load " in command:
                assert out.stdout.splitlines()[-1].startswith("total: "), out.stdout
            elif " status " in command:
                assert "demo-envoy" in out.stdout and "demo-llm" in out.stdout, out.stdout
            else:
                assert json.loads(out.stdout)["models"]["demo-llm"]["state"] in ("STANDBY", "OVERFLOW")
    finally:
        demo.send_signal(signal.SIGINT)
        try:
            code = demo.wait(timeout=20)
        finally:
            demo.kill()
    assert code == 0, log_path.read_text()[-3000:]
