"""spillover's xDS + admin servers on their own event loop in a background thread.

Tests stay plain synchronous code (they block on Envoy and HTTP freely) while the real
``XdsServer``/``AdminServer``/``SnapshotCache`` run on a loop of their own. Every public method is
thread-safe: work that touches the server is submitted to that loop and waited for.

``stop()`` then ``start(port)`` (or ``restart()``) models a control-plane *process* restart: a fresh
cache, server, admin endpoint and metrics registry, loaded with the same snapshots as before (what a
restarted spillover would rebuild from the same inputs), listening on the same ports.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import quote

from envoy.config.core.v3 import base_pb2
from google.protobuf.message import Message

from spillover.controller.admin import AdminServer
from spillover.server.cache import Snapshot, SnapshotCache
from spillover.server.service import XdsOptions, XdsServer, group_by_cluster
from spillover.server.workers import WorkerPool
from tests.harness import client, event_loops

__all__ = ["XdsThread"]

T = TypeVar("T")


class XdsThread:
    def __init__(
        self,
        debounce: float = 0.1,
        max_delay: float = 1.0,
        group_of: Callable[[base_pb2.Node], str] = group_by_cluster,
        options: XdsOptions | None = None,
        workers: int = 1,
    ) -> None:
        self.options = options
        # More than 1: the streams are served by that many worker processes (spillover.server.workers).
        self.workers = workers
        self.debounce = debounce
        self.max_delay = max_delay
        self.group_of = group_of
        self.loop = event_loops.new_loop()
        self._thread = threading.Thread(target=self._run_loop, name="xds-loop", daemon=True)
        self._thread.start()
        self._lock = threading.RLock()
        # What each group was last given, so that a restarted server serves the same config.
        self._messages: dict[str, list[Message]] = {}
        self.cache: SnapshotCache | None = None
        self.server: XdsServer | None = None
        self.admin: AdminServer | None = None
        self.port: int = 0
        self.admin_port: int = 0
        self.starts = 0
        self._closed = False

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    # -- running things on the loop ---------------------------------------------------------------

    def call(self, coro_fn: Callable[[], Awaitable[T]], timeout: float = 15.0) -> T:
        """Run ``await coro_fn()`` on the server's loop and return its result."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("XdsThread.call from the loop thread would deadlock")

        async def run() -> T:
            return await coro_fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def call_soon(self, fn: Callable[[], T], timeout: float = 15.0) -> T:
        """Run a plain function on the server's loop (where the cache must be touched)."""

        async def run() -> T:
            return fn()

        return self.call(run, timeout)

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self, port: int = 0, admin_port: int | None = None) -> int:
        """Start a fresh server (cache, xDS, admin); returns the xDS port. The admin port is kept
        across restarts unless given."""
        with self._lock:
            if self.server is not None:
                raise RuntimeError("XdsThread is already running")
            if admin_port is None:
                admin_port = self.admin_port
            cache = SnapshotCache(debounce=self.debounce, max_delay=self.max_delay)
            server = (
                WorkerPool(cache, self.workers, group_of=self.group_of, options=self.options, event_loop=event_loops.KIND)
                if self.workers > 1
                else XdsServer(cache, group_of=self.group_of, options=self.options)
            )
            admin = AdminServer(server, [server.metrics_registry], ready=lambda: self.server is not None)

            async def boot() -> tuple[int, int]:
                for group, messages in self._messages.items():
                    cache.set_snapshot(group, Snapshot.from_messages(messages))
                xds_port = await _retry_bind(lambda: server.start(f"127.0.0.1:{port}"))
                try:
                    bound_admin = await _retry_bind(lambda: admin.start("127.0.0.1", admin_port))
                except BaseException:
                    await server.stop(0)
                    raise
                return xds_port, bound_admin

            self.port, self.admin_port = self.call(boot)
            self.cache, self.server, self.admin = cache, server, admin
            self.starts += 1
            return self.port

    def stop(self, grace: float = 0.2) -> None:
        """Stop the xDS and admin servers (Envoys keep their config); snapshots are remembered."""
        with self._lock:
            server, admin = self.server, self.admin
            if server is None:
                return
            self.server = self.admin = self.cache = None

            async def shutdown() -> None:
                await server.stop(grace)
                if admin is not None:
                    await admin.stop()

            self.call(shutdown)

    def restart(self, grace: float = 0.2) -> int:
        """A control-plane restart on the same xDS and admin ports, with the same snapshots."""
        with self._lock:
            port = self.port
            self.stop(grace)
            return self.start(port)

    def close(self) -> None:
        """Stop the servers and the loop thread; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.stop(0)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(timeout=10)
                if not self._thread.is_alive():
                    self.loop.close()

    def __enter__(self) -> XdsThread:
        if self.server is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- publishing ---------------------------------------------------------------------------------

    def _require(self) -> tuple[SnapshotCache, XdsServer]:
        cache, server = self.cache, self.server
        if cache is None or server is None:
            raise RuntimeError("XdsThread is not running")
        return cache, server

    def set_snapshot(self, group: str, messages: Iterable[Message]) -> Snapshot:
        """Publish at once (no debounce); returns the published snapshot."""
        with self._lock:
            cache, _ = self._require()
            messages = list(messages)
            snapshot = Snapshot.from_messages(messages)
            self._messages[group] = messages
            self.call_soon(lambda: cache.set_snapshot(group, snapshot))
            return snapshot

    def update(self, group: str, messages: Iterable[Message]) -> Snapshot:
        """Debounced publish, as the control plane does for bursts of changes."""
        with self._lock:
            cache, _ = self._require()
            messages = list(messages)
            snapshot = Snapshot.from_messages(messages)
            self._messages[group] = messages
            self.call_soon(lambda: cache.update(group, snapshot))
            return snapshot

    def snapshot(self, group: str) -> Snapshot | None:
        cache, _ = self._require()
        return self.call_soon(lambda: cache.get(group))

    # -- observing ----------------------------------------------------------------------------------

    @property
    def xds_address(self) -> str:
        if not self.port:
            raise RuntimeError("XdsThread was never started")
        return f"127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        if not self.admin_port:
            raise RuntimeError("XdsThread was never started")
        return f"http://127.0.0.1:{self.admin_port}"

    def admin_get(self, path: str, timeout: float = 5.0) -> client.Response:
        return client.request("GET", self.admin_url + path, timeout=timeout)

    def proxies(self) -> list[dict[str, Any]]:
        """``/debug/proxies``: one entry per connected stream."""
        response = self.admin_get("/debug/proxies")
        if response.status != 200:
            raise AssertionError(f"/debug/proxies answered {response.status}: {response.text[:500]}")
        return list(response.json()["proxies"])

    def proxy(self, node_id: str) -> dict[str, Any] | None:
        """The single connected stream of ``node_id`` (None if not connected; error if several)."""
        found = [p for p in self.proxies() if p["node_id"] == node_id]
        if len(found) > 1:
            raise AssertionError(f"{len(found)} streams for node {node_id!r}: {found}")
        return found[0] if found else None

    def type_state(self, node_id: str, short_type: str) -> dict[str, Any] | None:
        """The per-type state (``CDS``, ``EDS``, ...) of a node's stream in /debug/proxies."""
        proxy = self.proxy(node_id)
        if proxy is None:
            return None
        for state in proxy["types"].values():
            if state["type"] == short_type:
                return dict(state)
        return None

    def config(self, node_id: str) -> dict[str, Any]:
        """``/debug/config?node=ID``: what the proxy was sent."""
        response = self.admin_get("/debug/config?node=" + quote(node_id, safe=""))
        if response.status != 200:
            raise AssertionError(f"/debug/config for {node_id!r} answered {response.status}: {response.text}")
        return dict(response.json())

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """A sample of the running server's prometheus registry (0.0 when never observed)."""
        _, server = self._require()
        self.call(server.refresh_views)  # worker processes: their counters as of now
        value = server.metrics_registry.get_sample_value(name, labels or {})
        return float(value) if value is not None else 0.0

    def responses(self, short_type: str) -> float:
        """``spillover_xds_responses_total`` for one type, since this server (re)started."""
        return self.metric("spillover_xds_responses_total", {"type": short_type})


async def _retry_bind(start: Callable[[], Awaitable[int]], timeout: float = 5.0) -> int:
    """A port just released (restart on the same port) can take a moment to be bindable again."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await start()
        except (OSError, RuntimeError):  # grpc reports a failed bind as RuntimeError
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.05)
