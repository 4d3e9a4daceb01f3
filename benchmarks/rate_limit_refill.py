"""How far past its limit a model gets while another model's decisions change the route table.

`PYTHONPATH=. .venv/bin/python benchmarks/rate_limit_refill.py [--rounds 3] [--window 4] [--every 0.2]`

One real Envoy on spillover's xDS server; `llama` is limited to 2 rps (the default bucket: one second's
worth), one client sends to it back to back. Side A: nothing changes. Side B: `mistral`'s split flips
(100/0 <-> 50/50) every `--every` seconds, each flip waited for until Envoy ACKs it. Sides alternate
A B A B...; prints llama's accepted rate per run, then the medians and minimums of each side.
Envoy 1.40 refills every per-route bucket on each RDS update (tests/translate/test_rate_limit_updates.py),
so B admits about 2 rps plus one bucket per update.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from google.protobuf.message import Message

from spillover.ir import Endpoint, Gateway, Listener, Model, Profile, RemoteBackend, TrafficSplit
from spillover.server.resources import ROUTE
from spillover.translate import translate
from spillover.translate.bootstrap import build_bootstrap
from tests.harness.client import request
from tests.harness.envoy import Envoy
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.upstream import HttpUpstream
from tests.harness.xds import XdsThread

GROUP, NODE, RPS = "edge", "edge-1", 2.0


def _models(pods: dict[str, HttpUpstream], other: TrafficSplit) -> tuple[Model, ...]:
    remote = RemoteBackend(host="127.0.0.1", port=pods["remote"].port, scheme="http")
    limit = Profile("default", "random", requests_per_second=RPS, total_requests_per_second=RPS)
    return (
        Model("llama", (Endpoint("127.0.0.1", pods["llama"].port),), profiles=(limit,)),
        Model("mistral", (Endpoint("127.0.0.1", pods["mistral"].port),), remote=remote, split=other),
    )


def _messages(models: tuple[Model, ...], port: int) -> list[Message]:
    resources = translate(Gateway(GROUP, Listener("127.0.0.1", port), models))
    return [m for items in resources.by_type_url().values() for m in items.values()]


def _acked_rds(xds: XdsThread) -> str | None:
    state = xds.type_state(NODE, "RDS")
    return None if state is None else str(state["acked_version"])


def _post(port: int, model: str) -> int:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    return request("POST", url, body={"model": model}, headers={"x-model": model}, timeout=5).status


def _measure(
    port: int, window: float, flip: Callable[[], None] | None, every: float
) -> tuple[int, float, int]:
    """llama's accepted requests in `window` seconds of back-to-back sends, while `flip` runs every
    `every` seconds (if given); and how many flips there were."""
    stop = threading.Event()
    updates = 0

    def flipper() -> None:
        nonlocal updates
        while flip is not None and not stop.is_set():
            flip()
            updates += 1
            stop.wait(every)

    thread = threading.Thread(target=flipper, daemon=True)
    thread.start()
    start = time.monotonic()
    accepted = 0
    while time.monotonic() - start < window:
        accepted += _post(port, "llama") == 200
    elapsed = time.monotonic() - start
    stop.set()
    thread.join(timeout=15)
    return accepted, elapsed, updates


def run(rounds: int, window: float, every: float) -> dict[str, list[float]]:
    pods = {name: HttpUpstream(name).start() for name in ("llama", "mistral", "remote")}
    xds = XdsThread()
    xds.start()
    port = free_port()
    xds.set_snapshot(GROUP, _messages(_models(pods, TrafficSplit()), port))
    envoy = Envoy(
        build_bootstrap(NODE, GROUP, xds.xds_address, admin_port=0), Path(tempfile.mkdtemp()), name=NODE
    )
    flips = 0
    results: dict[str, list[float]] = {"A": [], "B": []}
    try:
        envoy.start()
        wait_until(lambda: _post(port, "mistral") == 200, timeout=15, message="mistral never served")

        def flip() -> None:
            nonlocal flips
            flips += 1
            split = TrafficSplit(50, 50) if flips % 2 else TrafficSplit()
            version = xds.set_snapshot(GROUP, _messages(_models(pods, split), port)).version(ROUTE)
            wait_until(lambda: _acked_rds(xds) == version, timeout=10, message=f"RDS {version} never ACKed")

        for side in "AB" * rounds:
            # A full bucket to start from, whatever the previous run left.
            time.sleep(1.0 / RPS + 0.5)
            accepted, elapsed, updates = _measure(port, window, flip if side == "B" else None, every)
            rate = accepted / elapsed
            results[side].append(rate)
            print(
                f"{side}: {accepted} accepted in {elapsed:.2f} s = {rate:.2f}/s, {updates} RDS updates",
                flush=True,
            )
    finally:
        envoy.stop()
        xds.close()
        for pod in pods.values():
            pod.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=4.0)
    parser.add_argument("--every", type=float, default=0.2)
    args = parser.parse_args(argv)
    results = run(args.rounds, args.window, args.every)
    for side, rates in results.items():
        print(f"{side}: median {statistics.median(rates):.2f}/s, min {min(rates):.2f}/s (limit {RPS:g}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
