"""Snapshots built from what changed (controller/encoding.py) are the full translation's, byte for byte.

Each step changes a model (weights, an endpoint, a token, a decision, removed, added) or a group's Envoy
count, and every group's snapshot built from its previous one is compared with `translate` of the same
IR, serialized as the xDS cache does it (`Snapshot.from_messages`): names and their order, bytes,
versions, which secrets are referenced, and what changed since the previous snapshot.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest
from envoy.config.route.v3 import route_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spillover.controller.encoding import RUN, PieceCache, SnapshotBuilder
from spillover.ir import Gateway, Listener, Model, Profile, RemoteBackend, TrafficSplit
from spillover.names import LISTENER_NAME, SPLIT_RUNTIME_LAYER
from spillover.server.cache import Snapshot
from spillover.server.resources import LISTENER, PUSH_ORDER, ROUTE, RUNTIME, SECRET
from spillover.translate import translate
from spillover.translate.route_table import table_routes
from tests.harness.ir_fleet import CHANGES, change, fleet, fleet_model


def _full(gateway: Gateway) -> Snapshot:
    return Snapshot.from_messages(translate(gateway).messages())


def _without_hint(snapshot: Snapshot) -> Snapshot:
    return dataclasses.replace(snapshot, _diff=None)


def _assert_same(built: Snapshot, gateway: Gateway, previous: Snapshot | None = None) -> None:
    full = _full(gateway)
    for type_url in PUSH_ORDER:
        assert list(built.get(type_url)) == list(full.get(type_url)), type_url
        for name, resource in full.get(type_url).items():
            assert built.get(type_url)[name].body == resource.body, (type_url, name)
        if type_url != ROUTE:
            # The route table's version is made of its models' digests (no hashing of megabytes per change).
            assert built.version(type_url) == full.version(type_url), type_url
            for name, resource in full.get(type_url).items():
                assert built.get(type_url)[name].version == resource.version, (type_url, name)
    assert built.referenced_secrets() == full.referenced_secrets()
    assert dict(built.visible(SECRET)).keys() == dict(full.visible(SECRET)).keys()
    # Built from nothing by another builder: the same snapshot, the route table's version included.
    fresh = SnapshotBuilder().snapshot(gateway)
    assert {t: built.version(t) for t in PUSH_ORDER} == {t: fresh.version(t) for t in PUSH_ORDER}
    assert built.get(ROUTE)["spillover_routes"].version == fresh.get(ROUTE)["spillover_routes"].version
    if previous is not None:
        # What the builder says changed is what a walk over every name finds.
        assert built.changes_since(previous) == _without_hint(built).changes_since(previous)


@pytest.mark.parametrize("split_weights", ["route", "runtime"])
@pytest.mark.parametrize("run", [3, RUN])
@pytest.mark.parametrize("kind", CHANGES)
def test_each_kind_of_change_gives_the_full_translation(kind: str, run: int, split_weights: str) -> None:
    # Runs of 3 models: the route table is joined from 14 runs, of which a change redoes one (or all,
    # when a model comes or goes); its version is the same as a builder's of the default runs.
    builder = SnapshotBuilder(run=run)
    gateway = dataclasses.replace(fleet(40), split_weights=split_weights)
    snapshot = builder.snapshot(gateway)
    _assert_same(snapshot, gateway)
    for generation, index in enumerate((3, 12, 25, 38, 0), start=1):
        gateway = change(gateway, kind, min(index, len(gateway.models) - 1), generation)
        previous, snapshot = snapshot, builder.snapshot(gateway, snapshot)
        _assert_same(snapshot, gateway, previous)


@pytest.mark.parametrize("kind", CHANGES)
def test_each_kind_of_change_in_place_gives_the_full_translation(kind: str) -> None:
    # The fleet's failover models without internal listeners (failover_remote: in-place).
    builder = SnapshotBuilder()
    gateway = dataclasses.replace(fleet(40), failover_remote="in-place")
    snapshot = builder.snapshot(gateway)
    _assert_same(snapshot, gateway)
    for generation, index in enumerate((5, 15, 25), start=1):
        gateway = change(gateway, kind, min(index, len(gateway.models) - 1), generation)
        previous, snapshot = snapshot, builder.snapshot(gateway, snapshot)
        _assert_same(snapshot, gateway, previous)


def test_a_change_of_how_failover_reaches_the_remote_gives_the_full_translation() -> None:
    builder = SnapshotBuilder()
    gateway = fleet(20)
    snapshot = builder.snapshot(gateway)
    internal = {name for name in snapshot.get(LISTENER) if name != LISTENER_NAME}
    assert internal  # the fleet's failover models' remotes
    for failover_remote in ("in-place", "internal-listener", "in-place"):
        gateway = dataclasses.replace(gateway, failover_remote=failover_remote)
        previous, snapshot = snapshot, builder.snapshot(gateway, snapshot)
        _assert_same(snapshot, gateway, previous)
    assert set(snapshot.get(LISTENER)) == {LISTENER_NAME}
    with pytest.raises(ValueError, match="failover_remote must be one of internal-listener, in-place"):
        builder.snapshot(dataclasses.replace(gateway, failover_remote="inplace"), snapshot)


def test_a_one_model_change_translates_that_model_only() -> None:
    builder = SnapshotBuilder()
    gateway = fleet(50)
    snapshot = builder.snapshot(gateway)
    assert builder.pieces.encoded == 50
    for kind in ("weights", "endpoint", "token", "decision"):
        before = builder.pieces.encoded
        gateway = change(gateway, kind, 7)
        snapshot = builder.snapshot(gateway, snapshot)
        assert builder.pieces.encoded == before + 1, kind


def test_a_decision_flip_changes_only_the_route_table() -> None:
    builder = SnapshotBuilder()
    gateway = fleet(30)
    first = builder.snapshot(gateway)
    gateway = change(gateway, "decision", 3)  # model 3 has a remote: only its route's split changes
    second = builder.snapshot(gateway, first)
    changed = {type_url: names for type_url, names in second.changes_since(first).items() if names}
    assert changed == {ROUTE: frozenset({"spillover_routes"})}
    for type_url in PUSH_ORDER:
        if type_url != ROUTE:
            assert second.get(type_url) is first.get(type_url)


def test_with_the_split_in_runtime_a_flip_changes_only_the_runtime_layer() -> None:
    builder = SnapshotBuilder()
    gateway = dataclasses.replace(fleet(30), split_weights="runtime")
    first = builder.snapshot(gateway)
    # Models 3 and 8 spill (70/30) from the start: the layer holds their entries only.
    layer = first.get(RUNTIME)[SPLIT_RUNTIME_LAYER].message()
    assert sorted(layer.layer.fields) == sorted(
        f"spillover.split.model-{i:05d}/{side}" for i in (3, 8, 13, 18, 23, 28) for side in ("local/least_request_c2", "remote")
    )
    for step, index in enumerate((3, 3, 13), start=1):  # back to all local, spilling again, another model
        gateway = change(gateway, "decision", index, step)
        second = builder.snapshot(gateway, first)
        changed = {type_url: names for type_url, names in second.changes_since(first).items() if names}
        assert changed == {RUNTIME: frozenset({SPLIT_RUNTIME_LAYER})}, step
        for type_url in PUSH_ORDER:
            if type_url != RUNTIME:
                assert second.get(type_url) is first.get(type_url), (step, type_url)
        _assert_same(second, gateway, first)
        first = second


def test_a_change_of_where_the_split_goes_gives_the_full_translation() -> None:
    builder = SnapshotBuilder()
    gateway = fleet(20)
    snapshot = builder.snapshot(gateway)
    for split_weights in ("runtime", "route", "runtime"):
        gateway = dataclasses.replace(gateway, split_weights=split_weights)
        previous, snapshot = snapshot, builder.snapshot(gateway, snapshot)
        _assert_same(snapshot, gateway, previous)
    assert set(snapshot.get(RUNTIME)) == {SPLIT_RUNTIME_LAYER}
    with pytest.raises(ValueError, match="split_weights must be one of route, runtime"):
        builder.snapshot(dataclasses.replace(gateway, split_weights="routes"), snapshot)


def test_the_route_table_is_joined_anew_only_in_the_run_of_the_changed_model() -> None:
    builder = SnapshotBuilder(run=4)
    gateway = fleet(30)
    first = builder.snapshot(gateway)
    runs = first.basis.routes.runs  # type: ignore[attr-defined]
    assert len(runs) == 8
    gateway = change(gateway, "decision", 13)  # in the run of models 12-15
    second = builder.snapshot(gateway, first)
    again = second.basis.routes.runs  # type: ignore[attr-defined]
    assert [a is b for a, b in zip(runs, again, strict=True)] == [True, True, True, False, True, True, True, True]
    assert again[3] != runs[3]
    # The table joined from the runs is the whole message's deterministic serialization.
    table = translate(gateway).routes["spillover_routes"]
    assert second.get(ROUTE)["spillover_routes"].body == table.SerializeToString(deterministic=True)
    assert second.get(ROUTE)["spillover_routes"].version != first.get(ROUTE)["spillover_routes"].version


def test_groups_of_different_sizes_share_the_cache_and_get_their_own_shares() -> None:
    pieces = PieceCache()
    builders = [SnapshotBuilder(pieces), SnapshotBuilder(pieces)]
    gateways = {replicas: fleet(20, f"g{replicas}", replicas) for replicas in (1, 2, 3)}
    snapshots = {}
    for replicas, gateway in gateways.items():
        snapshots[replicas] = builders[replicas % 2].snapshot(gateway)
        _assert_same(snapshots[replicas], gateway)
    encoded = pieces.encoded
    # The same gateway again for another group of the same size: nothing is translated.
    again = builders[0].snapshot(dataclasses.replace(gateways[2], name="another"))
    assert pieces.encoded == encoded
    assert again.get(ROUTE)["spillover_routes"] is snapshots[2].get(ROUTE)["spillover_routes"]
    # A group that grows from 1 to 3 Envoys gets the 3-Envoy shares (a basis of another size is fine).
    grown = builders[1].snapshot(gateways[3], snapshots[1])
    _assert_same(grown, gateways[3], snapshots[1])


def test_what_the_translation_refuses_is_refused_and_nothing_is_kept() -> None:
    builder = SnapshotBuilder()
    gateway = fleet(12)
    snapshot = builder.snapshot(gateway)
    bad = dataclasses.replace(gateway.models[4], split=TrafficSplit(local=50, remote=20))
    broken = dataclasses.replace(gateway, models=(*gateway.models[:4], bad, *gateway.models[5:]))
    with pytest.raises(ValueError, match="split must be"):
        translate(broken)
    with pytest.raises(ValueError, match="split must be"):
        builder.snapshot(broken, snapshot)
    twice = dataclasses.replace(gateway, models=(*gateway.models, gateway.models[0]))
    with pytest.raises(ValueError, match="model names must be unique"):
        builder.snapshot(twice, snapshot)
    with pytest.raises(ValueError, match="a gateway needs a name"):
        builder.snapshot(dataclasses.replace(gateway, name=""), snapshot)
    # The builder still builds from the last good snapshot.
    fixed = change(gateway, "weights", 4)
    _assert_same(builder.snapshot(fixed, snapshot), fixed, snapshot)


def test_one_secret_name_with_two_tokens_is_refused_as_translate_does() -> None:
    def with_token(model: Model, token: str) -> Model:
        remote = RemoteBackend(host="api.example.com", port=443, bearer_token_secret_name="shared", bearer_token=token)
        return dataclasses.replace(model, remote=remote)

    same = Gateway("g", models=(with_token(fleet_model(0), "a"), with_token(fleet_model(1), "a")))
    builder = SnapshotBuilder()
    snapshot = builder.snapshot(same)
    _assert_same(snapshot, same)
    clash = Gateway("g", models=(with_token(fleet_model(0), "a"), with_token(fleet_model(1), "b")))
    with pytest.raises(ValueError, match="two different token values"):
        translate(clash)
    with pytest.raises(ValueError, match="two different token values"):
        builder.snapshot(clash, snapshot)
    # One of the two models that share the secret goes: the secret stays for the other.
    alone = Gateway("g", models=(with_token(fleet_model(1), "a"),))
    _assert_same(builder.snapshot(alone, snapshot), alone, snapshot)


def test_a_new_listener_is_its_only_change() -> None:
    builder = SnapshotBuilder()
    gateway = fleet(10)
    first = builder.snapshot(gateway)
    moved = dataclasses.replace(gateway, listener=Listener("127.0.0.1", 10081))
    second = builder.snapshot(moved, first)
    _assert_same(second, moved, first)
    assert {t for t, names in second.changes_since(first).items() if names} == {
        "type.googleapis.com/envoy.config.listener.v3.Listener"
    }


ALL_SLOW = {"normalize-model-header", "normalize-profile-header", "body-model", "missing-model"}


def _hashing_slow_path(snapshot: Snapshot) -> set[str]:
    """The slow-path routes of the snapshot's table that put spillover.prefix_hash in the chain."""
    table = route_pb2.RouteConfiguration()
    table.ParseFromString(snapshot.get(ROUTE)["spillover_routes"].body)
    return {
        r.name for r in table_routes(table) if r.name in ALL_SLOW and "spillover.prefix_hash" in r.typed_per_filter_config
    }


def _without_prefix_cache(model: Model) -> Model:
    return dataclasses.replace(model, profiles=tuple(p for p in model.profiles if p.strategy != "prefix-cache"))


def _with_prefix_cache(model: Model) -> Model:
    return dataclasses.replace(model, profiles=(*model.profiles, Profile("chat", "prefix-cache")))


def _replaced(gateway: Gateway, index: int, model: Model) -> Gateway:
    return dataclasses.replace(gateway, models=(*gateway.models[:index], model, *gateway.models[index + 1 :]))



def test_a_model_that_starts_or_stops_using_prefix_cache_switches_the_slow_path_routes() -> None:
    # The slow-path routes put prefix_hash in the chain only while some model uses it: the fleet's first
    # prefix-cache model (in place, added) and its last (in place, removed) change them too, and the
    # in-place ones still re-join only the changed model's run.
    builder = SnapshotBuilder(run=4)
    gateway = fleet(20)
    gateway = dataclasses.replace(gateway, models=tuple(_without_prefix_cache(m) for m in gateway.models))
    snapshot = builder.snapshot(gateway)
    _assert_same(snapshot, gateway)
    assert _hashing_slow_path(snapshot) == set()
    plain = gateway.models
    added = _with_prefix_cache(fleet_model(0, name="z"))
    steps: list[tuple[Callable[[Gateway], Gateway], set[str], int | None]] = [
        (lambda g: _replaced(g, 9, _with_prefix_cache(plain[9])), ALL_SLOW, 2),  # the first, in place
        (lambda g: _replaced(g, 13, _with_prefix_cache(plain[13])), ALL_SLOW, 3),  # models 9 and 13
        (lambda g: _replaced(g, 13, plain[13]), ALL_SLOW, 3),  # 9 still does
        (lambda g: _replaced(g, 9, plain[9]), set(), 2),  # the last one stops, in place
        (lambda g: dataclasses.replace(g, models=(*g.models, added)), ALL_SLOW, None),  # added
        (lambda g: dataclasses.replace(g, models=plain), set(), None),  # removed
    ]
    for step, (edit, hashing, run) in enumerate(steps):
        gateway = edit(gateway)
        previous, snapshot = snapshot, builder.snapshot(gateway, snapshot)
        _assert_same(snapshot, gateway, previous)
        assert _hashing_slow_path(snapshot) == hashing, step
        assert snapshot.changes_since(previous)[ROUTE] == {"spillover_routes"}, step
        if run is not None:
            # O(changed): the runs of the other models are the previous table's objects.
            before = previous.basis.routes.runs  # type: ignore[attr-defined]
            after = snapshot.basis.routes.runs  # type: ignore[attr-defined]
            assert [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a is not b] == [run], step


_STEP = st.tuples(
    st.integers(0, 2),  # which group
    st.sampled_from((*CHANGES, "replicas")),
    st.integers(0, 10_000),  # which model (modulo the group's count)
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_STEP, min_size=1, max_size=12))
def test_any_sequence_of_changes_in_several_groups_gives_the_full_translation(steps: list[tuple[int, str, int]]) -> None:
    pieces = PieceCache(variants=2)  # small, so that values are evicted and encoded again
    builder = SnapshotBuilder(pieces, run=5)  # the route table in runs of 5 models: 3 per group
    gateways = [fleet(12, f"group-{g}", replicas=g + 1) for g in range(3)]
    snapshots = [builder.snapshot(g) for g in gateways]
    for generation, (group, kind, index) in enumerate(steps, start=1):
        gateway = gateways[group]
        if kind == "replicas":
            replicas = 1 + generation % 4
            gateway = dataclasses.replace(
                gateway, models=tuple(fleet_model(int(m.name[-5:]), replicas) if m.name.startswith("model-") else m
                                      for m in gateway.models)
            )
        elif gateway.models or kind == "add":
            gateway = change(gateway, kind, index % max(1, len(gateway.models)), generation)
        previous = snapshots[group]
        gateways[group], snapshots[group] = gateway, builder.snapshot(gateway, previous)
        _assert_same(snapshots[group], gateway, previous)


async def test_the_policy_provider_builds_what_its_resources_translate(tmp_path: Path) -> None:
    from spillover.controller.contracts import GroupView
    from spillover.controller.policies import PolicyProvider
    from tests.harness.policy_files import model_deployment, write

    for i in range(6):
        write(tmp_path / f"m{i}.yaml", model_deployment(f"model-{i}", [f"10.0.0.{i + 1}:8000"], rps=10.0 + i))
    provider = PolicyProvider(tmp_path, Listener("127.0.0.1", 24010), poll_interval=0.01)

    def same(snapshot: Snapshot, view: GroupView) -> None:
        full = Snapshot.from_messages(provider.resources(view))
        for type_url in PUSH_ORDER:
            assert {n: r.body for n, r in snapshot.get(type_url).items()} == {
                n: r.body for n, r in full.get(type_url).items()
            }, type_url
            assert list(snapshot.get(type_url)) == list(full.get(type_url))

    views = [GroupView("a", 1), GroupView("b", 3)]
    snapshots = [provider.snapshot(view, None) for view in views]
    for view, snapshot in zip(views, snapshots, strict=True):
        same(snapshot, view)
    # One policy changes, one goes, one comes: the source's new state, as its run loop hands it over.
    write(tmp_path / "m2.yaml", model_deployment("model-2", ["10.0.0.9:8000", "10.0.0.10:8000"], rps=99.0))
    (tmp_path / "m4.yaml").unlink()
    write(tmp_path / "m9.yaml", model_deployment("model-9", ["10.0.0.19:8000"]))
    state = provider.source.poll()
    assert state is not None
    provider._on_state(state)
    for view, snapshot in zip(views, snapshots, strict=True):
        same(provider.snapshot(view, snapshot), view)
