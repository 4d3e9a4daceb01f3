"""Who is connected: the admitted streams (what providers and metric sources see), the node groups they
belong to (forgotten after a grace period without streams), and the streams each identity holds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from spillover.server.cache import Scheduler, Timer
from spillover.server.streams import BaseStream

__all__ = ["GroupTracker", "IdentityStreams", "ProxyRegistry"]

log = logging.getLogger("spillover.server.service")


class ProxyRegistry:
    """The admitted streams. Observers learn when the set of proxies in a group changes.

    Only streams that passed admission are here: they alone count as replicas of a group (which divides
    model-wide rate limits) and only their admin endpoints are read by the metric sources."""

    def __init__(self) -> None:
        self._streams: set[BaseStream] = set()
        self.on_change: list[Callable[[str], None]] = []

    def add(self, stream: BaseStream) -> None:
        self._streams.add(stream)
        self._notify(stream.group)

    def remove(self, stream: BaseStream) -> None:
        if stream in self._streams:
            self._streams.remove(stream)
            self._notify(stream.group)

    def _notify(self, group: str) -> None:
        for callback in self.on_change:
            try:
                callback(group)
            except Exception:
                log.exception("proxy registry observer failed")

    def streams(self) -> list[BaseStream]:
        return sorted(self._streams, key=lambda s: (s.group, s.node_id, s.connected_at))

    def replicas(self, group: str) -> int:
        """Distinct Envoys (by node id) connected for a group."""
        return len({s.node_id for s in self._streams if s.group == group})

    def admin_urls(self, group: str | None = None) -> list[str]:
        """Admin endpoints of the connected Envoys (one per node id), for reading their stats."""
        urls: dict[str, str] = {}
        for stream in self.streams():
            url = stream.admin_url()
            if url and (group is None or stream.group == group):
                urls.setdefault(stream.node_id, url)
        return [urls[node] for node in sorted(urls)]

    def find(self, node_id: str) -> list[BaseStream]:
        return [s for s in self.streams() if s.node_id == node_id]


class GroupTracker:
    """Node groups made by clients: at most `max_groups` at once, each forgotten (`expire(group)`) once it
    has had no stream for `grace` seconds. A group that gets a stream back in time is kept."""

    def __init__(
        self,
        max_groups: int,
        grace: float,
        expire: Callable[[str], None],
        call_later: Scheduler | None = None,
    ) -> None:
        if max_groups < 1 or grace < 0:
            raise ValueError("max_groups must be >= 1 and grace >= 0")
        self.max_groups = max_groups
        self.grace = grace
        self._expire = expire
        self._call_later = call_later
        self._streams: dict[str, int] = {}
        self._expiring: dict[str, Timer] = {}
        # Groups whose clock stopped with the server (close) and starts again with it (resume).
        self._paused: set[str] = set()

    def __len__(self) -> int:
        return len(self._streams) + len(self._expiring) + len(self._paused)

    def __contains__(self, group: object) -> bool:
        return group in self._streams or group in self._expiring or group in self._paused

    def join(self, group: str) -> bool:
        """A stream of `group` was admitted; False (and nothing counted) when that would be one group too many."""
        if group not in self and len(self) >= self.max_groups:
            return False
        timer = self._expiring.pop(group, None)
        if timer is not None:
            timer.cancel()
        self._paused.discard(group)
        self._streams[group] = self._streams.get(group, 0) + 1
        return True

    def expect(self, group: str) -> bool:
        """A group served before a restart and not yet back: kept for the grace period, as one whose last
        stream left. False (nothing kept) when there is no room for it."""
        if group in self:
            return True
        if len(self) >= self.max_groups:
            return False
        self._start_expiry(group)
        return True

    def leave(self, group: str) -> None:
        left = self._streams.get(group, 0) - 1
        if left > 0:
            self._streams[group] = left
            return
        self._streams.pop(group, None)
        self._start_expiry(group)

    def _start_expiry(self, group: str) -> None:
        call_later = self._call_later or asyncio.get_running_loop().call_later
        self._expiring[group] = call_later(self.grace, lambda: self._expired(group))

    def _expired(self, group: str) -> None:
        if self._expiring.pop(group, None) is None:
            return
        try:
            self._expire(group)
        except Exception:
            log.exception("forgetting node group failed")

    def close(self) -> None:
        """The server stopped: no timer may fire on a stopped loop, but the groups waiting to be forgotten
        stay counted and wait a whole grace again once the server `resume`s (a stop and start must never
        keep a group, its snapshot and its series forever)."""
        for group, timer in self._expiring.items():
            timer.cancel()
            self._paused.add(group)
        self._expiring.clear()

    def resume(self) -> None:
        for group in sorted(self._paused):
            if group not in self._streams:
                self._start_expiry(group)
        self._paused.clear()


class IdentityStreams:
    """Open streams per client identity (admitted or still waiting for their first request)."""

    def __init__(self) -> None:
        self._open: dict[tuple[bool, str], int] = {}

    def open(self, key: tuple[bool, str], limit: int) -> bool:
        count = self._open.get(key, 0)
        if count >= limit:
            return False
        self._open[key] = count + 1
        return True

    def close(self, key: tuple[bool, str]) -> None:
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)

    def count(self, key: tuple[bool, str]) -> int:
        return self._open.get(key, 0)
