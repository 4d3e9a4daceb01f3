"""A real Prometheus server (Debian's `prometheus` package) for tests, on 127.0.0.1, stopped by pid."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from tests.harness.polling import wait_until
from tests.harness.ports import free_port

__all__ = ["Prometheus", "ScrapeJob", "prometheus_binary"]

DEFAULT_BINARY = "/usr/bin/prometheus"


def prometheus_binary() -> str:
    candidates = [os.environ.get("PROMETHEUS_BINARY"), DEFAULT_BINARY, shutil.which("prometheus")]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        f"no prometheus binary at {DEFAULT_BINARY} or on PATH: run `make test` (it installs Debian's "
        "prometheus package: apt-get install -y --no-install-recommends prometheus)"
    )


@dataclass(frozen=True)
class ScrapeJob:
    """One scrape job: `targets` (host:port) at `metrics_path`, e.g. Envoys at /stats/prometheus."""

    name: str
    targets: tuple[str, ...]
    metrics_path: str = "/metrics"


_LIVE: set[Prometheus] = set()


@atexit.register
def _stop_leftovers() -> None:
    for prom in list(_LIVE):
        prom.stop(timeout=2)


class Prometheus:
    """``Prometheus(workdir, targets=["127.0.0.1:8000"])``: scrapes the targets every second; ``jobs``
    scrapes several kinds of target instead (each with its own metrics path)."""

    def __init__(
        self,
        workdir: Path,
        targets: list[str] | None = None,
        *,
        scrape_interval: str = "1s",
        metrics_path: str = "/metrics",
        port: int = 0,
        jobs: list[ScrapeJob] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.targets = list(targets or [])
        self.jobs = list(jobs or [ScrapeJob("models", tuple(self.targets), metrics_path)])
        self.scrape_interval = scrape_interval
        self.metrics_path = metrics_path
        self.port = port
        self.config_path = self.workdir / "prometheus.yml"
        self.data_path = self.workdir / "data"
        self.log_path = self.workdir / "prometheus.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def config(self) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [
                {
                    "job_name": job.name,
                    "metrics_path": job.metrics_path,
                    "scrape_timeout": self.scrape_interval,
                    "static_configs": [{"targets": list(job.targets)}],
                }
                for job in self.jobs
            ],
        }

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30.0) -> Prometheus:
        if self.is_running():
            raise RuntimeError(f"prometheus already running (pid {self.pid})")
        binary = prometheus_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_path.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        for _attempt in range(3):
            if not self.port:
                self.port = free_port()
            self._log = self.log_path.open("ab")
            self._proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.data_path}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                    "--storage.tsdb.retention.time=1h",
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
            _LIVE.add(self)
            try:
                self.wait_ready(timeout)
                return self
            except AssertionError:
                code = self.stop()
                if "address already in use" not in self.log_tail():
                    raise RuntimeError(f"prometheus did not become ready (exit {code})\n{self.log_tail()}") from None
                self.port = 0  # lost a port race: try another
        raise RuntimeError(f"prometheus could not bind a port\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None
        _LIVE.discard(self)
        self._proc = None
        return proc.returncode

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -- HTTP API --------------------------------------------------------------------------------

    def _get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def is_ready(self) -> bool:
        try:
            return self._get("/-/ready", timeout=1.0)[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        def ready() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self._proc.returncode}")
            return self.is_ready()

        wait_until(ready, timeout=timeout, interval=0.1, message=f"prometheus on {self.url} not ready")

    def query(self, promql: str) -> list[dict[str, Any]]:
        status, body = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        document = json.loads(body)
        if status != 200 or document.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {document}")
        return list(document["data"]["result"])

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        form = urllib.parse.urlencode({"query": promql, "start": start, "end": end, "step": step})
        status, body = self._get("/api/v1/query_range?" + form, timeout=10.0)
        document = json.loads(body)
        if status != 200 or document.get("status") != "success":
            raise RuntimeError(f"query_range {promql!r} failed: {document}")
        return list(document["data"]["result"])

    def label_values(self, label: str, match: str) -> list[str]:
        form = urllib.parse.urlencode({"match[]": match})
        status, body = self._get(f"/api/v1/label/{label}/values?" + form)
        document = json.loads(body)
        if status != 200 or document.get("status") != "success":
            raise RuntimeError(f"label values of {label} for {match!r} failed: {document}")
        return list(document["data"])

    def wait_for_series(self, promql: str, timeout: float = 15.0, count: int = 1) -> list[dict[str, Any]]:
        """Poll until the query returns at least `count` series; returns them."""
        def check() -> list[dict[str, Any]] | None:
            series = self.query(promql)
            return series if len(series) >= count else None

        return wait_until(
            check,
            timeout=timeout,
            interval=0.2,
            message=f"no {count} series for {promql!r} on {self.url}",
        )

    def wait_for_value(self, promql: str, predicate: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll until predicate(values) holds for the query's values (floats)."""

        def check() -> list[dict[str, Any]] | None:
            series = self.query(promql)
            values = [float(s["value"][1]) for s in series]
            return series if series and predicate(values) else None

        return wait_until(check, timeout=timeout, interval=0.2, message=f"{promql!r} on {self.url}")

    def __repr__(self) -> str:
        return f"Prometheus(pid={self.pid}, url={self.url!r}, targets={self.targets!r})"

