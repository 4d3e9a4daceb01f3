"""Node groups across a restart and their expiry together: a group of the state file is served at once,
counted among the groups, and forgotten (snapshot, size, state file entry) like any other when no stream
of it comes back within the grace period."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from envoy.config.core.v3 import base_pb2

from spillover.controller.persist import FORMAT, GroupReplicas, StateStore
from spillover.controller.plane import ControlPlane
from spillover.controller.static import StaticResourcesFile
from spillover.server.resources import CLUSTER
from spillover.server.service import XdsOptions
from tests.harness.ads import AdsClient
from tests.harness.polling import async_wait_until
from tests.harness.ports import free_port

RESOURCES = """
resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: upstream
  connect_timeout: 1s
  load_assignment: {cluster_name: upstream}
"""


def _state(path: Path, groups: dict[str, int]) -> StateStore:
    path.write_text(json.dumps({"format": FORMAT, "groups": {g: {"replicas": n} for g, n in groups.items()}}))
    store = StateStore(path)
    store.load()
    return store


def _written_groups(path: Path) -> dict[str, int]:
    return {g: entry["replicas"] for g, entry in json.loads(path.read_text()).get("groups", {}).items()}


def test_a_forgotten_group_leaves_the_state_file(tmp_path: Path) -> None:
    store = _state(tmp_path / "state.json", {"edge": 3, "gone": 2})
    groups = GroupReplicas(store, grace=60.0)
    assert groups.replicas("edge", 1) == 3
    groups.forget("gone")
    assert "gone" not in groups.known and "gone" not in groups.floors
    assert _written_groups(tmp_path / "state.json") == {"edge": 3}
    assert groups.replicas("gone", 1) == 1  # back later: a new group, its connected count
    groups.forget("never-known")  # nothing to forget: no error, nothing written
    assert _written_groups(tmp_path / "state.json") == {"edge": 3, "gone": 1}


def _plane(tmp_path: Path, store: StateStore, **options: Any) -> ControlPlane:
    resources = tmp_path / "resources.yaml"
    resources.write_text(RESOURCES)
    return ControlPlane(
        StaticResourcesFile(resources),
        debounce=0.01,
        xds_options=XdsOptions(**options),
        group_replicas=GroupReplicas(store, grace=60.0),
    )


async def test_restored_groups_expire_unless_a_stream_comes_back(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    plane = _plane(tmp_path, _state(state, {"back": 2, "gone": 3}), group_grace=0.5)
    address = f"127.0.0.1:{free_port()}"
    await plane.start(address, admin_port=0)
    client = AdsClient(address)
    try:
        # Both are served from the start (an Envoy reconnecting finds its snapshot there) and counted.
        assert plane.cache.get("back") is not None and plane.cache.get("gone") is not None
        assert len(plane.xds.groups) == 2
        client.send(node=base_pb2.Node(id="back-1", cluster="back"), type_url=CLUSTER)
        response = await client.recv(timeout=10)
        assert [r.type_url for r in response.resources] == [CLUSTER]

        await async_wait_until(lambda: plane.cache.get("gone") is None, timeout=10, message="'gone' forgotten")
        assert "gone" not in plane.xds.groups and "gone" not in plane.group_replicas.known
        assert _written_groups(state) == {"back": 2}  # the floor of 'back' still holds: 1 of its 2 is back
        assert plane.cache.get("back") is not None and "back" in plane.xds.groups
        assert plane.xds.metrics_registry.get_sample_value("spillover_xds_groups_expired_total") == 1
    finally:
        await client.close()
        await plane.stop()


async def test_restored_groups_beyond_the_bound_are_not_restored(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    plane = _plane(tmp_path, _state(state, {"a": 1, "b": 1, "c": 1}), max_groups=2)
    await plane.start(f"127.0.0.1:{free_port()}", admin_port=0)
    try:
        assert [g for g in ("a", "b", "c") if plane.cache.get(g) is not None] == ["a", "b"]
        assert len(plane.xds.groups) == 2 and sorted(plane.group_replicas.known) == ["a", "b"]
        assert _written_groups(state) == {"a": 1, "b": 1}
    finally:
        await plane.stop()
