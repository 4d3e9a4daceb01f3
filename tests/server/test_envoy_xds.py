"""spillover's xDS server against real Envoy 1.40 processes and real HTTP upstreams.

Every test here drives a real Envoy through the real server (``XdsThread``: the server on its own event
loop thread) and checks both sides: what Envoy applied (admin API, stats, traffic) and what the server
reports (/debug/proxies, metrics).
"""

from __future__ import annotations

import functools
import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import duration_pb2, json_format
from google.protobuf.message import Message
from prometheus_client.parser import text_string_to_metric_families

from spillover.translate.bootstrap import build_bootstrap
from tests.harness import client
from tests.harness import envoyconfig as ec
from tests.harness.envoy import Envoy
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.serve import Spillover
from tests.harness.traffic import Traffic
from tests.harness.upstream import HttpUpstream
from tests.harness.xds import XdsThread

GROUP = "edge"
ROUTE = "routes"
LISTENER = "ingress"
TYPES = ("CDS", "EDS", "LDS", "RDS")
MODES = pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
REPO = Path(__file__).resolve().parents[2]

EnvoyFactory = Callable[..., Envoy]
UpstreamFactory = Callable[..., HttpUpstream]


# -- building blocks ------------------------------------------------------------------------------


def resources(
    listener_port: int,
    weights: dict[str, int],
    upstreams: dict[str, HttpUpstream],
    access_log: Path | None = None,
) -> list[Message]:
    """One HTTP listener -> route ``weights`` over EDS clusters, one per entry of ``upstreams``."""
    messages: list[Message] = [
        ec.http_listener(LISTENER, "127.0.0.1", listener_port, ROUTE, str(access_log) if access_log else None),
        ec.weighted_route(ROUTE, weights),
    ]
    for name, upstream in sorted(upstreams.items()):
        messages += [ec.eds_cluster(name), ec.endpoints(name, [("127.0.0.1", upstream.port)])]
    return messages


def start_envoy(
    factory: EnvoyFactory,
    xds: XdsThread,
    node_id: str,
    delta: bool = False,
    group: str = GROUP,
    extra_args: list[str] | None = None,
) -> Envoy:
    bootstrap = build_bootstrap(node_id, group, xds.xds_address, admin_port=0, delta=delta)
    envoy = factory(bootstrap, name=node_id, extra_args=extra_args)
    wait_until(envoy.is_ready, timeout=15, message=f"envoy {node_id} never became ready")
    return envoy


def get(port: int, path: str = "/") -> client.Response:
    return client.request("GET", f"http://127.0.0.1:{port}{path}", timeout=5)


def served_by(port: int) -> str:
    response = get(port)
    return response.headers.get("x-upstream-name", "") if response.status == 200 else ""


def cluster_names_are(envoy: Envoy, names: list[str]) -> bool:
    return envoy.cluster_names() == names


def at_least(traffic: Traffic, since: float, n: int) -> bool:
    return len(traffic.since(since)) >= n


def type_states(xds: XdsThread, node_id: str) -> dict[str, dict[str, Any]]:
    proxy = xds.proxy(node_id)
    if proxy is None:
        return {}
    return {state["type"]: state for state in proxy["types"].values()}


def synced(xds: XdsThread, node_id: str, types: Iterable[str] = TYPES) -> dict[str, dict[str, Any]]:
    """The node's type states once every type is SYNCED at the group's current version, else {}."""
    states = type_states(xds, node_id)
    for short in types:
        state = states.get(short)
        if state is None or state["status"] != "SYNCED" or state["acked_version"] != state["current_version"]:
            return {}
    return states


def resubscribed(xds: XdsThread, node_id: str) -> dict[str, dict[str, Any]]:
    """The node's type states once every type is subscribed on its stream and SYNCED, else {}."""
    states = type_states(xds, node_id)
    ok = set(states) >= set(TYPES) and all(s["status"] == "SYNCED" for s in states.values())
    return states if ok else {}


def versions(states: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {short: state["acked_version"] for short, state in sorted(states.items())}


def envoy_cluster_versions(envoy: Envoy) -> dict[str, str]:
    """version_info of every dynamic active cluster in Envoy's config dump."""
    dump = envoy.config_dump(resource="dynamic_active_clusters")
    return {entry["cluster"]["name"]: entry["version_info"] for entry in dump["configs"]}


def observe_unchanged(read: Callable[[], Any], seconds: float, interval: float = 0.1) -> Any:
    """Sample ``read`` for a bounded window; fail at the first change. Returns the (stable) value."""
    first = read()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = read()
        assert now == first, f"changed during the observation window: {first!r} -> {now!r}"
    return first


def bad_cluster(name: str) -> cluster_pb2.Cluster:
    """An EDS cluster Envoy rejects ("Invalid duration: Expected positive duration")."""
    cluster = ec.eds_cluster(name)
    cluster.connect_timeout.CopyFrom(duration_pb2.Duration(seconds=-1))
    return cluster


def metric_value(text: str, name: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


# Envoy's own account of cluster warming and route loading (upstream:debug, rds:debug).
TRACE_WARMING = ["--component-log-level", "upstream:debug,rds:debug"]


def routes_loaded_while_warming(envoy: Envoy) -> tuple[list[str], Counter[str]]:
    """Stops Envoy (flushing its log) and replays the log: every route configuration Envoy loaded while
    a cluster was still warming (added, its endpoints not yet received) is returned."""
    envoy.stop()
    warming: set[str] = set()
    premature: list[str] = []
    seen: Counter[str] = Counter()
    for line in envoy.log_path.read_text(errors="replace").splitlines():
        if match := re.search(r"add/update cluster (\S+) starting warming", line):
            warming.add(match[1])
            seen["warming"] += 1
        elif match := re.search(r"warming cluster (\S+) complete", line):
            warming.discard(match[1])
        elif "rds: loading new configuration" in line:
            seen["routes"] += 1
            if warming:
                premature.append(f"route loaded while {sorted(warming)} warming: {line}")
    return premature, seen


# Envoy 1.40 counters that count configuration actually applied (or rejected) per xDS subscription.
def churn_counters(envoy: Envoy, clusters: Iterable[str]) -> dict[str, int]:
    stats = envoy.stats()
    names = [
        "cluster_manager.cds.update_success",
        "cluster_manager.cds.update_rejected",
        "cluster_manager.cluster_modified",
        "cluster_manager.cluster_added",
        "listener_manager.lds.update_success",
        "listener_manager.lds.update_rejected",
        "listener_manager.listener_modified",
        "listener_manager.listener_added",
        f"http.{LISTENER}.rds.{ROUTE}.update_success",
        f"http.{LISTENER}.rds.{ROUTE}.update_rejected",
        f"http.{LISTENER}.rds.{ROUTE}.update_empty",
    ]
    for cluster in clusters:
        names += [f"cluster.{cluster}.update_success", f"cluster.{cluster}.update_rejected"]
    missing = [name for name in names if name not in stats]
    assert not missing, f"Envoy has no stats named {missing}"
    return {name: stats[name] for name in names}


def attempts_not_from_disconnects(envoy: Envoy, clusters: Iterable[str]) -> dict[str, int]:
    """update_attempt minus update_failure per subscription.

    Envoy counts a lost xDS stream as an update attempt that failed (ConnectionFailure), so across a
    server restart both counters rise by the same amount; their difference only moves when Envoy
    received a response.
    """
    stats = envoy.stats()
    prefixes = ["cluster_manager.cds", "listener_manager.lds", f"http.{LISTENER}.rds.{ROUTE}"]
    prefixes += [f"cluster.{c}" for c in clusters]
    return {p: stats[f"{p}.update_attempt"] - stats[f"{p}.update_failure"] for p in prefixes}


# -- tests ----------------------------------------------------------------------------------------


@MODES
def test_envoy_receives_config_and_serves_traffic(
    xds_server: XdsThread, envoy_factory: EnvoyFactory, upstream_factory: UpstreamFactory, delta: bool
) -> None:
    upstream = upstream_factory("a")
    port = free_port()
    snapshot = xds_server.set_snapshot(GROUP, resources(port, {"a": 1}, {"a": upstream}))
    envoy = start_envoy(envoy_factory, xds_server, "n1", delta=delta)

    assert envoy.listener_names() == [LISTENER]
    assert envoy.cluster_names() == ["a"]
    assert envoy.route_config_names() == [ROUTE]
    assert wait_until(lambda: envoy.cluster_endpoint_hosts("a") == [upstream.address], timeout=5)
    response = get(port, "/v1/models")
    assert response.status == 200, response.text
    assert response.headers["x-upstream-name"] == "a"
    assert upstream.requests[-1]["path"] == "/v1/models"

    states = wait_until(lambda: synced(xds_server, "n1"), timeout=5, message="proxy not SYNCED")
    proxy = xds_server.proxy("n1")
    assert proxy is not None
    assert (proxy["group"], proxy["mode"], proxy["status"]) == (GROUP, "delta" if delta else "sotw", "SYNCED")
    assert proxy["envoy_version"].startswith("1.40.")
    short_urls = {
        "CDS": "Cluster",
        "EDS": "ClusterLoadAssignment",
        "LDS": "Listener",
        "RDS": "RouteConfiguration",
    }
    for short, message in short_urls.items():
        type_url = next(t for t in snapshot.versions if t.endswith("." + message))
        assert states[short]["acked_version"] == snapshot.versions[type_url]
        assert states[short]["nack_error"] == ""
    if not delta:
        # SotW: Envoy records the response's version_info on each resource it applied.
        assert envoy_cluster_versions(envoy) == {"a": states["CDS"]["acked_version"]}
    assert xds_server.metric("spillover_xds_connected_proxies", {"group": GROUP, "mode": proxy["mode"]}) == 1


@MODES
def test_weight_updates_are_applied_without_dropping_requests(
    xds_server: XdsThread, envoy_factory: EnvoyFactory, upstream_factory: UpstreamFactory, delta: bool
) -> None:
    upstreams = {"a": upstream_factory("a"), "b": upstream_factory("b")}
    port = free_port()
    xds_server.set_snapshot(GROUP, resources(port, {"a": 100, "b": 0}, upstreams))
    envoy = start_envoy(envoy_factory, xds_server, "n1", delta=delta)
    wait_until(lambda: served_by(port) == "a", timeout=5)
    rds_success = f"http.{LISTENER}.rds.{ROUTE}.update_success"
    successes = envoy.stat(rds_success)
    assert successes is not None

    def all_from(name: str, n: int = 30) -> bool:
        last = traffic.last(n)
        return bool(last) and all(r.status == 200 and r.upstream == name for r in last)

    with Traffic(f"http://127.0.0.1:{port}/") as traffic:
        wait_until(lambda: all_from("a"), timeout=5, message="traffic never flowed to a")

        changed = time.monotonic()
        xds_server.update(GROUP, resources(port, {"a": 0, "b": 100}, upstreams))
        wait_until(lambda: all_from("b"), timeout=5, message="0/100 never observed")
        assert traffic.since(changed), "no request was sent during the switch"

        # A burst of debounced updates: the newest (50/50) wins.
        for weights in ({"a": 10, "b": 90}, {"a": 90, "b": 10}, {"a": 50, "b": 50}):
            xds_server.update(GROUP, resources(port, weights, upstreams))
        wait_until(lambda: synced(xds_server, "n1", ["RDS"]), timeout=5)
        wait_until(
            lambda: envoy.stat(rds_success) == successes + 2,
            timeout=5,
            message="the burst was not one update",
        )
        settled = time.monotonic()
        recent = wait_until(
            lambda: traffic.since(settled)[:100] if len(traffic.since(settled)) >= 100 else [],
            timeout=20,
            message="not enough requests after 50/50",
        )

        xds_server.update(GROUP, resources(port, {"a": 100, "b": 0}, upstreams))
        wait_until(lambda: all_from("a"), timeout=5, message="back to 100/0 never observed")
    results = traffic.results()

    assert not traffic.failures(), (
        f"{len(traffic.failures())} of {len(results)} failed: {traffic.failures()[:5]}"
    )
    split = Counter(r.upstream for r in recent)
    assert set(split) == {"a", "b"} and min(split.values()) >= 25, split
    # The burst reached Envoy as one route update, not three.
    assert envoy.stat(rds_success) == successes + 3


@MODES
def test_nack_is_reported_held_and_a_fix_is_accepted(
    xds_server: XdsThread, envoy_factory: EnvoyFactory, upstream_factory: UpstreamFactory, delta: bool
) -> None:
    upstreams = {"a": upstream_factory("a"), "b": upstream_factory("b")}
    port = free_port()
    good = resources(port, {"a": 1}, {"a": upstreams["a"]})
    xds_server.set_snapshot(GROUP, good)
    envoy = start_envoy(envoy_factory, xds_server, "n1", delta=delta)
    good_states = wait_until(lambda: synced(xds_server, "n1"), timeout=5)
    rejected_before = envoy.stat("cluster_manager.cds.update_rejected")
    assert rejected_before == 0

    bad = [*good, bad_cluster("b"), ec.endpoints("b", [("127.0.0.1", upstreams["b"].port)])]
    xds_server.set_snapshot(GROUP, bad)

    def nacked() -> dict[str, Any]:
        state = type_states(xds_server, "n1").get("CDS", {})
        return state if state.get("status") == "NACKED" else {}

    state = wait_until(nacked, timeout=5, message="CDS never reported NACKED")
    # Envoy's own words, carried by the NACK's error_detail.
    assert "Expected positive duration" in state["nack_error"], state
    assert state["nacked_version"] == state["current_version"] != good_states["CDS"]["acked_version"]
    if not delta:
        assert state["acked_version"] == good_states["CDS"]["acked_version"]  # the last good version
    assert xds_server.proxy("n1")["status"] == "NACKED"  # type: ignore[index]
    wait_until(lambda: envoy.stat("cluster_manager.cds.update_rejected") == 1, timeout=5)
    assert xds_server.metric("spillover_xds_nacks_total", {"type": "CDS"}) == 1

    # Held, not resent: neither the server's CDS responses nor Envoy's rejections move.
    def held() -> tuple[float, int | None, str]:
        cds = type_states(xds_server, "n1")["CDS"]
        return (xds_server.responses("CDS"), envoy.stat("cluster_manager.cds.update_rejected"), cds["status"])

    assert observe_unchanged(held, seconds=2.0)[1:] == (1, "NACKED")
    # Envoy still serves its last good configuration.
    assert get(port).status == 200
    assert "b" not in envoy.cluster_names()

    fixed = [*good, ec.eds_cluster("b"), ec.endpoints("b", [("127.0.0.1", upstreams["b"].port)])]
    fixed[1] = ec.weighted_route(ROUTE, {"b": 1})
    xds_server.set_snapshot(GROUP, fixed)
    wait_until(lambda: synced(xds_server, "n1"), timeout=5, message="the fix was not accepted")
    assert type_states(xds_server, "n1")["CDS"]["nack_error"] == ""
    wait_until(lambda: served_by(port) == "b", timeout=5)
    assert envoy.cluster_names() == ["a", "b"]
    assert envoy.stat("cluster_manager.cds.update_rejected") == 1


@MODES
def test_envoy_serves_while_server_is_down_and_resyncs_without_churn(
    xds_server: XdsThread, envoy_factory: EnvoyFactory, upstream_factory: UpstreamFactory, delta: bool
) -> None:
    upstreams = {"a": upstream_factory("a"), "b": upstream_factory("b")}
    port = free_port()
    xds_server.set_snapshot(GROUP, resources(port, {"a": 1, "b": 1}, upstreams))
    envoy = start_envoy(envoy_factory, xds_server, "n1", delta=delta)
    before = wait_until(lambda: synced(xds_server, "n1"), timeout=5)
    wait_until(lambda: all(envoy.cluster_endpoint_hosts(c) for c in upstreams), timeout=5)
    counters = churn_counters(envoy, upstreams)
    attempts = attempts_not_from_disconnects(envoy, upstreams)
    assert envoy.stat("control_plane.connected_state") == 1

    xds_server.stop()
    wait_until(lambda: envoy.stat("control_plane.connected_state") == 0, timeout=5)
    statuses = [get(port).status for _ in range(20)]
    assert statuses == [200] * 20

    xds_server.start(xds_server.port)
    wait_until(lambda: envoy.stat("control_plane.connected_state") == 1, timeout=15, message="no reconnect")
    # Envoy re-subscribes every type on the new stream; the server recognises the versions it runs.
    if delta:
        # (Delta streams do not report those versions yet: see test_delta_reconnect_reports_versions.)
        after = wait_until(lambda: resubscribed(xds_server, "n1"), timeout=5)
    else:
        after = wait_until(lambda: synced(xds_server, "n1"), timeout=5)
        assert versions(after) == versions(before)

    # Nothing was sent and nothing was applied: a bounded window to let anything in flight land.
    def quiet() -> tuple[dict[str, float], dict[str, int]]:
        return ({t: xds_server.responses(t) for t in TYPES}, churn_counters(envoy, upstreams))

    sent, final_counters = observe_unchanged(quiet, seconds=1.0)
    assert sent == dict.fromkeys(TYPES, 0.0)
    assert final_counters == counters
    assert attempts_not_from_disconnects(envoy, upstreams) == attempts
    assert all(state["responses"] == 0 for state in after.values()), after
    assert get(port).status == 200


def test_delta_reconnect_reports_versions(
    xds_server: XdsThread, envoy_factory: EnvoyFactory, upstream_factory: UpstreamFactory
) -> None:
    """A Delta Envoy that reconnects already running the current snapshot is shown at those versions,
    as a SotW one is, so /debug/proxies and `spillover status` can tell which config it runs."""
    port = free_port()
    xds_server.set_snapshot(GROUP, resources(port, {"a": 1}, {"a": upstream_factory("a")}))
    start_envoy(envoy_factory, xds_server, "n1", delta=True)
    before = wait_until(lambda: synced(xds_server, "n1"), timeout=5)

    xds_server.restart()
    wait_until(lambda: resubscribed(xds_server, "n1"), timeout=15)
    after = wait_until(lambda: synced(xds_server, "n1"), timeout=2, message="versions after reconnect")
    assert versions(after) == versions(before)


def test_envoys_of_one_group_get_the_same_snapshot(
    xds_server: XdsThread, envoy_factory: EnvoyFactory, upstream_factory: UpstreamFactory
) -> None:
    upstreams = {"a": upstream_factory("a"), "b": upstream_factory("b")}
    # Port 0: each Envoy binds its own port for the one listener they share.
    xds_server.set_snapshot(GROUP, resources(0, {"a": 1, "b": 1}, upstreams))
    nodes = ["n1", "n2", "n3"]
    envoys = [start_envoy(envoy_factory, xds_server, node) for node in nodes]

    states = {node: wait_until(functools.partial(synced, xds_server, node), timeout=5) for node in nodes}
    assert len({json.dumps(versions(s)) for s in states.values()}) == 1, states
    assert {p["group"] for p in xds_server.proxies()} == {GROUP}
    assert xds_server.metric("spillover_xds_connected_proxies", {"group": GROUP, "mode": "sotw"}) == 3
    dumps = [envoy_cluster_versions(envoy) for envoy in envoys]
    assert dumps[0] == dumps[1] == dumps[2]
    assert sorted(dumps[0]) == ["a", "b"]

    # An update reaches all three, at the same versions again.
    xds_server.set_snapshot(GROUP, resources(0, {"a": 1}, {"a": upstreams["a"]}))
    for node in nodes:
        wait_until(functools.partial(synced, xds_server, node), timeout=5)
    new_versions = {json.dumps(versions(type_states(xds_server, node))) for node in nodes}
    assert len(new_versions) == 1 and new_versions != {json.dumps(versions(states["n1"]))}
    for envoy in envoys:
        wait_until(functools.partial(cluster_names_are, envoy, ["a"]), timeout=5)
        (listener,) = json.loads(envoy.admin_get("/listeners?format=json"))["listener_statuses"]
        bound = listener["local_address"]["socket_address"]["port_value"]
        assert served_by(bound) == "a"


def test_delta_update_removal_and_reconnect(
    xds_server: XdsThread, envoy_factory: EnvoyFactory, upstream_factory: UpstreamFactory
) -> None:
    upstreams = {"a": upstream_factory("a"), "b": upstream_factory("b")}
    port = free_port()
    xds_server.set_snapshot(GROUP, resources(port, {"a": 1}, upstreams))
    envoy = start_envoy(envoy_factory, xds_server, "n1", delta=True)
    assert envoy.cluster_names() == ["a", "b"]
    assert served_by(port) == "a"
    assert xds_server.proxy("n1")["mode"] == "delta"  # type: ignore[index]

    # Update: the route moves to b.
    xds_server.set_snapshot(GROUP, resources(port, {"b": 1}, upstreams))
    wait_until(lambda: served_by(port) == "b", timeout=5)

    # Removal: a leaves the snapshot and leaves Envoy.
    cds_before = xds_server.responses("CDS")
    xds_server.set_snapshot(GROUP, resources(port, {"b": 1}, {"b": upstreams["b"]}))
    wait_until(lambda: envoy.cluster_names() == ["b"], timeout=5, message="cluster a was never removed")
    assert xds_server.responses("CDS") == cds_before + 1  # the removal alone
    assert served_by(port) == "b"
    wait_until(
        lambda: all(s["status"] == "SYNCED" for s in type_states(xds_server, "n1").values()), timeout=5
    )
    counters = churn_counters(envoy, ["b"])
    attempts = attempts_not_from_disconnects(envoy, ["b"])

    xds_server.restart()
    wait_until(
        lambda: (
            envoy.stat("control_plane.connected_state") == 1
            and set(type_states(xds_server, "n1")) >= set(TYPES)
        ),
        timeout=15,
        message="Envoy did not re-subscribe after the restart",
    )

    def quiet() -> tuple[dict[str, float], dict[str, int]]:
        return ({t: xds_server.responses(t) for t in TYPES}, churn_counters(envoy, ["b"]))

    # initial_resource_versions honoured: the restarted server sends nothing for unchanged types.
    sent, final_counters = observe_unchanged(quiet, seconds=1.0)
    assert sent == dict.fromkeys(TYPES, 0.0)
    assert final_counters == counters
    assert attempts_not_from_disconnects(envoy, ["b"]) == attempts
    states = type_states(xds_server, "n1")
    assert {t: s["resources"] for t, s in states.items()} == {"CDS": 1, "EDS": 1, "LDS": 1, "RDS": 1}
    assert served_by(port) == "b"

    # And the restarted server still pushes real changes.
    xds_server.set_snapshot(GROUP, resources(port, {"a": 1}, upstreams))
    wait_until(lambda: served_by(port) == "a", timeout=5)
    assert envoy.cluster_names() == ["a", "b"]


@MODES
def test_cluster_removal_waits_for_the_route_that_leaves_it(
    xds_server: XdsThread, envoy_factory: EnvoyFactory, upstream_factory: UpstreamFactory, delta: bool
) -> None:
    """Route moves from a to b (already warm) and a leaves, in one snapshot: a is removed only after
    Envoy took the new route, so no request ever meets a missing cluster."""
    upstreams = {"a": upstream_factory("a"), "b": upstream_factory("b")}
    port = free_port()
    xds_server.set_snapshot(GROUP, resources(port, {"a": 1}, upstreams))
    envoy = start_envoy(envoy_factory, xds_server, "n1", delta=delta, extra_args=TRACE_WARMING)
    assert served_by(port) == "a"
    wait_until(lambda: envoy.cluster_endpoint_hosts("b") == [upstreams["b"].address], timeout=5)

    with Traffic(f"http://127.0.0.1:{port}/", workers=16) as traffic:
        wait_until(lambda: len(traffic.results()) >= 50, timeout=5)
        xds_server.set_snapshot(GROUP, resources(port, {"b": 1}, {"b": upstreams["b"]}))
        wait_until(lambda: envoy.cluster_names() == ["b"], timeout=5, message="cluster a was never removed")
        removed = time.monotonic()
        wait_until(lambda: len(traffic.since(removed)) >= 50, timeout=5)
    results = traffic.results()

    failures = [r for r in results if r.status != 200]
    assert not failures, f"{len(failures)} of {len(results)} requests failed: {failures[:5]}"
    assert {r.upstream for r in traffic.since(removed)} == {"b"}
    assert results[0].upstream == "a"
    wait_until(lambda: synced(xds_server, "n1", ["CDS", "LDS", "RDS"]), timeout=5)
    premature, seen = routes_loaded_while_warming(envoy)
    assert not premature and seen["routes"] == 2, (premature, seen)


@MODES
def test_route_switch_to_a_new_cluster_make_before_break(
    xds_server: XdsThread,
    envoy_factory: EnvoyFactory,
    upstream_factory: UpstreamFactory,
    delta: bool,
    tmp_path: Path,
) -> None:
    """The route moves to a *new* cluster and the old one leaves, in one snapshot, three times over
    while traffic flows: zero non-200s, and each old cluster disappears from Envoy. Every failure is
    shown with Envoy's access-log line (response flags, details) and the body it answered."""
    upstreams = {name: upstream_factory(name) for name in ("a", "b", "c")}
    port = free_port()
    access_log = tmp_path / "access.log"
    xds_server.set_snapshot(GROUP, resources(port, {"a": 1}, {"a": upstreams["a"]}, access_log))
    envoy = start_envoy(envoy_factory, xds_server, "n1", delta=delta, extra_args=TRACE_WARMING)
    assert served_by(port) == "a"

    # Many concurrent clients: the window in which a premature route fails is a few milliseconds.
    with Traffic(f"http://127.0.0.1:{port}/", workers=16) as traffic:
        wait_until(lambda: len(traffic.results()) >= 50, timeout=5)
        for old, new in (("a", "b"), ("b", "c"), ("c", "a")):
            xds_server.set_snapshot(GROUP, resources(port, {new: 1}, {new: upstreams[new]}, access_log))
            wait_until(functools.partial(cluster_names_are, envoy, [new]), timeout=5, message=f"{old} stayed")
            removed = time.monotonic()
            wait_until(functools.partial(at_least, traffic, removed, 50), timeout=5)
            assert {r.upstream for r in traffic.since(removed)} == {new}
    results = traffic.results()

    # Deterministic, whatever the traffic happened to hit: Envoy never loaded a route to a cluster that
    # was still warming. (The 503 window is one round trip to the server, so traffic alone may miss it.)
    premature, seen = routes_loaded_while_warming(envoy)
    assert seen["warming"] == 3 and seen["routes"] == 4, seen
    assert not premature, premature
    failures = [r for r in results if r.status != 200]
    failed_lines = [line for line in access_log.read_text().splitlines() if " 200 " not in line]
    assert not failures, (
        f"{len(failures)} of {len(results)} requests failed: {failures[:5]}; Envoy's access log: {failed_lines[:5]}"
    )
    assert results[0].upstream == "a"


def test_removing_the_old_cluster_does_not_cut_requests_still_in_flight_on_it(
    xds_server: XdsThread, envoy_factory: EnvoyFactory, upstream_factory: UpstreamFactory
) -> None:
    """LLM answers stream for minutes: the route moves to a new cluster and the old one is removed while
    slow requests are still being answered by it. Envoy drains the old cluster's connections; every
    one of those requests completes."""
    slow, fast = upstream_factory("a", delay_s=1.5), upstream_factory("b")
    port = free_port()
    xds_server.set_snapshot(GROUP, resources(port, {"a": 1}, {"a": slow}))
    envoy = start_envoy(envoy_factory, xds_server, "n1")
    answers: list[tuple[int, str]] = []
    lock = threading.Lock()

    def call() -> None:
        response = get(port)
        with lock:
            answers.append((response.status, response.headers.get("x-upstream-name", "")))

    callers = [threading.Thread(target=call) for _ in range(8)]
    for caller in callers:
        caller.start()
    wait_until(lambda: slow.request_count >= 8, timeout=5, message="the slow requests never reached a")
    xds_server.set_snapshot(GROUP, resources(port, {"b": 1}, {"b": fast}))
    wait_until(functools.partial(cluster_names_are, envoy, ["b"]), timeout=5, message="a was never removed")
    for caller in callers:
        caller.join(timeout=10)
    assert answers == [(200, "a")] * 8, answers
    assert served_by(port) == "b"


def test_admin_endpoints_and_status_command(
    xds_server: XdsThread, envoy_factory: EnvoyFactory, upstream_factory: UpstreamFactory
) -> None:
    upstreams = {"a": upstream_factory("a"), "b": upstream_factory("b")}
    port = free_port()
    messages = resources(port, {"a": 1}, {"a": upstreams["a"]})
    xds_server.set_snapshot(GROUP, messages)
    start_envoy(envoy_factory, xds_server, "n1")
    wait_until(lambda: synced(xds_server, "n1"), timeout=5)

    assert xds_server.admin_get("/healthz").status == 200
    assert xds_server.admin_get("/readyz").status == 200

    def metrics() -> str:
        response = xds_server.admin_get("/metrics")
        assert response.status == 200
        return response.text

    text = metrics()
    assert metric_value(text, "spillover_xds_connected_proxies", {"group": GROUP, "mode": "sotw"}) == 1
    acks = metric_value(text, "spillover_xds_acks_total", {"type": "CDS"})
    assert acks is not None and acks >= 1
    assert metric_value(text, "spillover_xds_nacks_total", {"type": "CDS"}) in (None, 0.0)

    # /debug/config: exactly what Envoy was sent, as JSON.
    config = xds_server.config("n1")
    assert config["node"] == "n1"
    sent = config["resources"]
    assert sorted(sent) == list(TYPES)
    expected = {
        "LDS": messages[0],
        "RDS": messages[1],
        "CDS": messages[2],
        "EDS": messages[3],
    }
    for short, message in expected.items():
        (entry,) = sent[short]
        assert entry["resource"] == json_format.MessageToDict(message, preserving_proto_field_name=True), (
            short
        )
    unknown = xds_server.admin_get("/debug/config?node=nobody")
    assert unknown.status == 404 and "nobody" in unknown.json()["error"]
    missing = xds_server.admin_get("/debug/config")
    assert missing.status == 400 and "node" in missing.json()["error"]

    # `spillover status` shows the proxy SYNCED.
    def status_command() -> str:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "spillover",
                "status",
                "--admin-address",
                xds_server.admin_url.removeprefix("http://"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = status_command()
    rows = [line.split() for line in out.splitlines()]
    assert rows[0][:4] == ["NODE", "GROUP", "MODE", "STATUS"], out
    (row,) = [r for r in rows if r[0] == "n1"]
    assert row[1:4] == [GROUP, "sotw", "SYNCED"], out

    # Counters move: an update is ACKed, a bad cluster is NACKed (and status says so).
    both = resources(port, {"a": 1, "b": 1}, upstreams)
    xds_server.set_snapshot(GROUP, both)
    wait_until(
        lambda: (metric_value(metrics(), "spillover_xds_acks_total", {"type": "CDS"}) or 0) > acks, timeout=5
    )
    xds_server.set_snapshot(GROUP, [*both, bad_cluster("broken")])
    wait_until(lambda: metric_value(metrics(), "spillover_xds_nacks_total", {"type": "CDS"}) == 1, timeout=5)
    out = status_command()
    (row,) = [line.split() for line in out.splitlines() if line.startswith("n1 ")]
    assert row[3] == "NACKED", out


def _resources_yaml(listener_port: int, cluster: str, upstream: HttpUpstream) -> str:
    messages = [
        ec.http_listener(LISTENER, "127.0.0.1", listener_port, ROUTE),
        ec.weighted_route(ROUTE, {cluster: 1}),
        ec.eds_cluster(cluster),
        ec.endpoints(cluster, [("127.0.0.1", upstream.port)]),
    ]
    items = []
    for message in messages:
        body = json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))
        items.append({"@type": "type.googleapis.com/" + message.DESCRIPTOR.full_name, **body})
    return yaml.safe_dump({"resources": items}, sort_keys=False)


def test_serve_command_follows_its_resources_file(
    tmp_path: Path, envoy_factory: EnvoyFactory, upstream_factory: UpstreamFactory
) -> None:
    upstreams = {"a": upstream_factory("a"), "b": upstream_factory("b")}
    port = free_port()
    path = tmp_path / "resources.yaml"
    path.write_text(_resources_yaml(port, "a", upstreams["a"]))
    server = Spillover(tmp_path, resources=path, name="serve", debounce=None)
    log_path = server.log_path
    try:
        server.start(timeout=15)
        admin = server.admin
        bootstrap = build_bootstrap("file-node", GROUP, server.xds_address, admin_port=0)
        envoy = envoy_factory(bootstrap, name="file-node")
        wait_until(envoy.is_ready, timeout=15)
        assert served_by(port) == "a"

        # An edit reaches Envoy within about a second (file poll 0.25 s + debounce 0.1 s + push).
        path.write_text(_resources_yaml(port, "b", upstreams["b"]))
        edited = time.monotonic()
        wait_until(lambda: served_by(port) == "b", timeout=5, interval=0.02)
        assert time.monotonic() - edited < 1.5
        assert envoy.cluster_names() == ["b"]
        cds = envoy.stat("cluster_manager.cds.update_success")

        # A broken file: an error in the log, and Envoy keeps the last good configuration.
        path.write_text(
            "resources:\n  - {'@type': 'type.googleapis.com/envoy.config.cluster.v3.Cluster', nme: x}\n"
        )
        wait_until(
            lambda: "keeping the last good resources" in log_path.read_text(),
            timeout=5,
            message="no error logged for the broken file",
        )
        assert " ERROR " in log_path.read_text()
        statuses = [get(port).status for _ in range(5)]
        assert statuses == [200] * 5 and served_by(port) == "b"
        assert envoy.stat("cluster_manager.cds.update_success") == cds
        proxies = client.request("GET", admin + "/debug/proxies").json()["proxies"]
        assert [(p["node_id"], p["status"]) for p in proxies] == [("file-node", "SYNCED")]

        # SIGTERM: a clean exit; Envoy keeps serving.
        assert server.stop(signal.SIGTERM) == 0, log_path.read_text()
        wait_until(lambda: envoy.stat("control_plane.connected_state") == 0, timeout=5)
        assert served_by(port) == "b"
    finally:
        server.stop(signal.SIGKILL)
