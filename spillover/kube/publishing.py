"""Status written back to the ModelDeployment resources, by the leader replica only.

Every replica serves xDS and decides the same way; only the holder of the Lease writes status and
Events, so two replicas never fight over the same object. Losing the leader moves the writing within the
lease duration; Envoys see nothing of it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from spillover.kube.leader import LeaderElector
from spillover.kube.status import StatusWriter

BEAMLIT_GROUP = "deployment.beamlit.com"


class StatusPublishing:
    def __init__(
        self,
        api: Any,
        status_sinks: list[Callable[[Any], None]],
        *,
        leader_election: bool = True,
        lease_namespace: str | None = None,
        lease_name: str = "spillover-leader",
        beamlit: bool = False,
    ) -> None:
        self.writers = [StatusWriter(api, active=not leader_election)]
        if beamlit:
            self.writers.append(StatusWriter(api, group=BEAMLIT_GROUP, active=not leader_election))
        for writer in self.writers:
            status_sinks.append(writer.sink)
        self.elector: LeaderElector | None = None
        if leader_election:
            self.elector = LeaderElector(
                api,
                lease_namespace or os.environ.get("POD_NAMESPACE") or "spillover-system",
                name=lease_name,
                on_started=self._activate,
                on_stopped=self._deactivate,
            )

    def _activate(self) -> None:
        for writer in self.writers:
            writer.activate()

    def _deactivate(self) -> None:
        for writer in self.writers:
            writer.deactivate()

    @property
    def is_leader(self) -> bool:
        return self.elector is None or self.elector.is_leader

    async def start(self) -> None:
        for writer in self.writers:
            writer.start()
        if self.elector is not None:
            self.elector.start()

    async def stop(self) -> None:
        if self.elector is not None:
            await self.elector.stop()  # releases the Lease: another replica takes over at once
        for writer in self.writers:
            await writer.close()
