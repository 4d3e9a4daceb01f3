"""`python -m benchmarks.push_pause [--baseline DIR] [--rounds 5]`: what the collector's pause costs per push task.

Two figures, CPU time (time.process_time) of one process on the default asyncio loop:

- count: `PUSH_PAUSE.started(loop)` then `ended(...)`, 1,000 of each per fan-out (spillover/server/gc_tuning.py);
- fan-out: 1,000 StreamWriters (spillover/server/stream_writer.py) told of a publish, their push tasks run to
  the end (streams that have nothing to send: what is left is the task, the count and the uncount).

With `--baseline DIR` (another checkout, e.g. `git -C /work/main archive HEAD | tar -x -C DIR`), each round
runs the baseline's spillover package and this tree's in turn, in fresh processes, the order alternated
(A B, B A); medians and minimums per side, with the load average. Printed only: the figures are small and
noisy (a few µs per task), for checking a change of the fast path, not for the results directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STREAMS = 1_000


async def _count(fan_outs: int) -> float:
    from spillover.server import gc_tuning

    loop = asyncio.get_running_loop()
    pause = gc_tuning.PUSH_PAUSE
    started, ended = pause.started, pause.ended
    rounds = hasattr(gc_tuning, "PushPause")  # before it, ended() took the task, not the round
    begin = time.process_time()
    for _ in range(fan_outs):
        counted: Any = None
        for _ in range(STREAMS):
            counted = started(loop)
        if rounds:
            for _ in range(STREAMS):
                ended(counted)
        else:
            for _ in range(STREAMS):
                ended()  # type: ignore[call-arg]
    return (time.process_time() - begin) / fan_outs / STREAMS


class _Quiet:
    """A stream with nothing to send."""

    group = "g"
    node_id = "n"
    wake_at = None

    def on_snapshot(self) -> list[object]:
        return []

    def on_tick(self) -> list[object]:
        return []


async def _fan_out(fan_outs: int) -> list[float]:
    from spillover.server import gc_tuning
    from spillover.server.stream_writer import StreamWriter

    loop = asyncio.get_running_loop()

    async def write(payload: bytes) -> None:
        pass

    writers = [
        StreamWriter(_Quiet(), write, loop, lambda t: None, lambda g: None, lambda s: None, lambda: None)  # type: ignore[arg-type]
        for _ in range(STREAMS)
    ]
    per_task = []
    for _ in range(fan_outs):
        begin = time.process_time()
        for writer in writers:
            writer.put_nowait(None)
        while gc_tuning.PUSH_PAUSE.pushes or any(w._push_task is not None for w in writers):
            await asyncio.sleep(0)
        per_task.append((time.process_time() - begin) / STREAMS)
    return per_task


async def _child() -> dict[str, float]:
    counts = [await _count(200) for _ in range(5)]
    fan_out = await _fan_out(300)
    return {
        "count_ns": statistics.median(counts) * 1e9,
        "fan_out_us": statistics.median(fan_out) * 1e6,
        "fan_out_min_us": min(fan_out) * 1e6,
    }


def _run(tree: Path) -> dict[str, float]:
    # Run as a script from the side's tree: `-m` would put the working directory (this tree) first on the
    # path, and both sides would import this tree's spillover.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, __file__, "--child"], env=env, check=True, capture_output=True, text=True, cwd=tree,
        timeout=300,
    )
    check = subprocess.run(
        [sys.executable, "-c", "import spillover; print(spillover.__file__)"], env=env, check=True,
        capture_output=True, text=True, cwd=tree, timeout=60,
    )
    if not check.stdout.startswith(str(tree)):
        raise SystemExit(f"{tree}: imported spillover from {check.stdout.strip()}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout, run alternately with this tree")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (1-50)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_child())))
        return
    if not 1 <= args.rounds <= 50:
        parser.error("--rounds must be between 1 and 50")
    tree = Path(__file__).resolve().parent.parent
    sides = {"this tree": tree} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    load_before = os.getloadavg()
    for index in range(args.rounds):
        order = list(sides.items()) if index % 2 == 0 else list(reversed(sides.items()))
        for name, path in order:
            runs[name].append(_run(path))
    load_after = os.getloadavg()
    print(f"{args.rounds} rounds, {STREAMS:,} push tasks per fan-out; load {load_before[0]:.1f} -> {load_after[0]:.1f}")
    for name, results in runs.items():
        count = [r["count_ns"] for r in results]
        fan_out = [r["fan_out_us"] for r in results]
        fan_out_min = [r["fan_out_min_us"] for r in results]
        print(
            f"{name:>10}: count+uncount {statistics.median(count):.0f} ns (min {min(count):.0f}); "
            f"fan-out {statistics.median(fan_out):.2f} µs per push task (median of medians; min {min(fan_out_min):.2f})"
        )


if __name__ == "__main__":
    main()
