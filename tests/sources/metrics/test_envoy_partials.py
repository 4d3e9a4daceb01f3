"""An Envoy metric over several sets of proxies: combining each set's `EnvoyPartial` gives exactly the
sample one scrape of all of them gives, for every reducer, with `per`, errors and missing stats."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spillover.sources.metrics.envoy import EnvoyScrape, EnvoySource, ProxyStats, combine_partials
from spillover.sources.metrics.render import EnvoyQuery
from spillover.sources.metrics.sample import Sample, reduce_values

STAT, PER = "http.ingress.downstream_rq_active", "cluster.pods.membership_healthy"

proxy = st.one_of(
    st.builds(lambda v, p: ProxyStats({STAT: v, PER: p}), st.floats(0, 1e6, allow_nan=False), st.integers(0, 9)),
    st.builds(lambda p: ProxyStats({PER: p}), st.integers(0, 9)),  # answers, has no such stat
    st.just(ProxyStats(error="http://x/stats timed out after 2s")),
)


def reference(proxies: list[ProxyStats], query: EnvoyQuery, reducer: str) -> Sample:
    """One scrape of every proxy, computed from first principles (one value per proxy, then the reducer)."""
    if not proxies:
        return Sample(None, 1.0, "envoy: no proxy admin endpoint to read")
    answered = [p for p in proxies if not p.error]
    if not answered:
        return Sample(None, 1.0, f"envoy: no proxy answered ({len(proxies)} tried; {proxies[0].error})")
    values = [p.values[STAT] for p in answered if STAT in p.values]
    if not values:
        return Sample(None, 1.0, f"envoy: {STAT} (prefix pods): not found on any proxy")
    value = reduce_values(values, reducer)  # type: ignore[arg-type]
    if query.per is not None:
        value /= max([1.0, *(p.values.get(PER, 0.0) for p in proxies)])
    return Sample(value, 1.0)


@settings(max_examples=300, deadline=None)
@given(
    proxies=st.lists(proxy, min_size=0, max_size=12),
    cuts=st.lists(st.integers(0, 12), max_size=3),
    reducer=st.sampled_from(["sum", "max", "average"]),
    per=st.booleans(),
)
def test_partials_combine_into_the_sample_of_one_scrape_of_every_proxy(
    proxies: list[ProxyStats], cuts: list[int], reducer: str, per: bool
) -> None:
    query = EnvoyQuery(STAT, "gauge", "pods", per=PER if per else None)
    everyone = {f"http://e{i}": stats for i, stats in enumerate(proxies)}
    whole = reference(list(everyone.values()), query, reducer)
    assert EnvoySource([]).evaluate(EnvoyScrape(1.0, 1.0, everyone), query, reducer) == whole  # type: ignore[arg-type]
    bounds = sorted({0, len(proxies), *(min(c, len(proxies)) for c in cuts)})
    parts = []
    for start, end in itertools.pairwise(bounds):
        subset = {f"http://e{i}": proxies[i] for i in range(start, end)}
        parts.append(EnvoySource([]).partial(EnvoyScrape(1.0, 1.0, subset), query))
    combined = combine_partials(parts, query, reducer, 1.0)  # type: ignore[arg-type]
    assert combined.error == whole.error
    if whole.value is None:
        assert combined.value is None
    else:
        assert combined.value is not None and math.isclose(combined.value, whole.value, rel_tol=1e-9, abs_tol=1e-6)


def test_a_rate_is_each_sets_own_history_combined() -> None:
    query = EnvoyQuery("cluster.pods.upstream_rq_total", "rate", "pods")
    source_a, source_b, whole = EnvoySource([]), EnvoySource([]), EnvoySource([])
    first = {"http://a": ProxyStats({query.stat: 100}), "http://b": ProxyStats({query.stat: 10})}
    second = {"http://a": ProxyStats({query.stat: 120}), "http://b": ProxyStats({query.stat: 40})}
    for mono, scrape in ((0.0, first), (2.0, second)):
        parts = [
            source_a.partial(EnvoyScrape(mono, mono, {"http://a": scrape["http://a"]}), query),
            source_b.partial(EnvoyScrape(mono, mono, {"http://b": scrape["http://b"]}), query),
        ]
        expected = whole.evaluate(EnvoyScrape(mono, mono, scrape), query, "sum")
        got = combine_partials(parts, query, "sum", mono)
        assert (got.value, got.error) == (expected.value, expected.error)
    assert got.value == pytest.approx((20 + 30) / 2)
    assert "needs a second scrape" in combine_partials(
        [EnvoySource([]).partial(EnvoyScrape(0, 0, first), query)], query, "sum", 0).error
