"""Routing (AIBrix `model.aibrix.ai/config` shape): profiles, strategies, rate limits."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from spillover.names import STRATEGIES
from spillover.policy.meta import Base
from spillover.policy.types import HeaderName, Label, fail, fail_many

# The strategy vocabulary is the naming contract's: the translator realises exactly these.
ROUTING_STRATEGIES = STRATEGIES
DEFAULT_ROUTING_STRATEGY = "least-request"
DEFAULT_SESSION_HEADER = "x-session-id"
DEFAULT_PREFIX_LENGTH = 256
DEFAULT_PROFILE_NAME = "default"


def _known(value: Any, known: tuple[str, ...], what: str) -> str:
    if not isinstance(value, str):
        raise fail("must be a string")
    if value not in known:
        raise fail(f'unknown {what} "{value}" (known: {", ".join(known)})')
    return value


def _strategy(value: Any) -> str:
    return _known(value, ROUTING_STRATEGIES, "routing strategy")


RoutingStrategy = Annotated[
    str,
    Field(json_schema_extra={"enum": list(ROUTING_STRATEGIES)}),
]


class Profile(Base):
    routing_strategy: RoutingStrategy | None = Field(default=None, description="Default: least-request")
    routing_config: dict[str, Any] | None = Field(default=None, description="AIBrix passthrough, not interpreted")
    requests_per_second: float | None = Field(default=None, ge=0, description="Model-wide cap; 0 = no limit")
    burst: int | None = Field(default=None, ge=1, description="Token bucket size; default: requestsPerSecond")
    session_header: HeaderName | None = Field(default=None, description="session-affinity; default x-session-id")
    prefix_length: int | None = Field(default=None, ge=1, le=1_000_000, description="prefix-cache; default 256")
    hash_balance_factor: int | None = Field(default=None, ge=100, description="Bounded load for hashing strategies")

    @field_validator("routing_strategy", mode="before")
    @classmethod
    def _known_strategy(cls, value: Any) -> Any:
        return value if value is None else _strategy(value)

    @model_validator(mode="after")
    def _check(self) -> Profile:
        problems: list[tuple[Any, str]] = []
        if self.burst is not None and self.requests_per_second and self.burst < self.requests_per_second:
            problems.append(("burst", "must be >= requestsPerSecond"))
        if self.burst is not None and not self.requests_per_second:
            problems.append(("burst", "requires requestsPerSecond > 0"))
        if problems:
            raise fail_many(problems)
        return self

    @property
    def effective_session_header(self) -> str:
        return self.session_header or DEFAULT_SESSION_HEADER

    @property
    def effective_prefix_length(self) -> int:
        return self.prefix_length or DEFAULT_PREFIX_LENGTH


class Routing(Base):
    """AIBrix `model.aibrix.ai/config` shape; profiles are chosen with the config-profile header."""

    default_profile: Label | None = Field(default=None, description='Default: "default"')
    locked_routing_strategy: RoutingStrategy | None = Field(
        default=None, description="Pins the strategy model-wide (over header and profile)"
    )
    profiles: dict[Label, Profile] = Field(default_factory=dict)

    @field_validator("locked_routing_strategy", mode="before")
    @classmethod
    def _known_strategy(cls, value: Any) -> Any:
        return value if value is None else _strategy(value)

    @model_validator(mode="after")
    def _check(self) -> Routing:
        problems: list[tuple[Any, str]] = []
        if self.profiles:
            name = self.default_profile or DEFAULT_PROFILE_NAME
            if name not in self.profiles:
                defined = ", ".join(sorted(self.profiles))
                if self.default_profile is None:
                    problems.append(("defaultProfile", f'is required: no profile is named "default" (defined: {defined})'))
                else:
                    problems.append(("defaultProfile", f'profile "{name}" is not defined in profiles (defined: {defined})'))
        elif self.default_profile is not None and self.default_profile != DEFAULT_PROFILE_NAME:
            problems.append(("defaultProfile", f'profile "{self.default_profile}" is not defined in profiles'))
        for pname, profile in self.profiles.items():
            strategy = self.strategy_for(pname)
            if profile.session_header is not None and strategy != "session-affinity":
                problems.append((f"profiles.{pname}.sessionHeader", "only applies to routingStrategy session-affinity"))
            if profile.prefix_length is not None and strategy != "prefix-cache":
                problems.append((f"profiles.{pname}.prefixLength", "only applies to routingStrategy prefix-cache"))
            if profile.hash_balance_factor is not None and strategy not in ("session-affinity", "prefix-cache"):
                problems.append((
                    f"profiles.{pname}.hashBalanceFactor",
                    "only applies to routingStrategy session-affinity or prefix-cache",
                ))
        if problems:
            raise fail_many(problems)
        return self

    @property
    def effective_default_profile(self) -> str:
        return self.default_profile or DEFAULT_PROFILE_NAME

    def effective_profiles(self) -> dict[str, Profile]:
        """Profiles with the implicit `default` one when none is declared."""
        return dict(self.profiles) if self.profiles else {DEFAULT_PROFILE_NAME: Profile()}

    def strategy_for(self, profile: str) -> str:
        p = self.effective_profiles().get(profile) or Profile()
        return self.locked_routing_strategy or p.routing_strategy or DEFAULT_ROUTING_STRATEGY
