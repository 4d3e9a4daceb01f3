"""The PromQL behind every dashboard panel and `spillover report`, in one place.

Each function takes the label matchers that pick the models (`model=~"$model"` in a dashboard,
`model="llama"` in the report) and the rate window (`$__rate_interval`, or a fixed one). The series are
Envoy's per-model stats (tagged by the bootstrap, see spillover.names STATS_TAGS) and spillover's own
(controller/model_metrics.py); the names come from spillover.names.
"""

from __future__ import annotations

from spillover.names import (
    ENVOY_CLUSTER_METRIC_PREFIX,
    ENVOY_RATE_LIMITED_METRIC,
    ENVOY_ROUTE_METRIC_PREFIX,
    MODEL_METRIC_ERRORS_SERIES,
    MODEL_METRIC_THRESHOLD_SERIES,
    MODEL_METRIC_VALUE_SERIES,
    MODEL_REMOTE_SHARE_SERIES,
    MODEL_STATE_SERIES,
    MODEL_TIME_IN_STATE_SERIES,
    SIDE_LOCAL,
    SIDE_REMOTE,
)
from spillover.policy import OverflowState

__all__ = [
    "STATE_CODES",
    "healthy_by_side",
    "in_flight_by_side",
    "latency",
    "metric_errors",
    "metric_pressure",
    "metric_threshold",
    "metric_value",
    "model_selector",
    "models_by_state",
    "rate_limited",
    "remote_share_decided",
    "remote_share_observed",
    "requests_by_side",
    "responses",
    "state_code",
    "time_in_state",
]

# A state as a number, for state timelines and the report: the order of OverflowState.
STATE_CODES: dict[OverflowState, int] = {state: code for code, state in enumerate(OverflowState)}
_SIDES = f'side=~"{SIDE_LOCAL}|{SIDE_REMOTE}"'


def model_selector(model: str, regex: bool = False) -> str:
    """`model="x"` (or `model=~"x"`), with the value escaped for a PromQL string."""
    escaped = model.replace("\\", "\\\\").replace('"', '\\"')
    return f'model{"=~" if regex else "="}"{escaped}"'


def _agg(op: str, labels: tuple[str, ...]) -> str:
    return f"{op} by ({', '.join(labels)}) " if labels else f"{op} "


_REMOTE = f'side="{SIDE_REMOTE}"'


def _requests(models: str, window: str, by: tuple[str, ...], sides: str = _SIDES) -> str:
    return f"{_agg('sum', by)}(rate({ENVOY_CLUSTER_METRIC_PREFIX}upstream_rq_total{{{models},{sides}}}[{window}]))"


def requests_by_side(models: str, window: str, by: tuple[str, ...] = ("side",)) -> str:
    """Requests sent to each side (the clusters' own count: a failed-over retry counts where it went)."""
    return _requests(models, window, by)


def remote_share_observed(models: str, window: str, by: tuple[str, ...] = ("model",)) -> str:
    """Percent of the requests Envoy sent to the remote side."""
    return f"100 * {_requests(models, window, by, _REMOTE)} / {_requests(models, window, by)}"


def remote_share_decided(models: str, by: tuple[str, ...] = ("model",)) -> str:
    """The share spillover told Envoy to send remote."""
    return f"{_agg('max', by)}({MODEL_REMOTE_SHARE_SERIES}{{{models}}})"


def responses(models: str, window: str, by: tuple[str, ...] = ("model",)) -> str:
    """Responses from the backends per second (route stats: every model and profile), by code class
    with `envoy_response_code_class` in `by`."""
    return f"{_agg('sum', by)}(rate({ENVOY_ROUTE_METRIC_PREFIX}upstream_rq_xx{{{models}}}[{window}]))"


def rate_limited(models: str, window: str, by: tuple[str, ...] = ("model",)) -> str:
    """429s per second from the model's own rate limit (per model and profile)."""
    return f"{_agg('sum', by)}(rate({ENVOY_RATE_LIMITED_METRIC}{{{models}}}[{window}]))"


def latency(models: str, window: str, quantile: float, by: tuple[str, ...] = ("model",)) -> str:
    """A quantile of the upstream time of the model's routes, in milliseconds."""
    labels = ", ".join((*by, "le"))
    return (
        f"histogram_quantile({quantile:g}, sum by ({labels}) "
        f"(rate({ENVOY_ROUTE_METRIC_PREFIX}upstream_rq_time_bucket{{{models}}}[{window}])))"
    )


def in_flight_by_side(models: str, by: tuple[str, ...] = ("side",)) -> str:
    return f"{_agg('sum', by)}({ENVOY_CLUSTER_METRIC_PREFIX}upstream_rq_active{{{models},{_SIDES}}})"


def healthy_by_side(models: str) -> str:
    """Healthy endpoints per side (the most any Envoy and cluster of the model sees)."""
    return f"max by (side) ({ENVOY_CLUSTER_METRIC_PREFIX}membership_healthy{{{models},{_SIDES}}})"


def state_code(models: str) -> str:
    """The state of each model as its STATE_CODES number (every state is a 0/1 series)."""
    parts = [f'{MODEL_STATE_SERIES}{{{models},state="{state.value}"}} * {code}' for state, code in STATE_CODES.items()]
    return "sum by (model) (" + " or ".join(parts) + ")"


def models_by_state(models: str) -> str:
    return f"sum by (state) ({MODEL_STATE_SERIES}{{{models}}})"


def time_in_state(models: str) -> str:
    return f"max by (model, state) ({MODEL_TIME_IN_STATE_SERIES}{{{models}}})"


def metric_value(models: str) -> str:
    return f"max by (model, metric) ({MODEL_METRIC_VALUE_SERIES}{{{models}}})"


def metric_threshold(models: str) -> str:
    return f"max by (model, metric) ({MODEL_METRIC_THRESHOLD_SERIES}{{{models}}})"


def metric_pressure(models: str) -> str:
    """How far the closest metric is to its threshold: 1 (100 %) is the threshold, past it is pressure."""
    return f"max by (model) ({MODEL_METRIC_VALUE_SERIES}{{{models}}} / {MODEL_METRIC_THRESHOLD_SERIES}{{{models}}})"


def metric_errors(models: str, window: str) -> str:
    return f"sum by (model, metric) (rate({MODEL_METRIC_ERRORS_SERIES}{{{models}}}[{window}]))"
