"""The fleet's view of who serves which Envoy (pure): summaries within their budget, the count of a group
across replicas, liveness judged on this replica's clock and only while its own view is current."""

from __future__ import annotations

import random
import string
from typing import Any

import pytest

from spillover.controller.fleet.codec import lease_name, pack, unpack
from spillover.controller.fleet.membership import (
    ENVOYS_ANNOTATION,
    MEMBER_ANNOTATION,
    FleetView,
    LocalMembers,
    Summary,
)
from tests.harness.clock import FakeClock


def lease(name: str, holder: str, summary: Summary, version: str, duration: int = 10,
          renewed: str = "2030-01-01T00:00:00.000000Z") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "resourceVersion": version, "annotations": summary.annotations()},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration, "renewTime": renewed},
    }


def envoys(group: str, *nodes: str) -> dict[str, dict[str, float]]:
    return {group: {node: 1000.0 + i for i, node in enumerate(nodes)}}


def view(clock: FakeClock) -> FleetView:
    fleet = FleetView("me", clock=clock, wall=lambda: 1_893_456_005.0)  # 5 s after the leases' renewTime
    fleet.set_current(True)
    return fleet


def test_a_summary_reads_back_as_it_was_written() -> None:
    summary = Summary("replica-a", "http://10.0.0.5:19001", 1.7e9, {"edge": {"e-1": 1.7e9, "e-2": 1.7e9 + 1},
                                                                     "batch": {"b-1": 1.7e9 + 2}})
    again = Summary.from_annotations(summary.annotations(), "replica-a")
    assert again == summary
    assert again.count("edge") == 2 and again.total() == 3 and again.groups() == {"edge", "batch"}


def test_a_thousand_envoys_fit_a_lease_and_beyond_the_budget_they_are_counted_not_named() -> None:
    rng = random.Random(7)
    nodes = {f"gateway-7d9f8c6b5-{''.join(rng.choices(string.ascii_lowercase, k=5))}": 1.7e9 + i for i in range(1000)}
    summary = Summary("replica-a", "", 0.0, {"edge": nodes})
    annotations = summary.annotations()
    size = sum(len(k) + len(v) for k, v in annotations.items())
    assert size < 32_000, size  # pod names compress well: far under the 256 KiB of annotations
    assert Summary.from_annotations(annotations, "replica-a").count("edge") == 1000

    tight = summary.annotations(budget=4_000)
    assert len(tight[ENVOYS_ANNOTATION]) <= 4_000
    read = Summary.from_annotations(tight, "replica-a")
    assert read.count("edge") == 1000  # every Envoy still counted
    assert 0 < len(read.envoys["edge"]) < 1000 and read.more["edge"] == 1000 - len(read.envoys["edge"])
    oldest = sorted(nodes, key=nodes.__getitem__)[: len(read.envoys["edge"])]
    assert sorted(read.envoys["edge"]) == sorted(oldest)  # the oldest are the ones named


@pytest.mark.parametrize("annotations, problem", [
    ({}, "not a z1: document"),
    ({MEMBER_ANNOTATION: "[", ENVOYS_ANNOTATION: pack({"v": 1})}, "not JSON"),
    ({ENVOYS_ANNOTATION: pack({"v": 2})}, "not a version 1 document"),
    ({ENVOYS_ANNOTATION: pack({"v": 1, "groups": {"g": [["n", "soon"]]}})}, r"is not \[node, since\]"),
    ({ENVOYS_ANNOTATION: pack({"v": 1, "groups": {}, "more": {"g": -1}})}, "is not a count"),
    ({ENVOYS_ANNOTATION: pack({"v": 1, "groups": {f"g{i}": [] for i in range(5000)}})}, "bounded object"),
])
def test_a_broken_summary_is_refused_naming_the_problem(annotations: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Summary.from_annotations(annotations, "x")


def test_the_count_of_a_group_is_the_union_of_every_live_replica_and_this_one() -> None:
    clock = FakeClock(100.0)
    fleet = view(clock)
    fleet.observe(lease("m-a", "replica-a", Summary("replica-a", envoys={**envoys("edge", "e-1", "e-2")}), "1"))
    fleet.observe(lease("m-b", "replica-b", Summary("replica-b", envoys=envoys("edge", "e-2", "e-3"), more={"edge": 2}), "1"))
    local = Summary("me", envoys=envoys("edge", "e-3", "e-4"))
    # e-2 moves from a to b and e-3 from b to here: each counted once; the unnamed ones always.
    assert fleet.count("edge", local) == 4 + 2
    assert fleet.count("batch", local) == 0
    assert {(e.node_id, e.replicas) for e in fleet.envoys(local)} == {
        ("e-1", ("replica-a",)), ("e-2", ("replica-a", "replica-b")), ("e-3", ("me", "replica-b")), ("e-4", ("me",))}


def test_a_replica_that_stops_renewing_drops_out_after_its_lease_duration() -> None:
    clock = FakeClock(100.0)
    fleet = view(clock)
    summary = Summary("replica-a", envoys=envoys("edge", "e-1"))
    fleet.observe(lease("m-a", "replica-a", summary, "1", duration=10))
    local = Summary("me")
    clock.now = 105.0
    assert fleet.observe(lease("m-a", "replica-a", summary, "2", duration=10)) is False  # a renewal: same content
    clock.now = 114.9
    assert fleet.count("edge", local) == 1 and fleet.next_expiry() == pytest.approx(115.0)
    clock.now = 115.0
    assert fleet.count("edge", local) == 0 and [m.identity for m in fleet.expired()] == ["replica-a"]


def test_a_replica_whose_own_view_is_not_current_never_counts_anyone_as_gone() -> None:
    """Cut off from the API server, it sees nobody renew: dividing among fewer would admit too much."""
    clock = FakeClock(100.0)
    fleet = view(clock)
    fleet.observe(lease("m-a", "replica-a", Summary("replica-a", envoys=envoys("edge", "e-1")), "1", duration=10))
    clock.now = 105.0
    assert fleet.set_current(False)
    clock.now = 500.0
    assert fleet.count("edge", Summary("me")) == 1 and fleet.next_expiry() is None
    # Current again: everyone gets a full lease duration from now before being judged.
    assert fleet.set_current(True)
    clock.now = 509.0
    assert fleet.count("edge", Summary("me")) == 1
    clock.now = 510.0
    assert fleet.count("edge", Summary("me")) == 0


def test_a_released_or_deleted_lease_leaves_at_once_and_a_forgotten_one_never_counts() -> None:
    clock = FakeClock(100.0)
    fleet = view(clock)
    summary = Summary("replica-a", envoys=envoys("edge", "e-1"))
    fleet.observe(lease("m-a", "replica-a", summary, "1"))
    assert fleet.observe(lease("m-a", "", summary, "2")) is True  # holderIdentity cleared
    assert fleet.count("edge", Summary("me")) == 0
    fleet.observe(lease("m-b", "replica-b", summary, "1"))
    assert fleet.remove("m-b") and fleet.count("edge", Summary("me")) == 0
    # A dead replica's Lease renewed long ago (a pod that never left): not counted even for a moment.
    fleet.observe(lease("m-c", "replica-c", summary, "1", renewed="2020-01-01T00:00:00.000000Z"))
    assert fleet.count("edge", Summary("me")) == 0
    fleet.observe(lease("m-c", "replica-c", summary, "2"))  # renewed after all: someone holds it
    assert fleet.count("edge", Summary("me")) == 1
    # This replica's own Lease is not another member.
    assert fleet.observe(lease("m-me", "me", summary, "1")) is False and "m-me" not in fleet.members


def test_a_summary_that_cannot_be_read_keeps_the_last_good_one() -> None:
    clock = FakeClock(100.0)
    fleet = view(clock)
    fleet.observe(lease("m-a", "replica-a", Summary("replica-a", envoys=envoys("edge", "e-1", "e-2")), "1"))
    broken = lease("m-a", "replica-a", Summary("replica-a"), "2")
    broken["metadata"]["annotations"][ENVOYS_ANNOTATION] = "z1:!!!"
    assert fleet.observe(broken) is True
    assert fleet.count("edge", Summary("me")) == 2 and "not base64" in fleet.members["m-a"].problem


def test_an_envoy_that_left_is_counted_a_moment_longer_and_one_of_a_previous_run_a_lease_longer() -> None:
    clock = FakeClock(0.0)
    local = LocalMembers(linger=1.0, clock=clock)
    assert local.update([("e-1", "edge", 10.0), ("e-2", "edge", 11.0)])
    assert not local.update([("e-2", "edge", 11.0), ("e-1", "edge", 10.0)])  # same set
    assert local.update([("e-2", "edge", 11.0)])
    assert local.summary("me").count("edge") == 2 and local.next_expiry() == 1.0
    clock.now = 1.0
    assert local.expire() and local.summary("me").envoys == {"edge": {"e-2": 11.0}}
    # A restart: what this identity published before counts until it is back or `until`.
    local.adopt(Summary("me", envoys={"edge": {"e-3": 5.0, "e-2": 11.0}}), until=10.0)
    assert local.summary("me").count("edge") == 2
    local.update([("e-2", "edge", 11.0), ("e-3", "edge", 20.0)])  # back: connected now
    clock.now = 10.0
    assert not local.expire() and local.summary("me").envoys["edge"] == {"e-2": 11.0, "e-3": 20.0}


def test_bounded_documents_and_lease_names() -> None:
    assert unpack(pack({"a": [1, 2]})) == {"a": [1, 2]}
    bomb = pack({"x": "0" * 2_000_000})
    assert len(bomb) < 10_000
    with pytest.raises(ValueError, match="inflates past 1000000 bytes"):
        unpack(bomb, max_bytes=1_000_000)
    for junk in ("", "z1:", "zz:abc", "z1:not base64!", 17):
        with pytest.raises(ValueError):
            unpack(junk)
    assert lease_name("spillover-leader-member", "spillover-7d9f8c-abcde") == "spillover-leader-member-spillover-7d9f8c-abcde"
    odd = lease_name("spillover-leader-member", "Host_12345")
    assert odd.startswith("spillover-leader-member-host-12345-") and odd != lease_name("spillover-leader-member", "host-12345")
    long = lease_name("spillover-leader-member", "x" * 300)
    assert len(long) <= 63 and long[-1] != "-"
    assert lease_name("p", "x" * 300) != lease_name("p", "x" * 301)
