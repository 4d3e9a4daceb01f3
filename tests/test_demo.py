"""`make run` (spillover demo): it comes up, serves the model, spills under load, and stops on Ctrl-C."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.harness.client import request
from tests.harness.polling import wait_until
from tests.harness.ports import free_port


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
