"""Status written back to the ModelDeployment resources, by the leader replica only.

Every replica serves xDS (in a fleet the Lease holder alone decides); only it writes status and
Events, so two replicas never fight over the same object. Losing the leader moves the writing within the
lease duration; Envoys see nothing of it. Other writers that must act once for the fleet (the copies on
destination clusters) follow the Lease the same way (`followers`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Protocol

from kubernetes.client import ApiClient

from spillover.controller.contracts import StatusSink
from spillover.controller.kubernetes.leader import LeaderElector
from spillover.controller.kubernetes.shapes import BEAMLIT_SHAPE
from spillover.controller.kubernetes.writer import StatusWriter

BEAMLIT_GROUP = "deployment.beamlit.com"


class LeaderOnly(Protocol):
    """A writer that acts only while this replica holds the Lease."""

    def activate(self) -> None: ...

    def deactivate(self) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class StatusPublishing:
    def __init__(
        self,
        api: ApiClient,
        status_sinks: list[StatusSink],
        *,
        leader_election: bool = True,
        lease_namespace: str | None = None,
        lease_name: str = "spillover-leader",
        beamlit: bool = False,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        followers: Sequence[LeaderOnly] = (),
    ) -> None:
        self.writers = [StatusWriter(api, active=not leader_election)]
        self.followers = list(followers)
        for follower in self.followers:
            if leader_election:
                follower.deactivate()
            else:
                follower.activate()
        if beamlit:
            self.writers.append(
                StatusWriter(api, group=BEAMLIT_GROUP, active=not leader_election, shape=BEAMLIT_SHAPE)
            )
        for writer in self.writers:
            status_sinks.append(writer.sink)
        # Called when this replica starts and stops leading (the fleet's decisions follow the Lease).
        self.on_leading: list[Callable[[], None]] = []
        self.on_following: list[Callable[[], None]] = []
        self.elector: LeaderElector | None = None
        if leader_election:
            self.elector = LeaderElector(
                api,
                lease_namespace or os.environ.get("POD_NAMESPACE") or "spillover-system",
                name=lease_name,
                lease_duration=lease_duration,
                renew_deadline=renew_deadline,
                retry_period=retry_period,
                on_started=self._activate,
                on_stopped=self._deactivate,
            )

    def _activate(self) -> None:
        for writer in self.writers:
            writer.activate()
        for follower in self.followers:
            follower.activate()
        for callback in self.on_leading:
            callback()

    def _deactivate(self) -> None:
        for writer in self.writers:
            writer.deactivate()
        for follower in self.followers:
            follower.deactivate()
        for callback in self.on_following:
            callback()

    @property
    def is_leader(self) -> bool:
        return self.elector is None or self.elector.is_leader

    async def start(self) -> None:
        for writer in self.writers:
            writer.start()
        for follower in self.followers:
            await follower.start()
        if self.elector is not None:
            self.elector.start()

    async def stop(self) -> None:
        if self.elector is not None:
            await self.elector.stop()  # releases the Lease: another replica takes over at once
        for follower in self.followers:
            follower.deactivate()
            await follower.stop()
        for writer in self.writers:
            await writer.close()
