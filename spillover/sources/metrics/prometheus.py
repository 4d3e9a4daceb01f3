"""The Prometheus source: instant PromQL queries over the HTTP API (`/api/v1/query`) with aiohttp.

No client library: prometheus-api-client is synchronous (requests) and pulls in requests, urllib3,
charset-normalizer, dateparser, regex, pytz and tzlocal for one GET; the HTTP API is small and stable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from spillover.policy.presets import Reducer
from spillover.sources.metrics.sample import MetricError, Sample, reduce_values

__all__ = ["PrometheusSource", "parse_query_result"]


def _float(text: Any) -> float:
    # Prometheus encodes sample values as strings: "1.5", "NaN", "+Inf".
    return float(text)


def parse_query_result(document: Any) -> list[float]:
    """The values of an `/api/v1/query` answer (vector, scalar or matrix: last point of each series)."""
    if not isinstance(document, dict):
        raise MetricError("answer is not a JSON object")
    if document.get("status") != "success":
        kind = document.get("errorType") or "error"
        raise MetricError(f"query failed ({kind}): {str(document.get('error', ''))[:300]}")
    data = document.get("data") or {}
    kind, result = data.get("resultType"), data.get("result") or []
    try:
        if kind == "vector":
            return [_float(series["value"][1]) for series in result]
        if kind == "scalar":
            return [_float(result[1])]
        if kind == "matrix":
            return [_float(series["values"][-1][1]) for series in result if series.get("values")]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise MetricError(f"malformed {kind} result ({type(exc).__name__})") from None
    raise MetricError(f"unsupported result type {kind!r}")


class PrometheusSource:
    """Queries one Prometheus server; `address` like http://prometheus:9090 (a path prefix is kept).

    The bearer token is sent as `Authorization: Bearer ...` and never appears in errors or reprs.
    """

    name = "prometheus"

    def __init__(
        self,
        address: str,
        bearer_token: str | None = None,
        *,
        timeout: float = 5.0,
        session: aiohttp.ClientSession | None = None,
        ssl: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not address.startswith(("http://", "https://")):
            raise ValueError("prometheus address must start with http:// or https://")
        self.address = address.rstrip("/")
        self._token = bearer_token
        self.timeout = timeout
        self._session = session
        self._own_session = session is None
        self._ssl = ssl
        self._clock = clock

    def __repr__(self) -> str:
        return f"PrometheusSource(address={self.address!r}, bearer_token={'***' if self._token else None})"

    async def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._own_session = True
        return self._session

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> PrometheusSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    async def query(self, promql: str) -> list[float]:
        """The values of an instant query; raises MetricError (no secret in the message)."""
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        session = await self._get_session()
        url = f"{self.address}/api/v1/query"
        try:
            async with session.post(
                url,
                data={"query": promql},
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                ssl=self._ssl,
            ) as resp:
                body = await resp.read()
                try:
                    document = await resp.json(content_type=None) if body else None
                except ValueError:
                    document = None
                if document is None:
                    raise MetricError(f"{url} answered HTTP {resp.status} without JSON")
                if resp.status >= 400 and document.get("status") != "error":
                    raise MetricError(f"{url} answered HTTP {resp.status}")
                return parse_query_result(document)
        except MetricError as exc:
            raise MetricError(self._scrub(str(exc))) from None
        except TimeoutError:
            raise MetricError(f"{url}: timed out after {self.timeout:g}s") from None
        except aiohttp.ClientError as exc:
            raise MetricError(self._scrub(f"{url}: {type(exc).__name__}: {exc}")) from None

    async def sample(self, promql: str, reducer: Reducer) -> Sample:
        at = self._clock()
        try:
            values = await self.query(promql)
            if not values:
                raise MetricError("empty result")
            value = reduce_values(values, reducer)
        except MetricError as exc:
            return Sample(None, at, f"prometheus: {exc}")
        if not math.isfinite(value):
            return Sample(None, at, "prometheus: value is not finite")
        return Sample(value, at)
