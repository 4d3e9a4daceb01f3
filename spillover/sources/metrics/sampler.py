"""Samples every overflow metric of every model, concurrently, each query with its own deadline.

A query slower than its deadline gives an error sample for that metric alone; `sample(models, sources)`
samples only some sources, so a caller can keep a slow source's round running in the background while
the others (and health-based decisions) go on without it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping

from spillover.policy import ModelDeployment
from spillover.policy.presets import DEFAULT_PRESETS, PresetTable, Source
from spillover.sources.metrics.envoy import EnvoyScrape, EnvoySource
from spillover.sources.metrics.kubernetes import KubernetesSource
from spillover.sources.metrics.prometheus import PrometheusSource
from spillover.sources.metrics.render import EnvoyQuery, KubeQuery, PromQuery, RenderedMetric, render_model
from spillover.sources.metrics.sample import Sample

__all__ = ["SOURCES", "MetricsSampler"]

SOURCES: tuple[Source, ...] = ("prometheus", "kubernetes", "envoy")

log = logging.getLogger(__name__)


class MetricsSampler:
    """`await sampler.sample(models)` -> `{spec.model: {metric display name: Sample}}`.

    Never raises for a source problem: a missing, failing or slow source gives error samples.
    `timeout` is the deadline of each query (and of the one Envoy scrape per round), one number or per
    source name.
    """

    def __init__(
        self,
        *,
        prometheus: PrometheusSource | None = None,
        kubernetes: KubernetesSource | None = None,
        envoy: EnvoySource | None = None,
        presets: PresetTable = DEFAULT_PRESETS,
        timeout: float | Mapping[str, float] = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prometheus = prometheus
        self.kubernetes = kubernetes
        self.envoy = envoy
        self.presets = presets
        self._timeout = timeout
        self._clock = clock

    def timeout_for(self, source: Source) -> float:
        if isinstance(self._timeout, Mapping):
            return float(self._timeout.get(source, 5.0))
        return float(self._timeout)

    async def close(self) -> None:
        for source in (self.prometheus, self.kubernetes, self.envoy):
            if source is not None:
                await source.close()

    def sources_of(self, models: Iterable[ModelDeployment]) -> set[Source]:
        """The sources the models' metrics are read from."""
        return {metric.source for md in models for metric in render_model(md, self.presets)}

    async def _bounded(self, source: Source, what: Awaitable[Sample]) -> Sample:
        try:
            async with asyncio.timeout(self.timeout_for(source)):
                return await what
        except TimeoutError:
            return Sample(None, self._clock(), f"{source}: timed out after {self.timeout_for(source):g}s")
        except Exception as exc:  # a bug must not take the whole round down
            log.exception("%s metric failed", source)
            return Sample(None, self._clock(), f"{source}: {type(exc).__name__}: {exc}")

    async def sample(
        self, models: Iterable[ModelDeployment], sources: Collection[Source] = SOURCES
    ) -> dict[str, dict[str, Sample]]:
        """Every model's metrics read from `sources` (all by default); other metrics are left out."""
        models = list(models)
        rendered: list[tuple[str, RenderedMetric]] = []
        for md in models:
            for metric in render_model(md, self.presets):
                if metric.source in sources:
                    rendered.append((md.model, metric))

        # Envoy: one scrape of every proxy per round, shared by all Envoy metrics.
        scrape: EnvoyScrape | None = None
        scrape_error = ""
        if self.envoy is not None and any(m.source == "envoy" and m.query is not None for _, m in rendered):
            try:
                async with asyncio.timeout(self.timeout_for("envoy")):
                    scrape = await self.envoy.scrape()
            except TimeoutError:
                scrape_error = f"envoy: timed out after {self.timeout_for('envoy'):g}s"
            except Exception as exc:
                log.exception("envoy scrape failed")
                scrape_error = f"envoy: {type(exc).__name__}: {exc}"

        async def one(metric: RenderedMetric) -> Sample:
            q = metric.query
            if q is None:
                return Sample(None, self._clock(), metric.error)
            if isinstance(q, PromQuery):
                if self.prometheus is None:
                    return Sample(None, self._clock(), "prometheus: no Prometheus server configured")
                return await self._bounded("prometheus", self.prometheus.sample(q.promql, metric.reducer))
            if isinstance(q, KubeQuery):
                if self.kubernetes is None:
                    return Sample(None, self._clock(), "kubernetes: no Kubernetes API configured")
                return await self._bounded("kubernetes", self.kubernetes.sample(q))
            if isinstance(q, EnvoyQuery):
                if self.envoy is None:
                    return Sample(None, self._clock(), "envoy: no Envoy admin endpoints configured")
                if scrape is None:
                    return Sample(None, self._clock(), scrape_error or "envoy: no scrape")
                return self.envoy.evaluate(scrape, q, metric.reducer, metric.window)
            return Sample(None, self._clock(), f"{metric.source}: unsupported query {type(q).__name__}")

        samples = await asyncio.gather(*(one(m) for _, m in rendered))
        result: dict[str, dict[str, Sample]] = {md.model: {} for md in models}
        for (model, metric), s in zip(rendered, samples, strict=True):
            result.setdefault(model, {})[metric.name] = s
        return result
