"""Reaction time: from the moment an overflow metric crosses its threshold in its source to the moment Envoy
sends the first request to the remote backend.

Everything is real and on 127.0.0.1: `spillover serve --policies` as a subprocess, a real Envoy bootstrapped
to it (advertising its admin port, which the `envoy` metric source reads), local backends, a remote
backend that records the CLOCK_MONOTONIC time of its first request, a steady paced client load through
Envoy and, for the Prometheus source, Debian's Prometheus scraping the local model servers every second.

Two sources:

- ``prometheus``: `metric: queue_length` (vLLM's `vllm:num_requests_waiting`), target 5. The model
  servers' `/metrics` value is set to 10 at t0 (in this process, so t0 is exact).
- ``envoy``: `metric: concurrency, source: envoy` (Envoy's `upstream_rq_active` per healthy local pod),
  target 4 with 2 local pods. At t0 a burst of requests that the local backends hold open goes through
  Envoy; t0 is the arrival at the backends of the held request that brings the in-flight count to the
  threshold (2 pods x 4), i.e. the moment Envoy's gauge crosses it.

Breakdown per repetition (all CLOCK_MONOTONIC; log timestamps are wall-clock milliseconds converted
with the offset between the two clocks measured in this process):

- prometheus only: t0 -> the first scrape that returned the new value (the model server records it);
- -> spillover's decision (its log line "model M: STANDBY -> OVERFLOW");
- -> Envoy received the RouteConfiguration with the remote weight (Envoy's `config` debug log);
- -> the first request at the remote backend.
"""

from __future__ import annotations

import contextlib
import datetime
import http.client
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from spillover.translate.bootstrap import build_bootstrap
from tests.harness.envoy import Envoy
from tests.harness.modelserver import ModelServer
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.prometheus import Prometheus
from tests.harness.upstream import HttpUpstream

REPO = Path(__file__).resolve().parents[1]
MODEL = "bench-model"
CHAT = "/v1/chat/completions"
HOLD_HEADER = "x-bench-hold"

QUEUE_TARGET = 5.0  # prometheus: vllm:num_requests_waiting per pod
QUEUE_TRIGGERED = 10.0
CONCURRENCY_TARGET = 4  # envoy: in-flight requests per healthy local pod
LOCAL_PODS = 2
HELD = LOCAL_PODS * CONCURRENCY_TARGET + 4  # held requests sent at t0 (crossing at the 8th)
BUFFER_S = 2.0
SCRAPE_INTERVAL_S = 1.0

# Reference figures (not measured here): the best case of each is its poll/sync period.
BEAMLIT_POLL_S = 5.0
BEAMLIT_HOLD_S = 5.0
HPA_SYNC_S = 15.0


class BenchError(RuntimeError):
    pass


# -- clocks and logs -------------------------------------------------------------------------------------


# Wall clock minus monotonic clock, to place log lines (wall-clock ms) on the monotonic time line.
def _clock_offset() -> float:
    best = None
    for _ in range(5):
        m0 = time.monotonic()
        w = time.time()
        m1 = time.monotonic()
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, w - (m0 + m1) / 2)
    assert best is not None
    return best[1]


_SPILLOVER_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO \S+: model (.+?): (\w+) -> (\w+) "
)
_ENVOY_LINE = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\.(\d{3})\].*Received gRPC message for (\S+) at version"
)


def _local_to_epoch(stamp: str, millis: str) -> float:
    return datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S").timestamp() + int(millis) / 1000


def spillover_transitions(log_path: Path, offset: float) -> list[tuple[float, str, str]]:
    """(monotonic time, from, to) of every state change spillover logged for MODEL."""
    out = []
    with contextlib.suppress(FileNotFoundError), log_path.open(errors="replace") as fh:
        for line in fh:
            m = _SPILLOVER_LINE.match(line)
            if m and m.group(3) == MODEL:
                out.append((_local_to_epoch(m.group(1), m.group(2)) - offset, m.group(4), m.group(5)))
    return out


def envoy_route_updates(log_path: Path, offset: float) -> list[float]:
    """Monotonic times at which Envoy received a RouteConfiguration over ADS."""
    out = []
    with contextlib.suppress(FileNotFoundError), log_path.open(errors="replace") as fh:
        for line in fh:
            m = _ENVOY_LINE.match(line)
            if m and m.group(3).endswith("RouteConfiguration"):
                out.append(_local_to_epoch(m.group(1), m.group(2)) - offset)
    return out


# -- backends ----------------------------------------------------------------------------------------------


class RemoteRecorder(HttpUpstream):
    """The remote backend: an echo upstream that records the monotonic time of its first request once armed."""

    def __init__(self, name: str) -> None:
        super().__init__(name, max_recorded=10)
        self._armed = False
        self.first_at: float | None = None
        self.last_at = 0.0

    def _record(self, record: dict[str, Any]) -> None:
        now = time.monotonic()
        with self._lock:
            self.last_at = now
            if self._armed and self.first_at is None:
                self.first_at = now
        super()._record(record)

    def arm(self) -> None:
        with self._lock:
            self._armed, self.first_at = True, None

    def disarm(self) -> None:
        with self._lock:
            self._armed = False


class TimedModelServer(ModelServer):
    """The harness model server, also recording when a scrape first served a queue above the target."""

    def __init__(self, name: str) -> None:
        super().__init__(name, model=MODEL)
        self.watch_from: float | None = None
        self.scraped_at: float | None = None

    def metrics_text(self) -> str:
        text = super().metrics_text()
        now = time.monotonic()
        if self.watch_from is not None and self.scraped_at is None and self.load["waiting"] >= QUEUE_TARGET:
            self.scraped_at = now
        return text


class _HoldHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _HoldServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        backend = self.server.backend
        if self.headers.get(HOLD_HEADER):
            backend.arrived(time.monotonic())
            backend.release.wait(30.0)  # bounded: never hold a thread forever
        body = json.dumps({"object": "chat.completion", "server": backend.name, "choices": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST


class _HoldServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, backend: HoldBackend) -> None:
        self.backend = backend
        super().__init__(("127.0.0.1", 0), _HoldHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class HoldBackend:
    """A local model backend answering at once, except requests with `x-bench-hold`, held until released."""

    def __init__(
        self, name: str, arrivals: list[float], lock: threading.Lock, release: threading.Event
    ) -> None:
        self.name = name
        self._arrivals = arrivals
        self._lock = lock
        self.release = release
        self._server = _HoldServer(self)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"hold-{name}",
            daemon=True,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def arrived(self, at: float) -> None:
        with self._lock:
            self._arrivals.append(at)

    def start(self) -> HoldBackend:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._thread.is_alive():  # shutdown() waits for serve_forever: only when it runs
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


# -- spillover and the client load ---------------------------------------------------------------------


class SpilloverProcess:
    """`python -m spillover serve --policies DIR` on free loopback ports; stopped by pid."""

    def __init__(
        self,
        policies: Path,
        workdir: Path,
        evaluation_interval: float,
        prometheus_url: str | None,
        debounce: float | None = None,
    ) -> None:
        self.listen_port = free_port()
        self.xds_port = free_port()
        self.admin_port = free_port()
        self.log_path = workdir / "spillover.log"
        self.command = [
            sys.executable, "-m", "spillover", "serve",
            "--policies", str(policies),
            "--listen", f"127.0.0.1:{self.listen_port}",
            "--xds-address", f"127.0.0.1:{self.xds_port}",
            "--admin-address", f"127.0.0.1:{self.admin_port}",
            "--evaluation-interval", str(evaluation_interval),
        ] + (["--prometheus-url", prometheus_url] if prometheus_url else []) + (
            ["--debounce", str(debounce)] if debounce is not None else []
        )  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def xds_address(self) -> str:
        return f"127.0.0.1:{self.xds_port}"

    def start(self) -> SpilloverProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            )
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise BenchError(f"spillover serve exited with {proc.returncode}: {self.log_tail()}")
            return self._get("/readyz")[0] == 200

        try:
            wait_until(ready, timeout=30, interval=0.1, message="spillover serve never became ready")
        except AssertionError as error:
            raise BenchError(f"{error}\n{self.log_tail()}") from None
        return self

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.proc = None

    def _get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=2) as resp:
                return resp.status, resp.read()
        except OSError:
            return -1, b""

    def model(self) -> dict[str, Any]:
        status, body = self._get("/debug/models")
        if status != 200:
            return {}
        return dict(json.loads(body)["models"].get(MODEL, {}))

    def metric_sum(self, name: str) -> float:
        total = 0.0
        for line in self._get("/metrics")[1].decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _post(conn: http.client.HTTPConnection, body: bytes, headers: dict[str, str]) -> int:
    conn.request("POST", CHAT, body=body, headers=headers)
    resp = conn.getresponse()
    resp.read()
    return resp.status


class PacedLoad:
    """`rate` requests per second through Envoy, open-loop pacing over `workers` keep-alive connections."""

    def __init__(self, port: int, rate: float, workers: int = 8) -> None:
        self.port = port
        self.rate = rate
        self.workers = workers
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.statuses: dict[int, int] = {}
        self.started = 0.0
        self.stopped = 0.0

    def _worker(self, index: int) -> None:
        body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
        headers = {"content-type": "application/json"}
        period = self.workers / self.rate
        next_at = time.monotonic() + index * period / self.workers
        conn: http.client.HTTPConnection | None = None
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            next_at = max(next_at + period, time.monotonic() - period)
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                status = _post(conn, body, headers)
            except (OSError, http.client.HTTPException):
                status = -1
                if conn is not None:
                    conn.close()
                conn = None
            with self._lock:
                self.statuses[status] = self.statuses.get(status, 0) + 1
        if conn is not None:
            conn.close()

    def start(self) -> PacedLoad:
        self.started = time.monotonic()
        for i in range(self.workers):
            thread = threading.Thread(target=self._worker, args=(i,), name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=6)
        self.stopped = time.monotonic()

    def summary(self) -> dict[str, Any]:
        with self._lock:
            total = sum(self.statuses.values())
            ok = self.statuses.get(200, 0)
        elapsed = max((self.stopped or time.monotonic()) - self.started, 1e-9)
        return {"requests": total, "ok": ok, "achieved_rps": total / elapsed, "non_200": total - ok}


def _burst(port: int, count: int) -> list[threading.Thread]:
    """`count` held requests sent at once (each on its own fresh connection)."""
    body = json.dumps({"model": MODEL, "messages": []}).encode()
    headers = {"content-type": "application/json", HOLD_HEADER: "1"}
    go = threading.Barrier(count + 1)

    def one() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=40)
        try:
            conn.connect()
            go.wait(5)
            _post(conn, body, headers)
        except (OSError, http.client.HTTPException, threading.BrokenBarrierError):
            pass
        finally:
            conn.close()

    threads = [threading.Thread(target=one, daemon=True, name=f"hold-client-{i}") for i in range(count)]
    for thread in threads:
        thread.start()
    go.wait(5)
    return threads


# -- the scenario ------------------------------------------------------------------------------------------


def _policy(source: str, local: list[str], remote: str) -> dict[str, Any]:
    metric: dict[str, Any]
    if source == "prometheus":
        metric = {"metric": "queue_length", "target": QUEUE_TARGET}
    else:
        metric = {"metric": "concurrency", "target": CONCURRENCY_TARGET, "source": "envoy"}
    return {
        "apiVersion": "spillover.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "bench"},
        "spec": {
            "model": MODEL,
            "localBackend": {"endpoints": local},
            "offloadingConfig": {
                "remoteBackend": {"host": remote, "scheme": "http"},
                "behavior": {
                    "percentage": 50,
                    "activationDuration": "0s",
                    "bufferDuration": f"{BUFFER_S:g}s",
                },
                "metrics": [metric],
            },
        },
    }


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "p50_s": statistics.median(values),
        "max_s": max(values),
        "min_s": min(values),
        "mean_s": statistics.fmean(values),
    }


def run_scenario(
    source: str,
    evaluation_interval: float,
    repetitions: int,
    *,
    rate: float,
    log_dir: str,
    log: Any = print,
    timeout_s: float = 15.0,
    debounce: float | None = None,
) -> dict[str, Any]:
    """One source at one evaluation interval, `repetitions` triggers; returns the per-rep times and stats.

    `debounce` None runs `spillover serve` with its default push debounce; a number passes --debounce.
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"reaction-{source}-{evaluation_interval:g}-", dir=log_dir))
    policies = workdir / "policies"
    policies.mkdir()
    offset = _clock_offset()
    arrivals: list[float] = []
    arrivals_lock = threading.Lock()
    release = threading.Event()
    models: list[TimedModelServer] = []
    holds: list[HoldBackend] = []
    remote = RemoteRecorder("remote")
    prometheus: Prometheus | None = None
    spill: SpilloverProcess | None = None
    envoy: Envoy | None = None
    load: PacedLoad | None = None
    hold_threads: list[threading.Thread] = []
    reps: list[dict[str, Any]] = []
    round_seconds: dict[str, float] = {}
    try:
        remote.start()
        if source == "prometheus":
            models = [TimedModelServer(f"local-{i}") for i in range(LOCAL_PODS)]
            for m in models:
                m.start()
            local = [m.address for m in models]
            prometheus = Prometheus(
                workdir / "prometheus", targets=local, scrape_interval=f"{SCRAPE_INTERVAL_S:g}s"
            ).start()
        else:
            for i in range(LOCAL_PODS):
                holds.append(HoldBackend(f"local-{i}", arrivals, arrivals_lock, release))
                holds[-1].start()
            local = [h.address for h in holds]
        (policies / "bench.yaml").write_text(
            yaml.safe_dump(_policy(source, local, remote.address), sort_keys=False)
        )
        spill = SpilloverProcess(
            policies, workdir, evaluation_interval, prometheus.url if prometheus else None, debounce
        ).start()
        bootstrap = build_bootstrap("bench-edge", "edge", spill.xds_address, admin_port=free_port())
        envoy = Envoy(
            bootstrap, workdir, name="envoy", extra_args=["--component-log-level", "config:debug"]
        ).start()
        port = spill.listen_port
        body = json.dumps({"model": MODEL, "messages": []}).encode()

        def served() -> bool:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                return _post(conn, body, {"content-type": "application/json"}) == 200
            finally:
                conn.close()

        try:
            wait_until(served, timeout=30, interval=0.1, message="Envoy never served the model")
        except AssertionError as error:
            raise BenchError(f"{error}\n{envoy.log_tail(20)}\n{spill.log_tail()}") from None
        load = PacedLoad(port, rate).start()

        def known_standby() -> bool:
            model = spill.model()
            readings = (model.get("status") or {}).get("metrics") or []
            return (
                model.get("state") == "STANDBY"
                and bool(readings)
                and all(r.get("condition") == "calm" for r in readings)
            )

        try:
            wait_until(
                known_standby, timeout=20, interval=0.1, message="the metric never read calm in STANDBY"
            )
        except AssertionError as error:
            raise BenchError(f"{error}: {spill.model()}\n{spill.log_tail()}") from None

        rng = random.Random(1234 + repetitions)
        for rep in range(repetitions):
            # A random phase against the scrape and evaluation periods.
            time.sleep(rng.uniform(0, SCRAPE_INTERVAL_S if source == "prometheus" else evaluation_interval))
            remote.arm()
            if source == "prometheus":
                for m in models:
                    m.scraped_at = None
                    m.watch_from = time.monotonic()
                t0 = time.monotonic()
                for m in models:
                    m.set_load(waiting=QUEUE_TRIGGERED)
            else:
                with arrivals_lock:
                    arrivals.clear()
                release.clear()
                sent = time.monotonic()
                hold_threads = _burst(port, HELD)
            deadline = time.monotonic() + timeout_s
            while remote.first_at is None and time.monotonic() < deadline:
                time.sleep(0.005)
            first = remote.first_at
            remote.disarm()
            row: dict[str, Any] = {"rep": rep}
            if source == "prometheus":
                scraped = [m.scraped_at for m in models if m.scraped_at is not None]
                row["scraped_s"] = (min(scraped) - t0) if scraped else None
                for m in models:
                    m.watch_from = None
                    m.set_load(waiting=0)
            else:
                with arrivals_lock:
                    got = sorted(arrivals)
                crossing = LOCAL_PODS * CONCURRENCY_TARGET
                if len(got) < crossing:
                    raise BenchError(f"only {len(got)} of {HELD} held requests reached the local backends")
                t0 = got[crossing - 1]
                row["burst_spread_s"] = got[crossing - 1] - sent
                release.set()
                for thread in hold_threads:
                    thread.join(timeout=5)
            if first is None:
                row["error"] = f"no remote request within {timeout_s:g}s"
                log(f"      rep {rep + 1}: {row['error']}")
            else:
                row["t0"], row["first"] = t0, first
                row["reaction_s"] = first - t0
                log(
                    f"      rep {rep + 1}: reaction {row['reaction_s'] * 1000:.0f} ms"
                    + (
                        f" (first scrape with the new value after {row['scraped_s'] * 1000:.0f} ms)"
                        if row.get("scraped_s") is not None
                        else ""
                    )
                )
            reps.append(row)
            # Back to STANDBY (buffer duration), then wait until the remote gets no more traffic.
            try:
                wait_until(
                    lambda: spill.model().get("state") == "STANDBY",
                    timeout=BUFFER_S + 10,
                    interval=0.05,
                    message="never returned to STANDBY",
                )
                wait_until(lambda: time.monotonic() - remote.last_at > 0.3, timeout=5, interval=0.05)
            except AssertionError as error:
                raise BenchError(f"rep {rep + 1}: {error}\n{spill.log_tail()}") from None
        count = spill.metric_sum("spillover_evaluation_seconds_count")
        total = spill.metric_sum("spillover_evaluation_seconds_sum")
        if count:
            round_seconds = {"rounds": count, "mean_s": total / count}
    finally:
        release.set()
        if load is not None:
            load.stop()
        for thread in hold_threads:
            thread.join(timeout=2)
        if envoy is not None:
            envoy.stop()
        if spill is not None:
            spill.stop()
        if prometheus is not None:
            prometheus.stop()
        for m in models:
            m.stop()
        for h in holds:
            h.stop()
        remote.stop()

    # The breakdown, from the logs once the processes are gone (Envoy flushes its log file lazily).
    if spill is not None and envoy is not None:
        flips = [t for t, _a, b in spillover_transitions(spill.log_path, offset) if b == "OVERFLOW"]
        routes = envoy_route_updates(envoy.log_path, offset)
        for r in reps:
            if "t0" not in r:
                continue
            t0, first = r.pop("t0"), r.pop("first")
            # Log stamps are truncated to the millisecond: allow 2 ms of slack.
            flip = next((t for t in flips if t0 - 0.002 <= t <= first + 0.002), None)
            if flip is None:
                continue
            r["decision_s"] = flip - t0
            route = next((t for t in routes if flip - 0.002 <= t <= first + 0.002), None)
            if route is not None:
                r["envoy_config_s"] = route - t0
    for r in reps:
        r.pop("t0", None), r.pop("first", None)
    ok = [r for r in reps if "reaction_s" in r]
    period = SCRAPE_INTERVAL_S if source == "prometheus" else evaluation_interval
    target = 1.0 + period
    reaction = _stats([r["reaction_s"] for r in ok])
    result: dict[str, Any] = {
        "source": source,
        "evaluation_interval_s": evaluation_interval,
        "debounce_s": debounce,
        "scrape_interval_s": SCRAPE_INTERVAL_S if source == "prometheus" else None,
        "repetitions": repetitions,
        "rate_rps": rate,
        "load": load.summary() if load else {},
        "reps": reps,
        "failed_reps": len(reps) - len(ok),
        "reaction": reaction,
        "target_s": target,
        "evaluation_round": round_seconds,
        "workdir": str(workdir),
    }
    for key in ("scraped_s", "decision_s", "envoy_config_s"):
        values = [r[key] for r in ok if r.get(key) is not None]
        result[key.removesuffix("_s")] = _stats(values)
    # Per-stage durations (each stage = its end minus the previous end), medians.
    stages: dict[str, list[float]] = {}
    for r in ok:
        previous = 0.0
        for key, label in (
            ("scraped_s", "source scrape"),
            ("decision_s", "spillover decision"),
            ("envoy_config_s", "xDS push to Envoy"),
            ("reaction_s", "Envoy to first remote request"),
        ):
            if r.get(key) is None:
                continue
            stages.setdefault(label, []).append(r[key] - previous)
            previous = r[key]
    result["stages"] = {k: {"p50_s": statistics.median(v), "max_s": max(v)} for k, v in stages.items()}
    result["verdict"] = (
        "FAIL"
        if reaction is None or result["failed_reps"]
        else ("PASS" if reaction["max_s"] < target else "FAIL")
    )
    result["beamlit_best_ratio"] = (reaction["p50_s"] / BEAMLIT_POLL_S) if reaction else None
    return result


# (source, evaluation interval, --debounce or None for spillover's default). The last full-run row is a
# what-if: the same as the one before it with the push debounce off, to show what the debounce costs.
SCENARIOS_FULL: list[tuple[str, float, float | None]] = [
    ("envoy", 0.5, None),
    ("prometheus", 0.5, None),
    ("envoy", 0.25, None),
    ("prometheus", 0.25, None),
    ("envoy", 0.25, 0.0),
]
SCENARIOS_QUICK: list[tuple[str, float, float | None]] = [("envoy", 0.5, None), ("prometheus", 0.5, None)]


def run(
    quick: bool, log_dir: str, log: Any = print, rate: float = 100.0, repetitions: int | None = None
) -> list[dict[str, Any]]:
    scenarios = SCENARIOS_QUICK if quick else SCENARIOS_FULL
    reps = repetitions or (2 if quick else 7)
    out = []
    for source, interval, debounce in scenarios:
        label = f"{source} source, evaluation interval {interval:g} s" + (
            f", --debounce {debounce:g}" if debounce is not None else ""
        )
        log(f"    {label}, {reps} repetitions ...")
        try:
            out.append(
                run_scenario(source, interval, reps, rate=rate, log_dir=log_dir, log=log, debounce=debounce)
            )
        except (BenchError, OSError, RuntimeError, AssertionError) as error:
            log(f"    FAILED {label}: {error}")
            out.append(
                {
                    "source": source,
                    "evaluation_interval_s": interval,
                    "debounce_s": debounce,
                    "error": str(error),
                }
            )
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="reaction-time benchmark alone")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--source", choices=["envoy", "prometheus"])
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--debounce", type=float)
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="spillover-reaction-")
    if args.source:
        result = run_scenario(
            args.source, args.interval, args.reps, rate=100.0, log_dir=directory, debounce=args.debounce
        )
        print(json.dumps(result, indent=2))
    else:
        print(json.dumps(run(args.quick, directory), indent=2))
