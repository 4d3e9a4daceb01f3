"""Pieces for the overflow end-to-end tests: `spillover serve` with metric sources, Envoys that advertise
their admin port (so spillover reads their stats and endpoint health), batches of requests counted by
the backend that answered, and per-resource versions of what a proxy was sent."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spillover.bootstrap import build_bootstrap
from tests.e2e.harness import REPO, Spillover, post_model
from tests.harness.client import Response, request
from tests.harness.envoy import Envoy
from tests.harness.polling import wait_until
from tests.harness.ports import free_port

REMOTE = "remote"


class OverflowSpillover(Spillover):
    """`spillover serve --policies` with `--prometheus-url` and `--evaluation-interval`."""

    def __init__(
        self,
        policies: Path,
        workdir: Path,
        *,
        prometheus_url: str | None = None,
        evaluation_interval: float = 0.25,
        **kwargs: Any,
    ) -> None:
        super().__init__(policies, workdir, **kwargs)
        self.prometheus_url = prometheus_url
        self.evaluation_interval = evaluation_interval

    def start(self, timeout: float = 20.0) -> OverflowSpillover:
        command = [
            sys.executable, "-m", "spillover", "--log-level", self.log_level, "serve",
            "--policies", str(self.policies),
            "--listen", f"127.0.0.1:{self.listen_port}",
            "--xds-address", self.xds_address,
            "--admin-address", f"127.0.0.1:{self.admin_port}",
            "--debounce", str(self.debounce),
            "--evaluation-interval", str(self.evaluation_interval),
        ]  # fmt: skip
        if self.prometheus_url:
            command += ["--prometheus-url", self.prometheus_url]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            )
        proc = self.proc

        def ready_or_exited() -> bool:
            return proc.poll() is not None or request("GET", self.admin + "/readyz", timeout=1).status == 200

        wait_until(ready_or_exited, timeout=timeout, message="spillover serve never became ready")
        assert proc.poll() is None, f"spillover serve exited with {proc.returncode}:\n{self.log()}"
        return self

    def model(self, name: str) -> dict[str, Any]:
        return self.models()["models"][name]

    def wait_model(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], object],
        timeout: float = 20.0,
        message: str = "",
    ) -> dict[str, Any]:
        """Polls /debug/models until `predicate(model document)` holds; returns that document."""

        def check() -> dict[str, Any] | None:
            document = self.model(name)
            return document if predicate(document) else None

        return wait_until(check, timeout=timeout, interval=0.05, message=message or f"model {name}")

    def wait_state(self, name: str, state: str, timeout: float = 20.0) -> dict[str, Any]:
        return self.wait_model(
            name, lambda m: m["state"] == state, timeout, f"model {name} never reached {state}"
        )


def start_edge(envoy_factory: Callable[..., Envoy], server: Spillover, node_id: str) -> Envoy:
    """A real Envoy on spillover's ADS with a real admin port in its node metadata (admin_port=0 would
    advertise nothing: spillover could read neither its stats nor its view of endpoint health)."""
    envoy = envoy_factory(
        build_bootstrap(node_id, "edge", server.xds_address, admin_port=free_port()), name=node_id
    )
    wait_until(envoy.is_ready, timeout=20, message=f"envoy {node_id} never became ready")
    wait_until(
        lambda: post_model(server.listen_port, "__probe__").status == 404,
        timeout=15,
        message=f"listener of {node_id} never answered",
    )
    return envoy


# -- traffic -------------------------------------------------------------------------------------------


def backend_of(response: Response) -> str:
    """Who answered: the HttpUpstream's name (x-upstream-name), a ModelServer's name (JSON `server`),
    or `status:<code>` for anything that was not a 200."""
    if response.status != 200:
        return f"status:{response.status}"
    name = response.headers.get("x-upstream-name")
    if name:
        return name
    try:
        return str(response.json().get("server", "?"))
    except ValueError:
        return "?"


def send_batch(
    port: int, model: str, count: int, workers: int = 4, headers: dict[str, str] | None = None
) -> Counter[str]:
    """`count` requests (fresh connection each, `workers` at a time); a Counter of who answered."""

    def one(_: int) -> str:
        try:
            return backend_of(post_model(port, model, headers))
        except OSError as error:
            return f"error:{type(error).__name__}"

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return Counter(pool.map(one, range(count)))


def remote_percent(batch: Counter[str]) -> float:
    return 100.0 * batch[REMOTE] / max(1, sum(batch.values()))


@dataclass
class InFlight:
    """`workers` threads that keep one slow request each in flight until `stop()`; what answered."""

    port: int
    model: str
    workers: int
    delay_s: float
    answers: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> InFlight:
        for i in range(self.workers):
            thread = threading.Thread(target=self._run, name=f"inflight-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self) -> None:
        headers = {"x-upstream-delay-s": str(self.delay_s)}
        while not self._stop.is_set():
            try:
                who = backend_of(post_model(self.port, self.model, headers))
            except OSError as error:
                who = f"error:{type(error).__name__}"
            with self._lock:
                self.answers[who] += 1

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))


# -- what a proxy was sent -------------------------------------------------------------------------------


def sent_versions(server: Spillover, node: str, prefix: str) -> dict[tuple[str, str], str]:
    """{(type, name): version} of every resource sent to `node` whose name starts with `prefix`."""
    document = server.get_json(f"/debug/config?node={node}")
    return {
        (kind, resource["name"]): resource["version"]
        for kind, resources in document["resources"].items()
        for resource in resources
        if resource["name"].startswith(prefix)
    }


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def sent_routes(server: Spillover, node: str, model: str) -> str:
    """The routes of `model` (named `<model>/<profile>`) in the RouteConfigurations sent to `node`,
    as canonical JSON: shared route configurations change with any model, these parts must not."""
    document = server.get_json(f"/debug/config?node={node}")
    routes = [
        node_
        for resource in document["resources"].get("RDS", [])
        for node_ in _walk(resource.get("resource", {}))
        if isinstance(node_.get("name"), str) and node_["name"].startswith(f"{model}/") and "match" in node_
    ]
    return json.dumps(sorted(routes, key=lambda r: json.dumps(r, sort_keys=True)), sort_keys=True)


@dataclass
class Bystander:
    """A second model served alongside: what `node` was sent for it, to compare across a transition of
    another model (its clusters and endpoints by version, its routes by content)."""

    server: Spillover
    node: str
    model: str
    versions: dict[tuple[str, str], str] = field(default_factory=dict)
    routes: str = ""

    def snapshot(self) -> Bystander:
        self.versions = sent_versions(self.server, self.node, f"{self.model}/")
        self.routes = sent_routes(self.server, self.node, self.model)
        assert {kind for kind, _ in self.versions} >= {"CDS", "EDS"}, self.versions
        assert self.routes != "[]", f"no route of {self.model} in the RDS sent to {self.node}"
        return self

    def assert_unchanged(self) -> None:
        assert sent_versions(self.server, self.node, f"{self.model}/") == self.versions
        assert sent_routes(self.server, self.node, self.model) == self.routes
