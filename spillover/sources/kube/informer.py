"""A list+watch informer over the `kubernetes` client, in a worker thread.

The protocol, as client-go's reflector does it:

1. LIST (paginated) -> the store is replaced by the result, diffed against what it held, and the list's
   `resourceVersion` is remembered;
2. WATCH from that resourceVersion with `allowWatchBookmarks=true` and a server-side `timeoutSeconds`;
   every event and every BOOKMARK moves the resourceVersion forward, so a watch that ends normally (the
   server's timeout) is simply reopened where it stopped, without a relist;
3. `410 Gone` (the watch request answered 410, or an ERROR event with code 410: the resourceVersion was
   compacted away) -> LIST again and diff the store: objects deleted meanwhile are reported as DELETED;
4. any other failure -> exponential backoff with full jitter, capped; a successful LIST or WATCH resets it.

The read timeout is a little longer than the server-side watch timeout, so a silently dead connection is
noticed. Objects are kept as the API server's JSON (plain dicts), keyed by (namespace, name).

`on_event(type, object)` is called in the worker thread for ADDED / MODIFIED / DELETED (also those found by
a relist) and `on_sync()` after every completed LIST; keep them short (set a flag, wake a loop).
Object contents are never logged: a store may hold Secrets.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

from spillover.sources.kube.kinds import Key, Object, Resource, key_of, resource_version_of

log = logging.getLogger(__name__)

ADDED, MODIFIED, DELETED, BOOKMARK, ERROR = "ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"


class Gone(Exception):
    """The resourceVersion is too old (compacted): the informer must relist."""


@dataclass
class InformerStats:
    lists: int = 0  # completed LISTs, the first one included
    relists: int = 0  # LISTs caused by 410 Gone
    watches: int = 0  # WATCH requests opened
    events: int = 0  # ADDED / MODIFIED / DELETED received on watches
    bookmarks: int = 0
    errors: int = 0  # failures that were retried with backoff
    bytes_read: int = 0  # of LIST answers and WATCH streams
    last_error: str = ""
    # The failure the informer is retrying now ("" once a LIST completed or a WATCH opened since).
    failing: str = ""
    gone_at: list[str] = field(default_factory=list)  # the resourceVersions that were answered 410


class Informer:
    """Lists and watches one resource type, in one namespace (or cluster-wide with namespace None)."""

    def __init__(
        self,
        api: ApiClient,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        on_event: Callable[[str, Object], None] | None = None,
        on_sync: Callable[[], None] | None = None,
        watch_timeout: float = 300.0,
        read_timeout_slack: float = 30.0,
        connect_timeout: float = 10.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        page_size: int = 500,
        name: str | None = None,
        describe: Callable[[BaseException], str] | None = None,
    ) -> None:
        self.api = api
        self.resource = resource
        self.namespace = namespace or None
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.on_event = on_event
        self.on_sync = on_sync
        self.watch_timeout = watch_timeout
        self.read_timeout_slack = read_timeout_slack
        self.connect_timeout = connect_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.page_size = page_size
        self.name = name or self._describe()
        # How failures are told (in stats and logs): a caller whose URLs must not be shown gives its own.
        self._describe_failure = describe or _describe_error
        self.stats = InformerStats()
        self.synced = threading.Event()  # set after the first complete LIST
        self._store: dict[Key, Object] = {}
        self._lock = threading.Lock()
        self._resource_version = ""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: Any = None  # the open urllib3 response, to interrupt it on stop()
        self._restart = False  # restart_watch() interrupted the watch: not an error

    def _describe(self) -> str:
        parts = [str(self.resource), f"in {self.namespace}" if self.namespace else "cluster-wide"]
        if self.label_selector:
            parts.append(f"labels {self.label_selector}")
        if self.field_selector:
            parts.append(f"fields {self.field_selector}")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"Informer({self.name})"

    # -- reading the store ---------------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        return self._resource_version

    def snapshot(self) -> dict[Key, Object]:
        with self._lock:
            return dict(self._store)

    def get(self, namespace: str, name: str) -> Object | None:
        with self._lock:
            return self._store.get((namespace, name))

    def __len__(self) -> int:
        with self._lock:
            return len(self._store)

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> Informer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"informer {self.name}", daemon=True)
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Ends the worker: interrupts an open watch and joins the thread."""
        self._stopping.set()
        self._interrupt()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def restart_watch(self, resource_version: str | None = None) -> None:
        """Ends the open watch; the next one starts from `resource_version` (default: where it was).

        A resourceVersion that etcd has compacted makes the API server answer 410 Gone, which makes the
        informer relist: tests use this to exercise recovery, operators to force a resync.
        """
        if resource_version is not None:
            self._resource_version = resource_version
        self._restart = True
        self._interrupt()

    def _interrupt(self) -> None:
        response = self._response
        if response is None:
            return
        try:
            response.shutdown()  # urllib3 >= 2.3: unblocks a read in another thread
        except Exception:
            with contextlib.suppress(Exception):
                response.close()  # older urllib3: the read timeout ends the watch at the latest

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self.synced.wait(timeout)

    # -- the worker ----------------------------------------------------------------------------------

    def _run(self) -> None:
        need_list = True
        failures = 0
        while not self._stopping.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                    failures = 0
                started, events = time.monotonic(), self.stats.events + self.stats.bookmarks
                self._watch()
                if self._restart:
                    self._restart = False
                elif time.monotonic() - started < 1.0 and self.stats.events + self.stats.bookmarks == events:
                    # Closed at once with nothing in it: do not spin against a misbehaving server.
                    self._stopping.wait(self.backoff_initial)
                failures = 0
            except Gone:
                if self._stopping.is_set():
                    break
                self._restart = False
                self.stats.relists += 1
                log.info("%s: resourceVersion %s is gone (410); relisting", self.name, self._resource_version)
                need_list = True
            except Exception as error:
                if self._stopping.is_set():
                    break
                if self._restart:  # the interrupted read of restart_watch()
                    self._restart = False
                    continue
                failures += 1
                self.stats.errors += 1
                self.stats.last_error = self.stats.failing = self._describe_failure(error)
                # Full jitter (AWS "exponential backoff and jitter"): no thundering herd on an API restart.
                cap = min(self.backoff_max, self.backoff_initial * 2 ** min(failures - 1, 30))
                delay = random.uniform(cap / 2, cap)
                log.warning("%s: %s; retrying in %.1fs", self.name, self.stats.last_error, delay)
                self._stopping.wait(delay)
        self._response = None

    def _request(self, params: list[tuple[str, Any]], read_timeout: float) -> Any:
        """GET the resource path; the urllib3 response (not preloaded). Raises ApiException for non-2xx."""
        method, url, headers, body, post = self.api.param_serialize(
            method="GET",
            resource_path=self.resource.path(self.namespace),
            query_params=params,
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        rest = self.api.call_api(method, url, header_params=headers, body=body, post_params=post,
                                 _request_timeout=(self.connect_timeout, read_timeout))
        response = rest.response
        if not 200 <= response.status <= 299:
            try:
                data = response.data.decode("utf-8", "replace")
            finally:
                response.release_conn()
            raise ApiException(status=response.status, reason=response.reason, body=data)
        return response

    def _selectors(self) -> list[tuple[str, Any]]:
        params: list[tuple[str, Any]] = []
        if self.label_selector:
            params.append(("labelSelector", self.label_selector))
        if self.field_selector:
            params.append(("fieldSelector", self.field_selector))
        return params

    def _list(self) -> None:
        items: dict[Key, Object] = {}
        token = ""
        resource_version = ""
        while True:
            params = [*self._selectors(), ("limit", self.page_size)]
            if token:
                params.append(("continue", token))
            try:
                response = self._request(params, read_timeout=60.0)
            except ApiException as error:
                if error.status == 410:  # the continue token expired: start over
                    raise Gone() from None
                raise
            try:
                data = response.data
                self.stats.bytes_read += len(data)
                document = json.loads(data)
            finally:
                response.release_conn()
            kind = self.resource.kind
            for item in document.get("items") or []:
                # Items of a list carry neither kind nor apiVersion; give them back.
                item.setdefault("kind", kind)
                item.setdefault("apiVersion", document.get("apiVersion") or self.resource.api_version)
                items[key_of(item)] = item
            meta = document.get("metadata") or {}
            resource_version = str(meta.get("resourceVersion") or resource_version)
            token = meta.get("continue") or ""
            if not token:
                break
        with self._lock:
            old = self._store
            self._store = items
            self._resource_version = resource_version
        self.stats.lists += 1
        self.stats.failing = ""
        events = [(DELETED, obj) for key, obj in old.items() if key not in items]
        for key, obj in items.items():
            before = old.get(key)
            if before is None:
                events.append((ADDED, obj))
            elif resource_version_of(before) != resource_version_of(obj):
                events.append((MODIFIED, obj))
        log.debug("%s: listed %d object(s) at resourceVersion %s", self.name, len(items), resource_version)
        for type_, obj in events:
            self._emit(type_, obj)
        self.synced.set()
        if self.on_sync is not None:
            self._call(self.on_sync)

    def _watch(self) -> None:
        timeout = int(self.watch_timeout * random.uniform(1.0, 2.0)) if self.watch_timeout >= 1 else 1
        params = [
            *self._selectors(),
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", self._resource_version),
            ("timeoutSeconds", timeout),
        ]
        try:
            response = self._request(params, read_timeout=timeout + self.read_timeout_slack)
        except ApiException as error:
            if error.status == 410:
                self.stats.gone_at.append(self._resource_version)
                raise Gone() from None
            raise
        self._response = response
        self.stats.watches += 1
        self.stats.failing = ""
        try:
            for line in _lines(response):
                self.stats.bytes_read += len(line) + 1
                if self._stopping.is_set():
                    return
                if not line.strip():
                    continue
                self._handle(json.loads(line))
        finally:
            self._response = None
            # Never back to the pool: a watch connection may be half shut down or mid-chunk.
            with contextlib.suppress(Exception):
                response.close()

    def _handle(self, event: dict[str, Any]) -> None:
        type_ = event.get("type")
        obj = event.get("object") or {}
        if type_ == ERROR:
            code = obj.get("code")
            if code == 410:
                self.stats.gone_at.append(self._resource_version)
                raise Gone()
            raise ApiException(status=code, reason=f"{obj.get('reason', '')}: {obj.get('message', '')}".strip(": "))
        rv = resource_version_of(obj)
        if type_ == BOOKMARK:
            self.stats.bookmarks += 1
            if rv:
                self._resource_version = rv
            return
        if type_ not in (ADDED, MODIFIED, DELETED):
            return
        obj.setdefault("kind", self.resource.kind)
        obj.setdefault("apiVersion", self.resource.api_version)
        key = key_of(obj)
        with self._lock:
            if type_ == DELETED:
                self._store.pop(key, None)
            else:
                self._store[key] = obj
            if rv:
                self._resource_version = rv
        self.stats.events += 1
        self._emit(type_, obj)

    def _emit(self, type_: str, obj: Object) -> None:
        if self.on_event is not None:
            self._call(self.on_event, type_, obj)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("%s: event handler failed", self.name)


def _lines(response: Any) -> Iterator[str]:
    buffer = bytearray()
    for chunk in response.stream(amt=None, decode_content=True):
        buffer.extend(chunk)
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                break
            line = bytes(buffer[:newline])
            del buffer[: newline + 1]
            yield line.decode("utf-8", "replace")
    if buffer.strip():
        yield bytes(buffer).decode("utf-8", "replace")


def _describe_error(error: BaseException) -> str:
    if isinstance(error, ApiException):
        reason = error.reason or ""
        message = ""
        if error.body:
            try:
                message = json.loads(error.body).get("message", "")
            except (ValueError, AttributeError):
                message = ""
        return f"HTTP {error.status} {reason}{': ' + message if message else ''}"
    return f"{type(error).__name__}: {error}"


def wait_all_synced(informers: list[Informer], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    return all(informer.synced.wait(max(0.0, deadline - time.monotonic())) for informer in informers)
