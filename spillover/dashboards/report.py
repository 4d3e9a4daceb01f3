"""`spillover report`: an overflow episode of one model as a picture, from Prometheus range queries.

    spillover report --prometheus-url http://prometheus:9090 --model llama --since 1h --out episode.png

Four panels over one time axis, with the time the model spent in OVERFLOW or FAILOVER shaded across all
of them: each overflow metric against its threshold, the remote share (what Envoy did and what spillover
decided), requests per second to the local and the remote side, and 429s from the model's rate limit.
The queries are the dashboards' own (`queries.py`); the rate window follows Grafana's $__rate_interval
(the larger of step + scrape interval and 4 scrape intervals). Drawn with matplotlib's Agg backend (no
display), an optional dependency: `pip install 'spillover[report]'`.
"""

from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from spillover.dashboards import queries as q
from spillover.names import model_label
from spillover.policy import OverflowState

__all__ = ["Episode", "Layout", "ReportError", "Series", "draw", "fetch_episode", "parse_duration"]

MAX_POINTS = 1000  # per series: Prometheus refuses more than 11,000, a picture needs far fewer
LOCAL_COLOR, REMOTE_COLOR, DECIDED_COLOR = "#1f77b4", "#d62728", "#7f7f7f"
THRESHOLD_COLOR = "#d62728"
SHADE_COLORS = {OverflowState.OVERFLOW: "#ff9f1c", OverflowState.FAILOVER: "#e71d36"}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class ReportError(Exception):
    """Something the user can fix: said in one line."""


def parse_duration(text: str) -> float:
    """"90s", "30m", "1h30m", "2d" -> seconds."""
    parts = re.fullmatch(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", text.strip())
    if not text.strip() or parts is None or not any(parts.groups()):
        raise ReportError(f"{text!r}: expected a duration such as 90s, 30m, 1h or 1h30m")
    days, hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    total = days * _UNITS["d"] + hours * _UNITS["h"] + minutes * _UNITS["m"] + seconds
    if total <= 0:
        raise ReportError(f"{text!r}: must be longer than 0s")
    return total


@dataclass(frozen=True)
class Series:
    label: str
    points: tuple[tuple[float, float], ...]  # (unix time, value); NaN samples left out

    @property
    def times(self) -> list[float]:
        return [t for t, _ in self.points]

    @property
    def values(self) -> list[float]:
        return [v for _, v in self.points]


@dataclass(frozen=True)
class Episode:
    model: str  # the `model` label
    name: str  # the model as asked for (its own name, or the label again)
    start: float
    end: float
    step: float
    metrics: tuple[Series, ...] = ()
    thresholds: tuple[Series, ...] = ()
    share_observed: tuple[Series, ...] = ()
    share_decided: tuple[Series, ...] = ()
    requests: tuple[Series, ...] = ()  # by side
    rate_limited: tuple[Series, ...] = ()  # by profile
    states: tuple[Series, ...] = ()  # the state's code (queries.STATE_CODES)

    def is_empty(self) -> bool:
        return not any((self.metrics, self.share_observed, self.share_decided, self.requests, self.states))

    def spans(self) -> list[tuple[OverflowState, float, float]]:
        """(state, from, to) of every stretch the model spent in OVERFLOW or FAILOVER."""
        by_code = {code: state for state, code in q.STATE_CODES.items()}
        out: list[tuple[OverflowState, float, float]] = []
        for series in self.states:
            for t, value in series.points:
                state = by_code.get(round(value))
                if state not in SHADE_COLORS:
                    continue
                assert state is not None
                if out and out[-1][0] == state and t - out[-1][2] <= self.step * 1.5:
                    out[-1] = (state, out[-1][1], t)
                else:
                    out.append((state, t, t))
        # A stretch lasts until the first sample in another state.
        return [(state, a, min(b + self.step, self.end)) for state, a, b in out]


class _Prometheus:
    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        form = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"})
        request = urllib.request.Request(f"{self.url}/api/v1/query_range", data=form.encode(), method="POST")
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                document = json.loads(response.read(16 << 20))
        except urllib.error.HTTPError as error:
            detail = error.read(2000).decode(errors="replace")
            raise ReportError(f"{self.url} answered HTTP {error.code} to {expr!r}: {detail}") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise ReportError(f"cannot read {self.url}: {reason}") from None
        except ValueError:
            raise ReportError(f"{self.url} did not answer with JSON: is it a Prometheus?") from None
        if document.get("status") != "success":
            raise ReportError(f"{self.url}: {document.get('error', 'query failed')} ({expr!r})")
        return list(document["data"]["result"])


def _series(result: list[dict[str, Any]], label: str, default: str = "") -> tuple[Series, ...]:
    out = []
    for item in result:
        points = tuple(
            (float(t), float(v)) for t, v in item.get("values", []) if math.isfinite(float(v))
        )
        if points:
            out.append(Series(item["metric"].get(label, default) if label else default, points))
    return tuple(sorted(out, key=lambda s: s.label))


def fetch_episode(
    prometheus_url: str,
    model: str,
    start: float,
    end: float,
    *,
    scrape_interval: float = 15.0,
    token: str | None = None,
    timeout: float = 10.0,
) -> Episode:
    """The model's series from `start` to `end` (Unix seconds); `model` is its name or its `model` label."""
    if end <= start:
        raise ReportError("the episode must end after it starts")
    step = max(1.0, math.ceil((end - start) / MAX_POINTS))
    window = f"{max(step + scrape_interval, 4 * scrape_interval):g}s"
    label = model_label(model)
    m = q.model_selector(label)
    prom = _Prometheus(prometheus_url, token, timeout)

    def get(expr: str, by: str, default: str = "") -> tuple[Series, ...]:
        return _series(prom.query_range(expr, start, end, step), by, default)

    return Episode(
        model=label,
        name=model,
        start=start,
        end=end,
        step=step,
        metrics=get(q.metric_value(m), "metric"),
        thresholds=get(q.metric_threshold(m), "metric"),
        share_observed=get(q.remote_share_observed(m, window, by=()), "", "observed (Envoy)"),
        share_decided=get(q.remote_share_decided(m, by=()), "", "decided (spillover)"),
        requests=get(q.requests_by_side(m, window), "side"),
        rate_limited=get(q.rate_limited(m, window, by=("profile",)), "profile"),
        states=get(q.state_code(m), "model"),
    )


@dataclass(frozen=True)
class Layout:
    """Where the picture put things, in PNG pixels (x right, y down): for tests and for people who crop."""

    width: int
    height: int
    panels: dict[str, tuple[int, int, int, int]]  # title -> (left, top, right, bottom)
    # (unix time, value) -> pixel, per panel title
    to_pixel: dict[str, Any] = field(default_factory=dict)


PANELS = ("metric", "share", "requests", "rate_limited")


def draw(episode: Episode, out: Path, *, width_px: int = 1400, height_px: int = 1200) -> Layout:
    """Draws `episode` into the PNG `out`."""
    try:
        from matplotlib import dates as mdates
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        raise ReportError("spillover report needs matplotlib: pip install 'spillover[report]'") from None

    dpi = 100
    figure = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(len(PANELS), 1, sharex=True)
    spans = episode.spans()
    named = episode.name if episode.name == episode.model else f"{episode.name} (label {episode.model})"
    when_text = f"{_clock(episode.start, '%Y-%m-%d %H:%M:%S')} to {_clock(episode.end, '%H:%M:%S')} UTC"
    stretches = "; ".join(
        f"{state.value} {_clock(a, '%H:%M:%S')} to {_clock(b, '%H:%M:%S')} ({b - a:.0f} s)" for state, a, b in spans[:3]
    ) or "no overflow in this window"
    figure.suptitle(f"spillover: model {named}\n{when_text}: {stretches}", fontsize=14, fontweight="bold")

    def when(times: list[float]) -> list[Any]:
        return [mdates.date2num(datetime.fromtimestamp(t, UTC)) for t in times]

    metric, share, requests, limited = axes
    for series in episode.metrics:
        metric.plot(when(series.times), series.values, linewidth=2, label=f"{series.label}")
    for series in episode.thresholds:
        metric.plot(when(series.times), series.values, color=THRESHOLD_COLOR, linestyle="--", linewidth=1.5,
                    label=f"{series.label} threshold")
    _frame(metric, "Overflow metric against its threshold", "metric value", bool(episode.metrics))

    for series in episode.share_observed:
        share.plot(when(series.times), series.values, color=REMOTE_COLOR, linewidth=2.5, label=series.label)
    for series in episode.share_decided:
        share.step(when(series.times), series.values, where="post", color=DECIDED_COLOR, linestyle="--",
                   linewidth=1.5, label=series.label)
    share.set_ylim(-5, 105)
    _frame(share, "Remote share", "% of requests", bool(episode.share_observed or episode.share_decided))

    colors = {"local": LOCAL_COLOR, "remote": REMOTE_COLOR}
    for series in episode.requests:
        requests.plot(when(series.times), series.values, color=colors.get(series.label), linewidth=2,
                      label=f"{series.label}")
    _frame(requests, "Requests per second, local and remote", "requests / s", bool(episode.requests))

    for series in episode.rate_limited:
        limited.plot(when(series.times), series.values, linewidth=2, label=f"profile {series.label}")
    _frame(limited, "Rate limited (429 from the model's requestsPerSecond)", "429 / s", bool(episode.rate_limited))

    for ax in axes:
        for state, a, b in spans:
            ax.axvspan(*when([a, b]), color=SHADE_COLORS[state], alpha=0.15, linewidth=0)
    if spans:
        shown = sorted({state for state, _, _ in spans}, key=list(OverflowState).index)
        figure.legend(handles=[Patch(color=SHADE_COLORS[s], alpha=0.3, label=s.value) for s in shown],
                      loc="upper right", title="state", fontsize=10)
    limited.set_xlim(*when([episode.start, episode.end]))
    limited.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))
    limited.set_xlabel("time (UTC)")

    canvas.draw()
    height = int(figure.bbox.height)
    panels, to_pixel = {}, {}
    for name, ax in zip(PANELS, axes, strict=True):
        box = ax.get_window_extent()
        panels[name] = (round(box.x0), round(height - box.y1), round(box.x1), round(height - box.y0))

        def pixel(t: float, v: float, ax: Any = ax) -> tuple[int, int]:
            x, y = ax.transData.transform((mdates.date2num(datetime.fromtimestamp(t, UTC)), v))
            return round(x), round(height - y)

        to_pixel[name] = pixel
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.print_png(str(out))
    return Layout(int(figure.bbox.width), height, panels, to_pixel)


def _frame(ax: Any, title: str, unit: str, has_data: bool) -> None:
    if has_data and ax.dataLim.y0 >= 0 and title != "Remote share":
        # Counts, rates, utilisations: the axis starts at 0 (with room for a line drawn at 0).
        top = ax.get_ylim()[1]
        ax.set_ylim(-0.03 * top, top)
    ax.set_title(title, loc="left", fontsize=12, fontweight="bold")
    ax.set_ylabel(unit)
    ax.grid(True, alpha=0.3)
    if has_data:
        ax.legend(loc="upper left", fontsize=9)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="#888888")


def _clock(t: float, fmt: str) -> str:
    return datetime.fromtimestamp(t, UTC).strftime(fmt)


def report(
    prometheus_url: str,
    model: str,
    since: str,
    out: Path,
    *,
    until: float | None = None,
    scrape_interval: str = "15s",
    token: str | None = None,
) -> tuple[Episode, Layout]:
    """What the command does: fetch the last `since` of `model` and draw it into `out`."""
    end = time.time() if until is None else until
    episode = fetch_episode(
        prometheus_url, model, end - parse_duration(since), end,
        scrape_interval=parse_duration(scrape_interval), token=token,
    )
    if episode.is_empty():
        raise ReportError(
            f"no data for model {episode.model!r} in the last {since} at {prometheus_url}: does Prometheus "
            "scrape spillover's /metrics and the Envoys' /stats/prometheus? (label_values(spillover_model_info, "
            "model) lists the models it knows)"
        )
    return episode, draw(episode, out)
