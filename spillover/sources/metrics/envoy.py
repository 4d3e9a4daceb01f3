"""The Envoy source: the proxies' own stats from their admin endpoints; no Prometheus needed.

One scrape per sampling round reads `/stats?format=json` of every proxy concurrently; every Envoy
metric of every model is then evaluated on that scrape:

- gauge      current value (e.g. `cluster.X.upstream_rq_active`, concurrency),
- rate       per-second increase of a counter over the metric's window, from the deltas between
             scrapes (e.g. `cluster.X.upstream_rq_total`, throughput); counter resets count from 0;
             the first scrape of a proxy gives no rate yet,
- histogram  a percentile of the last stats flush interval (`computed_quantiles`, in ms); a
             percentile Envoy does not compute is read at the next higher supported quantile.

A stat template containing `$cluster` is read for every local cluster of the model (see
`spillover.names.is_local_cluster_stat_name`); per proxy, gauges and rates are summed over those clusters and
histograms take the max. The per-proxy values are then combined with the metric's reducer (presets:
sum for concurrency and throughput, max for latency: conservative). `per` divides by a gauge such as
`membership_healthy`, taken as the max over clusters and proxies (every proxy sees the same pods).
A proxy whose admin endpoint fails is left out while others answer; if none answers, the sample is
an error.

Each scrape's values are first summed up per metric as an `EnvoyPartial` (count, sum, max of the
per-proxy values, the `per` divisor): partials of different sets of proxies combine into the sample of
all of them (`combine_partials`), which is how a fleet of control-plane replicas, each reading its own
Envoys, decides on every Envoy's stats without shipping one value per proxy.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from spillover.names import is_local_cluster_stat_name
from spillover.policy.presets import Reducer
from spillover.sources.metrics.render import EnvoyQuery
from spillover.sources.metrics.sample import Sample

__all__ = ["EnvoyPartial", "EnvoyScrape", "EnvoySource", "ProxyStats", "combine_partials", "parse_stats_json"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProxyStats:
    """One proxy's stats at one scrape (`error` set when its admin endpoint failed)."""

    values: dict[str, float] = field(default_factory=dict)
    # histogram name -> {quantile (0-100): interval value (ms) or None}
    histograms: dict[str, dict[float, float | None]] = field(default_factory=dict)
    error: str = ""


@dataclass(frozen=True)
class EnvoyScrape:
    at: float  # wall clock (Sample.at)
    mono: float  # monotonic, for rates
    proxies: dict[str, ProxyStats]


@dataclass(frozen=True)
class EnvoyPartial:
    """One set of proxies' contribution to an Envoy metric, before the metric's reducer: enough to combine
    the contributions of several sets (e.g. the Envoys of each control-plane replica) into the sample
    of all of them, for every reducer (sum, max, average), without shipping one value per proxy."""

    count: int  # proxies that gave a value
    total: float  # the sum of those values
    highest: float  # the largest of them (0 when count is 0)
    per: float  # the `per` divisor's largest reading (0: none, or no `per`)
    tried: int  # proxies asked
    answered: int  # proxies whose admin endpoint answered
    why: str = ""  # why the proxies that answered gave no value
    error: str = ""  # the first admin endpoint error, if any

    def reduce(self, reducer: Reducer) -> float:
        if reducer == "max":
            return self.highest
        if reducer == "sum":
            return self.total
        if reducer == "average":
            return self.total / self.count
        raise ValueError(f"unknown reducer {reducer!r}")


def combine_partials(parts: Iterable[EnvoyPartial], query: EnvoyQuery, reducer: Reducer, at: float) -> Sample:
    """The sample of a metric over every proxy of `parts`: what `EnvoySource.evaluate` gives for one scrape
    of all of them (errors name the first failure and say how many proxies were tried)."""
    parts = list(parts)
    tried = sum(p.tried for p in parts)
    answered = sum(p.answered for p in parts)
    count = sum(p.count for p in parts)
    if tried == 0:
        return Sample(None, at, "envoy: no proxy admin endpoint to read")
    if answered == 0:
        first = next((p.error for p in parts if p.error), "")
        return Sample(None, at, f"envoy: no proxy answered ({tried} tried; {first})")
    if count == 0:
        why = next((p.why for p in parts if p.why and p.why != "not found on any proxy"), "not found on any proxy")
        return Sample(None, at, f"envoy: {query.stat} (prefix {query.cluster_prefix}): {why}")
    merged = EnvoyPartial(
        count=count,
        total=math.fsum(p.total for p in parts),
        highest=max(p.highest for p in parts if p.count),
        per=max(p.per for p in parts),
        tried=tried,
        answered=answered,
    )
    value = merged.reduce(reducer)
    if query.per is not None:
        value /= max(merged.per, 1.0)
    return Sample(value, at)


def parse_stats_json(document: Any) -> ProxyStats:
    """Envoy's `/stats?format=json`: counters/gauges as {name, value}, histograms as computed quantiles."""
    values: dict[str, float] = {}
    histograms: dict[str, dict[float, float | None]] = {}
    for entry in (document or {}).get("stats", []):
        if "histograms" in entry:
            h = entry["histograms"]
            supported = [float(q) for q in h.get("supported_quantiles", [])]
            for item in h.get("computed_quantiles", []):
                qs = {}
                for q, v in zip(supported, item.get("values", []), strict=False):
                    interval = v.get("interval") if isinstance(v, dict) else None
                    qs[q] = float(interval) if isinstance(interval, int | float) else None
                histograms[item["name"]] = qs
        elif "name" in entry and isinstance(entry.get("value"), int | float) and not isinstance(entry["value"], bool):
            values[entry["name"]] = float(entry["value"])
    return ProxyStats(values, histograms)


def _expand(template: str, cluster: str) -> str:
    return template.replace("${cluster}", cluster).replace("$cluster", cluster)


def _clusters(stats: ProxyStats, prefix: str) -> list[str]:
    names = set()
    for name in stats.values:
        if name.startswith("cluster."):
            cluster = name.split(".", 2)[1]
            if is_local_cluster_stat_name(cluster, prefix):
                names.add(cluster)
    return sorted(names)


def _pick_quantile(quantiles: dict[float, float | None], percentile: float) -> float | None:
    supported = sorted(quantiles)
    if not supported:
        return None
    i = bisect.bisect_left(supported, percentile - 1e-9)
    return quantiles[supported[min(i, len(supported) - 1)]]


class EnvoySource:
    """Reads the admin endpoints `admin_urls` (e.g. http://127.0.0.1:9901), a list or a callable
    returning the current list (the server can pass the connected proxies' admin addresses)."""

    name = "envoy"

    def __init__(
        self,
        admin_urls: Iterable[str] | Callable[[], Iterable[str]],
        *,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._urls = admin_urls if callable(admin_urls) else tuple(admin_urls)
        self.timeout = timeout
        self._clock = clock
        self._monotonic = monotonic
        self._session = session
        self._own_session = session is None
        # (proxy url, counter name) -> [(monotonic time, value)], oldest first
        self._history: dict[tuple[str, str], deque[tuple[float, float]]] = {}
        self._last_scrape: EnvoyScrape | None = None

    def admin_urls(self) -> list[str]:
        urls = self._urls() if callable(self._urls) else self._urls
        return [u.rstrip("/") for u in urls]

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def _fetch(self, session: aiohttp.ClientSession, url: str) -> ProxyStats:
        try:
            async with session.get(
                f"{url}/stats", params={"format": "json"}, timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as resp:
                if resp.status != 200:
                    return ProxyStats(error=f"{url}/stats answered HTTP {resp.status}")
                return parse_stats_json(await resp.json(content_type=None))
        except TimeoutError:
            return ProxyStats(error=f"{url}/stats timed out after {self.timeout:g}s")
        except (aiohttp.ClientError, ValueError, KeyError, TypeError) as exc:
            return ProxyStats(error=f"{url}/stats: {type(exc).__name__}: {exc}")

    async def scrape(self) -> EnvoyScrape:
        """Read every proxy once, concurrently; failures are recorded per proxy, never raised."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._own_session = True
        urls = self.admin_urls()
        results = await asyncio.gather(*(self._fetch(self._session, u) for u in urls))
        scrape = EnvoyScrape(self._clock(), self._monotonic(), dict(zip(urls, results, strict=True)))
        for stats in scrape.proxies.values():
            if stats.error:
                log.warning("envoy stats: %s", stats.error)
        self._last_scrape = scrape
        return scrape

    # -- evaluation ------------------------------------------------------------------------------

    def _rate(self, url: str, name: str, value: float, mono: float, window: float) -> float | None:
        points = self._history.setdefault((url, name), deque())
        if not points or mono > points[-1][0]:
            points.append((mono, value))
        elif points[-1][0] == mono:
            points[-1] = (mono, value)
        # Keep what the window needs, plus one older point so that a short window still has a delta.
        while len(points) > 2 and points[1][0] <= mono - window:
            points.popleft()
        if len(points) < 2:
            return None
        increase = 0.0
        for (_, a), (_, b) in zip(points, list(points)[1:], strict=False):
            increase += b - a if b >= a else b  # a reset: the counter restarted from 0
        dt = points[-1][0] - points[0][0]
        return increase / dt if dt > 0 else None

    def _proxy_value(self, url: str, stats: ProxyStats, query: EnvoyQuery, mono: float, window: float) -> float | None:
        templated = "$cluster" in query.stat or "${cluster}" in query.stat
        names = [_expand(query.stat, c) for c in _clusters(stats, query.cluster_prefix)] if templated else [query.stat]
        found: list[float] = []
        for name in names:
            if query.kind == "histogram":
                quantiles = stats.histograms.get(name)
                if quantiles is not None:
                    v = _pick_quantile(quantiles, query.percentile if query.percentile is not None else 95.0)
                    if v is not None:
                        found.append(v)
            elif name in stats.values:
                if query.kind == "rate":
                    r = self._rate(url, name, stats.values[name], mono, window)
                    if r is not None:
                        found.append(r)
                else:
                    found.append(stats.values[name])
        if not found:
            return None
        return max(found) if query.kind == "histogram" else math.fsum(found)

    def _per(self, scrape: EnvoyScrape, query: EnvoyQuery) -> float:
        assert query.per is not None
        best = 0.0
        for stats in scrape.proxies.values():
            templated = "$cluster" in query.per or "${cluster}" in query.per
            clusters = _clusters(stats, query.cluster_prefix) if templated else [""]
            for c in clusters:
                best = max(best, stats.values.get(_expand(query.per, c), 0.0))
        return best

    def partial(self, scrape: EnvoyScrape, query: EnvoyQuery, window: float = 60.0) -> EnvoyPartial:
        """What these proxies contribute to the metric (updates the counter history for rates)."""
        ok = {u: s for u, s in scrape.proxies.items() if not s.error}
        first_error = next((s.error for s in scrape.proxies.values() if s.error), "")
        values = []
        for url, stats in ok.items():
            v = self._proxy_value(url, stats, query, scrape.mono, window)
            if v is not None and math.isfinite(v):
                values.append(v)
        why = ""
        if ok and not values:
            if query.kind == "rate" and self._any_stat(ok, query):
                why = "needs a second scrape to compute a rate"
            elif query.kind == "histogram" and self._any_stat(ok, query):
                why = "no request recorded in the last stats flush interval"
            else:
                why = "not found on any proxy"
        return EnvoyPartial(
            count=len(values),
            total=math.fsum(values),
            highest=max(values) if values else 0.0,
            per=self._per(scrape, query) if query.per is not None and ok else 0.0,
            tried=len(scrape.proxies),
            answered=len(ok),
            why=why,
            error=first_error,
        )

    def evaluate(self, scrape: EnvoyScrape, query: EnvoyQuery, reducer: Reducer, window: float = 60.0) -> Sample:
        """The metric's sample on one scrape (updates the counter history for rates)."""
        return combine_partials([self.partial(scrape, query, window)], query, reducer, scrape.at)

    def _any_stat(self, proxies: dict[str, ProxyStats], query: EnvoyQuery) -> bool:
        for stats in proxies.values():
            templated = "$cluster" in query.stat or "${cluster}" in query.stat
            names = [_expand(query.stat, c) for c in _clusters(stats, query.cluster_prefix)] if templated else [query.stat]
            if any(n in stats.values or n in stats.histograms for n in names):
                return True
        return False

    async def sample(self, query: EnvoyQuery, reducer: Reducer, window: float = 60.0) -> Sample:
        """Scrape and evaluate one metric (the sampler scrapes once per round and calls `evaluate`)."""
        return self.evaluate(await self.scrape(), query, reducer, window)
