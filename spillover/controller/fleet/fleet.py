"""`Fleet`: one control plane made of several replicas (Kubernetes mode, the Lease companion).

What it does, beside the xDS server and the leader election of `StatusPublishing`:

- **Membership.** Its own Lease (`<fleet>-member-<identity>`, labelled `spillover.dev/fleet`) is
  renewed every `heartbeat` and rewritten when its Envoys change (debounced), carrying the `Summary` of
  them. Every replica watches every member Lease (`LeaseWatch`), so the control plane divides a model's
  `requestsPerSecond` by the group's Envoys of the whole fleet (`count`, the plane's `count_of`).
- **The one decision.** The leader (the holder of the leader election Lease, once it has read the
  fleet's inputs once) evaluates every model from every replica's Envoys (`inputs`, over the peer
  channel) and publishes the decision table (`decisions`); every replica, the leader included, applies
  what is published. A follower never decides.
- **Partitions.** A replica whose own Lease cannot be renewed for `renew_deadline` is no member any
  more: it stops leading (the elector's rule), keeps counting every Envoy it last saw (its view stops
  being current: no other replica may expire), and, unless every other replica it can ask says it is
  cut off too (an API server down for everyone: then nobody expires anybody, and everyone keeps
  serving), it hands its Envoys over: it stops serving xDS and reports not ready, its Envoys reconnect
  to a member (keeping their configuration meanwhile) and are counted there before its own Lease
  expires for the others (`lease_duration` > `renew_deadline`). When it can renew again it serves again.
  So no replica divides a limit among fewer Envoys than serve it for longer than the lease duration.
- **Leaving.** A graceful stop hands the Envoys over first, waits (at most `handover_wait`) until they
  are counted by another replica, then deletes its Lease: the others re-divide at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException
from prometheus_client import CollectorRegistry

from spillover.controller.fleet.codec import lease_name
from spillover.controller.fleet.decisions import FleetDecisions, micro_time
from spillover.controller.fleet.inputs import FleetEnvoySource, FleetHealthReader, FleetInputs
from spillover.controller.fleet.leases import FLEET_LABEL, ROLE_LABEL, LeaseApi, LeaseWatch
from spillover.controller.fleet.membership import FleetEnvoy, FleetView, LocalMembers, Summary
from spillover.controller.fleet.options import FleetOptions, label_value
from spillover.controller.fleet.peers import MEMBER_PATH, PeerClient, PeerServer, PeerToken
from spillover.controller.fleet.views import FleetCollector, FleetViews
from spillover.controller.kubernetes.leader import LeaderElector
from spillover.decide import Decision, ModelMemory

if TYPE_CHECKING:
    from spillover.controller.plane import ControlPlane
    from spillover.controller.policies import PolicyProvider

log = logging.getLogger(__name__)

__all__ = ["Fleet", "FleetOptions"]

_TICK = 0.25
_WATCH_SLACK = 2.0  # a renewal not seen on the watch after this long: the watch is stuck
_MIN_WRITE_INTERVAL = 0.5


class Fleet(FleetViews):
    def __init__(
        self,
        api: ApiClient,
        options: FleetOptions,
        plane: ControlPlane,
        provider: PolicyProvider,
        elector: LeaderElector,
        evaluation_interval: float = 0.5,
    ) -> None:
        self.options = options
        self.identity = options.identity
        self.plane = plane
        self.provider = provider
        self.elector = elector
        self.leases = LeaseApi(api, options.namespace, timeout=options.request_timeout)
        self.fleet_label = label_value(options.fleet)
        self.member_name = lease_name(f"{options.fleet}-member", self.identity)
        self.labels = {FLEET_LABEL: self.fleet_label, "app.kubernetes.io/name": "spillover"}
        self.view = FleetView(self.identity)
        self.local = LocalMembers(options.linger)
        self.started_wall = time.time()
        self._started_mono = time.monotonic()
        self.token = peer_token(options.token_file)
        self.client = PeerClient(self.token, timeout=min(1.0, max(0.2, evaluation_interval))) if self.token else None
        self.peer_url = ""
        self.server: PeerServer | None = None
        self.inputs = FleetInputs(
            self.identity,
            local_envoys=lambda: {s.node_id for s in self.plane.xds.proxies.streams()},
            peers=self._peers,
            fleet_envoys=self.envoys,
            unnamed=self._unnamed,
            deciding=self.deciding,
            client=self.client,
            max_age=options.input_max_age,
            join_grace=options.join_grace,
            min_interval=evaluation_interval / 2,
        )
        self.decisions = FleetDecisions(
            self.leases, options.fleet, self.identity, {**self.labels, ROLE_LABEL: "decisions"},
            apply=provider.adopt, take_over=provider.take_over, deciding=self.deciding,
            lease_duration=options.lease_duration, budget=options.decisions_budget, refresh=options.refresh,
        )
        self.watch = LeaseWatch(api, options.namespace, self.fleet_label, self._on_lease, self._on_sync)
        self._synced = False
        self.refused = ""  # why the API server refuses this replica's Lease ("" when it does not)
        self._member_exists = False
        self._last_renew: float | None = None
        self._last_write_started = -1e9
        self._seen_own_at = -1e9
        self._watch_restarted = -1e9
        self._written: dict[str, str] | None = None
        self._dirty = asyncio.Event()
        self._leading_ready = False
        self._handed_over = False
        self._asking: asyncio.Task[None] | None = None
        self._next_ask = 0.0
        self._counts: dict[str, int] = {}
        self._last_gc = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._warm: asyncio.Task[None] | None = None
        self._decided = False  # decided at least once in this run
        self._previous_renewed: float | None = None  # when this identity's previous run last renewed (wall)
        self.registry = CollectorRegistry()
        self.registry.register(FleetCollector(self))
        # Wiring: the plane counts the fleet's Envoys, the provider decides only as the leader, and both
        # Envoy readers read every replica's Envoys when this replica decides.
        plane.xds.proxies.on_change.append(self._local_changed)
        plane.count_of = self.count
        plane.readiness_checks.append(self.readiness)
        plane.registries.append(self.registry)
        provider.authority = self
        admin_urls = plane.xds.proxies.admin_urls
        provider.use_envoy_readers(FleetEnvoySource(admin_urls, self.inputs), FleetHealthReader(admin_urls, self.inputs))

    # -- membership --------------------------------------------------------------------------------

    @property
    def member(self) -> bool:
        """This replica's Lease was renewed within the renew deadline."""
        return self._last_renew is not None and time.monotonic() - self._last_renew < self.options.renew_deadline

    def _connected(self) -> list[tuple[str, str, float]]:
        return [(s.node_id, s.group, s.connected_at) for s in self.plane.xds.proxies.streams()]

    def _sync_local(self) -> bool:
        changed = self.local.update(self._connected())
        if changed:
            self._dirty.set()
        return changed

    def summary(self) -> Summary:
        return self.local.summary(self.identity, self.peer_url, self.started_wall)

    def count(self, group: str, connected: int) -> int:
        """The group's Envoys in the whole fleet (never fewer than are connected here)."""
        self._sync_local()
        return max(connected, self.view.count(group, self.summary()))

    def envoys(self) -> list[FleetEnvoy]:
        return self.view.envoys(self.summary())

    def _unnamed(self) -> dict[str, int]:
        return {m.identity: sum(m.summary.more.values()) for m in self.view.live()}

    def _peers(self) -> list[tuple[str, str]]:
        return [(m.identity, m.summary.peer) for m in self.view.live() if m.summary.peer]

    def _local_changed(self, group: str) -> None:
        if self._sync_local():
            self._recount()

    def _recount(self) -> None:
        summary = self.summary()
        for group in sorted(self.view.groups(summary) | set(self._counts)):
            count = self.view.count(group, summary)
            if self._counts.get(group) != count:
                log.info("fleet: group %s has %d Envoy(s) across the fleet", group, count)
                self._counts[group] = count
                self.plane.resized(group)
        for group in [g for g, n in self._counts.items() if n == 0]:
            del self._counts[group]

    def _on_lease(self, type_: str, lease: dict[str, Any]) -> None:
        metadata = lease.get("metadata") or {}
        role = (metadata.get("labels") or {}).get(ROLE_LABEL)
        deleted = type_ == "DELETED"
        if role == "decisions":
            self.decisions.observe(deleted, lease)
            return
        if role != "member":
            return
        if metadata.get("name") == self.member_name:
            if not deleted:
                self._seen_own_at = time.monotonic()
            return
        if self.view.remove(str(metadata.get("name"))) if deleted else self.view.observe(lease):
            self._recount()

    def _on_sync(self) -> None:
        self._synced = True
        self._recount()

    def _member_body(self, annotations: Mapping[str, str]) -> dict[str, Any]:
        now = micro_time()
        return {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.member_name, "namespace": self.options.namespace,
                         "labels": {**self.labels, ROLE_LABEL: "member"}, "annotations": dict(annotations)},
            "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": max(1, round(self.options.lease_duration)),
                     "acquireTime": now, "renewTime": now},
        }

    def _write_member(self, annotations: Mapping[str, str], content: bool) -> None:
        """Renews this replica's Lease (and its summary when `content`); creates it when missing."""
        if self._member_exists:
            patch: dict[str, Any] = {"spec": {"holderIdentity": self.identity, "renewTime": micro_time(),
                                              "leaseDurationSeconds": max(1, round(self.options.lease_duration))}}
            if content:
                patch["metadata"] = {"annotations": dict(annotations)}
            if self.leases.patch(self.member_name, patch) is not None:
                return
            self._member_exists = False
        try:
            self.leases.create(self._member_body(annotations))
        except ApiException as exc:
            if exc.status != 409:
                raise
            self._member_exists = True  # created by a previous run meanwhile: renew it
            self._write_member(annotations, True)
            return
        self._member_exists = True

    def _adopt_previous(self) -> None:
        """The Envoys this identity published before a restart are counted for one more lease duration."""
        lease = self.leases.get(self.member_name)
        if lease is None:
            return
        self._member_exists = True
        self._previous_renewed = _wall_time((lease.get("spec") or {}).get("renewTime"))
        try:
            previous = Summary.from_annotations((lease.get("metadata") or {}).get("annotations") or {}, self.identity)
        except ValueError as exc:
            log.info("fleet: the Lease of the previous run can't be read (%s); starting without it", exc)
            return
        if previous.total():
            log.info("fleet: %d Envoy(s) of the previous run are counted until they are back (at most %gs)",
                     previous.total(), self.options.lease_duration)
            self.local.adopt(previous, time.monotonic() + self.options.lease_duration)

    async def _member_loop(self) -> None:
        options = self.options
        next_due = time.monotonic() + options.heartbeat
        last_write = -1e9
        while True:
            wake = min(next_due, self.local.next_expiry() or next_due)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wake - time.monotonic())):
                    await self._dirty.wait()
            if self.local.expire():
                self._dirty.set()
            if self._dirty.is_set():  # a burst of connects becomes one write
                await asyncio.sleep(max(options.debounce, last_write + _MIN_WRITE_INTERVAL - time.monotonic()))
            self._dirty.clear()
            self._sync_local()
            self._dirty.clear()
            annotations = self.summary().annotations(options.envoys_budget)
            content = annotations != self._written
            if not content and time.monotonic() < next_due:
                continue
            started = time.monotonic()
            try:
                async with asyncio.timeout(options.request_timeout):
                    await asyncio.to_thread(self._write_member, annotations, content)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                refused = isinstance(exc, ApiException) and exc.status in (401, 403, 404)
                text = _describe(exc)
                if text != self.refused and (self._last_renew is None or refused
                                             or started - self._last_renew < options.retry_period * 1.5):
                    log.warning("fleet: renewing Lease %s/%s failed: %s", options.namespace, self.member_name, text)
                # Refused (RBAC, no such namespace) is a configuration to fix, not a partition to sit out.
                self.refused = text if refused else ""
                next_due = time.monotonic() + options.retry_period
                self._written = None if content else self._written
                continue
            self.refused = ""
            self._last_renew = self._last_write_started = last_write = started
            self._written = annotations
            next_due = started + options.heartbeat

    # -- leading -----------------------------------------------------------------------------------

    def deciding(self) -> bool:
        return self._leading_ready and self.elector.is_leader

    def on_leading(self) -> None:
        self._leading_ready = False
        if self._warm is not None:
            self._warm.cancel()
        self._warm = asyncio.get_running_loop().create_task(self._warm_up(), name="fleet-take-over")

    def on_following(self) -> None:
        if self._leading_ready:
            log.info("fleet: %s no longer decides; it applies what the leader publishes", self.identity)
        self._leading_ready = False
        if self._warm is not None:
            self._warm.cancel()
            self._warm = None

    async def _warm_up(self) -> None:
        """Before the first decision: the fleet's Leases listed (the published table) and every replica's
        inputs read once, so that no round decides on part of the fleet or from nothing."""
        deadline = time.monotonic() + self.options.request_timeout
        while not self._synced and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.inputs._fetched_at = -1e9
        with contextlib.suppress(Exception):
            await self.inputs.refresh()
        if not self.elector.is_leader:
            return
        table = self.decisions.table
        self.decisions.begin_term(self.elector.term, self._alive_at(table.leader) if table else None)
        self._decided = True
        self._leading_ready = True
        self.decisions.wake()

    def _alive_at(self, identity: str) -> float | None:
        """When `identity` was last seen alive (wall clock), as far as this replica knows: for itself before
        it decided in this run, its previous run's last renewal (timers paused while it was down)."""
        if identity == self.identity:
            return time.time() if self._decided else (self._previous_renewed or time.time())
        seen = [m.changed_at for m in self.view.members.values() if m.identity == identity]
        return time.time() - (time.monotonic() - max(seen)) if seen else None

    def propose(
        self, decisions: Mapping[str, Decision], memories: Mapping[str, ModelMemory],
        latency_weights: Mapping[str, Mapping[str, int]],
    ) -> None:
        self.decisions.propose(decisions, memories, latency_weights)

    # -- partitions --------------------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        if self.local.expire():
            self._dirty.set()
        member = self.member
        seen = self._seen_own_at >= self._last_write_started or now - self._last_write_started < _WATCH_SLACK
        if member and self._synced and not seen and now - self._watch_restarted > 2 * _WATCH_SLACK:
            log.warning("fleet: this replica's renewals are not coming back on its watch: reopening it")
            self._watch_restarted = now
            self.watch.restart()
        if self.view.set_current(member and self._synced and seen):
            log.info("fleet: the view of the fleet is %s", "current" if self.view.current else
                     "no longer current: nobody is counted as gone until it is again")
        self._recount()
        cut_off = now - (self._last_renew if self._last_renew is not None else self._started_mono)
        if not member and not self._handed_over and cut_off >= self.options.renew_deadline:
            if (self._asking is None or self._asking.done()) and now >= self._next_ask:
                self._next_ask = now + 2 * self.options.retry_period
                self._asking = asyncio.get_running_loop().create_task(self._maybe_hand_over())
        elif member and self._handed_over:
            self._handed_over = False
            log.info("fleet: %s renews its Lease again: serving xDS again", self.identity)
            asyncio.get_running_loop().create_task(self.plane.resume_xds())
        if self.deciding() and now - self._last_gc >= 30.0:
            self._last_gc = now
            asyncio.get_running_loop().create_task(self._collect_garbage())

    async def _maybe_hand_over(self) -> None:
        others = [m for m in self.view.members.values() if m.identity != self.identity]
        if not others:
            return  # alone: nobody to hand Envoys to, nobody to count them wrongly
        answers: list[Any] = []
        if self.client is not None:
            answers = await asyncio.gather(
                *(self.client.get(m.summary.peer, MEMBER_PATH) for m in others if m.summary.peer),
                return_exceptions=True,
            )
        # An answer that does not come is a replica that may well be a member: hand over.
        members = [a for a in answers if isinstance(a, BaseException) or (isinstance(a, dict) and a.get("member"))]
        if answers and not members:
            log.warning("fleet: every other replica is cut off from the API server too: keeping its Envoys")
            return
        if self.member or self._handed_over:
            return
        log.warning("fleet: %s can't renew its Lease and others may: handing its Envoys over (xDS stops "
                    "until it can renew again)", self.identity)
        self._handed_over = True
        await self.plane.suspend_xds()

    async def _collect_garbage(self) -> None:
        """The leader deletes the Leases of replicas gone for long (pods that died without leaving)."""
        now = time.monotonic()
        for member in self.view.expired():
            if now - max(member.changed_at, self.view.current_since) > self.options.gc_after:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.leases.delete, member.name)
                    log.info("fleet: deleted the Lease %s of %s, gone for long", member.name, member.identity)

    # -- the companion -----------------------------------------------------------------------------

    async def start(self) -> None:
        if self.options.peer_address is not None and self.token is not None:
            self.server = PeerServer(self.token, self.inputs.document, self._member_document)
            host, port = self.options.peer_address
            bound = await self.server.start(host, port)
            self.peer_url = f"http://{_advertised(self.options.advertise, host)}:{bound}"
        try:
            async with asyncio.timeout(self.options.request_timeout):
                await asyncio.to_thread(self._adopt_previous)
        except Exception as exc:
            log.warning("fleet: reading this replica's previous Lease failed: %s", _describe(exc))
        self._sync_local()
        self._dirty.set()
        self.watch.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._member_loop(), name="fleet-membership"),
            loop.create_task(self.decisions.run(), name="fleet-decisions"),
            loop.create_task(self._tick_loop(), name="fleet-tick"),
        ]

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(_TICK)
            try:
                self._tick()
            except Exception:
                log.exception("fleet: a membership check failed")

    async def stop(self) -> None:
        for task in [*self._tasks, *([self._warm] if self._warm else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        mine = {s.node_id for s in self.plane.xds.proxies.streams()}
        if mine and self.member and self.view.live():
            await self.plane.suspend_xds()  # its Envoys reconnect to the others, who count them ...
            deadline = time.monotonic() + self.options.handover_wait
            while time.monotonic() < deadline and not mine <= self._counted_elsewhere():
                await asyncio.sleep(0.05)
        if self.member:  # ... and only then does it leave the count
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.options.request_timeout):
                    await asyncio.to_thread(self.leases.delete, self.member_name)
                log.info("fleet: %s left the fleet (Lease %s deleted)", self.identity, self.member_name)
        self.watch.stop()
        if self.server is not None:
            await self.server.stop()
        if self.client is not None:
            await self.client.close()

    def _counted_elsewhere(self) -> set[str]:
        return {node for m in self.view.live() for nodes in m.summary.envoys.values() for node in nodes}



def _wall_time(text: object) -> float | None:
    if not isinstance(text, str):
        return None
    with contextlib.suppress(ValueError):
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    return None


def _advertised(advertise: str, host: str) -> str:
    chosen = advertise or os.environ.get("POD_IP") or ("" if host in ("0.0.0.0", "::", "") else host)
    chosen = chosen or socket.gethostname()
    return f"[{chosen}]" if ":" in chosen and not chosen.startswith("[") else chosen


def _describe(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason or ''}".strip()
    return f"{type(error).__name__}: {error}"[:300] if str(error) else type(error).__name__


def peer_token(path: Path | None) -> PeerToken | None:
    """The peer channel's token; none (the channel off) while its file does not exist: an optional Secret
    not created yet (manifests/), which the readiness warning names. A file that holds no token is an error."""
    if path is None:
        return None
    if not path.exists():
        log.warning("fleet: --fleet-token-file %s does not exist: no peer channel (create the Secret and restart "
                    "the replicas to read every replica's Envoy metrics)", path)
        return None
    return PeerToken(path)
