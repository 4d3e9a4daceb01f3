"""The per-model stats tags (spillover.names STATS_TAGS), applied the way Envoy applies them.

Envoy runs every tag regex on a stat's full name: the first group is cut out of the name, the second is
the tag's value (tests/e2e/test_observability.py reads the same labels from a real Envoy's
/stats/prometheus). Here the regexes meet the awkward names: models whose names contain "_local_",
"_remote", dots and slashes, profiles with dots, and stats that are not a model's at all.
"""

from __future__ import annotations

import re

import pytest

from spillover.names import (
    RATE_LIMIT_STAT_PREFIX,
    STATS_TAGS,
    VIRTUAL_HOST_NAME,
    lb_tag,
    local_cluster_name,
    local_first_cluster_name,
    model_label,
    rate_limit_stat_prefix,
    remote_cluster_name,
    remote_first_cluster_name,
    route_stat_prefix,
    stat_name,
)
from spillover.translate.bootstrap import build_bootstrap, stats_config

# Envoy's own cluster-name extractor (envoy.cluster_name): ours must cut only inside what it cuts.
ENVOY_CLUSTER_NAME = re.compile(r"^cluster\.((.+?)\.)")


def extract(name: str) -> tuple[dict[str, str], str]:
    """(tags, the name left once the tagged parts are cut): Envoy's TagExtractor in miniature."""
    tags: dict[str, str] = {}
    cut: set[int] = set()
    for tag, regex in STATS_TAGS:
        match = re.search(regex, name)
        if match is None:
            continue
        tags[tag] = match.group(2) if match.re.groups >= 2 else match.group(1)
        cut.update(range(*match.span(1)))
    return tags, "".join(c for i, c in enumerate(name) if i not in cut)


def cluster_stat(cluster: str, stat: str = "upstream_rq_total") -> str:
    return f"cluster.{stat_name(cluster)}.{stat}"


MODELS = ["llama", "llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct", "a_local_random", "x_remote", "m_local-first_b"]
TAGS = [lb_tag("random"), lb_tag("round_robin"), lb_tag("least_request", bias=1.5), lb_tag("ring_hash", balance=150),
        lb_tag("round_robin", latency=True)]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("tag", TAGS)
@pytest.mark.parametrize("stat", ["upstream_rq_total", "upstream_rq_active", "health_check.attempt", "external.upstream_rq_2xx"])
def test_local_clusters_and_aggregates_carry_the_model_and_side(model: str, tag: str, stat: str) -> None:
    for cluster, side in (
        (local_cluster_name(model, tag), "local"),
        (local_first_cluster_name(model, tag), None),
        (remote_first_cluster_name(model, tag), None),
    ):
        name = cluster_stat(cluster, stat)
        tags, rest = extract(name)
        expected = {"model": model_label(model)} | ({"side": side} if side else {})
        assert tags == expected, name
        # What is cut lies inside Envoy's own cluster name: the metric is still envoy_cluster_<stat>.
        envoy = ENVOY_CLUSTER_NAME.match(name)
        assert envoy is not None
        assert rest == f"cluster.{stat}"


@pytest.mark.parametrize("model", MODELS)
def test_the_remote_cluster_is_the_remote_side(model: str) -> None:
    tags, rest = extract(cluster_stat(remote_cluster_name(model), "upstream_cx_active"))
    assert tags == {"model": model_label(model), "side": "remote"}
    assert rest == "cluster.upstream_cx_active"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("profile", ["default", "chat", "batch.v2", "free_tier"])
def test_routes_and_rate_limits_carry_the_model_and_profile(model: str, profile: str) -> None:
    expected = {"model": model_label(model), "profile": stat_name(profile)}
    route = f"vhost.{VIRTUAL_HOST_NAME}.route.{route_stat_prefix(model, profile)}.upstream_rq_2xx"
    assert extract(route) == (expected, f"vhost.{VIRTUAL_HOST_NAME}.route.upstream_rq_2xx")
    limit = f"{rate_limit_stat_prefix(model, profile)}.http_local_rate_limit.rate_limited"
    assert extract(limit) == (expected, f"{RATE_LIMIT_STAT_PREFIX}.http_local_rate_limit.rate_limited")


@pytest.mark.parametrize(
    "name",
    [
        "cluster.spillover_xds.upstream_rq_total",
        "cluster.spillover_xds.internal.upstream_rq_200",
        "cluster.local_service.upstream_rq_total",
        "cluster_manager.cds.update_success",
        "http.spillover.downstream_rq_2xx",
        "listener.127.0.0.1_24010.downstream_cx_total",
        f"{RATE_LIMIT_STAT_PREFIX}.http_local_rate_limit.enabled",  # the listener's filter: no bucket
        "vhost.other.route.a@b.upstream_rq_2xx",  # not spillover's virtual host
    ],
)
def test_stats_of_no_model_get_no_tag(name: str) -> None:
    assert extract(name) == ({}, name)


def test_a_model_named_like_another_models_cluster_is_not_taken_for_it() -> None:
    # Model "a" has the local cluster "a_local_random"; model "a_local_random" has "a_local_random_local_random".
    tags, _ = extract(cluster_stat(local_cluster_name("a_local_random", "random")))
    assert tags["model"] == "a_local_random"
    tags, _ = extract(cluster_stat(remote_cluster_name("a_local_random")))
    assert tags == {"model": "a_local_random", "side": "remote"}


def test_the_bootstrap_carries_the_tags_and_keeps_envoys_own() -> None:
    config = build_bootstrap("n", "c", "127.0.0.1:24018")["stats_config"]
    assert config == stats_config()
    assert [t["tag_name"] for t in config["stats_tags"]] == ["model", "profile", "side"]
    # Envoy's default tags (envoy_cluster_name, envoy_response_code_class, ...) stay on.
    assert "use_all_default_tags" not in config
