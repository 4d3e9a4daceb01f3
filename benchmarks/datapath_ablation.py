"""Where the data path's cost is: spillover's translated config with one feature taken away at a time.

`python -m benchmarks.datapath_ablation [--rounds N] [--seconds S] [--baseline TREE]` serves the translator's own output for
the benchmark's model (tests/harness/static_bootstrap inlines RDS/EDS: what Envoy runs is what ADS would
deliver) in variants that drop one feature each, beside plain Envoy routing, all through the same pinned
one-worker Envoys, the same Go upstream and wrk at 16 connections, rounds alternating the order. A side is a
model (`variants`) or a model plus an edit of its bootstrap for what the IR can't switch off (`sides`: an inert
filter, the reply mapper, route stats, parts of the retry policy or of the aggregates' upstream chain), and the
split weights in runtime (as a static layer). Writes results/NAME.{json,md} (NAME: datapath-ablation);
benchmarks/datapath.py shows the json in results/datapath.md. benchmarks/datapath_instructions.py counts the
same sides' instructions per request, which the machine's load doesn't move.

`--baseline TREE` (a source tree, e.g. `git archive` of main unpacked) adds that tree's translation of the
full config and of the config without failover as two more sides of the same rounds: two translator
versions compared under the same load, which separate runs on a shared machine can't do.

`--pieces` adds sides that price the body path's filters one at a time (PATCHED): the full config with the
model's route leaving json_to_metadata, the Lua normaliser, both, or the body path's Lua (lua.BODY_MODEL)
on for header-routed requests, and without the listener's body-model filter (what a filter disabled by
default costs). `--other TREE` adds more trees' full config as sides.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks import machine
from benchmarks.datapath import (
    KINDS,
    MODEL,
    RESULTS,
    SHAPES,
    BenchError,
    _answers,
    _cpus,
    _GoPeer,
    _Pinned,
    ensure_tools,
    plain_bootstrap,
    wrk,
)
from spillover.ir import Endpoint, Gateway, Listener, Model, Profile, RemoteBackend, TrafficSplit
from spillover.names import UPSTREAM_SIDE_HEADER
from spillover.translate import translate
from spillover.translate.common import (
    CLIENT_HOST_FILTER,
    HTTP_PROTOCOL_OPTIONS,
    JSON_TO_METADATA_FILTER,
    NORMALIZE_FILTER,
    PREFIX_HASH_FILTER,
)
from tests.harness.envoy import Envoy, dicts_in
from tests.harness.polling import wait_until
from tests.harness.ports import free_port
from tests.harness.static_bootstrap import to_static_bootstrap

__all__ = ["main", "run"]


def _model(upstream: tuple[str, int]) -> Model:
    """What spillover serves for benchmarks/datapath.py's policy (OVERFLOW at 50 %, failover, a rate limit)."""
    host, port = upstream
    return Model(
        MODEL,
        (Endpoint(host, port),),
        profiles=(Profile("default", "least-request", 1_000_000, 1_000_000),),
        remote=RemoteBackend(host, port, scheme="http", host_rewrite=f"{host}:{port}"),
        split=TrafficSplit(50, 50),
        failover=True,
    )


def variants(upstream: tuple[str, int]) -> dict[str, Model]:
    full = _model(upstream)
    no_failover = dataclasses.replace(full, failover=False)
    return {
        "spillover (all of it)": full,
        "- failover aggregates (and their upstream Lua)": no_failover,
        # The aggregates alone: a remote that keeps the client's host needs no upstream filter at all (the
        # local-first aggregates never have any: they reach the remote through its internal listener).
        "- the aggregates' upstream filters (remote keeps the host)": dataclasses.replace(
            full, remote=dataclasses.replace(full.remote, host_rewrite=None) if full.remote else None
        ),
        "- failover, - weighted split (local only)": dataclasses.replace(
            no_failover, split=TrafficSplit(100, 0)
        ),
        "- rate limit": dataclasses.replace(full, profiles=(Profile("default", "least-request"),)),
        "random instead of least-request": dataclasses.replace(
            full, profiles=(Profile("default", "random", 1_000_000, 1_000_000),)
        ),
    }


Bootstrap = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Side:
    """One Envoy of the run: a model translated (`split_weights` as the gateway's), then `edit` applied to
    the static bootstrap, for the parts of the chain the IR can't switch off (an inert filter, a mapper).
    `kinds`: the requests it can serve (without the normaliser a body-routed request is a 404)."""

    model: Model
    split_weights: str = "route"
    edit: Callable[[Bootstrap], None] | None = None
    kinds: tuple[str, ...] = KINDS


def _managers(bootstrap: Bootstrap) -> Iterator[dict[str, Any]]:
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                if network_filter["name"] == "envoy.filters.network.http_connection_manager":
                    yield network_filter["typed_config"]


def _routes(bootstrap: Bootstrap) -> Iterator[dict[str, Any]]:
    return (d for manager in _managers(bootstrap) for d in dicts_in(manager["route_config"])
            if "match" in d and "name" in d)  # fmt: skip


def _without_filters(*names: str) -> Callable[[Bootstrap], None]:
    """The listener without these HTTP filters, and the routes without their per-route configs."""

    def edit(bootstrap: Bootstrap) -> None:
        for manager in _managers(bootstrap):
            manager["http_filters"] = [f for f in manager["http_filters"] if f["name"] not in names]
        for route in _routes(bootstrap):
            for name in names:
                route.get("typed_per_filter_config", {}).pop(name, None)

    return edit


def _client_host_in_filter_state(bootstrap: Bootstrap) -> None:
    """What saving the client's host costs with set_filter_state instead of header_to_metadata: the same two
    headers, on every request (only the saving: the restore Lua reads dynamic metadata and would need to
    read filter state instead)."""
    _without_filters(CLIENT_HOST_FILTER)(bootstrap)
    values = [{"object_key": f"spillover.client.{key}", "factory_key": "envoy.string", "skip_if_empty": True,
               "format_string": {"text_format_source": {"inline_string": f"%REQ({header})%"}}}
              for key, header in (("authority", ":authority"), ("original_host", "x-envoy-original-host"))]  # fmt: skip
    for manager in _managers(bootstrap):
        manager["http_filters"].insert(-1, {"name": "spillover.client_host_state", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.set_filter_state.v3.Config",
            "on_request_headers": values}})  # fmt: skip


def _without_side_header_removal(bootstrap: Bootstrap) -> None:
    """The failover routes without their removal of UPSTREAM_SIDE_HEADER (a client's copy on the request,
    the internal listener's answer on the response)."""
    for route in _routes(bootstrap):
        for field in ("request_headers_to_remove", "response_headers_to_remove"):
            kept = [h for h in route.get(field, []) if h != UPSTREAM_SIDE_HEADER]
            if kept:
                route[field] = kept
            else:
                route.pop(field, None)


def _without_reply_mapper(bootstrap: Bootstrap) -> None:
    for manager in _managers(bootstrap):
        manager.pop("local_reply_config", None)


def _without_route_stats(bootstrap: Bootstrap) -> None:
    for route in _routes(bootstrap):
        route.pop("stat_prefix", None)


def _route_stats_rejected(regex: str) -> Callable[[Bootstrap], None]:
    """Envoy's stats matcher rejects the route stats `regex` matches (a cheaper form of the per-route stats,
    if rejected stats cost less per request than kept ones)."""

    def edit(bootstrap: Bootstrap) -> None:
        bootstrap.setdefault("stats_config", {})["stats_matcher"] = {"exclusion_list": {"patterns": [
            {"safe_regex": {"regex": rf"^vhost\.[^.]+\.route\..*\.{regex}$"}}]}}  # fmt: skip

    return edit


def _without_retries(bootstrap: Bootstrap) -> None:
    for route in _routes(bootstrap):
        route.get("route", {}).pop("retry_policy", None)


def _without_retry_parts(*fields: str) -> Callable[[Bootstrap], None]:
    def edit(bootstrap: Bootstrap) -> None:
        for route in _routes(bootstrap):
            for field in fields:
                route.get("route", {}).get("retry_policy", {}).pop(field, None)

    return edit


def _with_listener_failure_header(bootstrap: Bootstrap) -> None:
    """The model's routes retry on the internal listener's failure header and remove it from responses, as
    every failover route did before translate/retries.py left it to the routes with a local share."""
    for route in _routes(bootstrap):
        policy = route.get("route", {}).get("retry_policy")
        if policy is None:
            continue
        policy["retry_on"] += ",retriable-headers"
        policy["retriable_headers"] = [{"name": UPSTREAM_SIDE_HEADER,
                                        "string_match": {"safe_regex": {"regex": "connect-failure|reset"}}}]  # fmt: skip
        route.setdefault("response_headers_to_remove", []).append(UPSTREAM_SIDE_HEADER)


def _aggregate_filters(keep: Callable[[str], bool]) -> Callable[[Bootstrap], None]:
    """The failover aggregates' upstream filters reduced to those whose name `keep` says (none left: no
    upstream chain of their own, Envoy's default codec)."""

    def edit(bootstrap: Bootstrap) -> None:
        for cluster in bootstrap["static_resources"]["clusters"]:
            if cluster.get("cluster_type", {}).get("name") != "envoy.clusters.aggregate":
                continue
            options = cluster["typed_extension_protocol_options"][HTTP_PROTOCOL_OPTIONS]
            kept = [f for f in options.get("http_filters", []) if keep(f["name"])]
            if any(f["name"] != "envoy.filters.http.upstream_codec" for f in kept):
                options["http_filters"] = kept
            else:
                options.pop("http_filters", None)

    return edit


def _model_routes(node: Any, name: str) -> list[dict[str, Any]]:
    """Every route called `name` anywhere in a static bootstrap (the table nests them in RouteLists)."""
    found = []
    if isinstance(node, dict):
        if node.get("name") == name and "match" in node:
            found.append(node)
        for value in node.values():
            found += _model_routes(value, name)
    elif isinstance(node, list):
        for value in node:
            found += _model_routes(value, name)
    return found


def _turn_on(*filters: str, copy_from: str | None = None) -> Callable[[Bootstrap], None]:
    """A patch of the full config's bootstrap: the model's route (the one header-routed requests match
    first) leaves `filters` on instead of switching them off, or, with `copy_from`, takes that route's
    per-filter configs of `filters` (where it has one). Header-routed requests then pay for just those."""

    def patch(bootstrap: Bootstrap) -> None:
        routes = _model_routes(bootstrap, f"{MODEL}/default")
        assert routes, "the model's route is not in the bootstrap"
        source = _model_routes(bootstrap, copy_from)[0] if copy_from else None
        for route in routes:
            per_filter = route.setdefault("typed_per_filter_config", {})
            for name in filters:
                if source is not None and name in source["typed_per_filter_config"]:
                    per_filter[name] = source["typed_per_filter_config"][name]
                else:
                    per_filter.pop(name, None)

    return patch


def _drop_routes(node: Any, name: str) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("routes"), list):
            node["routes"] = [r for r in node["routes"] if r.get("name") != name]
        for value in node.values():
            _drop_routes(value, name)
    elif isinstance(node, list):
        for value in node:
            _drop_routes(value, name)


def _without_listener_filter(name: str) -> Callable[[Bootstrap], None]:
    """A patch: the listener's filter chain without `name`, and without the body-model route that turns
    it on (body-routed requests take the old slow path): what a filter disabled by default costs
    header-routed requests, whatever Envoy spends deciding to skip it."""

    def patch(bootstrap: Bootstrap) -> None:
        found = 0
        for listener in bootstrap["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                for network_filter in chain["filters"]:
                    filters = network_filter["typed_config"].get("http_filters", [])
                    kept = [f for f in filters if f["name"] != name]
                    found += len(filters) - len(kept)
                    network_filter["typed_config"]["http_filters"] = kept
        assert found, f"no {name} in the listener"
        _drop_routes(bootstrap, "body-model")

    return patch


# Costs of the pieces, measured on the header-routed side (the body-routed side is the full config's):
# each is the full config with one more filter on for header-routed requests.
PATCHED: dict[str, Callable[[Bootstrap], None]] = {
    "all of it, header path + json_to_metadata": _turn_on("envoy.filters.http.json_to_metadata"),
    "all of it, header path + Lua normaliser": _turn_on("spillover.normalize"),
    "all of it, header path + json_to_metadata + Lua": _turn_on(
        "envoy.filters.http.json_to_metadata", "spillover.normalize"
    ),
    "all of it, header path + the body-model Lua (the body path)": _turn_on(
        "spillover.body_model", copy_from="body-model"
    ),
    "all of it, no body-model filter in the listener (body: old slow path)": _without_listener_filter(
        "spillover.body_model"
    ),
}


def sides(upstream: tuple[str, int], pieces: bool = False) -> dict[str, Side]:
    """`variants` and the parts of the chain only an edit of the bootstrap takes away; with `pieces`, the
    PATCHED sides too (what each body-path filter costs header-routed requests)."""
    full = _model(upstream)
    all_local = dataclasses.replace(full, split=TrafficSplit(100, 0))
    all_remote = dataclasses.replace(full, split=TrafficSplit(0, 100))
    local_only = dataclasses.replace(full, failover=False, split=TrafficSplit(100, 0))
    result = {name: Side(model) for name, model in variants(upstream).items()}
    result.update({
        "- the aggregates' upstream filters (host rewrite kept, no restore)": Side(full, edit=_aggregate_filters(
            lambda name: False)),
        "- the aggregates' restore and side-header removal (side header kept)": Side(full, edit=_aggregate_filters(
            lambda name: name in ("envoy.filters.http.header_mutation", "envoy.filters.http.upstream_codec"))),
        "- client_host header_to_metadata": Side(full, edit=_without_filters(CLIENT_HOST_FILTER)),
        "- the side header's removal (request and response)": Side(full, edit=_without_side_header_removal),
        "- the retry on the internal listener's failure header (retriable-headers)": Side(
            full, edit=_without_retry_parts("retriable_headers")),
        "client_host in filter state (set_filter_state) instead": Side(full, edit=_client_host_in_filter_state),
        "- prefix_hash Lua (inert)": Side(full, edit=_without_filters(PREFIX_HASH_FILTER)),
        "- json_to_metadata and normaliser (header only)": Side(
            full, edit=_without_filters(JSON_TO_METADATA_FILTER, NORMALIZE_FILTER), kinds=("header",)),
        "- local reply mapper": Side(full, edit=_without_reply_mapper),
        "- per-route stats": Side(full, edit=_without_route_stats),
        "- retry policy": Side(full, edit=_without_retries),
        "route stats without per-code and completed counters (stats_matcher)": Side(
            full, edit=_route_stats_rejected(r"upstream_rq_(completed|\d{3})")),
        "route stats without their histogram (stats_matcher)": Side(full, edit=_route_stats_rejected("upstream_rq_time")),
        "- the retries' host predicate (previous_hosts)": Side(
            full, edit=_without_retry_parts("retry_host_predicate", "host_selection_retry_max_attempts")
        ),
        "- the retries' priority (previous_priorities)": Side(full, edit=_without_retry_parts("retry_priority")),
        "local only, - retry policy": Side(local_only, edit=_without_retries),
        "local only, - per-route stats": Side(local_only, edit=_without_route_stats),
        "all remote (failover)": Side(all_remote),
        "all remote (failover), + the listener's failure header": Side(all_remote, edit=_with_listener_failure_header),
        "split weights in runtime (spilling)": Side(full, split_weights="runtime"),
        "all local, remote kept (route weights)": Side(all_local),
        "all local, remote kept (runtime weights)": Side(all_local, split_weights="runtime"),
    })  # fmt: skip
    if pieces:
        result.update({name: Side(full, edit=patch) for name, patch in PATCHED.items()})
    return result


def side_bootstrap(side: Side, port: int) -> Bootstrap:
    resources = translate(
        Gateway("bench", Listener("127.0.0.1", port), (side.model,), split_weights=side.split_weights)
    )
    bootstrap = to_static_bootstrap(resources)
    for runtime in resources.runtimes.values():
        # What the RTDS layer would hold, as a static layer: the same keys, the same lookups per request.
        layer = {key: value.number_value for key, value in runtime.layer.fields.items()}
        bootstrap["layered_runtime"] = {"layers": [{"name": runtime.name, "static_layer": layer}]}
    if side.edit is not None:
        side.edit(bootstrap)
    return bootstrap


# Run inside the baseline tree: its own translator and variants, the same harness helpers.
_BASELINE_SCRIPT = """
import json, sys
from benchmarks.datapath_ablation import side_bootstrap, sides
name, host, port, listen = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
print(json.dumps(side_bootstrap(sides((host, port))[name], listen)))
"""
# The sides the baseline tree renders too: the full config (spilling 50 %), without failover, and all local
# (STANDBY, the remote kept: what a model serves while it does not spill).
BASELINE_SIDES = (
    "spillover (all of it)",
    "- failover aggregates (and their upstream Lua)",
    "all local, remote kept (route weights)",
    "- failover, - weighted split (local only)",
)


def baseline_bootstrap(tree: Path, name: str, upstream: tuple[str, int], port: int) -> dict[str, Any]:
    """The static bootstrap the translator in `tree` makes of its variant `name`."""
    done = subprocess.run(
        [sys.executable, "-c", _BASELINE_SCRIPT, name, upstream[0], str(upstream[1]), str(port)],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, check=False,
        timeout=60,
    )  # fmt: skip
    if done.returncode != 0:
        raise BenchError(f"baseline translation of {name!r} in {tree} failed: {done.stderr[-2000:]}")
    bootstrap: dict[str, Any] = json.loads(done.stdout)
    return bootstrap


def _one_run(tools: dict[str, str], cpus: str, ports: dict[str, int], kind: str, seconds: float, workdir: Path,
             pids: dict[str, dict[str, int]], side: str) -> dict[str, Any]:  # fmt: skip
    return wrk(tools, cpus, ports[side], kind, SHAPES["throughput"], seconds, workdir, pids[side])


def run(
    rounds: int,
    seconds: float,
    log: Any = print,
    baseline: Path | None = None,
    only: tuple[str, ...] = (),
    concurrent: bool = False,
    patched: bool = False,
    others: tuple[Path, ...] = (),
) -> dict[str, Any]:
    """`only`: keep the sides whose name contains one of these (plain always runs). `patched`: add the
    PATCHED sides (what each body-path filter costs). `others`: more trees whose full config runs as a
    side (named after the tree's directory). `concurrent`: each
    round's wrk runs of one kind at once, one per side, all the Envoys sharing their one core over the
    same seconds: whatever else the machine does then falls on every side alike, which makes their
    differences steadier on a shared machine than runs one after the other (rps are then shares of
    the core, comparable only as ratios)."""

    def kept(name: str) -> bool:
        return not only or any(part in name for part in only)

    tools = ensure_tools()
    envoy_cpu, rest = _cpus()
    workdir = Path(tempfile.mkdtemp(prefix="spillover-bench-ablation-"))
    upstream = _GoPeer(tools["upstream"], [], rest, workdir / "upstream.log")
    envoys: list[Envoy] = []
    ports: dict[str, int] = {}
    try:
        plain_port = free_port()
        envoys.append(_Pinned(plain_bootstrap(plain_port, upstream.address), workdir, name="plain",
                              cpus=envoy_cpu).start())  # fmt: skip
        ports["plain"] = plain_port
        kinds_of: dict[str, tuple[str, ...]] = {"plain": KINDS}
        for i, (name, spec) in enumerate(sides(("127.0.0.1", upstream.port), pieces=patched).items()):
            if not kept(name):
                continue
            port = free_port()
            envoys.append(
                _Pinned(side_bootstrap(spec, port), workdir, name=f"variant-{i}", cpus=envoy_cpu).start()
            )
            ports[name] = port
            kinds_of[name] = spec.kinds
        for i, tree in enumerate(others):
            port = free_port()
            bootstrap = baseline_bootstrap(tree, BASELINE_SIDES[0], ("127.0.0.1", upstream.port), port)
            envoys.append(_Pinned(bootstrap, workdir, name=f"other-{i}", cpus=envoy_cpu).start())
            ports[f"{BASELINE_SIDES[0]} @ {tree.name}"] = port
            kinds_of[f"{BASELINE_SIDES[0]} @ {tree.name}"] = KINDS
        for i, name in enumerate(BASELINE_SIDES if baseline is not None else ()):
            assert baseline is not None
            if not kept(f"{name} @ baseline"):
                continue
            port = free_port()
            bootstrap = baseline_bootstrap(baseline, name, ("127.0.0.1", upstream.port), port)
            envoys.append(_Pinned(bootstrap, workdir, name=f"baseline-{i}", cpus=envoy_cpu).start())
            ports[f"{name} @ baseline"] = port
            kinds_of[f"{name} @ baseline"] = KINDS
        pids = {side: {"envoy": int(envoy.pid or 0)} for side, envoy in zip(ports, envoys, strict=True)}
        for side_name, port in ports.items():
            for kind in kinds_of[side_name]:
                wait_until(
                    partial(_answers, port, kind),
                    timeout=20,
                    interval=0.1,
                    message=f"port {port} never answered {kind}-routed requests",
                )
        names = list(ports)
        runs = []
        for kind in KINDS:
            # wrk() writes its script on first use; concurrent runs must not race to write it.
            wrk(tools, rest, ports["plain"], kind, 1, 1, workdir)
        for rnd in range(rounds):
            order = names if rnd % 2 == 0 else list(reversed(names))
            for kind in KINDS:
                now = [side for side in order if kind in kinds_of[side]]
                one = partial(_one_run, tools, rest, ports, kind, seconds, workdir, pids)
                if concurrent:
                    with ThreadPoolExecutor(len(now)) as pool:
                        results = list(pool.map(one, now))
                else:
                    results = [one(side) for side in now]
                for side, r in zip(now, results, strict=True):
                    runs.append({"round": rnd, "kind": kind, "side": side, **r})
                    log(
                        f"    round {rnd + 1} {kind:6} {r['rps']:8.0f} rps  {r['envoy_cpu_us_per_req']:5.0f} µs  {side}"
                    )
    finally:
        for envoy in envoys:
            envoy.stop()
        upstream.stop()
    summary: dict[str, Any] = {}
    for kind in KINDS:
        at = {(r["round"], r["side"]): r for r in runs if r["kind"] == kind}
        summary[kind] = {
            side: {
                "rps": statistics.median(at[(n, side)]["rps"] for n in range(rounds)),
                "over_plain": statistics.median(
                    at[(n, side)]["rps"] / at[(n, "plain")]["rps"] for n in range(rounds)
                ),
                "over_plain_min": min(at[(n, side)]["rps"] / at[(n, "plain")]["rps"] for n in range(rounds)),
                "over_plain_max": max(at[(n, side)]["rps"] / at[(n, "plain")]["rps"] for n in range(rounds)),
                "cpu_us": statistics.median(at[(n, side)]["envoy_cpu_us_per_req"] for n in range(rounds)),
                "cpu_us_min": min(at[(n, side)]["envoy_cpu_us_per_req"] for n in range(rounds)),
                "cpu_us_max": max(at[(n, side)]["envoy_cpu_us_per_req"] for n in range(rounds)),
            }
            for side in names
            if (0, side) in at
        }
    return {"rounds": rounds, "seconds_per_run": seconds, "connections": SHAPES["throughput"], "runs": runs,
            "concurrent": concurrent,
            "summary": summary}  # fmt: skip


def section(result: dict[str, Any], title: str = "now") -> list[str]:
    lines = [
        f"## Where the cost is, {title} (benchmarks/datapath_ablation.py)", "",
        f"The translator's output for the benchmark's model, served statically, one feature taken away at a time; "
        f"wrk at {result['connections']} connections, {result['rounds']} rounds x {result['seconds_per_run']:g} s, "
        "rps as a ratio to plain Envoy routing in the same round (median, min-max). Command: "
        f"`{result.get('command', 'python -m benchmarks.datapath_ablation')}` ({result.get('date', '?')}, "
        f"git {result.get('git', '?')}). Load average (1, 5, 15 min) before: "
        f"{' '.join(result.get('load_average', {}).get('before', ['?']))}, after: "
        f"{' '.join(result.get('load_average', {}).get('after', ['?']))}.", "",
        "Envoy CPU per request (its /proc utime + stime over the run ÷ requests) is the steadier figure: other "
        "work on the machine takes CPU away from rps, not from the CPU each request costs.", "",
        "| config | header-routed: Envoy CPU µs / request | rps (÷ plain) | body-routed: Envoy CPU µs / request "
        "| rps (÷ plain) |", "|---|---|---|---|---|",
    ]  # fmt: skip
    known = ["plain", *sides(("127.0.0.1", 1), pieces=True)]  # the JSON's keys come back sorted
    for side in sorted(
        result["summary"]["header"], key=lambda name: known.index(name) if name in known else 99
    ):
        cells = []
        for kind in KINDS:
            s = result["summary"][kind].get(side)
            if s is None:
                cells += ["-", "-"]
                continue
            cells.append(f"{s['cpu_us']:.0f} ({s['cpu_us_min']:.0f}-{s['cpu_us_max']:.0f})")
            cells.append(
                f"{s['rps']:.0f} ({s['over_plain']:.2f}, {s['over_plain_min']:.2f}-{s['over_plain_max']:.2f})"
            )
        lines.append(f"| {side} | {' | '.join(cells)} |")
    lines += ["", *_chain_lines(result)]
    return [*lines, ""]


def _chain_lines(result: dict[str, Any]) -> list[str]:
    """The failover chain's own cost: the full config minus the same config without failover, per round."""
    full, bare = BASELINE_SIDES[:2]
    lines = []
    for suffix in ("", " @ baseline"):
        for kind in KINDS:
            at = {
                (r["round"], r["side"]): r["envoy_cpu_us_per_req"]
                for r in result["runs"]
                if r["kind"] == kind
            }
            diffs = [at[(n, full + suffix)] - at[(n, bare + suffix)] for n in range(result["rounds"])
                     if (n, full + suffix) in at and (n, bare + suffix) in at]  # fmt: skip
            if diffs:
                lines.append(f"- failover chain{suffix or ' (this tree)'}, {kind}-routed: "
                             f"{statistics.median(diffs):.0f} µs / request (min {min(diffs):.0f}, rounds: "
                             f"{', '.join(f'{d:.0f}' for d in diffs)})")  # fmt: skip
    for kind in KINDS:
        at = {(r["round"], r["side"]): r["envoy_cpu_us_per_req"] for r in result["runs"] if r["kind"] == kind}
        saved = [at[(n, f"{full} @ baseline")] - at[(n, full)] for n in range(result["rounds"])
                 if (n, full) in at and (n, f"{full} @ baseline") in at]  # fmt: skip
        if saved:
            lines.append(f"- the full config, baseline minus this tree, {kind}-routed: {statistics.median(saved):.0f} "
                         f"µs / request (rounds: {', '.join(f'{d:.0f}' for d in saved)})")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.datapath_ablation", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--name", default="datapath-ablation", help="results/NAME.{md,json}")
    parser.add_argument(
        "--baseline", type=Path, help="a source tree whose translation runs beside this one's"
    )
    parser.add_argument("--other", action="append", type=Path, default=[],
                        help="another source tree whose full config runs as a side too (repeatable)")  # fmt: skip
    parser.add_argument("--pieces", action="store_true",
                        help="add the sides that price the body path's filters one by one (PATCHED)")  # fmt: skip
    parser.add_argument("--concurrent", action="store_true",
                        help="run the sides of a round at once, sharing Envoy's core (see run())")  # fmt: skip
    parser.add_argument("--only", action="append", default=[],
                        help="run only the sides whose name contains this (repeatable; plain always runs)")  # fmt: skip
    args = parser.parse_args(argv)
    info = machine.describe()
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    try:
        result = run(args.rounds, args.seconds, log=lambda line: print(line, flush=True), baseline=args.baseline,
                     only=tuple(args.only), concurrent=args.concurrent, patched=args.pieces,
                     others=tuple(args.other))  # fmt: skip
    except (BenchError, AssertionError, OSError, RuntimeError) as error:
        print(f"FAILED: {error}")
        return 1
    baseline = f" --baseline {args.baseline}" if args.baseline else ""
    baseline += "".join(f" --only {part!r}" for part in args.only)
    baseline += " --concurrent" if args.concurrent else ""
    baseline += (" --pieces" if args.pieces else "") + "".join(f" --other {tree}" for tree in args.other)
    result.update(command=f"python -m benchmarks.datapath_ablation --rounds {args.rounds} --seconds {args.seconds:g}"
                          f"{baseline}",
                  date=info["date"], git=info["git"], machine=info,
                  load_average={"before": load_before, "after": Path("/proc/loadavg").read_text().split()[:3]})  # fmt: skip
    text = "\n".join(section(result))
    print(text)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    (out / f"{args.name}.md").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
