"""Where traffic goes: local endpoints and the remote backend.

With what applies to them: health checks, outlier ejection, timeouts, retries, and
Beamlit's serverless block (accepted for compatibility).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, WithJsonSchema, field_validator, model_validator

from spillover.policy.auth import AuthConfig
from spillover.policy.meta import Base, resolve_path
from spillover.policy.types import (
    Duration,
    HeaderName,
    Percentage,
    Port,
    fail,
    fail_many,
    is_valid_host,
    split_host_port,
)

# Values of Envoy's x-envoy-retry-on / retry_on.
RETRY_ON = (
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "envoy-ratelimited",
    "retriable-4xx", "refused-stream", "retriable-status-codes", "retriable-headers",
    "http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal", "resource-exhausted",
    "unavailable",
)


class ServerlessConfig(Base):
    """Beamlit serverless configuration; accepted for compatibility."""

    min_num_replicas: int = Field(default=0, ge=0)
    max_num_replicas: int = Field(default=10, ge=0)
    metric: str | None = None
    target: str | None = None
    scale_up_minimum: int | None = Field(default=None, ge=2)
    scale_down_delay: str | None = None
    stable_window: str | None = None
    last_pod_retention_period: str | None = None

    @model_validator(mode="after")
    def _max_at_least_min(self) -> ServerlessConfig:
        if self.max_num_replicas < self.min_num_replicas:
            raise fail("must be >= minNumReplicas", "maxNumReplicas")
        return self


# --- health checks, outlier detection, timeouts, retries ----------------------------------


class HealthCheck(Base):
    """Active HTTP health check run by Envoy.

    Two spellings of the timing: spillover's durations (`interval`, `timeout`) or Simplismart's
    `healthcheck` fields in whole seconds (`periodSeconds`, `timeoutSeconds`, `initialDelaySeconds`, with
    their rules: >= 1, >= 1, >= 0). `port` probes another port of each endpoint than the one it serves
    on (Simplismart's `port`; default: the serving port).
    """

    path: str = "/health"
    port: Port | None = Field(default=None, description="Port to probe on each endpoint; default: its serving port")
    interval: Duration = Field(default=10.0, description="Time between probes; default 10s (or periodSeconds)")
    timeout: Duration = Field(default=5.0, description="Probe timeout; default 5s (or timeoutSeconds)")
    period_seconds: int | None = Field(default=None, ge=1, description="Simplismart: seconds between probes")
    timeout_seconds: int | None = Field(default=None, ge=1, description="Simplismart: probe timeout in seconds")
    initial_delay_seconds: int | None = Field(
        default=None, ge=0,
        description="Simplismart: delay before the first probe. Envoy has no fixed initial delay: it probes a new "
        "endpoint at once and sends it no traffic before a probe passes (see README)",
    )
    healthy_threshold: int = Field(default=2, ge=1)
    unhealthy_threshold: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _check(self) -> HealthCheck:
        problems: list[tuple[Any, str]] = []
        if not self.path.startswith("/"):
            problems.append(("path", 'must start with "/"'))
        given = self.model_fields_set
        if self.period_seconds is not None and "interval" in given:
            problems.append(("periodSeconds", "set interval or periodSeconds, not both"))
        if self.timeout_seconds is not None and "timeout" in given:
            problems.append(("timeoutSeconds", "set timeout or timeoutSeconds, not both"))
        interval, timeout = self.effective_interval, self.effective_timeout
        if interval <= 0:
            problems.append(("interval", "must be > 0"))
        if timeout <= 0:
            problems.append(("timeout", "must be > 0"))
        elif timeout > interval > 0:
            which = "timeoutSeconds" if self.timeout_seconds is not None else "timeout"
            problems.append((which, f"must be <= {'periodSeconds' if self.period_seconds is not None else 'interval'}"))
        if problems:
            raise fail_many(problems)
        return self

    @property
    def effective_interval(self) -> float:
        return float(self.period_seconds) if self.period_seconds is not None else self.interval

    @property
    def effective_timeout(self) -> float:
        return float(self.timeout_seconds) if self.timeout_seconds is not None else self.timeout


class OutlierDetection(Base):
    """Passive ejection of failing hosts (Envoy outlier detection)."""

    enabled: bool = True
    consecutive_5xx: int = Field(default=5, ge=1, alias="consecutive5xx")
    interval: Duration = 10.0
    base_ejection_time: Duration = 30.0
    max_ejection_percent: Percentage = 50


class Timeouts(Base):
    # LLM generations are long: the default request timeout is far above Envoy's 15 s.
    request: Duration = Field(default=300.0, description="Whole request, 0 = no limit. Default 300s.")
    connect: Duration = Field(default=5.0, description="TCP/TLS connect timeout. Default 5s.")
    idle: Duration | None = Field(default=None, description="Stream idle timeout (no bytes either way).")

    @model_validator(mode="after")
    def _check(self) -> Timeouts:
        if self.connect <= 0:
            raise fail("must be > 0", "connect")
        return self


class Retries(Base):
    attempts: int = Field(default=2, ge=0, le=10, description="Retries after the first try. Default 2.")
    per_try_timeout: Duration | None = None
    retry_on: list[str] = Field(default_factory=lambda: ["connect-failure", "refused-stream", "reset"])
    retriable_status_codes: list[Annotated[int, Field(ge=100, le=599)]] = Field(default_factory=list)

    @field_validator("retry_on", mode="after")
    @classmethod
    def _known_retry_on(cls, value: list[str]) -> list[str]:
        problems = [
            (f"[{i}]", f'unknown retry condition "{v}" (known: {", ".join(RETRY_ON)})')
            for i, v in enumerate(value)
            if v not in RETRY_ON
        ]
        if problems:
            raise fail_many(problems)
        return value

    @model_validator(mode="after")
    def _codes_need_condition(self) -> Retries:
        if self.retriable_status_codes and "retriable-status-codes" not in self.retry_on:
            raise fail('requires "retriable-status-codes" in retryOn', "retriableStatusCodes")
        return self


# --- backends ---------------------------------------------------------------------------


def _endpoint(value: Any) -> str:
    if not isinstance(value, str):
        raise fail("must be a string host:port")
    try:
        _, port = split_host_port(value)
    except ValueError as exc:
        raise fail(f"must be host:port ({exc})") from None
    if port is None:
        raise fail("must be host:port (the port is missing)")
    return value


Endpoint = Annotated[str, Field(), WithJsonSchema({"type": "string"})]


class LocalBackend(Base):
    """Local endpoints given directly, for file mode where there is no cluster to resolve serviceRef."""

    endpoints: list[Endpoint] = Field(default_factory=list, description="host:port of each local replica")
    health_check: HealthCheck | None = None
    outlier_detection: OutlierDetection = Field(default_factory=OutlierDetection)

    @field_validator("endpoints", mode="after")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        problems: list[tuple[Any, str]] = []
        seen: dict[str, int] = {}
        for i, ep in enumerate(value):
            try:
                _endpoint(ep)
            except Exception as exc:  # PydanticCustomError carries the message
                problems.append((f"[{i}]", str(exc)))
                continue
            if ep in seen:
                problems.append((f"[{i}]", f"duplicate endpoint (same as endpoints[{seen[ep]}])"))
            seen.setdefault(ep, i)
        if problems:
            raise fail_many(problems)
        return value

    def addresses(self) -> list[tuple[str, int]]:
        out = []
        for ep in self.endpoints:
            host, port = split_host_port(ep)
            out.append((host, port or 80))
        return out


# --- the remote backend -------------------------------------------------------------------


_TEMPLATE_VAR = re.compile(r"\$(\{[^}]*\}|[A-Za-z_][A-Za-z0-9_]*|.?)")
PATH_PREFIX_VARIABLES = ("model", "workspace")


class RemoteBackend(Base):
    """The backend traffic overflows to (Beamlit fields, plus TLS, health and ejection)."""

    host: str = Field(description="Host name or IP, optionally with :port (Beamlit style)")
    scheme: Literal["http", "https"] = "http"
    port: Port | None = Field(default=None, description="Default: the port in host, else 80/443 by scheme")
    path_prefix: str = Field(default="", description="Prepended to the request path; $model and $workspace expand")
    workspace: str | None = Field(default=None, description="Value of $workspace; default: metadata.namespace")
    headers_to_add: dict[HeaderName, str] = Field(default_factory=dict)
    auth_config: AuthConfig | None = None
    ca: str | None = Field(default=None, description='"system" or a CA bundle file path (https only)')
    sni: str | None = Field(default=None, description="TLS SNI; default: the host name (https only)")
    host_rewrite: str | None = Field(default=None, description="Host/:authority sent upstream; default: host")
    health_check: HealthCheck | None = None
    outlier_detection: OutlierDetection = Field(default_factory=OutlierDetection)

    @field_validator("ca", mode="after")
    @classmethod
    def _abs_ca(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or value == "system":
            return value
        return resolve_path(value, info)

    @model_validator(mode="after")
    def _check(self) -> RemoteBackend:
        problems: list[tuple[Any, str]] = []
        host_port: int | None = None
        if "://" in self.host:
            problems.append(("host", "must be a host name without scheme (set scheme: https instead)"))
        elif "/" in self.host:
            problems.append(("host", "must be a host name without a path (use pathPrefix)"))
        else:
            try:
                _, host_port = split_host_port(self.host)
            except ValueError as exc:
                problems.append(("host", f"must be a host name or IP, optionally with :port ({exc})"))
        if host_port is not None and self.port is not None and host_port != self.port:
            problems.append(("port", f"conflicts with the port in host ({host_port})"))
        if self.path_prefix and not self.path_prefix.startswith("/"):
            problems.append(("pathPrefix", 'must start with "/"'))
        for m in _TEMPLATE_VAR.finditer(self.path_prefix):
            name = m.group(1).strip("{}")
            if name not in PATH_PREFIX_VARIABLES:
                problems.append(("pathPrefix", f"unknown variable ${m.group(1)} (known: $model, $workspace)"))
                break
        if self.scheme == "http":
            if self.ca is not None:
                problems.append(("ca", "only applies with scheme: https"))
            if self.sni is not None:
                problems.append(("sni", "only applies with scheme: https"))
        if self.ca == "":
            problems.append(("ca", 'must be "system" or a file path'))
        if self.sni is not None and not is_valid_host(self.sni):
            problems.append(("sni", "must be a host name"))
        if self.host_rewrite is not None and not self.host_rewrite:
            problems.append(("hostRewrite", "must not be empty"))
        for name in self.headers_to_add:
            if name.startswith(":") or name == "host":
                problems.append((("headersToAdd", name), "cannot be set here (use hostRewrite for the host)"))
        if problems:
            raise fail_many(problems)
        return self

    @property
    def host_name(self) -> str:
        return split_host_port(self.host)[0]

    @property
    def effective_port(self) -> int:
        return self.port or split_host_port(self.host)[1] or (443 if self.scheme == "https" else 80)

    @property
    def effective_sni(self) -> str | None:
        return (self.sni or self.host_name) if self.scheme == "https" else None

    @property
    def effective_ca(self) -> str | None:
        return (self.ca or "system") if self.scheme == "https" else None

    @property
    def effective_host_rewrite(self) -> str:
        return self.host_rewrite or self.host_name

    def render_path_prefix(self, model: str, workspace: str) -> str:
        values = {"model": model, "workspace": self.workspace or workspace}
        return _TEMPLATE_VAR.sub(lambda m: values[m.group(1).strip("{}")], self.path_prefix)
