"""Pieces for the overflow end-to-end tests: batches of requests counted by the backend that answered,
slow requests kept in flight, and per-resource versions of what a proxy was sent."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tests.harness.client import Response
from tests.harness.envoy import dicts_in
from tests.harness.load import post_model
from tests.harness.serve import Spillover

REMOTE = "remote"


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
    headers: dict[str, str] = field(default_factory=dict)  # e.g. a profile (config-profile)
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
        headers = {**self.headers, "x-upstream-delay-s": str(self.delay_s)}
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


def sent_routes(server: Spillover, node: str, model: str) -> str:
    """The routes of `model` (named `<model>/<profile>`) in the RouteConfigurations sent to `node`,
    as canonical JSON: shared route configurations change with any model, these parts must not."""
    document = server.get_json(f"/debug/config?node={node}")
    routes = [
        node_
        for resource in document["resources"].get("RDS", [])
        for node_ in dicts_in(resource.get("resource", {}))
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
