"""The admission policy: loading from a mapping (errors name the field), patterns, and its decisions."""

from __future__ import annotations

from typing import Any

import pytest

from spillover.server.admission import (
    DEFAULT_MAX_STREAMS_PER_IDENTITY,
    AdmissionError,
    AdmissionPolicy,
    AdmissionRule,
    Pattern,
    Refusal,
    admission_from_mapping,
)
from spillover.server.identity import ANONYMOUS, PeerIdentity, identity_from_auth_context

GATEWAY = "spiffe://cluster.local/ns/spillover-system/sa/spillover-gateway"
POLICY: dict[str, Any] = {
    "maxStreamsPerIdentity": 8,
    "rules": [
        {"name": "gateways", "identities": [GATEWAY], "groups": ["spillover-gateway"],
         "nodeIds": ["spillover-gateway-*"], "maxStreams": 64},
        {"name": "edge", "identities": ["*.edge.example.com"], "groups": ["edge-*"]},
        {"name": "local", "unauthenticated": True, "groups": ["dev"]},
    ],
}


def peer(*uris: str, dns: tuple[str, ...] = ()) -> PeerIdentity:
    principal = uris[0] if uris else (dns[0] if dns else "")
    return PeerIdentity(authenticated=True, principal=principal, uris=uris, dns_names=dns)


def test_a_policy_loads_with_its_defaults() -> None:
    policy = admission_from_mapping(POLICY)
    assert [rule.name for rule in policy.rules] == ["gateways", "edge", "local"]
    gateways, edge, local = policy.rules
    assert gateways.max_streams == 64 and edge.max_streams == 8  # the policy's default
    assert [p.text for p in edge.node_ids] == ["*"]  # nodeIds default: any
    assert local.unauthenticated and local.identities == ()
    unnamed = admission_from_mapping({"rules": [{"identities": ["a"], "groups": ["g"]}]})
    assert unnamed.rules[0].name == "rules[0]"
    assert unnamed.max_streams_per_identity == DEFAULT_MAX_STREAMS_PER_IDENTITY


@pytest.mark.parametrize(
    ("document", "where", "error"),
    [
        ([], "admission", "admission: must be a mapping, got list"),
        ({"rules": []}, "admission", "admission.rules: must be a non-empty list"),
        ({"rule": []}, "admission", "admission: unknown field 'rule' (known: maxStreamsPerIdentity, rules)"),
        ({"maxStreamsPerIdentity": 0, "rules": [{}]}, "admission", "admission.maxStreamsPerIdentity: must be an integer"),
        ({"rules": [{"identities": ["a"]}]}, "admission", "admission.rules[0].groups: required"),
        ({"rules": [{"groups": ["g"]}]}, "admission", "admission.rules[0]: needs identities"),
        ({"rules": [{"identities": ["a"], "unauthenticated": True, "groups": ["g"]}]}, "admission",
         "admission.rules[0]: a rule names either identities or unauthenticated: true, not both"),
        ({"rules": [{"identities": ["a"], "groups": ["g", ""]}]}, "admission",
         "admission.rules[0].groups[1]: must be a non-empty string"),
        ({"rules": [{"identities": "a", "groups": ["g"]}]}, "admission",
         "admission.rules[0].identities: must be a non-empty list of patterns"),
        ({"rules": [{"identities": ["a\nb"], "groups": ["g"]}]}, "admission",
         "admission.rules[0].identities[0]: at most 512 printable characters"),
        ({"rules": [{"identities": ["a"], "groups": ["g"], "maxStreams": True}]}, "admission",
         "admission.rules[0].maxStreams: must be an integer from 1 to 1000000, got True"),
        ({"rules": [{"identities": ["a"], "groups": ["g"], "unauthenticated": "yes"}]}, "admission",
         "admission.rules[0].unauthenticated: must be true or false"),
        ({"rules": [{"name": "x", "identities": ["a"], "groups": ["g"]},
                    {"name": "x", "identities": ["b"], "groups": ["g"]}]}, "admission",
         "admission.rules[1].name: 'x' is used by an earlier rule"),
        ({"rules": [{"identities": ["a"], "groups": ["g"], "nodeId": ["n"]}]}, "",
         "rules[0]: unknown field 'nodeId' (known: name, identities, unauthenticated, groups, nodeIds, maxStreams)"),
        ({"rules": [{"identities": ["a"], "groups": ["g"], "x" * 10_000: 1}]}, "", "rules[0]: unknown field 'xxx"),
    ],
)
def test_errors_name_the_field_and_the_rule(document: Any, where: str, error: str) -> None:
    with pytest.raises(AdmissionError) as raised:
        admission_from_mapping(document, where=where)
    assert str(raised.value).startswith(error), str(raised.value)
    assert len(str(raised.value)) < 400  # a huge key is quoted cut, not whole


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("spillover-gateway-*", "spillover-gateway-7d9f-abcde", True),
        ("spillover-gateway-*", "spillover-gateway", False),
        ("spillover-gateway-*", "x-spillover-gateway-1", False),
        ("spiffe://td/ns/*/sa/gw", "spiffe://td/ns/a/b/sa/gw", True),
        ("a.b", "aXb", False),  # only `*` is special
        ("a?", "ab", False),
        ("[ab]", "[ab]", True),
        ("*", "", True),
        ("exact", "exact", True),
        ("exact", "exact\n", False),
    ],
)
def test_patterns_have_one_wildcard(pattern: str, value: str, matches: bool) -> None:
    assert Pattern.of(pattern).matches(value) is matches


def test_decisions() -> None:
    policy = admission_from_mapping(POLICY)
    gateway = peer(GATEWAY)
    assert policy.stream_limit(gateway) == 64
    rule = policy.admit(gateway, "spillover-gateway-7d9f-abcde", "spillover-gateway")
    assert isinstance(rule, AdmissionRule) and rule.name == "gateways"

    other_group = policy.admit(gateway, "spillover-gateway-1", "edge-1")
    assert isinstance(other_group, Refusal) and other_group.reason == "group_not_admitted"
    assert other_group.kind == "permission" and "rules for it: gateways" in other_group.message
    other_node = policy.admit(gateway, "attacker", "spillover-gateway")
    assert isinstance(other_node, Refusal) and other_node.reason == "node_not_admitted"

    # DNS SANs match too; the first matching rule wins.
    edge = peer(dns=("pop-1.edge.example.com",))
    assert policy.stream_limit(edge) == 8
    assert isinstance(policy.admit(edge, "anything", "edge-eu"), AdmissionRule)

    stranger = peer("spiffe://elsewhere/sa/x")
    refusal = policy.stream_limit(stranger)
    assert isinstance(refusal, Refusal) and refusal.reason == "identity_not_admitted"
    assert "spiffe://elsewhere/sa/x" in refusal.message
    no_names = policy.stream_limit(PeerIdentity(authenticated=True, principal=""))
    assert isinstance(no_names, Refusal) and "no URI or DNS SAN" in no_names.message

    assert policy.stream_limit(ANONYMOUS) == 8  # the `local` rule
    assert isinstance(policy.admit(ANONYMOUS, "n", "dev"), AdmissionRule)
    assert isinstance(policy.admit(ANONYMOUS, "n", "spillover-gateway"), Refusal)
    strict = admission_from_mapping({"rules": POLICY["rules"][:1]})
    refused = strict.stream_limit(ANONYMOUS)
    assert isinstance(refused, Refusal) and refused.kind == "unauthenticated"


def test_refusals_quote_client_text_escaped_and_cut() -> None:
    policy = admission_from_mapping(POLICY)
    refusal = policy.admit(peer(GATEWAY), "n", "evil\n" + "g" * 100_000)
    assert isinstance(refusal, Refusal)
    assert "\n" not in refusal.message and "evil\\n" in refusal.message and len(refusal.message) < 300


def test_no_policy_admits_everyone_with_the_default_bound() -> None:
    policy = AdmissionPolicy.admit_all()
    assert policy.stream_limit(ANONYMOUS) == DEFAULT_MAX_STREAMS_PER_IDENTITY
    assert policy.admit(peer("x"), "any", "any") is None


def test_identity_from_the_auth_context() -> None:
    assert identity_from_auth_context({}) is ANONYMOUS
    assert identity_from_auth_context({"transport_security_type": [b"insecure"]}) is ANONYMOUS
    context = {
        "transport_security_type": [b"ssl"],
        "peer_spiffe_id": [b"spiffe://td/sa/gw"],
        "peer_uri": [b"https://other", b"spiffe://td/sa/gw"],
        "peer_dns": [b"gw.example", b"x" * 10_000],
    }
    identity = identity_from_auth_context(context)
    assert identity.authenticated and identity.principal == "spiffe://td/sa/gw"
    assert identity.names == ("https://other", "spiffe://td/sa/gw", "gw.example")  # the oversized name is dropped
    dns_only = identity_from_auth_context({"transport_security_type": [b"ssl"], "peer_dns": [b"gw.example"]})
    assert dns_only.principal == "gw.example"
