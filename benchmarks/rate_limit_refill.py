"""How far past its limit a model gets while another model's decisions change the route table.

`PYTHONPATH=. .venv/bin/python benchmarks/rate_limit_refill.py [--rounds 3] [--window 4] [--every 0.2]
[--output DIR] [--name NAME]`

One real Envoy on spillover's xDS server; `llama` is limited to 2 rps (the default bucket: one second's
worth), one client sends to it back to back. Side A: nothing changes. Side B: `mistral`'s split flips
(100/0 <-> 50/50) every `--every` seconds, each flip waited for until Envoy ACKs it. Sides alternate
A B A B...; writes llama's accepted rate per run and the medians and minimums of each side to
results/rate-limit-refill.{md,json} (with the machine, the command and the load average).
Envoy 1.40 refills every per-route bucket on each RDS update (tests/translate/test_rate_limit_updates.py),
so B admits about 2 rps plus one bucket per update.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from google.protobuf.message import Message

from benchmarks import machine
from spillover.ir import Endpoint, Gateway, Listener, Model, Profile, RemoteBackend, TrafficSplit
from spillover.server.resources import ROUTE
from spillover.translate import translate
from spillover.translate.bootstrap import build_bootstrap
from tests.harness.client import request
from tests.harness.envoy import Envoy, envoy_binary
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.upstream import HttpUpstream
from tests.harness.xds import XdsThread

GROUP, NODE, RPS = "edge", "edge-1", 2.0
RESULTS = Path(__file__).resolve().parent / "results"
SIDES = {"A": "no change", "B": "RDS updates of another model"}


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


def run(rounds: int, window: float, every: float) -> list[dict[str, float | int | str]]:
    """One record per run: side, accepted, seconds, rate (accepted/s), RDS updates."""
    pods = {name: HttpUpstream(name).start() for name in ("llama", "mistral", "remote")}
    xds = XdsThread()
    xds.start()
    port = free_port()
    xds.set_snapshot(GROUP, _messages(_models(pods, TrafficSplit()), port))
    envoy = Envoy(
        build_bootstrap(NODE, GROUP, xds.xds_address, admin_port=0), Path(tempfile.mkdtemp()), name=NODE
    )
    flips = 0
    records: list[dict[str, float | int | str]] = []
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
            records.append(
                {"side": side, "accepted": accepted, "seconds": elapsed, "rate": rate, "updates": updates}
            )
            print(
                f"{side}: {accepted} accepted in {elapsed:.2f} s = {rate:.2f}/s, {updates} RDS updates",
                flush=True,
            )
    finally:
        envoy.stop()
        xds.close()
        for pod in pods.values():
            pod.stop()
    return records


def summarise(records: list[dict[str, float | int | str]]) -> dict[str, dict[str, float]]:
    summary = {}
    for side in SIDES:
        rates = [float(r["rate"]) for r in records if r["side"] == side]
        updates = [int(r["updates"]) for r in records if r["side"] == side]
        summary[side] = {
            "median": statistics.median(rates),
            "min": min(rates),
            "updates_median": statistics.median(updates),
        }
    return summary


def markdown(result: dict[str, object]) -> str:
    records = result["records"]
    summary = result["summary"]
    assert isinstance(records, list) and isinstance(summary, dict)
    load = result["load_average"]
    assert isinstance(load, dict)
    lines = [
        "# A model's rate limit while another model's decisions change the route table",
        "",
        f"`{result['command']}` ({result['date']}, git {result['git']}; {result['rounds']} rounds, A B A B A B, "
        f"{result['window']:g} s windows, a flip every {result['every']:g} s plus the wait for Envoy's ACK), "
        f"{result['envoy']}, SotW, one client sending back to back. `llama`: {RPS:g} rps, default bucket "
        f"({RPS:g}). Side B flips `mistral`'s split (100/0 <-> 50/50); `llama`'s route is unchanged by it. "
        f"Load average (1, 5, 15 min) before: {' '.join(load['before'])}, after: {' '.join(load['after'])}: "
        "the figure is a count of admitted requests, not a latency, so the load matters little.",
        "",
        "| side | runs (admitted/s) | RDS updates per run | median | min |",
        "|---|---|---|---|---|",
    ]
    for side, label in SIDES.items():
        runs = [r for r in records if r["side"] == side]
        rates = ", ".join(f"{r['rate']:.2f}" for r in runs)
        updates = ", ".join(str(r["updates"]) for r in runs)
        lines.append(
            f"| {side}: {label} | {rates} | {updates} | {summary[side]['median']:.2f} | {summary[side]['min']:.2f} |"
        )
    lines += [
        "",
        f"A admits the limit plus the bucket full at the start ({RPS:g}/s and {RPS:g} more). B admits about one more "
        "bucket per RDS update: Envoy builds every per-route local rate limit config anew, full, on each route-table "
        "update (tests/translate/test_rate_limit_updates.py shows it for SotW and Delta).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=4.0)
    parser.add_argument("--every", type=float, default=0.2)
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--name", default="rate-limit-refill", help="results/NAME.{md,json}")
    args = parser.parse_args(argv)
    info = machine.describe()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    records = run(args.rounds, args.window, args.every)
    summary = summarise(records)
    for side, figures in summary.items():
        print(f"{side}: median {figures['median']:.2f}/s, min {figures['min']:.2f}/s (limit {RPS:g}/s)")
    command = (f"PYTHONPATH=. .venv/bin/python benchmarks/rate_limit_refill.py --rounds {args.rounds} "
               f"--window {args.window:g} --every {args.every:g}")  # fmt: skip
    result: dict[str, object] = {
        "command": command, "date": info["date"], "git": info["git"], "machine": info, "envoy": _envoy_version(),
        "rounds": args.rounds, "window": args.window, "every": args.every, "rps": RPS, "records": records,
        "summary": summary,
        "load_average": {"before": load_before, "after": Path("/proc/loadavg").read_text().split()[:3]},
    }  # fmt: skip
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out / f"{args.name}.md").write_text(markdown(result))
    return 0


def _envoy_version() -> str:
    done = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True, check=False)
    found = re.search(r"version: \S+/(\d+\.\d+\.\d+)", done.stdout)
    return f"Envoy {found.group(1)}" if found else "Envoy (version unknown)"


if __name__ == "__main__":
    sys.exit(main())
