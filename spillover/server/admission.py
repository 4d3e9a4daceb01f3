"""Admission: which client identities may open streams, for which node groups and node ids, and how many.

A policy is a list of rules. A rule names identities (patterns over the URI and DNS SANs of the client
certificate, the SPIFFE ID among them) or plain-text clients (`unauthenticated: true`), the groups and
node ids they may use, and how many streams each identity may hold. A stream is admitted by the first
rule that matches its identity, group and node id; everything else is refused.

Patterns are exact strings in which `*` stands for any run of characters (`spillover-gateway-*`,
`spiffe://cluster.local/ns/*/sa/gateway`); no other character is special.

The policy is read from a mapping (a YAML file, or the `admission:` section of a larger configuration)
by `admission_from_mapping`, which names the field of every error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spillover.server.bounds import printable
from spillover.server.identity import PeerIdentity

__all__ = [
    "DEFAULT_MAX_STREAMS_PER_IDENTITY",
    "AdmissionError",
    "AdmissionPolicy",
    "AdmissionRule",
    "Pattern",
    "Refusal",
    "admission_from_mapping",
]

DEFAULT_MAX_STREAMS_PER_IDENTITY = 1024
_MAX_PATTERN = 512
_MAX_STREAMS_CEILING = 1_000_000
# Client text (a group, a node id) quoted in a refusal is cut to this length and escaped.
_QUOTE = 64


class AdmissionError(ValueError):
    """An invalid admission policy; the message starts with the path of the field at fault."""


@dataclass(frozen=True)
class Refusal:
    """Why a stream is refused. `reason` is a fixed label (metrics), `message` the gRPC status detail."""

    reason: str
    message: str
    # "permission": PERMISSION_DENIED, "unauthenticated": UNAUTHENTICATED, "exhausted": RESOURCE_EXHAUSTED,
    # "invalid": INVALID_ARGUMENT, "deadline": DEADLINE_EXCEEDED
    kind: str = "permission"


@dataclass(frozen=True)
class Pattern:
    text: str
    _regex: re.Pattern[str] = field(repr=False, compare=False)

    @classmethod
    def of(cls, text: str) -> Pattern:
        regex = re.compile(".*".join(re.escape(part) for part in text.split("*")), re.DOTALL)
        return cls(text, regex)

    def matches(self, value: str) -> bool:
        return self._regex.fullmatch(value) is not None


def _any(patterns: Sequence[Pattern], value: str) -> bool:
    return any(p.matches(value) for p in patterns)


@dataclass(frozen=True)
class AdmissionRule:
    name: str
    identities: tuple[Pattern, ...]
    unauthenticated: bool
    groups: tuple[Pattern, ...]
    node_ids: tuple[Pattern, ...]
    max_streams: int

    def matches_identity(self, identity: PeerIdentity) -> bool:
        if not identity.authenticated:
            return self.unauthenticated
        return any(_any(self.identities, name) for name in identity.names)


@dataclass(frozen=True)
class AdmissionPolicy:
    rules: tuple[AdmissionRule, ...]
    max_streams_per_identity: int = DEFAULT_MAX_STREAMS_PER_IDENTITY
    # No policy given: every client that reaches the port (and passed mTLS, when it is on) is admitted
    # to any group, with the default stream bound per identity.
    open: bool = False

    @classmethod
    def admit_all(cls, max_streams_per_identity: int = DEFAULT_MAX_STREAMS_PER_IDENTITY) -> AdmissionPolicy:
        return cls(rules=(), max_streams_per_identity=max_streams_per_identity, open=True)

    def stream_limit(self, identity: PeerIdentity) -> int | Refusal:
        """How many streams this identity may hold at once, or why it may hold none."""
        if self.open:
            return self.max_streams_per_identity
        limits = [rule.max_streams for rule in self.rules if rule.matches_identity(identity)]
        if limits:
            return max(limits)
        if not identity.authenticated:
            return Refusal(
                "unauthenticated",
                "admission: plain-text streams are not admitted by any rule (a client certificate is required)",
                "unauthenticated",
            )
        if not identity.principal:
            return Refusal("identity_not_admitted", "admission: the client certificate has no URI or DNS SAN")
        return Refusal(
            "identity_not_admitted",
            f"admission: identity '{printable(identity.principal, _QUOTE)}' is not admitted by any rule",
        )

    def admit(self, identity: PeerIdentity, node_id: str, group: str) -> AdmissionRule | Refusal | None:
        """The rule that admits this stream (None for an open policy), or why it is refused."""
        if self.open:
            return None
        mine = [rule for rule in self.rules if rule.matches_identity(identity)]
        in_group = [rule for rule in mine if _any(rule.groups, group)]
        if not in_group:
            names = ", ".join(rule.name for rule in mine) or "none"
            return Refusal(
                "group_not_admitted",
                f"admission: node group '{printable(group, _QUOTE)}' is not admitted for this identity "
                f"(rules for it: {names})",
            )
        for rule in in_group:
            if _any(rule.node_ids, node_id):
                return rule
        names = ", ".join(rule.name for rule in in_group)
        return Refusal(
            "node_not_admitted",
            f"admission: node id '{printable(node_id, _QUOTE)}' is not admitted in this group (rules: {names})",
        )


# -- loading -------------------------------------------------------------------------------------------

_POLICY_FIELDS = ("maxStreamsPerIdentity", "rules")
_RULE_FIELDS = ("name", "identities", "unauthenticated", "groups", "nodeIds", "maxStreams")


def _at(where: str, key: str) -> str:
    """The path of a field: `admission.rules[0]` under `admission`, `rules[0]` at the top of a file."""
    if not where:
        return key
    return f"{where}{key}" if key.startswith("[") else f"{where}.{key}"


def _check_fields(value: Mapping[Any, Any], known: Sequence[str], where: str) -> None:
    for key in value:
        if key not in known:
            shown = printable(str(key), _QUOTE)
            raise AdmissionError(f"{where or 'the admission policy'}: unknown field '{shown}' (known: {', '.join(known)})")


def _mapping(value: object, where: str) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise AdmissionError(f"{where or 'the admission policy'}: must be a mapping, got {type(value).__name__}")
    return value


def _count(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_STREAMS_CEILING:
        raise AdmissionError(
            f"{where}: must be an integer from 1 to {_MAX_STREAMS_CEILING}, got {printable(repr(value), _QUOTE)}"
        )
    return value


def _patterns(value: object, where: str, required: bool) -> tuple[Pattern, ...]:
    if value is None and not required:
        return (Pattern.of("*"),)
    if not isinstance(value, list) or not value:
        raise AdmissionError(f"{where}: must be a non-empty list of patterns")
    out = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise AdmissionError(f"{where}[{index}]: must be a non-empty string, got {printable(repr(item), _QUOTE)}")
        if len(item) > _MAX_PATTERN or not item.isprintable():
            raise AdmissionError(f"{where}[{index}]: at most {_MAX_PATTERN} printable characters")
        out.append(Pattern.of(item))
    return tuple(out)


def _rule(value: object, where: str, index: int, default_streams: int) -> AdmissionRule:
    rule = _mapping(value, where)
    _check_fields(rule, _RULE_FIELDS, where)
    name = rule.get("name", f"rules[{index}]")
    if not isinstance(name, str) or not name.strip() or len(name) > 64 or not name.isprintable():
        raise AdmissionError(
            f"{_at(where, 'name')}: must be a printable string of 1 to 64 characters, got {printable(repr(name), _QUOTE)}"
        )
    unauthenticated = rule.get("unauthenticated", False)
    if not isinstance(unauthenticated, bool):
        raise AdmissionError(f"{_at(where, 'unauthenticated')}: must be true or false, got {unauthenticated!r}")
    if unauthenticated and "identities" in rule:
        raise AdmissionError(f"{where}: a rule names either identities or unauthenticated: true, not both")
    if not unauthenticated and "identities" not in rule:
        raise AdmissionError(f"{where}: needs identities (certificate SAN patterns) or unauthenticated: true")
    identities = () if unauthenticated else _patterns(rule.get("identities"), _at(where, "identities"), True)
    if "groups" not in rule:
        raise AdmissionError(f"{_at(where, 'groups')}: required (the node groups this rule admits; '*' for any)")
    return AdmissionRule(
        name=name,
        identities=identities,
        unauthenticated=unauthenticated,
        groups=_patterns(rule.get("groups"), _at(where, "groups"), True),
        node_ids=_patterns(rule.get("nodeIds"), _at(where, "nodeIds"), False),
        max_streams=_count(rule.get("maxStreams", default_streams), _at(where, "maxStreams")),
    )


def admission_from_mapping(value: object, where: str = "admission") -> AdmissionPolicy:
    """An AdmissionPolicy from its mapping form::

        maxStreamsPerIdentity: 1024           # for rules without maxStreams
        rules:
        - name: gateways
          identities: ["spiffe://cluster.local/ns/spillover-system/sa/spillover-gateway"]
          groups: ["spillover-gateway"]
          nodeIds: ["spillover-gateway-*"]    # default: any
          maxStreams: 64
        - name: local
          unauthenticated: true               # plain-text clients (loopback, --insecure-xds)
          groups: ["dev-*"]

    Raises AdmissionError naming the field (`admission.rules[1].groups[0]: ...`; `where=""` for a
    document that is the policy itself)."""
    policy = _mapping(value, where)
    _check_fields(policy, _POLICY_FIELDS, where)
    default_streams = _count(
        policy.get("maxStreamsPerIdentity", DEFAULT_MAX_STREAMS_PER_IDENTITY), _at(where, "maxStreamsPerIdentity")
    )
    rules_value = policy.get("rules")
    rules_at = _at(where, "rules")
    if not isinstance(rules_value, list) or not rules_value:
        raise AdmissionError(f"{rules_at}: must be a non-empty list (a policy without rules admits nobody)")
    rules = tuple(_rule(item, f"{rules_at}[{i}]", i, default_streams) for i, item in enumerate(rules_value))
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        if rule.name in seen:
            raise AdmissionError(f"{rules_at}[{i}].name: '{rule.name}' is used by an earlier rule")
        seen.add(rule.name)
    return AdmissionPolicy(rules=rules, max_streams_per_identity=default_streams)
